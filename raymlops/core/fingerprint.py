"""Fingerprints of pipeline steps and digests of artifacts (pure).

A step's fingerprint is a sha256 over everything that decides its outputs: the component name, its declared
version, a hash of its function's source, its parameters (canonical JSON) and the digests of its inputs. Equal
fingerprints mean the step may be skipped and its earlier outputs reused.

Artifact digests come in two modes:

* ``content`` (default): sha256 over the sorted relative paths and the bytes of every file. Exact; reads all data.
* ``stat``: sha256 over the sorted relative paths, sizes and modification times. Cheap for large datasets (no
  data is read); it changes whenever a file is rewritten, even with equal bytes (a harmless cache miss), and
  misses an in-place edit that keeps both size and mtime (rare; use ``content`` where that matters).
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, Literal

import pyarrow.fs as pafs

from raymlops.errors import DataError, PipelineError

DigestMode = Literal["content", "stat"]
_CHUNK = 1 << 20


def canonical_json(value: Any, what: str = "value") -> str:
    """JSON with sorted keys and no whitespace; raises PipelineError naming ``what`` if it is not JSON-safe."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise PipelineError(
            f"{what} is not JSON-safe ({err}); use str, int, float (finite), bool, None, lists and dicts"
        ) from None


def digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of a byte string."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_value(value: Any, what: str = "value") -> str:
    """Digest of a JSON-safe value (a step output that is not an artifact)."""
    return "json:" + hashlib.sha256(canonical_json(value, what).encode()).hexdigest()


def source_hash(fn: Callable[..., Any]) -> str:
    """Hash of a function's code: its source without decorators, docstring, comments or formatting.

    Editing the body changes the hash; reformatting, comments and decorator arguments (resources) do not.
    Helpers the function calls are not included: bump the component ``version`` when they change.
    """
    fn = inspect.unwrap(fn)
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        # No source (REPL, compiled): the bytecode and constants still change when the code does.
        code = fn.__code__
        return hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()
    try:
        tree = ast.parse(source)
    except SyntaxError:  # e.g. a lambda cut out of a larger expression
        return hashlib.sha256(source.encode()).hexdigest()
    node = tree.body[0] if tree.body else None
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        node.decorator_list = []
        body = node.body
        if (
            body
            and isinstance(body[0], ast.Expr)
            and isinstance(getattr(body[0], "value", None), ast.Constant)
        ):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        source = ast.unparse(node)
    return hashlib.sha256(source.encode()).hexdigest()


def fingerprint(
    *,
    component: str,
    version: str,
    code_hash: str,
    params: Mapping[str, Any],
    input_digests: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
) -> str:
    """sha256 (hex) of a step's identity; ``extra`` holds anything else that decides outputs (config, env)."""
    doc = {
        "component": component,
        "version": str(version),
        "code": code_hash,
        "params": dict(params),
        "inputs": dict(input_digests),
        "extra": dict(extra or {}),
    }
    return hashlib.sha256(canonical_json(doc, f"parameters of component {component!r}").encode()).hexdigest()


def digest_tree(fs: pafs.FileSystem, path: str, mode: DigestMode = "content") -> str:
    """Digest of a file or a directory tree on a pyarrow filesystem (see the module docstring for modes).

    Hidden files and temporary files (``.tmp-`` in the name) are skipped. Raises DataError if nothing is there.
    """
    if mode not in ("content", "stat"):
        raise PipelineError(f"digest mode {mode!r} is unknown; use 'content' or 'stat'")
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{path} does not exist; cannot compute its digest")
    if info.type == pafs.FileType.File:
        entries = [("", info)]
    else:
        base = info.path.rstrip("/") + "/"
        selector = pafs.FileSelector(info.path, recursive=True)
        entries = sorted(
            (f.path[len(base) :] if f.path.startswith(base) else f.path, f)
            for f in fs.get_file_info(selector)
            if f.type == pafs.FileType.File and not _ignored(f.path[len(base) :])
        )
    h = hashlib.sha256(mode.encode())
    for rel, f in entries:
        h.update(rel.encode() + b"\0")
        if mode == "stat":
            h.update(f"{f.size}:{f.mtime_ns}\0".encode())
        else:
            h.update(_file_sha256(fs, f.path) + b"\0")
    return ("sha256:" if mode == "content" else "stat:") + h.hexdigest()


def _ignored(rel: str) -> bool:
    return any(part.startswith(".") or ".tmp-" in part for part in rel.split("/"))


def _file_sha256(fs: pafs.FileSystem, path: str) -> bytes:
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.digest()
