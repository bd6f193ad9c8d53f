"""Small storage layer over pyarrow filesystems: local paths and any URI pyarrow understands (s3://, gs://, ...).

Writes are atomic: data goes to a temporary sibling first and is renamed into place, so a crash never leaves a file
that looks complete. (On object stores a rename is a copy; the object still appears only once it is whole.)
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from raymlops.errors import DataError


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a URI or a local path (relative paths are made absolute)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with varied wording
        raise DataError(f"cannot open {uri}: {err}; check the scheme (file://, s3://, gs://) and credentials") from err


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI or a local path."""
    base = uri.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def absolute(uri: str) -> str:
    """A local relative path made absolute (Ray workers do not share the caller's working directory); URIs as is."""
    return uri if "://" in uri else str(Path(uri).expanduser().resolve())


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def atomic_write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` via a temporary sibling and a rename."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        if isinstance(fs, pafs.LocalFileSystem):
            os.replace(tmp, path)
        else:
            fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except Exception:
            pass
        raise


def atomic_write_text(uri: str, text: str) -> None:
    atomic_write_bytes(uri, text.encode("utf-8"))


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{uri} does not exist") from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def list_files(uri: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Files under a directory URI (recursive, sorted), skipping hidden and temporary files."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    out = []
    for info in fs.get_file_info(selector):
        name = info.base_name
        if info.type != pafs.FileType.File or name.startswith((".", "_")) or ".tmp-" in name:
            continue
        if suffixes and not name.endswith(suffixes):
            continue
        out.append(info.path)
    prefix = "" if is_local(uri) and "://" not in uri else uri.split("://", 1)[0] + "://"
    return sorted(prefix + p if prefix and not p.startswith(prefix) else p for p in out)


@contextmanager
def staged_dir(uri: str, marker: str = "_SUCCESS", in_place: bool | None = None) -> Iterator[str]:
    """A directory to build an output in, published at `uri` only when the block completes.

    Local: a hidden sibling, renamed onto `uri` on success (the old output swapped out), removed on failure.
    Object stores have no directory rename: the old output is cleared, its `marker` first so it stops looking
    complete, and the block writes in place; the caller writes the new `marker` last. `in_place` forces either way.
    """
    fs, final = resolve(uri)
    if in_place if in_place is not None else not is_local(uri):
        if exists(join(uri, marker)):
            fs.delete_file(f"{final}/{marker}")
        fs.delete_dir_contents(final, missing_dir_ok=True)
        yield uri
        return
    parent, name = os.path.split(final)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if os.path.exists(final):
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
