"""The chaos run's catalogue of hostile inputs: what a bad producer stages, and what must happen.

Each kind is a builder ``(ctx) -> [Step, ...]``: a pure function of ``(seed, pid, seq)``, so
the hostile producer (which writes the steps) and the checker (which needs their expected
outcome) build the same steps. A step is one run, either

- staged through the producer API (``api=True``): its outcome is decided by the reference
  model (``tests/model.py``), which knows the load rules for rows, keys and schemas; or
- written by hand (``write``), for what the producer API refuses to make (corrupt files,
  lying manifests, hostile names, symlinks): its outcome is one of the reason codes in
  ``expect``, and none of its rows may reach a table. Its manifest may be a special file
  (a FIFO, a link to a device); a ``reuse`` step takes the id of a run that loaded (the
  hostile producer picks it) and must end in quarantine as ``run_id_reused``, byte for byte.

Every kind matches a case of the hostile-input tests (``tests/test_hostile*.py``,
``tests/test_bad_input.py``; ``ref``), which test it alone; here it meets everything else at
once.

Keys are the hostile producer's own (``pid * KEY_SPACE + ...``), like the good producers', so
a hostile run can only conflict with its own producer's earlier runs (``key_conflict``,
``repeated_*``), never with another producer's data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.chaos_lake import BASE_TS, EVENT_KEY_POOL, KEY_SPACE, key_base

MANIFEST = "_manifest.json"
# Makes a special file (a FIFO, a link to a device) at the path it is given: what a hostile
# producer commits instead of a manifest.
SpecialFile = Callable[[Path], None]
# (run folder, run id, a folder outside the lake root) -> the manifest to commit (a dict, raw
# bytes written as they are, or a special file made in its place)
HandWriter = Callable[[Path, str, Path], "dict[str, Any] | bytes | SpecialFile"]


@dataclass(frozen=True)
class Step:
    """One hostile (or setup) run."""

    table: str  # the table folder it is staged under
    data: pa.Table | None = None  # api: its rows
    api: bool = False  # staged through stage_run; the model decides its outcome
    key: str | None = None  # api: idempotency key
    write: HandWriter | None = None  # hand-written: fills the run folder, returns the manifest
    folder: str | None = None  # a fixed run folder name instead of a new run id
    link: bool = False  # the run folder is a symlink to a folder outside the root
    # the run takes the id of a run of this producer's that loaded (the producer picks it):
    # built outside the root, then renamed into staging whole
    reuse: bool = False
    expect: frozenset[str] = frozenset()  # hand-written: the allowed reason codes


@dataclass(frozen=True)
class Ctx:
    """Who builds the steps: ``seq`` numbers the hostile producer's attempts."""

    seed: int
    pid: int
    seq: int

    @property
    def rng(self) -> random.Random:
        return random.Random(f"chaos-hostile:{self.seed}:{self.pid}:{self.seq}")

    @property
    def base(self) -> int:
        return key_base(self.pid, self.seq)


@dataclass(frozen=True)
class Kind:
    """One kind of hostile input, the outcome it must have, and its case in test_hostile."""

    name: str
    build: Callable[[Ctx], list[Step]]
    outcome: str
    ref: str
    weight: float = 1.0


# ---------------------------------------------------------------- data


def logs_rows(ctx: Ctx, n: int = 3, *, offset: int = 0) -> pa.Table:
    """Valid ``logs`` rows with the producer's keys."""
    ids = [ctx.base + offset + j for j in range(n)]
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "ts": pa.array([BASE_TS + dt.timedelta(hours=j) for j in range(n)], pa.timestamp("us")),
        "msg": pa.array([f"h{ctx.pid}s{ctx.seq}r{j}" for j in range(n)], pa.string()),
    })


def events_rows(ctx: Ctx, keys: list[int], kind: str = "view",
                amounts: list[float] | None = None) -> pa.Table:
    ids = [ctx.pid * KEY_SPACE + k for k in keys]
    return pa.table({
        "event_id": pa.array(ids, pa.int64()),
        "ts": pa.array([BASE_TS + dt.timedelta(days=k % 90) for k in keys], pa.timestamp("us")),
        "kind": pa.array([kind] * len(keys), pa.string()),
        "amount": pa.array(amounts if amounts is not None else [float(ctx.seq)] * len(keys),
                           pa.float64()),
    })


