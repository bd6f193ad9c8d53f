"""Serving authentication, the effectful half: which tokens a deployment accepts, and the request-id secret.

``auth_spec(cfg)`` runs on the deploying machine and goes into the deployment's ``user_config``: whether auth is on
(``serving.auth.enabled``; ``auto`` = on whenever ``serving.host`` is not loopback), the token hashes of
``serving.auth.tokens`` plus those of the secret tokens in ``RAYMLOPS_SERVING_TOKENS`` (text) or
``RAYMLOPS_SERVING_TOKENS_FILE`` (a path), one ``NAME:SCOPE[,SCOPE...]:TOKEN`` per line, hashed here so that
no clear token reaches Serve, its status or its logs. Auth on with no token at all is refused (``ConfigError``).

``serving_secret(storage_uri, model)`` runs in each replica: the key that signs request ids. It is read from the
file named by ``RAYMLOPS_SERVING_SECRET_FILE`` in the replica's environment (set it on every node, e.g. before
``ray start``), else from ``{storage_uri}/serving/{model}/request-id.key``, which the first replica creates (32
random bytes, file mode 0600, created once by compare-and-swap so that concurrent replicas agree). Every replica
of the app reads the same key, so any replica verifies an id another one issued. The key never travels in
``user_config``, status pages or logs; deleting the file (and redeploying) rotates it, which voids the ids issued
before.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from raymlops import storage
from raymlops.core.auth import (
    CLIENT_TOKEN_ENV,
    CLIENT_TOKEN_FILE_ENV,
    SECRET_FILE_ENV,
    TOKENS_ENV,
    TOKENS_FILE_ENV,
    TokenSet,
    is_loopback,
    parse_tokens,
)
from raymlops.errors import ConcurrentUpdateError, ConfigError, ServingError
from raymlops.storage import cas

__all__ = ["CLIENT_TOKEN_ENV", "CLIENT_TOKEN_FILE_ENV", "SECRET_FILE_ENV", "TOKENS_ENV", "TOKENS_FILE_ENV",
           "auth_enabled", "auth_spec", "client_headers", "serving_secret"]

_MAX_SECRET_TEXT = 1 << 20


def auth_enabled(serving: Any) -> bool:
    """Whether ``serving.auth`` is on for this ``ServingConfig`` (``auto``: when the host is not loopback)."""
    enabled = serving.auth.enabled
    return not is_loopback(serving.host) if enabled == "auto" else bool(enabled)


def _env_tokens() -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    text = os.environ.get(TOKENS_ENV)
    if text:
        entries += _parse(text, f"${TOKENS_ENV}")
    path = os.environ.get(TOKENS_FILE_ENV)
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(_MAX_SECRET_TEXT)
        except OSError as err:
            raise ConfigError(f"{TOKENS_FILE_ENV}={path} cannot be read ({err.strerror}); point it at the serving "
                              "tokens file (NAME:SCOPES:TOKEN lines) or unset it") from None
        entries += _parse(text, path)
    return entries


def _parse(text: str, source: str) -> list[dict[str, object]]:
    try:
        return parse_tokens(text, source)
    except ValueError as err:
        raise ConfigError(f"serving.auth tokens from {source}: {err}") from None


def client_headers() -> dict[str, str]:
    """``Authorization: Bearer`` with the token in ``RAYMLOPS_SERVING_TOKEN`` (or the file named by
    ``RAYMLOPS_SERVING_TOKEN_FILE``) for raymlops's own HTTP clients; no header when neither is set (auth off)."""
    token = os.environ.get(CLIENT_TOKEN_ENV, "").strip()
    path = os.environ.get(CLIENT_TOKEN_FILE_ENV)
    if not token and path:
        try:
            with open(path, encoding="utf-8") as f:
                token = f.read(_MAX_SECRET_TEXT).strip()
        except OSError as err:
            raise ConfigError(f"{CLIENT_TOKEN_FILE_ENV}={path} cannot be read ({err.strerror}); point it at a file "
                              "holding one serving token or unset it") from None
    return {"Authorization": f"Bearer {token}"} if token else {}


def auth_spec(cfg: Any) -> dict[str, Any]:
    """The ``auth`` part of the serving ``user_config`` (token hashes only); raises ``ConfigError`` when auth is on
    without any token, or a token source is unusable."""
    s = cfg.serving
    enabled = auth_enabled(s)
    tokens = [t.model_dump() for t in s.auth.tokens]
    if enabled:
        tokens += _env_tokens()
        try:
            TokenSet(tokens)  # the same checks the replicas make, before anything is deployed
        except ValueError as err:
            raise ConfigError(f"serving.auth: {err}") from None
        if not tokens:
            why = (f"serving.host is {s.host!r}, not loopback, so the API is reachable from the network"
                   if s.auth.enabled == "auto" else "serving.auth.enabled is true")
            raise ConfigError(
                f"serving.auth: {why} and no token is configured; add token hashes to serving.auth.tokens "
                f"([{{name, sha256, scopes}}]) or export {TOKENS_FILE_ENV}=<file of NAME:SCOPES:TOKEN lines> "
                "(see SECURITY.md, 'Serving authentication'), or bind serving.host to 127.0.0.1")
    return {"enabled": enabled, "tokens": tokens if enabled else [],
            "feedback_rate_per_s": s.auth.feedback_rate_per_s, "feedback_burst": s.auth.feedback_burst}


def serving_secret(storage_uri: str, model: str) -> bytes:
    """The request-id signing key of ``model``'s app (see the module docstring)."""
    path = os.environ.get(SECRET_FILE_ENV)
    if path:
        try:
            with open(path, "rb") as f:
                key = f.read(_MAX_SECRET_TEXT).strip()
        except OSError as err:
            raise ServingError(f"{SECRET_FILE_ENV}={path} cannot be read on this node ({err.strerror}); put the "
                               "serving secret there on every node, or unset it to keep one under storage") from None
        if len(key) < 16:
            raise ServingError(f"the serving secret in {SECRET_FILE_ENV}={path} holds {len(key)} bytes; write at least "
                               "32 random bytes (e.g. `openssl rand -hex 32`)")
        return key
    uri = storage.join(storage_uri, "serving", model, "request-id.key")
    for _ in range(3):
        found = cas.read(uri)
        if found.doc is not None:
            return bytes.fromhex(found.doc["key"])
        try:
            cas.write(uri, {"key": secrets.token_hex(32)}, found.generation)
        except ConcurrentUpdateError:
            continue  # another replica created it first: read theirs
    raise ServingError(f"could not create or read the serving secret at {uri}; check that storage is writable")
