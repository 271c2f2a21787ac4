"""Hostile input, issue 12 items 2 and 4: poison numbers in a manifest, decompression bombs.

A manifest is input from anyone who can write staging/: its numbers and texts are bounded when
it is parsed, and a value that still cannot reach the ledger fails only its own run. A Parquet
file's size says nothing about its decoded size: the loader bounds memory by the decoded
(Arrow) bytes, quarantines a run past ``[lake] max_run_bytes`` as ``too_large`` and batches by
decoded bytes. Everything is real: hand-written runs, the `lake` CLI in a subprocess, its peak
RSS read from ``wait4``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LAKE_TOML, Lake, hand_run_id, make_root, write_run_by_hand
from test_bad_input import edit_manifest, logs_table
from test_hostile import Scene, expect_quarantined

MANIFEST = "_manifest.json"


# ---------------------------------------------------------------- poison numbers


def _file(**values: Any) -> Callable[[dict[str, Any]], None]:
    """Set values in the first file entry, and the totals to match (a careful attacker)."""
    def change(doc: dict[str, Any]) -> None:
        doc["files"][0].update(values)
        for total in ("rows", "bytes"):
            if total in values:
                doc[total] = values[total]
    return change


def _many_files(doc: dict[str, Any]) -> None:
    entry = doc["files"][0]
    doc["files"] = [entry] + [dict(entry, name=f"part-{i:06d}.parquet", rows=2**52)
                              for i in range(1, 100_001)]
    doc["rows"] = sum(f["rows"] for f in doc["files"])


def _sum_overflows(doc: dict[str, Any]) -> None:
    entry = doc["files"][0]
    doc["files"] = [dict(entry, name=f"part-{i:05d}.parquet", rows=2**53 - 1) for i in range(3)]
    doc["rows"] = 3 * (2**53 - 1)


POISON: dict[str, Callable[[dict[str, Any]], None]] = {
    "rows_2_63": _file(rows=2**63),
    "bytes_2_63": _file(bytes=2**63),
    "rows_2_64": _file(rows=2**64),
    "rows_negative": _file(rows=-1),
    "rows_float": _file(rows=2.5),
    "rows_huge_float": _file(rows=1e300),
    "bytes_huge": _file(bytes=10**20),
    "rows_without_totals": lambda d: (d["files"][0].update(rows=2**63), d.pop("rows"),
                                      d.pop("bytes")),
    "sum_of_rows_overflows": _sum_overflows,
    "100k_files": _many_files,
    "sha256_not_hex": _file(sha256="Z" * 64),
    "sha256_upper_case": lambda d: d["files"][0].update(sha256=d["files"][0]["sha256"].upper()),
    "sha256_huge": _file(sha256="0" * 1_000_000),
    "file_name_with_nul": _file(name="part\x00.parquet"),
    "file_name_huge": _file(name="p" * 10_000),
    "producer_lone_surrogate": lambda d: d.update(producer="\ud800"),
    "key_lone_surrogate": lambda d: d.update(key="\udfff"),
    "key_huge": lambda d: d.update(key="k" * 1_000_000),
}


# A manifest of 100k entries is over the 8 MiB a marker may hold, so the safe reader refuses it
# before the parser counts its files: either code keeps the run out, with a reason.
CODES: dict[str, set[str]] = {"100k_files": {"manifest_mismatch", "invalid_run"}}


def _codes(case: str) -> set[str]:
    return CODES.get(case, {"manifest_mismatch"})


def _poison_run(lake: Lake, n: int, change: Callable[[dict[str, Any]], None]) -> str:
    run_id = hand_run_id(n)
    edit_manifest(write_run_by_hand(lake.root, "logs", run_id,
                                    {"part-00000.parquet": logs_table([n * 10, n * 10 + 1])}),
                  change)
    return run_id


@pytest.mark.parametrize("case", list(POISON))
def test_poison_manifest_value_is_quarantined(lake: Lake, case: str) -> None:
    """Each poison value quarantines its run as manifest_mismatch with a reason; the good run
    alongside loads and nothing else is touched."""
    scene = Scene.start(lake, "logs")
    bad = _poison_run(lake, 2, POISON[case])
    scene.add_good("logs")

    report = lake.load()

    reason = expect_quarantined(lake, report, "logs", bad, _codes(case))
    assert len(reason["message"]) < 1000, reason["message"]
    scene.check()


def test_poison_numbers_next_to_good_runs_via_the_cli(lake: Lake) -> None:
    """Issue 12 item 2: `rows = 2**63` (and the other poison values, all in one batch) used to
    fail every load with an OverflowError traceback (exit 1), so the good runs never loaded.
    Now: exit 3, the good runs load, each poison run is quarantined with its reason."""
    scene = Scene.start(lake, "logs")
    bad = {_poison_run(lake, 2 + i, change): name
           for i, (name, change) in enumerate(POISON.items())}
    missing = _poison_run(lake, 90, _file(rows=2**63 - 1))  # beyond the bound, file absent
    (lake.root / "staging" / "logs" / missing / "part-00000.parquet").unlink()
    good = [scene.add_good("logs"), scene.add_good("logs")]

    result = _lake_load(lake.root)

    assert result.returncode == 3, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    runs = {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}
    for run_id in [*bad, missing]:
        codes = _codes(bad.get(run_id, ""))
        assert runs[run_id]["status"] == "quarantined", (bad.get(run_id), runs[run_id])
        assert runs[run_id]["reason_code"] in codes, (bad.get(run_id), runs[run_id])
        reason = lake.reason("logs", run_id)
        assert reason["code"] in codes and reason["message"], reason
    assert all(runs[g]["status"] == "loaded" for g in good)
    scene.check()


# ---------------------------------------------------------------- decompression bombs


CEILING = 64 << 20  # [lake] max_run_bytes in the bomb tests
BOMB_TOML = LAKE_TOML.replace("retention_days = 7",
                              f"retention_days = 7\nmax_run_bytes = {CEILING}")


def write_bomb(path: Path, rows: int, value: str, chunk: int = 1 << 20) -> None:
    """A small Parquet file of ``rows`` rows of the ``plain`` table (x double, s string),
    every row the same: RLE/dictionary pages make it a few KB, whatever it decodes to."""
    schema = pa.schema([("x", pa.float64()), ("s", pa.string())])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        done = 0
        while done < rows:
            n = min(chunk, rows - done)
            strings = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                                     pa.array([value])).cast(pa.string())
            writer.write_table(pa.table([pa.array(np.zeros(n)), strings], schema=schema))
            done += n


def stage_file(root: Path, table: str, run_id: str, path: Path, rows: int) -> None:
    """Commit a run holding the Parquet file at ``path`` (``rows`` rows), manifest by hand."""
    data = path.read_bytes()
    schema = [{"name": f.name, "type": str(f.type)} for f in pq.read_schema(path)]
    entry = {"name": "part-00000.parquet", "rows": rows, "bytes": len(data),
             "sha256": hashlib.sha256(data).hexdigest()}
    write_run_by_hand(root, table, run_id, {"part-00000.parquet": data},
                      manifest={"files": [entry], "rows": rows, "bytes": len(data),
                                "schema": schema})


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes


def _lake_load(root: Path, *args: str, timeout: float = 120) -> Measured:
    """`lake load --json` in a subprocess whose own peak RSS is read with ``wait4``. An
    address-space limit makes a regression fail fast (MemoryError) instead of eating the
    machine, which other processes share."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))

    proc = subprocess.Popen([sys.executable, "-m", "loader.cli", "--root", str(root), "load",
                             "--json", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=str(root.parent), preexec_fn=limit)
    streams: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda k=k, f=f: streams.__setitem__(k, f.read()))
               for k, f in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    for reader in readers:
        reader.join()
    return Measured(proc.returncode, streams["out"].decode(), streams["err"].decode(),
                    usage.ru_maxrss * 1024)


