"""One redaction helper for every line that leaves the process: error messages, events, webhook payloads, logs.

What it hides:

* the password of a URL's userinfo (``postgresql://user:PASSWORD@host/db``, ``redis://:PASSWORD@host:6379/0``):
  the user name stays, the password becomes ``***``;
* the value of secret-looking parameters (``token=``, ``key=``, ``sig=``, ``password=``, ``secret=``,
  ``X-Amz-Signature=`` ...), in a query string or a ``key=value`` DSN;
* the values of known secret environment variables (names with PASSWORD, SECRET, TOKEN, CREDENTIAL, API_KEY,
  ACCESS_KEY, PRIVATE_KEY or WEBHOOK in them, plus any the caller names), wherever they appear verbatim.

It is applied at the sinks (the CLI's printer, the controller's event log, the webhook payload, the demo's event
printer), so a message built anywhere is covered without every raiser having to remember. Redaction is
idempotent and never raises. Pure: the environment is a parameter (``os.environ`` by default).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["MASK", "redact", "redact_data", "redact_url", "secret_values", "url_origin"]

MASK = "***"

# scheme://user:password@ -> scheme://user:***@ (the user part may be empty: redis://:password@host)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<secret>[^@/?#\s]+)(?=@)")
# name=value where the name says secret, after ?, &, ; or a space (query strings, libpq DSNs, form bodies); not
# after "/", so a hive partition directory (s3://bucket/key=1/) is left alone; the name is kept
_PARAM = re.compile(
    r"(?i)(?P<head>(?:(?<=[?&;\s])|^)(?:access_token|refresh_token|id_token|token|api[_-]?key|apikey|key|sig|"
    r"signature|password|passwd|pwd|secret|client_secret|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature)=)(?P<secret>[^\s&#;,'\"]+)"
)
_SECRET_NAME = re.compile(r"(?i)PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY|WEBHOOK")
_MIN_SECRET_LEN = 6  # shorter env values ("1", "true", a port) would mask ordinary words and numbers


def secret_values(env: Mapping[str, str] | None = None, names: Iterable[str] = ()) -> list[str]:
    """Values of secret-looking environment variables and of ``names``, longest first (so none is half-masked)."""
    env = os.environ if env is None else env
    wanted = set(names)
    found = {v for k, v in env.items() if (k in wanted or _SECRET_NAME.search(k)) and len(v) >= _MIN_SECRET_LEN}
    return sorted(found, key=len, reverse=True)


def redact(text: Any, env: Mapping[str, str] | None = None, names: Iterable[str] = ()) -> str:
    """``text`` (anything, as ``str``) with URL passwords, secret parameters and secret env values masked."""
    out = str(text)
    for value in secret_values(env, names):
        if value in out:
            out = out.replace(value, MASK)
    out = _USERINFO.sub(lambda m: m.group("head") + MASK, out)
    return _PARAM.sub(lambda m: m.group("head") + MASK, out)


def redact_data(value: Any, env: Mapping[str, str] | None = None, names: Iterable[str] = ()) -> Any:
    """``redact`` applied to every string in a JSON-like structure (dicts, lists, tuples); keys are kept."""
    if isinstance(value, str):
        return redact(value, env, names)
    if isinstance(value, Mapping):
        return {k: redact_data(v, env, names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v, env, names) for v in value)
    return value


def redact_url(url: str) -> str:
    """A URL with its userinfo password and secret parameters masked (user, host, path and the rest kept)."""
    return redact(url, env={})


def url_origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what may be shown of a URL whose path itself is a secret (webhooks)."""
    m = re.match(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?:[^@/?#]*@)?(?P<host>[^/?#]*)", url)
    return f"{m.group('scheme')}://{m.group('host')}" if m else MASK
