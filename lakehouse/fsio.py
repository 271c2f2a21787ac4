"""Crash-safe file writes, on local disk and through fsspec.

Every write follows the same steps: write ``<name>.tmp-<uuid>``, flush and fsync it, rename it
over the final name, then fsync the folder so the rename itself is durable. A reader therefore
sees a file absent or complete, never torn. Light: standard library and fsspec only.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lakehouse.layout import TMP_MARKER

HASH_NAME = "sha256"
_CHUNK = 1 << 20


def temp_name(name: str) -> str:
    """The temp name a file is written under before its rename."""
    return f"{name}{TMP_MARKER}{uuid.uuid4().hex}"


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


class HashingWriter:
    """A write-only file wrapper that hashes and counts the bytes passing through."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.digest = hashlib.new(HASH_NAME)
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        self.raw.write(view)
        return view.nbytes

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:
        # The caller owns the raw file; pyarrow closing us must not close it before fsync.
        self.closed = True

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def atomic_write(path: str | Path, produce: Callable[[HashingWriter], object], *,
                 fs: Any = None) -> tuple[int, str]:
    """Write a file atomically; return its size and sha256.

    ``produce`` receives a writer and writes the whole content to it. On local disk (``fs`` is
    None or a ``LocalFileSystem``) the file is fsynced, renamed and its folder fsynced. On
    another fsspec file system (an object store) the content is uploaded under its final name
    in one PUT, which is atomic there. The temp file is removed if anything fails.
    """
    path_str = str(path)
    if fs is None or is_local(fs):
        return _atomic_write_local(Path(path_str), produce)
    with fs.open(path_str, "wb") as raw:  # object stores: one PUT under the final name
        writer = HashingWriter(raw)
        produce(writer)
    return writer.size, writer.hexdigest()


def _atomic_write_local(path: Path, produce: Callable[[HashingWriter], object]) -> tuple[int, str]:
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "xb") as raw:
            writer = HashingWriter(raw)
            produce(writer)
            raw.flush()
            os.fsync(raw.fileno())  # data is on disk before the name points at it
        os.replace(tmp, path)  # the commit point of this file
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # make the rename durable
    return writer.size, writer.hexdigest()


def write_temp(path: Path, produce: Callable[[HashingWriter], object]) -> tuple[Path, int, str]:
    """The first half of a local atomic write: the content into ``<name>.tmp-<uuid>``.

    Returns the temp path, size and sha256. Nothing is durable yet and the final name does
    not exist: :func:`finish_temp` fsyncs and renames (possibly on another thread, so the
    next file is encoded while this one reaches the disk).
    """
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "xb") as raw:
            writer = HashingWriter(raw)
            produce(writer)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp, writer.size, writer.hexdigest()


def write_temp_buffer(path: Path, data: Any, *, sync: bool = False) -> Path:
    """:func:`write_temp` for content already encoded in memory (bytes or a buffer): one
    write, no hashing (the caller hashes the same bytes, e.g. while the file is fsynced).
    With ``sync`` the temp file is fsynced too, ready for its rename."""
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "xb") as raw:
            raw.write(memoryview(data))
            if sync:
                raw.flush()
                os.fsync(raw.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def finish_temp(tmp: Path, path: Path) -> None:
    """The second half: fsync the temp file, then rename it over ``path``.

    The caller fsyncs the folder (once for several files) before anything depends on the
    rename, e.g. before a run's manifest is written.
    """
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # flushes the file's dirty pages whichever descriptor wrote them
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fs: Any = None) -> tuple[int, str]:
    """Write ``data`` to ``path`` atomically; return its size and sha256."""
    return atomic_write(path, lambda w: w.write(data), fs=fs)


def file_digest(path: str | Path) -> tuple[int, str]:
    """Return the size and sha256 of a local file, read in chunks."""
    digest = hashlib.new(HASH_NAME)
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def bytes_digest(data: bytes | memoryview) -> str:
    """Return the sha256 of bytes in memory."""
    return hashlib.new(HASH_NAME, data).hexdigest()


def is_local(fs: Any) -> bool:
    """True for fsspec's local file system."""
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def rename_durably(src: Path, dst: Path, *, sync: bool = True) -> None:
    """Rename a file or folder and fsync both parent folders (one state change).

    With ``sync=False`` the caller fsyncs the parents itself, once for many renames.
    """
    try:
        os.rename(src, dst)
    except FileNotFoundError:  # the destination's folder is new (or src is gone: raises again)
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dst)
    if sync:
        fsync_dir(dst.parent)
        if src.parent != dst.parent:
            fsync_dir(src.parent)