LIMIT_AS = 6 << 30  # address space of the child: python + duckdb + arrow reserve ~2 GiB
# A `lake load` of a few small runs peaks near 350 MB (pandera, polars); with the bomb held to
# the 64 MiB ceiling plus one batch it peaked at 580 MB alone and 740 MB on a machine at load
# average 7 (the allocator returns freed batches later). Loading the bombs whole took 1.5 GB.
MAX_RSS = 1 << 30

BOMBS = {
    # The bomb: a constant column of many rows (here 40M rows, 40M x 12 bytes decoded
    # from a ~10 KB file): refused by the footer's row count before anything is decoded.
    "constant_rows": (40_000_000, "a"),
    # 500k rows of one 1,000-character string (500 MB decoded from a few KB): its offsets
    # pass the footer's lower bound, so it is streamed and stopped at the ceiling.
    "long_repeated_value": (500_000, "v" * 1000),
}


@pytest.mark.parametrize(("rows", "value"), list(BOMBS.values()), ids=list(BOMBS))
def test_decompression_bomb_is_quarantined_too_large(tmp_path: Path, rows: int,
                                                     value: str) -> None:
    """Issue 12 item 4: a bomb used to load at 4.7 GB peak RSS even with a small
    batch_max_bytes. Now it is quarantined as too_large, the good run alongside loads, and
    the loader's peak RSS stays near its baseline."""
    lake = Lake(make_root(tmp_path / "lake", BOMB_TOML))
    lake.init()
    bomb_file = tmp_path / "bomb.parquet"
    write_bomb(bomb_file, rows, value)
    assert bomb_file.stat().st_size < 1 << 20
    bomb, good = hand_run_id(1), hand_run_id(2)
    stage_file(lake.root, "plain", bomb, bomb_file, rows)
    write_run_by_hand(lake.root, "plain", good, {"part-00000.parquet": pa.table(
        {"x": pa.array([1.0, 2.0]), "s": pa.array(["a", "b"])})})

    result = _lake_load(lake.root)

    assert result.returncode == 3, result.stderr[-3000:]
    runs = {r["run_id"]: r for r in json.loads(result.stdout)["runs"]}
    assert (runs[bomb]["status"], runs[bomb]["reason_code"]) == ("quarantined", "too_large")
    assert "max_run_bytes" in runs[bomb]["message"]
    assert lake.reason("plain", bomb)["code"] == "too_large"
    assert runs[good]["status"] == "loaded" and good in lake.archived("plain")
    assert lake.rows("SELECT count(*) FROM plain") == [(2,)]
    assert result.max_rss < MAX_RSS, f"peak RSS {result.max_rss >> 20} MiB"


