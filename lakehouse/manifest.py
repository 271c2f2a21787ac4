"""The run manifest: the file whose presence commits a staged run.

Light (standard library only): producers write it, the loader reads and verifies it.
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass, field
from typing import Any

from lakehouse.errors import ManifestFormatError

MANIFEST_FORMAT = "lake.manifest/1"

# Bounds on what a manifest may say, checked when it is parsed: a manifest is input from anyone
# who can write staging/, and its numbers and texts reach the ledger (BIGINT and VARCHAR
# columns), sums and error messages. 2**53 - 1 rows or bytes (8 PiB) is beyond any real run,
# exact in a JSON double, and leaves room for sums of many runs in a signed 64-bit column.
MAX_COUNT = 2**53 - 1
MAX_FILES = 100_000  # files listed by one run
MAX_COLUMNS = 100_000  # columns in a manifest's schema
MAX_NAME_CHARS = 255  # a file name (a file system's limit)
MAX_TEXT_CHARS = 4096  # table, run id, producer, key, times, column names
MAX_TYPE_CHARS = 1 << 20  # an Arrow type's text (nested types can be long)
_SHA256 = re.compile(r"[0-9a-f]{64}")


# Arrow names a list's item field ("item" in memory, "element" once read back from Parquet):
# the name is not part of the data, so it is dropped when types are compared.
_LIST_FIELD = re.compile(r"list<[^:<>,]+: ")


def normalize_type_text(type_text: str) -> str:
    """An Arrow type's text without list item field names, for comparing schemas."""
    return _LIST_FIELD.sub("list<", type_text)


@dataclass(frozen=True)
class FileEntry:
    """One committed data file of a run."""

    name: str
    rows: int
    bytes: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """What a producer committed: the files, their sizes and checksums, and the schema."""

    table: str
    run_id: str
    producer: str
    created_at: str
    committed_at: str
    files: tuple[FileEntry, ...]
    schema: tuple[tuple[str, str], ...]  # (column, Arrow type as text)
    key: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The producer's own code version (``stage_run(..., version=...)``): ledger and health.
    producer_version: str | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    def to_json(self) -> builtins.bytes:
        """Serialise deterministically (sorted keys) so its checksum is stable."""
        doc = {
            "format": MANIFEST_FORMAT,
            "table": self.table,
            "run_id": self.run_id,
            "producer": self.producer,
            "key": self.key,
            "created_at": self.created_at,
            "committed_at": self.committed_at,
            "rows": self.rows,
            "bytes": self.bytes,
            "files": [f.as_dict() for f in self.files],
            "schema": [{"name": n, "type": t} for n, t in self.schema],
            "extra": self.extra,
        }
        if self.producer_version is not None:  # absent otherwise: older manifests unchanged
            doc["producer_version"] = self.producer_version
        return json.dumps(doc, sort_keys=True, indent=1).encode()

    @classmethod
    def from_json(cls, data: builtins.bytes) -> Manifest:
        """Parse and check the shape of a manifest.

        Raises:
            ManifestFormatError: not JSON, wrong format tag, or a field of the wrong type.
        """
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ManifestFormatError(f"manifest is not JSON: {type(exc).__name__}") from None
        if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
            raise ManifestFormatError(f"manifest format is not {MANIFEST_FORMAT!r}")
        try:
            files = tuple(
                FileEntry(_name(f["name"]), _int(f["rows"]), _int(f["bytes"]),
                          _sha256(f["sha256"]))
                for f in _list(doc["files"], MAX_FILES)
            )
            # A column name is judged on the file's schema (invalid_column_name), NUL and all.
            schema = tuple((_str(c["name"], nul=True), _str(c["type"], MAX_TYPE_CHARS))
                           for c in _list(doc["schema"], MAX_COLUMNS))
            key = doc.get("key")
            if key is not None:
                key = _str(key)
            version = doc.get("producer_version")
            if version is not None:
                version = _str(version)
            manifest = cls(
                table=_str(doc["table"]), run_id=_str(doc["run_id"]),
                producer=_str(doc["producer"]), created_at=_str(doc["created_at"]),
                committed_at=_str(doc["committed_at"]), files=files, schema=schema, key=key,
                extra=dict(doc["extra"]) if isinstance(doc.get("extra"), dict) else {},
                producer_version=version,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ManifestFormatError(
                f"manifest field missing, of the wrong type or out of range: {exc}") from None
        # Each number is bounded above; so must their sums be (100,000 files of 2**53 - 1 rows
        # would overflow the ledger's BIGINT all the same).
        for what, total in (("rows", manifest.rows), ("bytes", manifest.bytes)):
            if total > MAX_COUNT:
                raise ManifestFormatError(
                    f"manifest's files add up to {total} {what}, more than {MAX_COUNT}")
            if what in doc and doc[what] != total:
                raise ManifestFormatError(
                    f"manifest says {_shown(doc[what])} {what} but its files add up to {total}")
        return manifest


def _str(value: Any, limit: int = MAX_TEXT_CHARS, *, nul: bool = False) -> str:
    """Text of at most ``limit`` characters that UTF-8 can hold (a lone surrogate such as
    ``"\\ud800"`` parses from JSON but cannot be written to the ledger) and, unless ``nul``,
    holds no NUL."""
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"text of {len(value)} characters, more than {limit}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError(f"text {_shown(value)} is not valid Unicode") from None
    if not nul and "\0" in value:
        raise ValueError(f"text {_shown(value)} holds a NUL character")
    return value


def _name(value: Any) -> str:
    """A file name: plain text, no folder part, no control characters."""
    name = _str(value, MAX_NAME_CHARS)
    if not name or "/" in name or "\\" in name or name in (".", "..") or any(
            ord(c) < 32 for c in name):
        raise ValueError(f"file name {_shown(name)} is not a plain file name")
    return name


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative whole number, got {_shown(value)}")
    if value > MAX_COUNT:
        raise ValueError(f"{_shown(value)} is more than {MAX_COUNT}")
    return value


def _sha256(value: Any) -> str:
    digest = _str(value)
    if not _SHA256.fullmatch(digest):
        raise ValueError(f"sha256 {_shown(digest)} is not 64 lowercase hex digits")
    return digest


def _list(value: Any, limit: int) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    if len(value) > limit:
        raise ValueError(f"a list of {len(value)} entries, more than {limit}")
    return value


def _shown(value: Any) -> str:
    """A value for an error message, cut short (a manifest's text can be long)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
