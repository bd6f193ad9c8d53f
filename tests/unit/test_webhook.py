"""The webhook notifier against a real HTTP server on loopback: every event arrives as JSON, in order."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from raymlops.config import load_config
from raymlops.control.ports import WebhookNotifier
from raymlops.control.state import LogEntry


def test_events_are_posted_as_json_in_order_and_a_dead_endpoint_only_warns():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    said: list[str] = []
    try:
        cfg = load_config(None, [f"notifications.webhook_url=http://127.0.0.1:{server.server_port}/hook",
                                 "notifications.webhook_allow_private=true"])  # the receiver is on loopback
        notifier = WebhookNotifier(cfg, said.append)
        for seq, kind in enumerate(["trigger", "canary_started", "rolled_back"], start=1):
            notifier.send(LogEntry(seq, 1000.0 + seq, kind, f"{kind} happened", {"version": "2"}))
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.shutdown()
    assert [r["event"]["kind"] for r in received] == ["trigger", "canary_started", "rolled_back"]
    assert received[0]["pipeline"] == "churn" and received[2]["text"] == "[raymlops churn] rolled_back: rolled_back happened"
    assert received[1]["event"]["data"] == {"version": "2"}

    cfg = load_config(None, ["notifications.webhook_url=http://127.0.0.1:9/closed", "notifications.timeout_s=0.5",
                             "notifications.webhook_allow_private=true"])
    dead = WebhookNotifier(cfg, said.append)
    dead.send(LogEntry(9, 1.0, "promoted", "v2 promoted"))  # never raises: the event log keeps the event
    deadline = time.monotonic() + 15
    while not any("webhook" in s and "failed" in s for s in said) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any("failed for event 9" in s for s in said)