def readings_rows(ctx: Ctx, celsius: list[float], sensors: list[str | None] | None = None,
                  ) -> pa.Table:
    n = len(celsius)
    return pa.table({
        "sensor": pa.array(sensors if sensors is not None else [f"s-{ctx.pid}"] * n,
                           pa.string()),
        "ts": pa.array([BASE_TS + dt.timedelta(seconds=ctx.base - ctx.pid * KEY_SPACE + j)
                        for j in range(n)], pa.timestamp("us")),
        "celsius": pa.array(celsius, pa.float64()),
    })


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def invalid_utf8(values: list[bytes]) -> pa.Array:
    """A string array holding arbitrary bytes (Arrow does not validate buffers built by hand)."""
    offsets = [0]
    for v in values:
        offsets.append(offsets[-1] + len(v))
    return pa.Array.from_buffers(pa.string(), len(values), [
        None, pa.array(offsets, pa.int32()).buffers()[1], pa.py_buffer(b"".join(values))])


def broken_footer(data: bytes) -> bytes:
    """``data`` with 8 bytes of its footer metadata inverted, at the first offset where that
    makes it unreadable Parquet (the checksum in the manifest is recomputed)."""
    for at in range(len(data) - 16, len(data) // 2, -1):
        out = bytearray(data)
        for i in range(at, min(at + 8, len(out))):
            out[i] ^= 0xFF
        try:
            pq.ParquetFile(pa.BufferReader(bytes(out))).read()
        except (pa.ArrowException, OSError, ValueError):
            return bytes(out)
    raise AssertionError("no flip breaks the file")


# ---------------------------------------------------------------- hand-written runs


def put(run: Path, files: dict[str, bytes | pa.Table]) -> list[dict[str, Any]]:
    """Write ``files`` into the run folder; return their manifest entries."""
    entries = []
    for name, content in files.items():
        data = parquet_bytes(content) if isinstance(content, pa.Table) else content
        (run / name).write_bytes(data)
        rows = content.num_rows if isinstance(content, pa.Table) else 0
        entries.append({"name": name, "rows": rows, "bytes": len(data),
                        "sha256": hashlib.sha256(data).hexdigest()})
    return entries


def schema_of(table: pa.Table) -> list[dict[str, str]]:
    """The schema as Parquet reads it back (what the producer API writes in a manifest)."""
    read = pq.ParquetFile(pa.BufferReader(parquet_bytes(table))).schema_arrow
    return [{"name": f.name, "type": str(f.type)} for f in read]


def manifest(table: str, run_id: str, entries: list[dict[str, Any]],
             schema: list[dict[str, str]]) -> dict[str, Any]:
    return {"format": "lake.manifest/1", "table": table, "run_id": run_id, "producer": "hostile",
            "key": None, "created_at": "2026-03-01T00:00:00+00:00",
            "committed_at": "2026-03-01T00:00:00+00:00",
            "rows": sum(e["rows"] for e in entries), "bytes": sum(e["bytes"] for e in entries),
            "files": entries, "schema": schema, "extra": {}}


def hand(table: str, files: dict[str, bytes | pa.Table], codes: set[str], *,
         like: pa.Table | None = None,
         change: Callable[[dict[str, Any], Path, Path], None] | None = None,
         folder: str | None = None) -> Step:
    """A hand-written run of ``files``; ``like`` makes the manifest claim that table's rows
    and schema; ``change(doc, run, outside)`` edits the manifest (and the folder) last."""

    def write(run: Path, run_id: str, outside: Path) -> dict[str, Any]:
        entries = put(run, files)
        shown = like if like is not None else next(
            (c for c in files.values() if isinstance(c, pa.Table)), None)
        schema = schema_of(shown) if shown is not None else []
        if like is not None:
            entries[0]["rows"] = like.num_rows
        doc = manifest(table, run_id, entries, schema)
        if change is not None:
            change(doc, run, outside)
        return doc

    return Step(table, write=write, folder=folder, expect=frozenset(codes))


def api(table: str, data: pa.Table, key: str | None = None) -> Step:
    return Step(table, data=data, api=True, key=key)


def _set_file(**values: Any) -> Callable[[dict[str, Any], Path, Path], None]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        doc["files"][0].update(values)
    return change


# ---------------------------------------------------------------- the kinds
CORRUPT = {"corrupt_file"}
MISMATCH = {"manifest_mismatch"}
INVALID = {"invalid_run"}
COLUMN = {"invalid_column_name"}


def truncated_parquet(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    raw = parquet_bytes(data)
    return [hand("logs", {"part-00000.parquet": raw[: len(raw) // 2]}, CORRUPT, like=data)]


def random_bytes(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    junk = ctx.rng.randbytes(2048)
    return [hand("logs", {"part-00000.parquet": junk}, CORRUPT, like=data)]


def bit_flipped_parquet(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx, 50)
    return [hand("logs", {"part-00000.parquet": broken_footer(parquet_bytes(data))}, CORRUPT,
                 like=data)]


def zero_byte_file(ctx: Ctx) -> list[Step]:
    return [hand("logs", {"part-00000.parquet": b""}, CORRUPT | MISMATCH)]


def checksum_mismatch(ctx: Ctx) -> list[Step]:
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH,
                 change=_set_file(sha256="0" * 64))]


def row_count_mismatch(ctx: Ctx) -> list[Step]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        doc["files"][0]["rows"] += 1
        doc["rows"] += 1
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH, change=change)]


def size_mismatch(ctx: Ctx) -> list[Step]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        doc["files"][0]["bytes"] += 1
        doc["bytes"] += 1
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH, change=change)]


def listed_file_missing(ctx: Ctx) -> list[Step]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        (run / "part-00001.parquet").unlink()
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx),
                          "part-00001.parquet": logs_rows(ctx, offset=10)}, MISMATCH,
                 change=change)]


