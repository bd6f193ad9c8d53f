"""Webhook policy, pure: which targets a notification may reach, and the payload signature receivers verify.

Signature: ``X-Raymlops-Signature: sha256=<hex>``, the HMAC-SHA256 of the exact request body under the shared key
(the value of the environment variable ``notifications.webhook_secret_env`` names). A receiver recomputes it over
the raw body bytes and compares in constant time (``verify_signature`` does both), then rejects an event whose
``event.seq`` it has already seen (the body is signed whole, so the sequence number cannot be altered)::

    import hashlib, hmac
    expected = "sha256=" + hmac.new(key, raw_body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(expected, request.headers["X-Raymlops-Signature"])
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable

__all__ = ["SIGNATURE_HEADER", "blocked_address", "host_allowed", "sign_payload", "verify_signature"]

SIGNATURE_HEADER = "X-Raymlops-Signature"


def sign_payload(body: bytes, key: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str | None, key: bytes) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``key`` (constant-time comparison)."""
    return bool(header) and hmac.compare_digest(sign_payload(body, key), str(header))


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    """Whether ``host`` matches one of ``patterns``: an exact name or address, or ``*.domain`` for its subdomains.

    Names compare case-insensitively and without a trailing dot; ``*.example.com`` does not match
    ``example.com`` itself (list both to allow both).
    """
    name = host.lower().rstrip(".")
    for pattern in patterns:
        p = pattern.lower().rstrip(".")
        if p.startswith("*."):
            if name.endswith(p[1:]) and len(name) > len(p) - 1:
                return True
        elif name == p:
            return True
    return False


def blocked_address(address: str) -> str | None:
    """Why an IP address is not a public target (``loopback``, ``private``, ``link-local`` ...), None if it is.

    An IPv4 address mapped or embedded in IPv6 is judged as the IPv4 address it carries (``::ffff:127.0.0.1``
    is loopback); cloud metadata endpoints (169.254.169.254, fd00:ec2::254) are link-local or private.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None:
            ip = inner
    for reason, hit in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                        ("unspecified", ip.is_unspecified), ("multicast", ip.is_multicast),
                        ("private", ip.is_private), ("reserved", ip.is_reserved),
                        ("not globally routable", not ip.is_global)):
        if hit:
            return reason
    return None
