"""The run manifest: the file whose presence commits a staged run.

Light (standard library only): producers write it, the loader reads and verifies it.
"""

from __future__ import annotations

import builtins
import json
import re
from dataclasses import dataclass, field
from typing import Any

MANIFEST_FORMAT = "lake.manifest/1"


# Arrow names a list's item field ("item" in memory, "element" once read back from Parquet):
# the name is not part of the data, so it is dropped when types are compared.
_LIST_FIELD = re.compile(r"list<[^:<>,]+: ")


def normalize_type_text(type_text: str) -> str:
    """An Arrow type's text without list item field names, for comparing schemas."""
    return _LIST_FIELD.sub("list<", type_text)


class ManifestFormatError(ValueError):
    """The manifest text is not a valid Lake manifest."""


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
                FileEntry(_str(f["name"]), _int(f["rows"]), _int(f["bytes"]), _str(f["sha256"]))
                for f in _list(doc["files"])
            )
            schema = tuple((_str(c["name"]), _str(c["type"])) for c in _list(doc["schema"]))
            key = doc.get("key")
            if key is not None:
                key = _str(key)
            manifest = cls(
                table=_str(doc["table"]), run_id=_str(doc["run_id"]),
                producer=_str(doc["producer"]), created_at=_str(doc["created_at"]),
                committed_at=_str(doc["committed_at"]), files=files, schema=schema, key=key,
                extra=dict(doc["extra"]) if isinstance(doc.get("extra"), dict) else {},
            )
        except (KeyError, TypeError) as exc:
            raise ManifestFormatError(
                f"manifest field missing or of the wrong type: {exc}") from None
        if "rows" in doc and doc["rows"] != manifest.rows:
            raise ManifestFormatError(
                f"manifest says {doc['rows']} rows but its files add up to {manifest.rows}"
            )
        return manifest


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError(f"expected a non-negative whole number, got {value!r}")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return value