def unlisted_extra_file(ctx: Ctx) -> list[Step]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        (run / "part-00001.parquet").write_bytes(parquet_bytes(logs_rows(ctx, offset=10)))
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH, change=change)]


def manifest_not_json(ctx: Ctx) -> list[Step]:
    def write(run: Path, run_id: str, outside: Path) -> bytes:
        put(run, {"part-00000.parquet": logs_rows(ctx)})
        return b"{this is not json"
    return [Step("logs", write=write, expect=frozenset(MISMATCH))]


SHAPES: list[Callable[[dict[str, Any]], Any]] = [
    lambda d: d["files"][0].update(rows="3"),
    lambda d: d["files"][0].update(bytes=-5),
    lambda d: d.update(rows=True),
    lambda d: d.update(files={"part-00000.parquet": d["files"][0]}),
    lambda d: d.update(schema="id int64, ts timestamp, msg string"),
    lambda d: d.update(format="lake.manifest/999"),
    lambda d: d["files"].append(dict(d["files"][0])),
    lambda d: d.update(run_id="20260101T000000.000077Z-hand-0000004d"),
]


def manifest_wrong_shape(ctx: Ctx) -> list[Step]:
    shape = SHAPES[ctx.seq % len(SHAPES)]
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH,
                 change=lambda doc, run, outside: shape(doc))]


def manifest_deeply_nested(ctx: Ctx) -> list[Step]:
    def write(run: Path, run_id: str, outside: Path) -> bytes:
        put(run, {"part-00000.parquet": logs_rows(ctx)})
        return b"[" * 100_000 + b"]" * 100_000
    return [Step("logs", write=write, expect=frozenset(MISMATCH))]


def manifest_for_another_table(ctx: Ctx) -> list[Step]:
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH,
                 change=lambda doc, run, outside: doc.update(table="events"))]


def manifest_schema_differs(ctx: Ctx) -> list[Step]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        doc["schema"][2]["type"] = "int64"
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH, change=change)]


def manifest_names_a_file_outside(ctx: Ctx) -> list[Step]:
    """The manifest lists a Parquet file outside the root (absolute path, true checksum)."""
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        target = outside / f"h{ctx.pid}-{ctx.seq}-listed.parquet"
        data = parquet_bytes(logs_rows(ctx, offset=20))
        target.write_bytes(data)
        doc["files"][0].update(name=str(target), bytes=len(data),
                               sha256=hashlib.sha256(data).hexdigest())
        (run / "part-00000.parquet").unlink()
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH, change=change)]


def symlinked_data_file(ctx: Ctx) -> list[Step]:
    """The listed data file is a symlink to a Parquet file outside the root."""
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        target = outside / f"h{ctx.pid}-{ctx.seq}-target.parquet"
        (run / "part-00000.parquet").rename(target)
        (run / "part-00000.parquet").symlink_to(target)
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, INVALID, change=change)]


def symlinked_run_folder(ctx: Ctx) -> list[Step]:
    step = hand("logs", {"part-00000.parquet": logs_rows(ctx)}, INVALID)
    return [Step("logs", write=step.write, link=True, expect=step.expect)]


