"""raymlops.core.auth: token hashes and scopes, signed request ids, the token-bucket rate limiter."""

from __future__ import annotations

import hashlib

import pytest

from raymlops.core.auth import (
    RateLimiter,
    RequestIdSigner,
    TokenSet,
    bearer_token,
    hash_token,
    is_loopback,
    new_token,
    parse_tokens,
)

TOKEN = "t" * 40
OTHER = "o" * 40


def _tokens() -> TokenSet:
    return TokenSet([{"name": "app", "sha256": hash_token(TOKEN), "scopes": ["predict", "feedback"]},
                     {"name": "ops", "sha256": hash_token(OTHER), "scopes": ["admin"]}])


def test_a_token_authenticates_as_its_name_and_scopes_and_nothing_else_does():
    tokens = _tokens()
    me = tokens.authenticate(TOKEN)
    assert me is not None and me.name == "app" and me.allows("predict") and not me.allows("admin")
    assert tokens.authenticate(OTHER).scopes == frozenset({"admin"})
    assert tokens.authenticate(TOKEN + "x") is None and tokens.authenticate(None) is None
    assert tokens.authenticate("") is None and tokens.authenticate("é" * 40) is None


def test_hash_token_is_sha256_and_refuses_short_or_unprintable_tokens():
    assert hash_token(TOKEN) == hashlib.sha256(TOKEN.encode()).hexdigest()
    assert len(new_token()) >= 32 and hash_token(new_token())
    for bad in ("short", "a b" * 20, "x" * 31):
        with pytest.raises(ValueError, match="at least 32"):
            hash_token(bad)


@pytest.mark.parametrize("entry, match", [
    ({"name": "a b", "sha256": "0" * 64, "scopes": ["predict"]}, "name"),
    ({"name": "a", "sha256": "ABC", "scopes": ["predict"]}, "sha256"),
    ({"name": "a", "sha256": "0" * 64, "scopes": ["root"]}, "scopes"),
    ({"name": "a", "sha256": "0" * 64, "scopes": []}, "scopes"),
])
def test_token_entries_are_checked(entry, match):
    with pytest.raises(ValueError, match=match):
        TokenSet([entry])


def test_token_names_must_be_unique():
    with pytest.raises(ValueError, match="repeat"):
        TokenSet([{"name": "a", "sha256": "0" * 64, "scopes": ["predict"]}] * 2)


def test_a_tokens_file_gives_hashes_only():
    text = f"# comment\n\napp:predict, feedback:{TOKEN}\nops:admin:{OTHER}\n"
    entries = parse_tokens(text, "tokens.txt")
    assert entries == [{"name": "app", "sha256": hash_token(TOKEN), "scopes": ["feedback", "predict"]},
                       {"name": "ops", "sha256": hash_token(OTHER), "scopes": ["admin"]}]
    assert TOKEN not in repr(entries)
    with pytest.raises(ValueError, match="line 1") as err:
        parse_tokens("app:predict:short", "tokens.txt")
    assert "short" not in str(err.value).split("(token")[0]
    with pytest.raises(ValueError, match="NAME:SCOPE"):
        parse_tokens("app-predict", "tokens.txt")


def test_bearer_header_parsing():
    assert bearer_token(f"Bearer {TOKEN}") == TOKEN and bearer_token(f"bearer  {TOKEN} ") == TOKEN
    assert bearer_token(None) is None and bearer_token("Basic abc") is None and bearer_token("Bearer ") is None


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.0.0.5", False),
                                            ("example.com", False), ("::", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_signed_ids_carry_their_instance_count_and_resist_forgery():
    signer = RequestIdSigner(b"k" * 32, "churn")
    rid = signer.issue(3)
    assert signer.verify(rid) == 3 and len(rid) <= 128 and rid != signer.issue(3)
    ident, n, mac = rid.split(".")
    assert signer.verify(f"{ident}.4.{mac}") is None  # the count is signed
    assert signer.verify(f"{ident[:-1]}0.{n}.{mac}" if ident[-1] != "0" else f"{ident[:-1]}1.{n}.{mac}") is None
    assert signer.verify(f"{ident}.{n}.{'0' * 32}") is None and signer.verify("order-17") is None
    assert RequestIdSigner(b"x" * 32, "churn").verify(rid) is None  # another secret
    assert RequestIdSigner(b"k" * 32, "other").verify(rid) is None  # another model
    with pytest.raises(ValueError, match="16 bytes"):
        RequestIdSigner(b"short", "churn")


def test_token_bucket_allows_a_burst_then_the_rate():
    limiter = RateLimiter(rate_per_s=2.0, burst=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(0.5)  # empty: one token in half a second
    assert limiter.take("b", 0.0) == 0.0  # buckets are per key
    assert limiter.take("a", 1.0) == 0.0 and limiter.take("a", 1.0) == 0.0  # refilled by 2 in 1 s (one was owed)
    assert RateLimiter.retry_after(0.2) == "1" and RateLimiter.retry_after(2.5) == "3"


def test_token_bucket_remembers_a_bounded_number_of_keys():
    limiter = RateLimiter(rate_per_s=1.0, burst=1, max_keys=2)
    limiter.take("a", 0.0)
    limiter.take("b", 0.0)
    limiter.take("c", 0.0)  # "a" is forgotten: a full bucket again
    assert limiter.take("a", 0.0) == 0.0 and limiter.take("c", 0.0) > 0