def test_run_just_under_the_ceiling_loads(tmp_path: Path) -> None:
    """The ceiling counts decoded bytes: a run that decodes to a little less loads whole,
    streamed or not."""
    lake = Lake(make_root(tmp_path / "lake", BOMB_TOML))
    lake.init()
    rows = 40_000  # 40k x (8 + 4 + 1000) bytes: ~40 MB decoded, under the 64 MiB ceiling
    path = tmp_path / "big.parquet"
    write_bomb(path, rows, "w" * 1000, chunk=16_384)
    stage_file(lake.root, "plain", hand_run_id(1), path, rows)

    report = lake.load()

    assert not report.rejected, report.runs
    assert lake.rows("SELECT count(*), min(length(s)) FROM plain") == [(rows, 1000)]


def test_batch_max_bytes_counts_decoded_bytes(tmp_path: Path) -> None:
    """Two runs of ~8 MB decoded but a few KB on disk, batch_max_bytes = 10 MiB: they go in
    two transactions (the staged sizes would have put them in one). Observed by stopping
    the load once the first run is reported: only a committed batch is reported."""
    toml = LAKE_TOML.replace("retention_days = 7", "retention_days = 7\nbatch_max_bytes = "
                             f"{10 << 20}")
    lake = Lake(make_root(tmp_path / "lake", toml))
    lake.init()
    for n in (1, 2):
        path = tmp_path / f"run{n}.parquet"
        write_bomb(path, 8_000, "z" * 1000, chunk=8_000)
        assert path.stat().st_size < 64 << 10
        stage_file(lake.root, "plain", hand_run_id(n), path, 8_000)
    from loader.load import LoadOptions, load_pending
    from loader.report import StopFlag

    stop = StopFlag()

    def progress(outcome: Any) -> None:
        stop.signal_name = "SIGTERM"  # stop at the next safe point

    from lakehouse.errors import StopRequestedError

    with pytest.raises(StopRequestedError):
        load_pending(lake.config(), LoadOptions(progress=progress, stop=stop))
    assert lake.archived("plain") == [hand_run_id(1)]
    assert lake.staged("plain") == [hand_run_id(2)]