def run_folder_with_subdirectory(ctx: Ctx) -> list[Step]:
    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        (run / "sub").mkdir()
        (run / "sub" / "part-00001.parquet").write_bytes(
            parquet_bytes(logs_rows(ctx, offset=10)))
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH | INVALID,
                 change=change)]


def undeclared_table(ctx: Ctx) -> list[Step]:
    return [hand("ghost", {"part-00000.parquet": logs_rows(ctx)}, INVALID)]


TABLE_NAMES = ["logs; DROP TABLE logs", "LOGS", "lógs", "_lake_logs", "table with spaces",
               "x'); DROP TABLE meta.staged_runs; --", "1logs"]


def hostile_table_name(ctx: Ctx) -> list[Step]:
    return [hand(TABLE_NAMES[ctx.seq % len(TABLE_NAMES)],
                 {"part-00000.parquet": logs_rows(ctx)}, INVALID)]


RUN_NAMES = ["x'; DROP TABLE logs; -- {p}.{s}", "run with spaces {p}.{s}", "$(touch pwned)-{p}-{s}",
             "ünïcødé-名前-{p}-{s}", "%2e%2e%2f{p}-{s}", "tab\tand\nnewline-{p}-{s}",
             "99999999T999999.999999Z-hand-{p:04d}{s:04d}"]


def hostile_run_name(ctx: Ctx) -> list[Step]:
    name = RUN_NAMES[ctx.seq % len(RUN_NAMES)].format(p=ctx.pid, s=ctx.seq % 10_000)
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, INVALID, folder=name)]


def hostile_column_name(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx).append_column('a"; DROP TABLE events; --', pa.array(["a", "b", "c"]))
    return [hand("logs", {"part-00000.parquet": data}, COLUMN)]


def reserved_column_name(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx).append_column("_lake_run_id", pa.array(["a", "b", "c"]))
    return [hand("logs", {"part-00000.parquet": data}, COLUMN)]


def duplicate_column_names(ctx: Ctx) -> list[Step]:
    rows = logs_rows(ctx)
    data = pa.table([rows["id"], rows["ts"], rows["msg"], rows["msg"]],
                    names=["id", "ts", "Msg", "msg"])
    return [hand("logs", {"part-00000.parquet": data}, COLUMN)]


def invalid_utf8_string(ctx: Ctx) -> list[Step]:
    rows = logs_rows(ctx, 2)
    data = rows.set_column(2, "msg", invalid_utf8([b"ok", b"\xff\xfe\xfd"]))
    return [hand("logs", {"part-00000.parquet": data},
                 {"merge_failed", "corrupt_file", "contract_violation"})]


def nested_column(ctx: Ctx) -> list[Step]:
    rows = logs_rows(ctx, 2)
    data = rows.set_column(2, "msg", pa.array([{"a": 1}, {"a": 2}]))
    return [hand("logs", {"part-00000.parquet": data}, {"schema_change"})]


