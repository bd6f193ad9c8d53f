"""Serving authentication, pure: token hashes and scopes, signed request ids, a token-bucket rate limiter.

* Tokens. A client sends ``Authorization: Bearer <token>``; the server only ever holds ``sha256(token)`` (hex) with
  a name and scopes (``predict``, ``feedback``, ``admin``). ``TokenSet.authenticate`` hashes the presented token and
  compares it with every configured hash by ``hmac.compare_digest`` (no early exit, no timing hint of which one
  matched). Tokens are long random strings (``MIN_TOKEN_LENGTH``): a plain hash of a guessable password would be
  brute-forced from the config, where the hashes live.
* Request ids. The server issues ``<id>.<n>.<mac>``: ``id`` a random hex string, ``n`` the number of instances the
  prediction had, ``mac`` a truncated HMAC-SHA256 over the model name, ``id`` and ``n`` under the serving secret.
  Any replica holding the secret verifies an id and learns ``n`` without shared state, so ``:feedback`` accepts
  labels only for ids the service issued, with exactly ``n`` labels.
* ``RateLimiter``: one token bucket per key (the token's name, or the client's address), bounded in keys; the
  clock is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CLIENT_TOKEN_ENV",
    "CLIENT_TOKEN_FILE_ENV",
    "MIN_TOKEN_LENGTH",
    "SECRET_FILE_ENV",
    "SECRET_VARS",
    "TOKENS_ENV",
    "TOKENS_FILE_ENV",
    "SCOPES",
    "Identity",
    "RateLimiter",
    "RequestIdSigner",
    "TokenSet",
    "bearer_token",
    "hash_token",
    "is_loopback",
    "new_token",
    "parse_tokens",
]

# The variables that hold serving secrets (read by raymlops.serve.auth; never interpolated into a config value).
TOKENS_ENV = "RAYMLOPS_SERVING_TOKENS"  # NAME:SCOPES:TOKEN lines the deploy accepts (hashed there)
TOKENS_FILE_ENV = "RAYMLOPS_SERVING_TOKENS_FILE"
SECRET_FILE_ENV = "RAYMLOPS_SERVING_SECRET_FILE"  # the request-id signing key, on each node
# The token raymlops's own clients send (status, pre-exposure tests, the demo's traffic).
CLIENT_TOKEN_ENV = "RAYMLOPS_SERVING_TOKEN"
CLIENT_TOKEN_FILE_ENV = "RAYMLOPS_SERVING_TOKEN_FILE"
SECRET_VARS = (TOKENS_ENV, TOKENS_FILE_ENV, SECRET_FILE_ENV, CLIENT_TOKEN_ENV, CLIENT_TOKEN_FILE_ENV)

SCOPES = ("predict", "feedback", "admin")
MIN_TOKEN_LENGTH = 32
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: what a header carries unchanged
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAC_HEX = 32  # 128 bits of HMAC-SHA256: forging one is 2^128 guesses
_ID = re.compile(r"^(?P<id>[0-9a-f]{8,40})\.(?P<n>[1-9][0-9]{0,6})\.(?P<mac>[0-9a-f]{32})$")


def hash_token(token: str) -> str:
    """The hex SHA-256 of a bearer token (what ``serving.auth.tokens[].sha256`` holds). Raises ``ValueError`` for a
    token shorter than ``MIN_TOKEN_LENGTH`` or with characters a header cannot carry."""
    if len(token) < MIN_TOKEN_LENGTH or not _TOKEN_CHARS.match(token):
        raise ValueError(f"a serving token must be at least {MIN_TOKEN_LENGTH} printable ASCII characters without "
                         "spaces (its hash is stored in the config, so it must not be guessable); generate one with "
                         "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def new_token() -> str:
    """A fresh random token (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether a bind address only listens on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it counts as exposed


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None when absent or another scheme)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


