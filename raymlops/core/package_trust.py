"""What a model package may make this process do: the signature over its manifest and the code it may name.

Pure logic (no IO): the HMAC-SHA256 signature of a package's ``manifest.json`` (which records every file's sha256
and the package digest), the decision whether a package may be read given the key this process holds, and the
factory allow-list. ``raymlops.model.package`` does the reading and calls these.

Threat: whoever can write under ``storage_uri`` or edit the registry can replace a package. A package therefore
never chooses the code that runs (built-in models by name, user factories only when the *loading* side's config
allow-lists them), and, when a signing key is configured, a package is read only if its manifest carries a valid
HMAC made with that key, which lives outside storage and the registry (an environment variable or a key file).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from raymlops.errors import PackageError

__all__ = [
    "BUILTIN_MODELS",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MIN_KEY_BYTES",
    "SIGNATURE_FILE",
    "PackagePolicy",
    "check_factory",
    "check_key",
    "key_id",
    "sign_manifest",
    "signature_required",
    "verify_manifest",
]

KEY_ENV = "RAYMLOPS_SIGNING_KEY"
KEY_FILE_ENV = "RAYMLOPS_SIGNING_KEY_FILE"
SIGNATURE_FILE = "manifest.sig"
MIN_KEY_BYTES = 32
ALGORITHM = "hmac-sha256"
_SIG_FORMAT = "raymlops-package-signature"
# Domain separation: a key also used for something else (e.g. webhook signing) cannot be made to sign a manifest.
_CONTEXT = b"raymlops-model-package-manifest\n"
BUILTIN_MODELS = ("mlp", "xgboost")
_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_HOW_TO_KEY = (f"set {KEY_ENV} (at least {MIN_KEY_BYTES} bytes, e.g. `python -c 'import secrets; "
               f"print(secrets.token_hex(32))'`) or {KEY_FILE_ENV} (a file holding it) in the environment of every "
               "process that saves or loads packages, outside storage_uri and the registry")


@dataclass(frozen=True)
class PackagePolicy:
    """What the loading side accepts from a package (``model.allowed_factories``, ``model.require_signature``).

    ``require_signature``: ``None`` requires a valid signature exactly when a signing key is configured; ``True``
    refuses every load without a key and every unsigned package; ``False`` lets an unsigned package load while a
    key is set (migration), but a signature that is present is still verified.
    """

    allowed_factories: tuple[str, ...] = ()
    require_signature: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (it travels in Serve's ``user_config`` and to the fresh-process check)."""
        return {"allowed_factories": list(self.allowed_factories), "require_signature": self.require_signature}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> PackagePolicy:
        """The policy ``to_dict`` wrote; ``None`` or ``{}`` gives the default (built-in models only)."""
        doc = doc or {}
        return cls(tuple(str(f) for f in doc.get("allowed_factories") or ()), doc.get("require_signature"))


def check_key(key: bytes, source: str) -> bytes:
    """``key`` if it is long enough to be a secret; ``PackageError`` naming ``source`` otherwise."""
    if len(key) < MIN_KEY_BYTES:
        raise PackageError(f"the package signing key from {source} has {len(key)} bytes, fewer than {MIN_KEY_BYTES}; "
                           f"{_HOW_TO_KEY}")
    return key


def key_id(key: bytes) -> str:
    """A short public name of a key (so an error can say "signed with another key" without showing either)."""
    return hashlib.sha256(b"raymlops-key-id\n" + key).hexdigest()[:16]


def sign_manifest(key: bytes, manifest: bytes) -> bytes:
    """The ``manifest.sig`` document for ``manifest`` (the exact bytes of ``manifest.json``)."""
    mac = hmac.new(key, _CONTEXT + manifest, hashlib.sha256).hexdigest()
    doc = {"format": _SIG_FORMAT, "algorithm": ALGORITHM, "key_id": key_id(key), "mac": mac}
    return json.dumps(doc, sort_keys=True).encode("utf-8")


def signature_required(policy: PackagePolicy, has_key: bool) -> bool:
    """Whether a package without ``manifest.sig`` must be refused."""
    return has_key if policy.require_signature is None else policy.require_signature


def verify_manifest(key: bytes | None, manifest: bytes, signature: bytes | None, policy: PackagePolicy,
                    where: str) -> bool:
    """Check ``manifest.sig`` against ``manifest.json`` before either is parsed; True when it was verified.

    Refuses (``PackageError``): a signature required by ``policy`` but absent, a signed package and no key to
    check it with (a replica without the key must not quietly serve what it cannot verify), a key required and
    none configured, and a signature that does not match (tampered manifest, or another key).
    """
    if key is None:
        if policy.require_signature:
            raise PackageError(f"model.require_signature is true but no signing key is configured, so {where} "
                               f"cannot be verified; {_HOW_TO_KEY}")
        if signature is not None:
            raise PackageError(f"{where} is signed ({SIGNATURE_FILE}) but this process has no signing key to verify "
                               f"it with, and a signed package is never loaded unverified; {_HOW_TO_KEY}")
        return False
    if signature is None:
        if signature_required(policy, True):
            raise PackageError(
                f"{where} is not signed (no {SIGNATURE_FILE}) but a signing key is configured ({KEY_ENV} or "
                f"{KEY_FILE_ENV}), so only signed packages load: it was saved without the key or its signature was "
                "removed; re-create it with the key set, or set model.require_signature: false while migrating")
        return False
    try:
        doc = json.loads(signature)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or doc.get("format") != _SIG_FORMAT or doc.get("algorithm") != ALGORITHM \
            or not isinstance(doc.get("mac"), str):
        raise PackageError(f"{SIGNATURE_FILE} in {where} is not a raymlops {ALGORITHM} signature; the package was "
                           "tampered with or is corrupt: do not use it, re-create it")
    expected = json.loads(sign_manifest(key, manifest))["mac"]
    if not hmac.compare_digest(expected, doc["mac"]):
        other = doc.get("key_id") != key_id(key)
        why = (f"it was signed with another key (id {doc.get('key_id')}, this process has {key_id(key)}): set the "
               f"{KEY_ENV} the package was saved with" if other else
               "the manifest was changed after signing (tampered with): do not use this package, re-create it")
        raise PackageError(f"the signature of {where} does not verify: {why}")
    return True


def check_factory(kind: Any, allowed: Iterable[str], where: str) -> None:
    """Refuse a model named by a package unless it is built in or on the loading config's allow-list.

    Runs before anything is imported: a package's ``model_spec.json`` must never decide which code runs.
    """
    if kind in BUILTIN_MODELS:
        return
    allowed = list(allowed)
    if isinstance(kind, str) and kind in allowed:
        return
    shape = "" if isinstance(kind, str) and _FACTORY.match(kind) else " (not even a 'module:callable' path)"
    raise PackageError(
        f"{where}: model_spec.json names model {kind!r}{shape}, which is neither built in {list(BUILTIN_MODELS)} "
        f"nor in model.allowed_factories {allowed}; nothing was imported. A package never chooses the code that "
        "runs: if you trust this factory, add it to model.allowed_factories in the config that loads the package"
    )
