"""Small storage layer over pyarrow filesystems: local paths and any URI pyarrow understands (s3://, gs://, ...).

Writes are atomic: on a filesystem, data goes to a temporary sibling first and is renamed into place, so a crash
never leaves a file that looks complete. On an object store (S3, GCS) a rename would be a copy and a delete, and is
not needed: one PUT publishes the object whole or not at all, so the bytes go straight to their key (no temporary
object is ever listed beside them, and nothing is copied).

Object-store filesystems are cached per process, bucket, URI options and the cloud SDK's environment variables
(``AWS_*``, ``GOOGLE_*``): building one costs tens of milliseconds (credential chain, endpoint, region), which every
small read or write would otherwise pay. The endpoint and credentials come from pyarrow's usual sources, e.g.
``AWS_ENDPOINT_URL`` for an S3-compatible server, or ``?endpoint_override=...`` in the URI.

On a local (or mounted POSIX) filesystem writes are also private and durable, whatever the process umask: files are
created 0600 and directories this module creates 0700 (storage holds prediction logs with request features, the
controller's state and model packages: nobody but the owner needs to read them), and a write is fsynced, then
renamed, then its directory fsynced, so a power loss leaves either the old or the new file, never an empty one.
``keep_previous`` keeps the replaced version beside the file as ``NAME.prev`` (a hard link: no copy).
"""

from __future__ import annotations

import os
import shutil
import stat
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.fs as pafs

from raymlops.errors import DataError

OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs")  # bucket/key stores: no rename, no directories, one PUT per object
_ENV_PREFIXES = ("AWS_", "GOOGLE_", "GCS_")  # what configures their SDKs (endpoint, region, credentials)
_filesystems: dict[tuple, pafs.FileSystem] = {}
_filesystems_lock = threading.Lock()


def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with varied wording
        raise DataError(f"cannot open {uri}: {err}; check the scheme (file://, s3://, gs://) and credentials") from err


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a URI or a local path (relative paths are made absolute).

    Object stores: the path is ``bucket/key`` (percent-decoded, no trailing slash), as pyarrow gives it, and the
    filesystem is shared by every URI of the bucket with the same options (see the module docstring).
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
    scheme, rest = uri.split("://", 1)
    if scheme.lower() not in OBJECT_STORE_SCHEMES:
        return _from_uri(uri)
    location, _, query = rest.partition("?")
    path = urllib.parse.unquote(location).rstrip("/")
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)))
    # the pid: an SDK client does not survive a fork; the env: a changed endpoint or key takes effect at once
    key = (os.getpid(), scheme.lower(), path.split("/", 1)[0], query, env)
    fs = _filesystems.get(key)
    if fs is None:
        fs, path = _from_uri(uri)
        with _filesystems_lock:
            if len(_filesystems) > 64:  # many buckets or changing credentials: start over rather than grow
                _filesystems.clear()
            _filesystems[key] = fs
    return fs, path


def is_object_store(fs: pafs.FileSystem) -> bool:
    """True for S3 and GCS filesystems: objects are PUT whole, and there is no rename or directory."""
    return fs.type_name in ("s3", "gcs")


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


FILE_MODE = 0o600  # files this module writes on a local filesystem
DIR_MODE = 0o700  # directories it creates there


def makedirs(uri: str) -> None:
    """Create a directory and its missing parents (local: each created one 0700, whatever the umask)."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        private_dirs(path)
    else:
        fs.create_dir(path, recursive=True)


def private_dirs(path: str) -> None:
    """Create the local directory ``path`` and its missing parents, each created one with mode 0700.

    ``os.makedirs(mode=...)`` is filtered by the umask and ignores the mode for parents; here every directory made
    is chmodded explicitly. Directories that already exist are left as they are (they may be shared on purpose).
    """
    missing = []
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
            continue  # made by a concurrent writer: theirs to set
        os.chmod(d, DIR_MODE)


def fsync_dir(path: str) -> None:
    """Flush a local directory's entries (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and platforms) refuse fsync on a directory: the rename is still atomic
    finally:
        os.close(fd)


def previous_uri(uri: str) -> str:
    """Where ``atomic_write_bytes(..., keep_previous=True)`` keeps the version it replaced."""
    return uri + ".prev"


def _write_local(path: str, data: bytes, keep_previous: bool) -> None:
    parent = os.path.dirname(path)
    private_dirs(parent)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # the open mode is filtered by the umask; set it exactly
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)  # the rename must not publish a file whose bytes are still in flight
        finally:
            os.close(fd)
        if keep_previous and os.path.isfile(path):
            link = f"{path}.prev.tmp-{uuid.uuid4().hex[:8]}"
            os.link(path, link)  # the current version under a second name, then swapped in atomically
            os.replace(link, previous_uri(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(parent)


def atomic_write_bytes(uri: str, data: bytes, *, keep_previous: bool = False) -> None:
    """Write `data` to `uri` via a temporary sibling and a rename (local: 0600, fsynced), or on an object store in one
    PUT (see the module docstring).

    ``keep_previous``: the version being replaced stays readable at ``previous_uri(uri)``.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        _write_local(path, data, keep_previous)
        return
    if is_object_store(fs):
        _put_object(fs, path, data, keep_previous)
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        if keep_previous and fs.get_file_info(path).type == pafs.FileType.File:
            fs.copy_file(path, previous_uri(path))
        fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except Exception:
            pass
        raise


def _put_object(fs: pafs.FileSystem, path: str, data: bytes, keep_previous: bool) -> None:
    """One PUT (or one multipart upload, completed at close): the object appears whole or not at all."""
    view = memoryview(data)  # a non-buffer fails here, before a stream whose close would publish an empty object
    if keep_previous and fs.get_file_info(path).type == pafs.FileType.File:
        fs.copy_file(path, previous_uri(path))  # a server-side copy of the current version, before it is replaced
    with fs.open_output_stream(path) as out:
        out.write(view)


def atomic_write_text(uri: str, text: str, *, keep_previous: bool = False) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(uri, text.encode("utf-8"), keep_previous=keep_previous)


def mode_of(uri: str) -> int | None:
    """Permission bits of a local file or directory (None on object stores, which have none)."""
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        return None
    return stat.S_IMODE(os.stat(path).st_mode)


def delete_file(uri: str) -> bool:
    """Delete one file; False when it was already gone."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        return False
    return True


def delete_dir(uri: str) -> bool:
    """Delete a directory and everything under it; False when it was already gone."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    fs.delete_dir(path)
    return True


def list_dir(uri: str) -> list[pafs.FileInfo]:
    """The direct entries of a directory (empty when it does not exist), sorted by name."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(infos, key=lambda i: i.base_name)


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
    private_dirs(parent)
    tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(tmp, DIR_MODE)
        os.chmod(tmp, DIR_MODE)  # what the block writes inside is private whatever modes its writer uses
        yield tmp
        if os.path.exists(final):
            old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