@dataclass(frozen=True)
class Identity:
    """Who a request authenticated as: the token's name and scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def _check_entry(entry: Mapping[str, object], where: str) -> tuple[str, str, frozenset[str]]:
    name, digest, scopes = entry.get("name"), entry.get("sha256"), entry.get("scopes")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}.name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if not isinstance(digest, str) or not _SHA256_HEX.match(digest):
        raise ValueError(f"{where}.sha256 must be the 64 lowercase hex digits of sha256(token); compute it with "
                         "`raymlops.core.auth.hash_token`")
    if not isinstance(scopes, list | tuple | frozenset | set) or not scopes or not set(scopes) <= set(SCOPES):
        raise ValueError(f"{where}.scopes {scopes!r} must be a non-empty list of {list(SCOPES)}")
    return name, digest, frozenset(scopes)


class TokenSet:
    """The configured tokens as ``(name, sha256, scopes)``; ``authenticate`` maps a presented token to its identity."""

    def __init__(self, entries: Iterable[Mapping[str, object]]):
        self._entries = [_check_entry(e, f"serving.auth.tokens[{i}]") for i, e in enumerate(entries)]
        names = [n for n, _, _ in self._entries]
        if len(set(names)) != len(names):
            raise ValueError(f"serving.auth.tokens names {names} repeat; give each token its own name")

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of ``token``, or None when it matches no configured hash."""
        if token is None:
            return None
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
        found = None
        for name, digest, scopes in self._entries:  # every entry is compared: the time says nothing of which one
            if hmac.compare_digest(presented, digest):
                found = Identity(name, scopes)
        return found


def parse_tokens(text: str, source: str) -> list[dict[str, object]]:
    """Token entries from secret text, one ``NAME:SCOPE[,SCOPE...]:TOKEN`` per line (``#`` comments, blank lines
    ignored); returns ``{name, sha256, scopes}`` dicts, so the clear token goes no further than this function."""
    out: list[dict[str, object]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"{source} line {lineno}: expected NAME:SCOPE[,SCOPE...]:TOKEN (scopes among "
                             f"{list(SCOPES)}); the token itself is not shown")
        name, scopes, token = parts
        try:
            digest = hash_token(token)
        except ValueError as err:
            raise ValueError(f"{source} line {lineno} (token {name!r}): {err}") from None
        entry = {"name": name, "sha256": digest, "scopes": sorted({s.strip() for s in scopes.split(",") if s.strip()})}
        _check_entry(entry, f"{source} line {lineno}")
        out.append(entry)
    return out


class RequestIdSigner:
    """Issues and verifies signed request ids for one model (see the module docstring)."""

    def __init__(self, secret: bytes, model: str):
        if len(secret) < 16:
            raise ValueError("the serving secret must hold at least 16 bytes")
        # A key per model: an id issued for one model is worthless for another that shares the secret.
        self._key = hmac.new(secret, b"raymlops-request-id\x00" + model.encode(), hashlib.sha256).digest()

    def _mac(self, ident: str, n: int) -> str:
        return hmac.new(self._key, f"{ident}.{n}".encode(), hashlib.sha256).hexdigest()[:_MAC_HEX]

    def issue(self, n: int) -> str:
        """A fresh id for a prediction of ``n`` instances."""
        ident = secrets.token_hex(12)
        return f"{ident}.{n}.{self._mac(ident, n)}"

    def verify(self, request_id: str) -> int | None:
        """The instance count an id was issued for, or None when the service did not issue it."""
        m = _ID.match(request_id)
        if m is None:
            return None
        n = int(m.group("n"))
        return n if hmac.compare_digest(self._mac(m.group("id"), n), m.group("mac")) else None


class RateLimiter:
    """Token buckets per key: ``rate_per_s`` refill, ``burst`` capacity, at most ``max_keys`` keys remembered (the
    least recently seen key is forgotten first, which only gives it a full bucket again)."""

    def __init__(self, rate_per_s: float, burst: int, max_keys: int = 10_000):
        if not rate_per_s > 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s, burst and max_keys must be positive")
        self.rate_per_s, self.burst, self.max_keys = float(rate_per_s), int(burst), int(max_keys)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` from ``key``'s bucket at time ``now``: 0.0 when allowed, else the seconds to wait."""
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + max(0.0, now - at) * self.rate_per_s)
        wait = 0.0
        if tokens >= cost:
            tokens -= cost
        else:
            wait = (cost - tokens) / self.rate_per_s
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """``Retry-After`` header value (whole seconds, at least 1) for a wait."""
        return str(max(1, math.ceil(wait_s)))
