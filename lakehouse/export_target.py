"""Where one table's exports live: ``<to>/<table>/`` on local disk or an fsspec file system.

Layout (names are constants here; ``docs/EXPORT.md`` describes them for readers)::

    <to>/<table>/_v/<export_id>/<key>=<value>/data_0.parquet   immutable, complete versions
    <to>/<table>/_latest.json                                  the pointer (the commit point)
    <to>/<table>/current -> _v/<export_id>                     local only: a stable folder

Every version is complete on its own: unchanged partitions are hard-linked (local) or copied
server-side (object stores) from the previous version, so a Hive reader pointed at one version
folder sees the whole table. Names starting with ``_`` are skipped by Spark, Trino and
pyarrow's dataset discovery, so ``_v/`` and ``_latest.json`` never leak into a scan of
``<to>/<table>/current``.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from lakehouse.errors import ExportError, UsageError
from lakehouse.fsio import (
    atomic_write_bytes,
    delete_path,
    delete_renamed,
    fsync_dir,
    fsync_file,
    is_local,
    link_or_copy,
    temp_name,
)
from lakehouse.layout import TMP_MARKER, LakePaths

VERSIONS_DIR = "_v"
POINTER_NAME = "_latest.json"
CURRENT_LINK = "current"
LOCAL_TEMP_BASE = "export"  # object-store exports are written first to warehouse/export.tmp-<uuid>
_NO_SYMLINKS = {errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


@dataclass(frozen=True)
class ExportTarget:
    """``<to>/<table>/`` on the local disk (``fs`` is None) or an fsspec file system."""

    url: str  # what the user gave for ``<to>``, normalised (absolute path or URL)
    base: str  # ``<to>/<table>`` as a path of ``fs`` (or a local absolute path)
    fs: Any = None
    base_url: str = ""  # ``<to>/<table>`` as a URL (object stores), for messages and reports

    @property
    def local(self) -> bool:
        """True for a folder on this machine (no fsspec file system)."""
        return self.fs is None

    def join(self, *parts: str) -> str:
        """A path under ``<to>/<table>/`` (empty parts are skipped)."""
        parts = tuple(p for p in parts if p)
        return str(Path(self.base, *parts)) if self.local else posixpath.join(self.base, *parts)

    def display(self, *parts: str) -> str:
        """A path under the target as a user would type it (with the URL's protocol)."""
        if self.local:
            return self.join(*parts)
        return posixpath.join(self.base_url, *(p for p in parts if p))

    @property
    def pointer(self) -> str:
        """Where ``_latest.json`` lives."""
        return self.join(POINTER_NAME)

    def version(self, export_id: str) -> str:
        """The folder of one version."""
        return self.join(VERSIONS_DIR, export_id)

    # -- the pointer ------------------------------------------------------------------------
    def read_pointer(self) -> dict[str, Any] | None:
        """The current pointer, or None when there is no export here yet.

        Raises:
            ExportError: the pointer exists but is not a JSON object (not written by Lake).
        """
        try:
            data = Path(self.pointer).read_bytes() if self.local else self.fs.cat_file(
                self.pointer)
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise ExportError(f"{self.display(POINTER_NAME)} is not a Lake export pointer; move "
                              "it away (or export to another target) and run lake export again",
                              path=self.display(POINTER_NAME))
        return doc

    def write_pointer(self, doc: dict[str, Any]) -> None:
        """Publish the pointer atomically: temp + fsync + rename locally, one PUT elsewhere."""
        data = json.dumps(doc, indent=2).encode()
        atomic_write_bytes(self.pointer, data, fs=self.fs)

    # -- versions ---------------------------------------------------------------------------
    def staging_folder(self, paths: LakePaths) -> Path:
        """A fresh local folder DuckDB writes the changed partitions into. Locally it is
        ``_v/<temp>`` beside the versions (renamed into place when complete); for an object
        store it is under ``warehouse/`` and uploaded."""
        if self.local:
            folder = Path(self.join(VERSIONS_DIR, temp_name("export")))
        else:
            folder = paths.warehouse_dir / temp_name(LOCAL_TEMP_BASE)
        folder.parent.mkdir(parents=True, exist_ok=True)
        return folder

    def existing_files(self, export_id: str) -> set[str]:
        """Every file of a version, as ``<folder>/<file>`` relative to the version folder."""
        root = self.version(export_id)
        if self.local:
            base = Path(root)
            if not base.is_dir():
                return set()
            return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()}
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return set()
        prefix = root.rstrip("/") + "/"
        return {f[len(prefix):] for f in found if f.startswith(prefix)}

    def complete_version(self, staging: Path, export_id: str, written: Iterable[str],
                         carried: dict[str, str]) -> None:
        """Make ``_v/<export_id>`` complete and durable from what DuckDB wrote in ``staging``
        (``written``: relative file paths) plus ``carried`` (new relative path -> previous
        version's relative path, e.g. ``key=v/data_0.parquet`` -> ``<old id>/key=v/...``).

        Locally the folder is renamed into place only once every file and folder in it is
        fsynced, so ``_v/<export_id>`` is complete the moment it exists. On an object store
        there is no rename: the files are uploaded under ``_v/<export_id>/``, which nothing
        points at until the pointer is written.
        """
        if self.local:
            self._complete_local(staging, export_id, list(written), carried)
        else:
            self._complete_remote(staging, export_id, list(written), carried)

    def _complete_local(self, staging: Path, export_id: str, written: list[str],
                        carried: dict[str, str]) -> None:
        versions = Path(self.join(VERSIONS_DIR))
        for rel in written:  # DuckDB does not fsync what COPY writes
            fsync_file(staging / rel)
        for rel, source in carried.items():
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(versions / source, dst)  # no bytes copied where links exist
        for folder in sorted({(staging / rel).parent for rel in [*written, *carried]}):
            fsync_dir(folder)  # the files' names in their partition folders are durable
        fsync_dir(staging)
        final = Path(self.version(export_id))
        # The rename is the moment the version exists: complete, or not at all.
        os.rename(staging, final)
        fsync_dir(versions)

    def _complete_remote(self, staging: Path, export_id: str, written: list[str],
                         carried: dict[str, str]) -> None:
        root = self.version(export_id)
        folders = {posixpath.dirname(rel) for rel in [*written, *carried]}
        for folder in sorted(folders):
            self.fs.makedirs(posixpath.join(root, folder) if folder else root, exist_ok=True)
        for rel in written:
            self.fs.put_file(str(staging / rel), posixpath.join(root, rel))
        for rel, source in carried.items():  # server-side copy: no download
            self.fs.copy(self.join(VERSIONS_DIR, source), posixpath.join(root, rel))
        delete_path(staging)

    def file_sizes(self, export_id: str, files: Iterable[str]) -> dict[str, int]:
        """Sizes of files of a version (relative paths)."""
        root = self.version(export_id)
        if self.local:
            return {f: Path(root, f).stat().st_size for f in files}
        return {f: int(self.fs.size(posixpath.join(root, f))) for f in files}

    def versions(self) -> list[str]:
        """Names under ``_v/`` (complete versions and leftovers of killed exports)."""
        root = self.join(VERSIONS_DIR)
        if self.local:
            base = Path(root)
            return sorted(p.name for p in base.iterdir()) if base.is_dir() else []
        try:
            entries = self.fs.ls(root, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def prune(self, keep: Iterable[str]) -> list[str]:
        """Delete every entry of ``_v/`` not in ``keep``; return the names deleted.

        Exports of one lake hold the warehouse lock, so anything unlisted is an older version
        or what a killed export left behind, never a version being written.
        """
        keep = set(keep)
        doomed = [name for name in self.versions() if name not in keep]
        for name in doomed:
            path = self.join(VERSIONS_DIR, name)
            if self.local and TMP_MARKER in name:
                delete_path(path, strict=True)
            elif self.local:
                # Rename first: a kill halfway through the delete must not leave a half-deleted
                # folder under a version's name (the next export deletes the temp name).
                delete_renamed(Path(path), Path(self.join(VERSIONS_DIR, temp_name(name))),
                               sync=False, strict=True)
            else:
                self.fs.rm(path, recursive=True)
        if doomed and self.local:
            fsync_dir(self.join(VERSIONS_DIR))
        return doomed

    # -- the stable local path --------------------------------------------------------------
    def link_current(self, export_id: str) -> bool:
        """Point ``current`` at ``_v/<export_id>`` (local only): a new symlink renamed over
        the old one, so the name always resolves to a complete version. False where there is
        no such link: an object store, or a file system without symlinks."""
        if not self.local:
            return False
        link = Path(self.join(CURRENT_LINK))
        target = f"{VERSIONS_DIR}/{export_id}"
        if link.is_symlink() and os.readlink(link) == target:
            return True
        if link.exists() and not link.is_symlink():
            raise ExportError(f"{link} exists and is not a symlink Lake made; move it away so "
                              "that lake export can point it at the current version",
                              path=str(link))
        tmp = link.with_name(temp_name(CURRENT_LINK))
        try:
            os.symlink(target, tmp)
        except OSError as exc:
            if exc.errno in _NO_SYMLINKS:
                return False
            raise
        try:
            os.replace(tmp, link)  # atomic: readers resolve the old version or the new one
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(link.parent)
        return True


def open_target(to: str, table: str, paths: LakePaths,
                staging_root: str | None = None) -> ExportTarget:
    """Resolve ``--to`` (a local folder or an fsspec URL) for one table.

    The table's folder ``<to>/<table>/`` must lie outside the lake: not inside the root (nor
    an ancestor of it, since pruning deletes under ``<to>/<table>/_v/``), and not inside the
    object-store ``staging_root``. A table named ``staging`` exported to the root would
    otherwise write into the lake's own ``staging/``.

    Raises:
        UsageError: the URL's file system is not installed, or the table's folder overlaps
            the lake root or the staging root.
    """
    text = str(to).strip()
    if not text:
        raise UsageError("--to must name a folder or a URL such as s3://bucket/exports")
    if "://" in text and not text.startswith("file://"):
        try:
            from fsspec.core import url_to_fs

            fs, path = url_to_fs(text)
        except ImportError as exc:
            raise UsageError(f"cannot export to {text}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise UsageError(f"cannot export to {text}: {exc}") from None
        if is_local(fs):
            return _local_target(Path(path), table, paths)
        url = text.rstrip("/")
        base = posixpath.join(path.rstrip("/"), table)
        _refuse_inside_staging_root(fs, base, f"{url}/{table}", staging_root)
        return ExportTarget(url=url, base=base, fs=fs, base_url=f"{url}/{table}")
    local = Path(text.removeprefix("file://")).expanduser().absolute()
    return _local_target(local, table, paths)


def _local_target(folder: Path, table: str, paths: LakePaths) -> ExportTarget:
    # Check the folder the export writes, <to>/<table>, with every symlink resolved: a table
    # named "staging" exported to the root, or a link pointing into the lake, is caught too.
    base = (folder / table).resolve()
    root = paths.root.resolve()
    if _overlaps(base, root):
        where = "inside" if base.is_relative_to(root) else "around"
        raise UsageError(f"--to {folder} would write table {table} to {base}, {where} the lake "
                         f"root {root}; export to a folder outside the lake root")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--to {folder} exists and is not a folder")
    return ExportTarget(url=str(folder), base=str(folder / table))


def _overlaps(a: PurePath, b: PurePath) -> bool:
    """True when one path is the other or lies inside it."""
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def _refuse_inside_staging_root(fs: Any, base: str, shown: str, staging_root: str | None) -> None:
    """Refuse an object-store target that overlaps the lake's object-store staging root
    (same protocol, one path inside the other; endpoints are not compared, so two stores
    with the same bucket names are refused too, which errs on the safe side)."""
    if staging_root is None:
        return
    try:
        from fsspec.core import url_to_fs

        staging_fs, staging_path = url_to_fs(staging_root)
    except (ImportError, ValueError, TypeError):
        return  # the staging store cannot be opened here, so nothing can be written to it
    if not set(_protocols(fs)) & set(_protocols(staging_fs)):
        return
    target = PurePosixPath("/", base.strip("/"))
    staging = PurePosixPath("/", staging_path.strip("/"))
    if _overlaps(target, staging):
        where = "inside" if target.is_relative_to(staging) else "around"
        raise UsageError(f"--to would write the export to {shown}, {where} the lake's staging "
                         f"root {staging_root}; export to a prefix outside it")


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = fs.protocol
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)
