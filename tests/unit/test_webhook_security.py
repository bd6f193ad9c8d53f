"""The webhook's target policy and signature, against real HTTP receivers on loopback (http.server in a thread).

Loopback is exactly what the policy refuses by default, so the tests that must deliver set
``notifications.webhook_allow_private=true``, and the test of the refusal leaves it off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from raymlops.config import load_config
from raymlops.control.ports import WebhookNotifier
from raymlops.control.state import LogEntry
from raymlops.core.webhook import blocked_address, host_allowed, verify_signature
from raymlops.errors import ConfigError


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request; ``redirect_to`` answers 302 instead."""

    def __init__(self, redirect_to: str | None = None):
        self.hits: list[tuple[str, str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                outer.hits.append((self.command, self.path, dict(self.headers), self.rfile.read(size)))
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                else:
                    self.send_response(204)
                self.end_headers()

            do_POST = do_GET = _record  # noqa: N815 - http.server's names

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_payloads_are_signed_so_a_receiver_can_verify_them(monkeypatch):
    monkeypatch.setenv("TEST_HOOK_KEY", "k3y-shared-with-the-receiver")
    rx = Receiver()
    try:
        cfg = load_config(None, [f"notifications.webhook_url={rx.url}", "notifications.webhook_allow_private=true",
                                 "notifications.webhook_secret_env=TEST_HOOK_KEY"])
        WebhookNotifier(cfg, lambda _: None).send(LogEntry(1, 1000.0, "promoted", "v2 promoted", {"version": "2"}))
        _wait(lambda: rx.hits, "the event")
    finally:
        rx.close()
    method, _, headers, body = rx.hits[0]
    signature = headers["X-Raymlops-Signature"]
    # The receiver's recipe from SECURITY.md, written out independently of raymlops' helper:
    expected = "sha256=" + hmac.new(b"k3y-shared-with-the-receiver", body, hashlib.sha256).hexdigest()
    assert method == "POST" and hmac.compare_digest(signature, expected)
    assert verify_signature(body, signature, b"k3y-shared-with-the-receiver")
    assert not verify_signature(body.replace(b"promoted", b"rolled_back"), signature, b"k3y-shared-with-the-receiver")
    assert not verify_signature(body, signature, b"another key")
    assert json.loads(body)["event"]["seq"] == 1


def test_a_redirect_is_not_followed(monkeypatch):
    monkeypatch.delenv("RAYMLOPS_WEBHOOK_SECRET", raising=False)
    elsewhere = Receiver()
    rx = Receiver(redirect_to=elsewhere.url.replace("/hook", "/stolen"))
    said: list[str] = []
    try:
        cfg = load_config(None, [f"notifications.webhook_url={rx.url}", "notifications.webhook_allow_private=true"])
        WebhookNotifier(cfg, said.append).send(LogEntry(3, 1.0, "rolled_back", "v3 rolled back"))
        _wait(lambda: any("event 3" in s for s in said), "the webhook's verdict on event 3")
    finally:
        rx.close()
        elsewhere.close()
    assert len(rx.hits) == 1 and elsewhere.hits == []
    verdict = next(s for s in said if "event 3" in s)
    assert "redirect" in verdict and "not followed" in verdict
    assert any("unsigned" in s and "RAYMLOPS_WEBHOOK_SECRET" in s for s in said)  # a missing key is said


def test_a_private_target_is_refused_unless_allowed():
    rx = Receiver()
    said: list[str] = []
    try:
        # "localhost" resolves to loopback: the check is on the resolved address, not on the spelling of the URL.
        url = rx.url.replace("127.0.0.1", "localhost")
        cfg = load_config(None, [f"notifications.webhook_url={url}", "notifications.timeout_s=1"])
        WebhookNotifier(cfg, said.append).send(LogEntry(4, 1.0, "promoted", "v4 promoted"))
        _wait(lambda: any("event 4" in s for s in said), "the webhook's verdict on event 4")
    finally:
        rx.close()
    assert rx.hits == []
    verdict = next(s for s in said if "event 4" in s)
    assert "refused" in verdict and "loopback" in verdict and "webhook_allow_private" in verdict


def test_a_webhook_host_outside_the_allow_list_is_refused_at_load():
    with pytest.raises(ConfigError, match="webhook_allowed_hosts"):
        load_config(None, ["notifications.webhook_url=https://attacker.example.net/x",
                           "notifications.webhook_allowed_hosts=[hooks.slack.com,'*.example.com']"])
    cfg = load_config(None, ["notifications.webhook_url=https://alerts.example.com/x",
                             "notifications.webhook_allowed_hosts=[hooks.slack.com,'*.example.com']"])
    assert cfg.notifications.webhook_allowed_hosts == ["hooks.slack.com", "*.example.com"]


def test_payloads_carry_no_secret(monkeypatch):
    monkeypatch.setenv("RAYMLOPS_WEBHOOK_SECRET", "the-signing-key-itself")
    rx = Receiver()
    said: list[str] = []
    try:
        cfg = load_config(None, [f"notifications.webhook_url={rx.url}?token=abc123def",
                                 "notifications.webhook_allow_private=true"])
        message = ("run r1 failed: cannot reach postgresql://mlflow:hunter2pw@db:5432/mlflow; "
                   "key the-signing-key-itself")
        WebhookNotifier(cfg, said.append).send(LogEntry(5, 1.0, "run_failed", message,
                                                        {"store": "redis://:s3cretpw@cache:6379/0"}))
        _wait(lambda: rx.hits, "the event")
    finally:
        rx.close()
    body = rx.hits[0][3].decode()
    for secret in ("hunter2pw", "s3cretpw", "the-signing-key-itself"):
        assert secret not in body and not any(secret in s for s in said)
    assert "postgresql://mlflow:***@db:5432/mlflow" in body
    assert rx.hits[0][1] == "/hook?token=abc123def"  # the receiver still gets its own URL


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("10.1.2.3", "private"),
    ("192.168.0.5", "private"), ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"),
    ("0.0.0.0", "unspecified"), ("100.64.0.1", "not globally routable"), ("8.8.8.8", None),
    ("2606:4700:4700::1111", None),
])
def test_only_public_addresses_are_targets_by_default(address, reason):
    assert blocked_address(address) == reason


def test_host_allow_list_matches_names_and_subdomains_only():
    patterns = ["hooks.slack.com", "*.example.com"]
    assert host_allowed("HOOKS.slack.com.", patterns) and host_allowed("a.b.example.com", patterns)
    assert not host_allowed("example.com", patterns) and not host_allowed("evilexample.com", patterns)
    assert not host_allowed("hooks.slack.com.evil.net", patterns)