# -- through the producer API: the model decides ------------------------------------------------
def null_key(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    return [api("logs", data.set_column(0, "id", pa.array([ctx.base, None, ctx.base + 2],
                                                           pa.int64())))]


def duplicate_key_in_append_run(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    return [api("logs", data.set_column(0, "id", pa.array([ctx.base, ctx.base + 1, ctx.base],
                                                           pa.int64())))]


def empty_run(ctx: Ctx) -> list[Step]:
    return [api("logs", logs_rows(ctx, 0))]


def key_conflict(ctx: Ctx) -> list[Step]:
    """A run, then another repeating two of its keys (append never overwrites)."""
    first = logs_rows(ctx, 3)
    again = logs_rows(ctx, 3, offset=1)  # keys base+1, base+2 repeat; base+3 is new
    return [api("logs", first), api("logs", again)]


def missing_column(ctx: Ctx) -> list[Step]:
    return [api("logs", logs_rows(ctx).drop_columns(["msg"]))]


def new_column_under_freeze(ctx: Ctx) -> list[Step]:
    return [api("logs", logs_rows(ctx).append_column("extra", pa.array([1.0, 2.0, 3.0])))]


def wrong_column_type(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    return [api("logs", data.set_column(2, "msg", pa.array([1, 2, 3], pa.int64())))]


def tz_aware_timestamps(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    return [api("logs", data.set_column(1, "ts", data["ts"].cast(pa.timestamp("us", tz="UTC"))))]


def value_outside_isin(ctx: Ctx) -> list[Step]:
    return [api("events", events_rows(ctx, [1, 2, 3], kind="refund"))]


def negative_amount(ctx: Ctx) -> list[Step]:
    return [api("events", events_rows(ctx, [4, 5], amounts=[1.0, -1.0]))]


def upsert_duplicate_keys(ctx: Ctx) -> list[Step]:
    """Keys repeated within an upsert run: the last row of a key wins."""
    keys = ctx.rng.sample(range(EVENT_KEY_POOL), 3)
    keys = [keys[0], keys[1], keys[0], keys[2], keys[1]]
    return [api("events", events_rows(ctx, keys, amounts=[float(i) for i in range(5)]))]


def drop_rows_out_of_range(ctx: Ctx) -> list[Step]:
    return [api("readings", readings_rows(ctx, [20.0, 999.0, -5.0, -200.0, 61.0]))]


def drop_rows_nan_inf(ctx: Ctx) -> list[Step]:
    nan, inf = float("nan"), float("inf")
    return [api("readings", readings_rows(ctx, [10.0, nan, inf, -inf, 11.0]))]


def drop_rows_bad_sensor(ctx: Ctx) -> list[Step]:
    s = f"s-{ctx.pid}"
    return [api("readings", readings_rows(ctx, [1.0, 2.0, 3.0, 4.0],
                                          sensors=[s, "x-1", "s-", s]))]


def drop_rows_null_key(ctx: Ctx) -> list[Step]:
    s = f"s-{ctx.pid}"
    return [api("readings", readings_rows(ctx, [1.0, 2.0, 3.0], sensors=[s, None, s]))]


def drop_rows_all_invalid(ctx: Ctx) -> list[Step]:
    return [api("readings", readings_rows(ctx, [500.0, 600.0]))]


def repeated_idempotency_key(ctx: Ctx) -> list[Step]:
    """A run, then another with the same idempotency key (a retry): skipped."""
    key = f"h{ctx.pid}-{ctx.seq}"
    return [api("logs", logs_rows(ctx, 2), key=key),
            api("logs", logs_rows(ctx, 2, offset=5), key=key)]


def repeated_content(ctx: Ctx) -> list[Step]:
    """The same file staged twice under two runs (no key): the second is skipped."""
    data = logs_rows(ctx, 2)
    return [api("logs", data), api("logs", data)]


def reordered_columns(ctx: Ctx) -> list[Step]:
    return [api("logs", logs_rows(ctx).select(["msg", "ts", "id"]))]


def narrower_integer(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx)
    return [api("logs", data.set_column(0, "id", data["id"].cast(pa.int32())))]


def huge_string_cell(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx, 2)
    cell = ctx.rng.choice("abcdef") * (1 << 20)
    return [api("logs", data.set_column(2, "msg", pa.array([cell, "small"])))]


def far_timestamps(ctx: Ctx) -> list[Step]:
    data = logs_rows(ctx, 2)
    far = [dt.datetime(1900, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59)]
    return [api("logs", data.set_column(1, "ts", pa.array(far, pa.timestamp("us"))))]


# -- special files, poison numbers, bombs, reused ids (issue 12) --------------------------------
def _special_manifest(make: SpecialFile) -> Callable[[Ctx], list[Step]]:
    """A run whose ``_manifest.json`` is a special file (committed by rename, like a real one)."""
    def build(ctx: Ctx) -> list[Step]:
        def write(run: Path, run_id: str, outside: Path) -> SpecialFile:
            put(run, {"part-00000.parquet": logs_rows(ctx)})
            return make
        return [Step("logs", write=write, expect=frozenset(INVALID))]
    return build


manifest_fifo = _special_manifest(os.mkfifo)
manifest_dev_zero = _special_manifest(lambda path: path.symlink_to("/dev/zero"))

DEVICES = ["/dev/zero", "/dev/urandom"]


def data_file_device_link(ctx: Ctx) -> list[Step]:
    """The listed data file is a symlink to a device (its manifest entry is the real file's)."""
    device = DEVICES[ctx.seq % len(DEVICES)]

    def change(doc: dict[str, Any], run: Path, outside: Path) -> None:
        (run / "part-00000.parquet").unlink()
        (run / "part-00000.parquet").symlink_to(device)
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, INVALID, change=change)]


POISON: list[Callable[[dict[str, Any]], Any]] = [
    lambda d: (d["files"][0].update(rows=2**63), d.update(rows=2**63)),
    lambda d: (d["files"][0].update(bytes=2**64), d.update(bytes=2**64)),
    lambda d: d["files"][0].update(sha256="Z" * 64),
    lambda d: d.update(key="k" * 1_000_000),
]


def manifest_poison_number(ctx: Ctx) -> list[Step]:
    """Numbers no ledger column holds, a checksum that is not hex, a 1 MB key text."""
    poison = POISON[ctx.seq % len(POISON)]
    return [hand("logs", {"part-00000.parquet": logs_rows(ctx)}, MISMATCH,
                 change=lambda doc, run, outside: poison(doc))]


BOMB_ROWS = 8_000_000  # logs rows take >= 20 Arrow bytes each: 160 MB, over max_run_bytes
_BOMB_CHUNK = 1 << 20


@lru_cache(maxsize=1)
def _bomb_chunk() -> pa.Table:
    """1M identical logs rows (their key is fixed by ``bomb_bytes``)."""
    return pa.table({
        "id": pa.array(np.zeros(_BOMB_CHUNK, np.int64)),
        "ts": pa.array(np.zeros(_BOMB_CHUNK, np.int64)).cast(pa.timestamp("us")),
        "msg": pa.DictionaryArray.from_arrays(pa.array(np.zeros(_BOMB_CHUNK, np.int32)),
                                              pa.array(["bomb"])).cast(pa.string()),
    })


def bomb_bytes(key: int, rows: int = BOMB_ROWS) -> bytes:
    """A ~100 KB Parquet file of ``rows`` identical logs rows (key ``key``): it decodes to
    ``rows`` x 20 bytes at least (8 for id and ts, 4 for msg's offset)."""
    chunk = _bomb_chunk().set_column(0, "id", pa.array(np.full(_BOMB_CHUNK, key, np.int64)))
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, chunk.schema, compression="zstd") as writer:
        for done in range(0, rows, _BOMB_CHUNK):
            writer.write_table(chunk.slice(0, min(_BOMB_CHUNK, rows - done)))
    return bytes(sink.getvalue().to_pybytes())


def decompression_bomb(ctx: Ctx) -> list[Step]:
    """A tiny file of 8M constant rows: refused from its footer before anything decodes."""
    def write(run: Path, run_id: str, outside: Path) -> dict[str, Any]:
        entries = put(run, {"part-00000.parquet": bomb_bytes(ctx.base)})
        entries[0]["rows"] = BOMB_ROWS
        return manifest("logs", run_id, entries, schema_of(_bomb_chunk().slice(0, 1)))
    return [Step("logs", write=write, expect=frozenset({"too_large"}))]


def reused_run_id(ctx: Ctx) -> list[Step]:
    """Another run (other rows) under the id of a logs run this producer loaded earlier."""
    step = hand("logs", {"part-00000.parquet": logs_rows(ctx)}, {"run_id_reused"})
    return [Step("logs", write=step.write, reuse=True, expect=step.expect)]


_B = "test_bad_input::test_bad_run_is_quarantined_and_good_runs_load"
_H = "test_hostile"

CATALOGUE: tuple[Kind, ...] = (
    # files and manifests (written by hand)
    Kind("truncated_parquet", truncated_parquet, "quarantined: corrupt_file",
         f"{_B}[truncated_parquet]"),
    Kind("random_bytes", random_bytes, "quarantined: corrupt_file", f"{_B}[random_bytes]"),
    Kind("bit_flipped_parquet", bit_flipped_parquet, "quarantined: corrupt_file",
         f"{_H}::test_bit_flipped_parquet_is_quarantined[footer]"),
    Kind("zero_byte_file", zero_byte_file, "quarantined: corrupt_file / manifest_mismatch",
         f"{_H}::test_dot_parquet_and_zero_byte_files"),
    Kind("checksum_mismatch", checksum_mismatch, "quarantined: manifest_mismatch",
         f"{_B}[checksum_mismatch]"),
    Kind("row_count_mismatch", row_count_mismatch, "quarantined: manifest_mismatch",
         f"{_B}[row_count_mismatch]"),
    Kind("size_mismatch", size_mismatch, "quarantined: manifest_mismatch",
         f"{_H}::test_manifest_of_the_wrong_shape"),
    Kind("listed_file_missing", listed_file_missing, "quarantined: manifest_mismatch",
         f"{_B}[listed_file_missing]"),
    Kind("unlisted_extra_file", unlisted_extra_file, "quarantined: manifest_mismatch",
         f"{_B}[unlisted_extra_file]"),
    Kind("manifest_not_json", manifest_not_json, "quarantined: manifest_mismatch",
         f"{_B}[manifest_not_json]"),
    Kind("manifest_wrong_shape", manifest_wrong_shape, "quarantined: manifest_mismatch",
         f"{_H}::test_manifest_of_the_wrong_shape"),
    Kind("manifest_deeply_nested", manifest_deeply_nested, "quarantined: manifest_mismatch",
         f"{_H}::test_manifest_of_the_wrong_shape[deeply_nested]", weight=0.3),
    Kind("manifest_for_another_table", manifest_for_another_table,
         "quarantined: manifest_mismatch", f"{_H}::test_manifest_of_the_wrong_shape"),
    Kind("manifest_schema_differs", manifest_schema_differs, "quarantined: manifest_mismatch",
         "test_bad_input (schema differs from the manifest)"),
    Kind("manifest_names_a_file_outside", manifest_names_a_file_outside,
         "quarantined: manifest_mismatch; the file outside untouched",
         f"{_H}::test_manifest_naming_files_outside_its_run"),
    Kind("symlinked_data_file", symlinked_data_file, "quarantined: invalid_run; target untouched",
         f"{_B}[symlink_outside_root]"),
    Kind("symlinked_run_folder", symlinked_run_folder,
         "quarantined: invalid_run (the link moved, never followed)",
         "test_bad_input::test_symlinked_run_folder_is_not_followed"),
    Kind("run_folder_with_subdirectory", run_folder_with_subdirectory,
         "quarantined: manifest_mismatch / invalid_run",
         f"{_H}::test_run_folder_with_a_subdirectory"),
    # special files, poison numbers, bombs and reused ids (issue 12)
    Kind("manifest_fifo", manifest_fifo, "quarantined: invalid_run; the load never blocks",
         "test_hostile_files::test_special_files_in_a_run_never_stop_the_load[manifest_fifo]",
         weight=2.0),
    Kind("manifest_dev_zero", manifest_dev_zero,
         "quarantined: invalid_run (the link to /dev/zero never followed)",
         "test_hostile_files::test_special_files_in_a_run_never_stop_the_load"
         "[manifest_dev_zero]", weight=2.0),
    Kind("data_file_device_link", data_file_device_link,
         "quarantined: invalid_run (/dev/zero or /dev/urandom never read)",
         "test_hostile_files::test_special_files_in_a_run_never_stop_the_load"
         "[data_file_dev_urandom]", weight=1.5),
    Kind("manifest_poison_number", manifest_poison_number,
         "quarantined: manifest_mismatch (rows 2**63, bytes 2**64, sha256 not hex, 1 MB key)",
         "test_hostile_bombs::test_poison_manifest_value_is_quarantined[rows_2_63]", weight=2.0),
    Kind("decompression_bomb", decompression_bomb,
         "quarantined: too_large (8M constant rows in ~100 KB, refused from the footer)",
         "test_hostile_bombs::test_decompression_bomb_is_quarantined_too_large[constant_rows]"),
    Kind("reused_run_id", reused_run_id,
         "quarantined: run_id_reused, kept byte for byte; the loaded run untouched",
         "test_hostile_runids::test_reused_id_of_a_loaded_run_is_quarantined_and_kept[7]",
         weight=3.0),
    # names
    Kind("undeclared_table", undeclared_table, "quarantined: invalid_run",
         "test_bad_input::test_bad_table_folder_is_quarantined[undeclared]"),
    Kind("hostile_table_name", hostile_table_name, "quarantined: invalid_run; no table created",
         f"{_H}::test_hostile_table_folder_names"),
    Kind("hostile_run_name", hostile_run_name, "quarantined: invalid_run",
         f"{_H}::test_hostile_run_folder_names"),
    Kind("hostile_column_name", hostile_column_name, "quarantined: invalid_column_name",
         f"{_H}::test_hostile_column_names"),
    Kind("reserved_column_name", reserved_column_name, "quarantined: invalid_column_name",
         f"{_H}::test_hostile_column_names"),
    Kind("duplicate_column_names", duplicate_column_names, "quarantined: invalid_column_name",
         f"{_H}::test_duplicate_column_names"),
    # values and types the producer API cannot make
    Kind("invalid_utf8_string", invalid_utf8_string,
         "quarantined: merge_failed (or corrupt_file / contract_violation)",
         f"{_H}::test_invalid_utf8_in_a_string_column_is_quarantined"),
    Kind("nested_column", nested_column, "quarantined: schema_change",
         f"{_H}::test_nested_columns_into_a_flat_table_are_quarantined"),
    # through the producer API: the reference model decides the outcome
    Kind("null_key", null_key, "quarantined: contract_violation", f"{_B}[null_in_key]"),
    Kind("duplicate_key_in_append_run", duplicate_key_in_append_run,
         "quarantined: contract_violation", f"{_B}[duplicate_key_in_append_run]"),
    Kind("empty_run", empty_run, "quarantined: empty_run", f"{_B}[empty_run]"),
    Kind("key_conflict", key_conflict, "first loads; second quarantined: key_conflict",
         "test_bad_input::test_append_repeating_loaded_keys_is_key_conflict"),
    Kind("missing_column", missing_column, "quarantined: schema_change",
         f"{_H}::test_wrong_schema_is_quarantined[missing_column]"),
    Kind("new_column_under_freeze", new_column_under_freeze, "quarantined: schema_change",
         "test_bad_input::test_new_column_under_freeze_is_schema_change"),
    Kind("wrong_column_type", wrong_column_type, "quarantined: schema_change",
         f"{_B}[wrong_column_type]"),
    Kind("tz_aware_timestamps", tz_aware_timestamps, "quarantined: schema_change",
         f"{_H}::test_naive_and_aware_timestamps_across_runs"),
    Kind("value_outside_isin", value_outside_isin, "quarantined: contract_violation",
         "test_bad_input::test_reason_has_message_count_and_failure_sample"),
    Kind("negative_amount", negative_amount, "quarantined: contract_violation",
         "test_bad_input::test_reason_has_message_count_and_failure_sample"),
    Kind("upsert_duplicate_keys", upsert_duplicate_keys, "loads: the last row of a key wins",
         "test_bad_input::test_upsert_duplicate_keys_last_row_wins_with_warning"),
    Kind("drop_rows_out_of_range", drop_rows_out_of_range,
         "valid rows load; the rest in _rejected_rows.parquet",
         "test_bad_input::test_drop_rows_loads_valid_rows_and_quarantines_the_rest"),
    Kind("drop_rows_nan_inf", drop_rows_nan_inf, "valid rows load; NaN/inf rows rejected",
         f"{_H}::test_nan_and_inf_in_a_range_checked_column"),
    Kind("drop_rows_bad_sensor", drop_rows_bad_sensor, "valid rows load; the rest rejected",
         "test_bad_input::test_drop_rows_loads_valid_rows_and_quarantines_the_rest"),
    Kind("drop_rows_null_key", drop_rows_null_key, "valid rows load; the null-key row rejected",
         "test_model (null keys under drop_rows)"),
    Kind("drop_rows_all_invalid", drop_rows_all_invalid, "quarantined: contract_violation",
         "test_model (drop_rows with no valid row)"),
    Kind("repeated_idempotency_key", repeated_idempotency_key,
         "first loads; second skipped: duplicate_key", "test_model (idempotency keys)"),
    Kind("repeated_content", repeated_content,
         "first loads; second skipped: duplicate_content", "test_model (repeated content)"),
    Kind("reordered_columns", reordered_columns, "loads (by name)",
         f"{_H}::test_reordered_columns_load"),
    Kind("narrower_integer", narrower_integer, "loads (int32 cast to BIGINT)",
         "test_model (narrower integers)"),
    Kind("huge_string_cell", huge_string_cell, "loads intact (1 MiB cell)",
         f"{_H}::test_huge_string_cell_loads_intact", weight=0.3),
    Kind("far_timestamps", far_timestamps, "loads (years 1900 and 9999), right partitions",
         f"{_H}::test_far_future_and_ancient_timestamps_load"),
)
KINDS_BY_NAME = {k.name: k for k in CATALOGUE}


def pick_kind(ctx: Ctx) -> Kind:
    """The kind the hostile producer tries for attempt ``ctx.seq`` (deterministic)."""
    return ctx.rng.choices(CATALOGUE, [k.weight for k in CATALOGUE])[0]


# ---------------------------------------------------------------- writing a hand-made run


def commit_manifest(run: Path, doc: dict[str, Any] | bytes | SpecialFile) -> None:
    """Write the manifest (or make the special file standing for it) under a temp name and
    rename it: the run appears committed whole."""
    tmp = run / f"{MANIFEST}.tmp-{os.getpid()}"
    if callable(doc):
        doc(tmp)
    else:
        tmp.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    os.replace(tmp, run / MANIFEST)

