"""Crash-safe file writes, and the one safe way to read a file someone else wrote.

Every write follows the same steps: write ``<name>.tmp-<uuid>``, flush and fsync it, rename it
over the final name, then fsync the folder so the rename itself is durable. A reader therefore
sees a file absent or complete, never torn.

Every file Lake reads from ``staging/``, ``quarantine/`` or ``archive/`` is read with
:func:`read_regular` (or opened with :func:`open_regular`): anyone who can write into staging
can leave a FIFO there (a plain ``open`` blocks forever, holding the warehouse lock, and
SIGTERM cannot interrupt it), a symlink to ``/dev/zero`` (a plain read never ends and takes
all memory) or a symlink to a file outside the lake (its rows would load). Light: standard
library and fsspec only.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lakehouse.errors import FileTooLargeError, NotRegularFileError
from lakehouse.layout import TMP_MARKER

HASH_NAME = "sha256"
_CHUNK = 1 << 20
# The most a marker (``_manifest.json``, ``_abandoned.json``, ``_reason.json``) may hold. A
# manifest entry is ~150 bytes, so this is ~50,000 files in one run; producers refuse to
# commit a bigger manifest (``staging/writer.py``), so only a hand-made one is rejected.
MARKER_MAX_BYTES = 8 << 20
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | Path) -> io.FileIO:
    """Open a regular file for reading without following a link and without blocking.

    ``O_NOFOLLOW`` makes a symlink fail the open, ``O_NONBLOCK`` makes a FIFO open at once
    instead of waiting for a writer, and ``fstat`` on the open descriptor then checks what
    was opened: no window between the check and the read. Only the last component is
    checked; callers list run folders without following links.

    Raises:
        FileNotFoundError: there is no such file.
        NotRegularFileError: it is a symlink, FIFO, device, socket or folder.
        OSError: it cannot be opened.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFileError(path, "a symlink") from None
        if exc.errno == errno.ENXIO:  # a socket (or a device with nothing behind it)
            raise NotRegularFileError(path, "a socket or device") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, _kind(mode))
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (see :func:`open_regular`).

    The size is checked before reading (``fstat``) and again while reading (a file that
    grows meanwhile stops at ``max_bytes + 1``), so memory never exceeds the cap.

    Raises:
        FileNotFoundError: there is no such file.
        NotRegularFileError: it is a symlink, FIFO, device, socket or folder.
        FileTooLargeError: it holds more than ``max_bytes``.
        OSError: it cannot be read.
    """
    with open_regular(path) as raw:
        size = os.fstat(raw.fileno()).st_size
        if size > max_bytes:
            raise FileTooLargeError(path, size, max_bytes)
        limit = max_bytes + 1  # reading one byte more shows a file that grew past the cap
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            # First ask for the fstat size + 1 (one read, and an empty one at the end);
            # a file that grew since is read on in chunks.
            ask = size + 1 - got if got <= size else _CHUNK
            chunk = raw.read(min(ask, limit - got, 1 << 30))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > max_bytes:
            raise FileTooLargeError(path, got, max_bytes)
    if len(chunks) == 1:
        return chunks[0]
    return b"".join(chunks)


def check_size(path: str, size: int, max_bytes: int) -> None:
    """Refuse to read ``path`` of ``size`` bytes (from a listing, a stat) above ``max_bytes``.

    Raises:
        FileTooLargeError: it is bigger.
    """
    if size > max_bytes:
        raise FileTooLargeError(path, size, max_bytes)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def temp_name(name: str) -> str:
    """The temp name a file is written under before its rename."""
    return f"{name}{TMP_MARKER}{uuid.uuid4().hex}"


def fsync_file(path: str | Path) -> None:
    """Flush a file's bytes to disk, e.g. one another library wrote (DuckDB, a copy)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # flushes the file's dirty pages whichever descriptor wrote them
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in ``path`` durable (no-op where folders cannot be opened)."""
    try:  # O_DIRECTORY: something else under that name (a FIFO) fails at once, never blocks
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
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
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fs: Any = None) -> tuple[int, str]:
    """Write ``data`` to ``path`` atomically; return its size and sha256."""
    return atomic_write(path, lambda w: w.write(data), fs=fs)


def file_digest(path: str | Path) -> tuple[int, str]:
    """Return the size and sha256 of a local regular file, read in chunks (never through a
    link, never blocking: :func:`open_regular`)."""
    with open_regular(path) as f:
        return stream_digest(f)


def stream_digest(f: IO[bytes]) -> tuple[int, str]:
    """Return the size and sha256 of what is left to read of an open file, in chunks."""
    digest = hashlib.new(HASH_NAME)
    size = 0
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


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst`` (atomic, and no bytes copied), or, where the file system
    has no hard links, copy it to a temp name, fsync it and rename it to ``dst``: either way
    ``dst`` appears complete or not at all. The caller fsyncs ``dst``'s folder."""
    try:
        os.link(src, dst)
    except OSError:
        tmp = dst.with_name(temp_name(dst.name))
        try:
            shutil.copyfile(src, tmp)
            fsync_file(tmp)  # the copy's bytes are on disk before the name points at them
            os.replace(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def delete_path(path: str | Path, *, strict: bool = False) -> None:
    """Delete a file, a link (never what it points at) or a folder with all it holds.

    By default a path already gone is no error, and what of a folder cannot be deleted is
    left for a later pass (temp files, trash). With ``strict`` a folder that cannot be
    deleted whole, or a missing path, raises ``OSError``.
    """
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=not strict)
    else:
        path.unlink(missing_ok=not strict)


def delete_renamed(path: Path, aside: Path, *, sync: bool = True, strict: bool = False) -> None:
    """Rename ``path`` to ``aside`` (a trash or temp name no reader looks at), then delete it
    (:func:`delete_path`): a kill halfway through the delete leaves a half-deleted folder only
    under ``aside``, never under the name readers use.

    ``sync=False``: the caller fsyncs the parent folders itself, once for many deletes.
    """
    rename_durably(path, aside, sync=sync)
    delete_path(aside, strict=strict)
