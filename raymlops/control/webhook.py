"""The controller's webhook: each event POSTed as signed JSON, only to a target the config allows.

Safe by default, because a config may come from less-trusted hands and the controller runs inside the cluster:

* the host must match ``notifications.webhook_allowed_hosts`` when that list is set (checked at config load and
  again here);
* a host that resolves to a loopback, private, link-local (cloud metadata) or otherwise non-public address is
  refused unless ``notifications.webhook_allow_private``; the connection then goes to the very address that was
  checked (no second DNS lookup that a rebinding name could answer differently);
* redirects are never followed (a 3xx is reported as a failure naming where it pointed);
* the payload is signed (``X-Raymlops-Signature: sha256=<hex>``, see ``raymlops.core.webhook``) with the key in
  the variable ``notifications.webhook_secret_env`` names, and passes through ``core.redact`` first;
* what the controller logs about the webhook shows only ``scheme://host:port`` (a webhook path is often a token).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from raymlops.config import Config
from raymlops.control.state import LogEntry
from raymlops.core.redact import redact, redact_data, url_origin
from raymlops.core.webhook import SIGNATURE_HEADER, blocked_address, host_allowed, sign_payload

__all__ = ["WebhookNotifier", "WebhookRefused", "post_json"]

_ATTEMPTS = 3


class WebhookRefused(Exception):
    """The target is not allowed, or answered in a way that retrying cannot fix (redirect, 4xx)."""


def post_json(url: str, body: bytes, headers: dict[str, str], *, timeout_s: float,
              allowed_hosts: list[str], allow_private: bool) -> int:
    """POST ``body`` to ``url`` under the target policy (module docstring); the HTTP status of a 2xx answer.

    Raises ``WebhookRefused`` (policy, redirect, 4xx) or ``OSError`` (network, timeout, 5xx: worth a retry).
    """
    parts = urlsplit(url)
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host:
        raise WebhookRefused("webhook_url must be an http:// or https:// URL with a host")
    if allowed_hosts and not host_allowed(host, allowed_hosts):
        raise WebhookRefused(f"host {host!r} is not in notifications.webhook_allowed_hosts")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise OSError(f"cannot resolve {host}: {err}") from None
    addresses = [info[4][0] for info in infos]
    if not allow_private:
        for address in addresses:
            reason = blocked_address(address)
            if reason is not None:
                raise WebhookRefused(f"host {host!r} resolves to {address} ({reason}); a webhook may reach only "
                                     "public addresses unless notifications.webhook_allow_private is true")
    conn = _PinnedConnection(parts.scheme, host, port, addresses[0], timeout_s)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read(64 * 1024)  # drain a little, never a whole unbounded answer
        status = response.status
        location = response.getheader("Location")
    except http.client.HTTPException as err:  # a garbled answer: worth a retry, like a network error
        raise OSError(f"bad HTTP answer: {type(err).__name__}") from None
    finally:
        conn.close()
    if 300 <= status < 400:
        where = url_origin(location) if location and "://" in location else "a path on the same host"
        raise WebhookRefused(f"answered {status}, a redirect to {where}; redirects are not followed: set "
                             "notifications.webhook_url to the final URL")
    if 400 <= status < 500:
        raise WebhookRefused(f"answered {status}; check the URL and the receiver's signature key")
    if status >= 500:
        raise OSError(f"answered {status}")
    return status


class _PinnedConnection:
    """An HTTP(S) connection to ``address`` for ``host``: Host header and TLS name check use the name."""

    def __init__(self, scheme: str, host: str, port: int, address: str, timeout_s: float):
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        kwargs: dict[str, Any] = {"context": ssl.create_default_context()} if scheme == "https" else {}
        self._conn = cls(host, port, timeout=timeout_s, **kwargs)
        tls = kwargs.get("context")

        def connect() -> None:  # replaces http.client's own connect, which would resolve the name again
            sock = socket.create_connection((address, port), timeout_s)
            self._conn.sock = tls.wrap_socket(sock, server_hostname=host) if tls is not None else sock

        self._conn.connect = connect  # type: ignore[method-assign]

    def request(self, *args: Any, **kwargs: Any) -> None:
        self._conn.request(*args, **kwargs)

    def getresponse(self) -> http.client.HTTPResponse:
        return self._conn.getresponse()

    def close(self) -> None:
        self._conn.close()


class WebhookNotifier:
    """POSTs each event as signed JSON from a background thread (a slow endpoint never stalls the controller)."""

    def __init__(self, cfg: Config, say: Callable[[str], None]):
        n = cfg.notifications
        self.url, self.timeout, self.name, self.say = n.webhook_url, n.timeout_s, cfg.name, say
        self.allowed_hosts, self.allow_private, self.secret_env = (list(n.webhook_allowed_hosts),
                                                                   n.webhook_allow_private, n.webhook_secret_env)
        self.target = url_origin(self.url) if self.url else None
        self._queue: queue.Queue[LogEntry] = queue.Queue(maxsize=1000)
        if self.url:
            if not os.environ.get(self.secret_env):
                say(f"webhook {self.target}: {self.secret_env} is not set, so payloads go unsigned; set it to a "
                    "random key shared with the receiver (see SECURITY.md)")
            threading.Thread(target=self._send_loop, name="raymlops-webhook", daemon=True).start()

    def send(self, entry: LogEntry) -> None:
        self.say(redact(f"[{entry.kind}] {entry.message}", names=[self.secret_env]))
        if self.url:
            try:
                self._queue.put_nowait(entry)
            except queue.Full:
                self.say(f"webhook queue full: event {entry.seq} not sent (it is in the event log)")

    def payload(self, entry: LogEntry) -> tuple[bytes, dict[str, str]]:
        """The request body (redacted JSON) and headers (content type, and the signature when a key is set)."""
        doc = {"text": f"[raymlops {self.name}] {entry.kind}: {entry.message}", "pipeline": self.name,
               "event": vars(entry)}
        body = json.dumps(redact_data(doc, names=[self.secret_env]), default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "raymlops-webhook"}
        key = os.environ.get(self.secret_env)
        if key:
            headers[SIGNATURE_HEADER] = sign_payload(body, key.encode())
        return body, headers

    def _send_loop(self) -> None:
        while True:
            entry = self._queue.get()
            body, headers = self.payload(entry)
            for attempt in range(_ATTEMPTS):
                try:
                    post_json(self.url, body, headers, timeout_s=self.timeout, allowed_hosts=self.allowed_hosts,
                              allow_private=self.allow_private)
                    break
                except WebhookRefused as err:
                    self.say(f"webhook {self.target} refused for event {entry.seq}: {redact(err)}")
                    break
                except OSError as err:
                    if attempt == _ATTEMPTS - 1:
                        self.say(f"webhook {self.target} failed for event {entry.seq}: {redact(err)}")
                    else:
                        time.sleep(0.5 * (attempt + 1))
