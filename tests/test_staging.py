"""The producer API: `stage_run` and `stage` write real Parquet runs committed by a manifest.

Every check reads the folders and bytes on disk itself (hashlib, pyarrow), so the tests do not
trust the staging code's own view of what it wrote.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, Lake, make_root

import staging
from lakehouse.layout import parse_run_id
from lakehouse.manifest import Manifest
from staging import StagingError, stage, stage_run

MANIFEST = "_manifest.json"
ABANDONED = "_abandoned.json"
PRODUCER_PROC = Path(__file__).resolve().parent / "producer_proc.py"


# ---------------------------------------------------------------- helpers


def sample(n: int = 5, start: int = 0) -> pa.Table:
    """A small Arrow table with an int, a float, a string and a timestamp column."""
    t0 = dt.datetime(2026, 3, 1, 12, 0)
    return pa.table({
        "id": pa.array(range(start, start + n), pa.int64()),
        "value": pa.array([i / 4 for i in range(start, start + n)], pa.float64()),
        "name": pa.array([f"n-{i}" for i in range(start, start + n)], pa.string()),
        "ts": pa.array([t0 + dt.timedelta(minutes=i) for i in range(start, start + n)],
                       pa.timestamp("us")),
    })


def run_dirs(root: Path, table: str) -> list[Path]:
    """The run folders under ``staging/<table>``, sorted by name."""
    folder = root / "staging" / table
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def temp_files(root: Path) -> list[Path]:
    """Every in-progress ``*.tmp-*`` file anywhere under ``root``."""
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def read_manifest(run: Path) -> dict[str, Any]:
    """The manifest of a run folder as plain JSON."""
    return json.loads((run / MANIFEST).read_bytes())


def check_committed_run(run: Path) -> dict[str, Any]:
    """Assert a committed run's manifest matches the folder byte for byte; return it.

    The manifest lists exactly the data files on disk, with their row counts, sizes and
    sha256, and the schema every file has.
    """
    doc = read_manifest(run)
    Manifest.from_json((run / MANIFEST).read_bytes())  # the loader's parser accepts it
    assert doc["format"] == "lake.manifest/1"
    assert doc["run_id"] == run.name
    assert doc["table"] == run.parent.name
    on_disk = sorted(p.name for p in run.iterdir() if p.name.endswith(".parquet"))
    assert sorted(f["name"] for f in doc["files"]) == on_disk
    assert on_disk, "a committed run has at least one file"
    for entry in doc["files"]:
        data = (run / entry["name"]).read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["rows"] == pq.ParquetFile(run / entry["name"]).metadata.num_rows
        schema = pq.read_schema(run / entry["name"])
        assert doc["schema"] == [{"name": f.name, "type": str(f.type)} for f in schema]
    assert doc["rows"] == sum(f["rows"] for f in doc["files"])
    assert doc["bytes"] == sum(f["bytes"] for f in doc["files"])
    return doc


def only_run(root: Path, table: str) -> Path:
    """The single run folder of ``table``."""
    runs = run_dirs(root, table)
    assert len(runs) == 1, runs
    return runs[0]


def read_run(run: Path) -> pa.Table:
    """All data files of a run, in manifest order, as one table."""
    doc = read_manifest(run)
    return pa.concat_tables([pq.read_table(run / f["name"]) for f in doc["files"]])


# ---------------------------------------------------------------- stage_run / stage


def test_stage_run_writes_files_then_manifest_last(tmp_path: Path) -> None:
    """Data files reach their final names inside the block; the manifest appears on exit.

    A file is fsynced and renamed on a background thread while the next one is encoded, so
    inside the block a file may still be under its temp name; commit waits for all of them.
    """
    root = tmp_path / "root"
    with stage_run(root, "events", producer="web-1") as run:
        first = run.write(sample(5))
        second = run.write(sample(7, start=5))
        folder = root / "staging" / "events" / run.run_id
        names = sorted(p.name.split(".tmp-")[0] for p in folder.iterdir())
        assert names == ["part-00000.parquet", "part-00001.parquet"]
        assert not (folder / MANIFEST).exists()
    assert sorted(p.name for p in folder.iterdir()) == [
        MANIFEST, "part-00000.parquet", "part-00001.parquet"]
    assert pq.read_table(folder / "part-00000.parquet").equals(sample(5))
    doc = check_committed_run(folder)
    data_mtimes = [(folder / f["name"]).stat().st_mtime_ns for f in doc["files"]]
    assert (folder / MANIFEST).stat().st_mtime_ns >= max(data_mtimes)
    assert [f["rows"] for f in doc["files"]] == [5, 7] == [first.rows, second.rows]
    assert [f["sha256"] for f in doc["files"]] == [first.sha256, second.sha256]
    assert doc["producer"] == "web-1"
    assert doc["schema"] == [{"name": "id", "type": "int64"}, {"name": "value", "type": "double"},
                             {"name": "name", "type": "string"},
                             {"name": "ts", "type": "timestamp[us]"}]
    assert read_run(folder).equals(pa.concat_tables([sample(5), sample(7, start=5)]))
    assert run.manifest is not None and run.manifest.rows == 12
    assert temp_files(root) == []


def test_stage_one_file_run(tmp_path: Path) -> None:
    """`stage` commits a one-file run and returns its manifest."""
    root = tmp_path / "root"
    manifest = stage(root, "plain", sample(3), producer="cron.nightly")
    folder = only_run(root, "plain")
    assert manifest is not None and manifest.run_id == folder.name
    doc = check_committed_run(folder)
    assert len(doc["files"]) == 1 and doc["rows"] == 3
    assert pq.read_table(folder / doc["files"][0]["name"]).equals(sample(3))
    assert temp_files(root) == []


def test_stage_accepts_str_and_path_roots(tmp_path: Path) -> None:
    """The root may be a str or a Path."""
    stage(str(tmp_path / "a"), "plain", sample(2))
    stage(tmp_path / "b", "plain", sample(2))
    check_committed_run(only_run(tmp_path / "a", "plain"))
    check_committed_run(only_run(tmp_path / "b", "plain"))


def test_files_are_snappy_by_default_and_compression_is_a_choice(tmp_path: Path) -> None:
    """Staged files use snappy (fastest to decode for the loader); a producer may pick another
    codec per file, and an unknown codec is refused before anything is written."""
    with stage_run(tmp_path, "plain") as run:
        run.write(sample(4))
        run.write(sample(4, start=4), compression="zstd")
        with pytest.raises(StagingError, match="compression 'lzma'"):
            run.write(sample(1), compression="lzma")
    folder = only_run(tmp_path, "plain")
    doc = check_committed_run(folder)
    assert [f["name"] for f in doc["files"]] == ["part-00000.parquet", "part-00001.parquet"]
    codecs = [pq.ParquetFile(folder / f["name"]).metadata.row_group(0).column(0).compression
              for f in doc["files"]]
    assert codecs == ["SNAPPY", "ZSTD"]
    assert read_run(folder).equals(pa.concat_tables([sample(4), sample(4, start=4)]))


@pytest.mark.parametrize("buffer_max", [0, staging.writer.BUFFER_MAX_BYTES])
def test_encoded_in_memory_or_streamed_the_manifest_matches_the_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, buffer_max: int) -> None:
    """Small tables are encoded into memory and hashed while the file is fsynced; bigger ones
    stream through a hashing writer. Both give the same file, size and sha256."""
    monkeypatch.setattr(staging.writer, "BUFFER_MAX_BYTES", buffer_max)
    with stage_run(tmp_path, "plain") as run:
        entries = [run.write(sample(50, start=50 * i)) for i in range(3)]
    doc = check_committed_run(only_run(tmp_path, "plain"))
    assert [f["sha256"] for f in doc["files"]] == [e.sha256 for e in entries]
    assert [f["bytes"] for f in doc["files"]] == [e.bytes for e in entries]
    assert temp_files(tmp_path) == []


def test_failed_data_file_leaves_no_manifest_nor_its_temp_file(tmp_path: Path) -> None:
    """The manifest is written under a temp name while data files are fsynced; when a data
    file cannot take its name (here a folder is in the way), commit fails and removes it."""
    with pytest.raises(OSError):
        with stage_run(tmp_path, "plain") as run:
            (tmp_path / "staging" / "plain" / run.run_id / "part-00000.parquet").mkdir()
            run.write(sample(5))
    folder = only_run(tmp_path, "plain")
    assert not (folder / MANIFEST).exists()
    assert not any(p.name.startswith(MANIFEST) for p in folder.iterdir())
    assert run.manifest is None


def test_write_record_batch(tmp_path: Path) -> None:
    """A RecordBatch is staged as a one-batch table."""
    batch = sample(4).to_batches()[0]
    assert isinstance(batch, pa.RecordBatch)
    with stage_run(tmp_path, "plain") as run:
        run.write(batch)
    folder = only_run(tmp_path, "plain")
    check_committed_run(folder)
    assert read_run(folder).equals(pa.Table.from_batches([batch]))


def test_write_pandas_dataframe_without_index(tmp_path: Path) -> None:
    """A pandas DataFrame is staged without its index, even a non-default one."""
    frame = pd.DataFrame({"id": [1, 2, 3, 4], "name": ["a", "b", "c", "d"],
                          "value": [0.5, None, 2.5, 3.5]})
    filtered = frame[frame["id"] % 2 == 0]  # index [1, 3]
    with stage_run(tmp_path, "plain", producer="notebook") as run:
        run.write(frame)
        run.write(filtered)  # same columns and types: one schema, pandas metadata aside
    folder = only_run(tmp_path, "plain")
    doc = check_committed_run(folder)
    assert [c["name"] for c in doc["schema"]] == ["id", "name", "value"]
    back = read_run(folder)
    assert back.column_names == ["id", "name", "value"]
    assert back.column("id").to_pylist() == [1, 2, 3, 4, 2, 4]
    assert back.column("value").to_pylist() == [0.5, None, 2.5, 3.5, None, 3.5]


def test_write_polars_dataframe(tmp_path: Path) -> None:
    """A polars DataFrame is staged with its values and types."""
    frame = pl.DataFrame({"id": [1, 2, 3], "name": ["x", None, "z"],
                          "ts": [dt.datetime(2026, 1, 1), dt.datetime(2026, 1, 2), None]})
    with stage_run(tmp_path, "plain") as run:
        run.write(frame)
    folder = only_run(tmp_path, "plain")
    check_committed_run(folder)
    back = read_run(folder)
    assert back.column_names == ["id", "name", "ts"]
    assert back.to_pylist() == frame.to_arrow().to_pylist()
    again = pl.from_arrow(back)
    assert isinstance(again, pl.DataFrame) and again.equals(frame)


def test_write_unknown_data_raises(tmp_path: Path) -> None:
    """Something that is not a table is refused with StagingError; nothing is committed."""
    with pytest.raises(StagingError), stage_run(tmp_path, "plain") as run:
        run.write([{"id": 1}])
    assert not any((r / MANIFEST).exists() for r in run_dirs(tmp_path, "plain"))


def test_exception_abandons_run_and_propagates(tmp_path: Path) -> None:
    """An exception in the block leaves no manifest, an abandoned marker, and re-raises."""

    class ProducerCrashError(RuntimeError):
        pass

    with pytest.raises(ProducerCrashError, match="upstream went away"), \
            stage_run(tmp_path, "plain", producer="svc") as run:
        run.write(sample(3))
        raise ProducerCrashError("upstream went away")
    folder = tmp_path / "staging" / "plain" / run.run_id
    assert folder.is_dir()
    assert not (folder / MANIFEST).exists()
    marker = json.loads((folder / ABANDONED).read_bytes())
    assert marker["run_id"] == run.run_id
    assert "ProducerCrashError" in marker["error"] and "upstream went away" in marker["error"]
    assert run.manifest is None
    assert temp_files(tmp_path) == []
    with pytest.raises(StagingError):
        run.write(sample(1))  # an abandoned run takes no more files


def test_keyboard_interrupt_abandons_run(tmp_path: Path) -> None:
    """A BaseException (Ctrl-C) abandons the run too."""
    with pytest.raises(KeyboardInterrupt), stage_run(tmp_path, "plain") as run:
        run.write(sample(2))
        raise KeyboardInterrupt
    folder = tmp_path / "staging" / "plain" / run.run_id
    assert not (folder / MANIFEST).exists()
    assert (folder / ABANDONED).exists()


def test_run_without_writes_commits_nothing(tmp_path: Path) -> None:
    """Leaving the block without a write commits nothing and leaves no run folder."""
    with stage_run(tmp_path, "plain") as run:
        pass
    assert run.manifest is None
    assert list(tmp_path.rglob(MANIFEST)) == []
    assert run_dirs(tmp_path, "plain") == []


def test_write_after_commit_raises(tmp_path: Path) -> None:
    """A committed run is closed: a later write raises and the manifest is unchanged."""
    with stage_run(tmp_path, "plain") as run:
        run.write(sample(2))
    folder = only_run(tmp_path, "plain")
    before = (folder / MANIFEST).read_bytes()
    with pytest.raises(StagingError):
        run.write(sample(2))
    assert (folder / MANIFEST).read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "part-00000.parquet"]


@pytest.mark.parametrize("table", ["../x", "a;drop", "1abc", "", "a/b", "a b", "x" * 64,
                                   "événements", "..", "a-b"])
def test_invalid_table_name_raises(tmp_path: Path, table: str) -> None:
    """Unsafe table names are refused before anything touches the disk."""
    root = tmp_path / "root"
    with pytest.raises(StagingError), stage_run(root, table):
        pytest.fail("the block must not run")
    with pytest.raises(StagingError):
        stage(root, table, sample(1))
    assert not root.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("producer", ["", "../p", "a/b", "a b", "-x", ".hidden", "..",
                                      "a..b", "p" * 65, "web;1"])
def test_invalid_producer_name_raises(tmp_path: Path, producer: str) -> None:
    """Producer names that are unsafe in a run id raise ValueError; nothing is created."""
    with pytest.raises(ValueError), stage_run(tmp_path / "root", "plain", producer=producer):
        pytest.fail("the block must not run")
    with pytest.raises(ValueError):
        stage(tmp_path / "root", "plain", sample(1), producer=producer)
    assert not (tmp_path / "root").exists()
    assert list(tmp_path.rglob("*.parquet")) == []


@pytest.mark.parametrize("second", [
    sample(2).cast(pa.schema([("id", pa.int32()), ("value", pa.float64()),
                              ("name", pa.string()), ("ts", pa.timestamp("us"))])),
    sample(2).drop_columns(["name"]),
    sample(2).append_column("extra", pa.array([1, 2])),
    sample(2).select(["value", "id", "name", "ts"]),
], ids=["type", "missing_column", "extra_column", "order"])
def test_mismatched_schemas_in_one_run_raise(tmp_path: Path, second: pa.Table) -> None:
    """Every file of a run has one schema: a different second file raises and abandons."""
    with pytest.raises(StagingError), stage_run(tmp_path, "plain") as run:
        run.write(sample(3))
        run.write(second)
    folder = tmp_path / "staging" / "plain" / run.run_id
    assert not (folder / MANIFEST).exists()
    assert (folder / ABANDONED).exists()
    assert sorted(p.name for p in folder.glob("*.parquet")) == ["part-00000.parquet"]
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("column", [
    'a"b', "x; DROP TABLE t; --", "a b", "", "1col", "_lake_run_id", "_lake_partition",
    "_LAKE_x", "_lake_", "col'", "a.b", "x" * 64,
])
def test_unsafe_or_reserved_column_names_raise(tmp_path: Path, column: str) -> None:
    """Column names with quotes or SQL, or starting with ``_lake_``, are refused."""
    table = pa.table({"id": [1, 2], column: [3, 4]})
    with pytest.raises(StagingError):
        stage(tmp_path, "plain", table)
    assert list(tmp_path.rglob(MANIFEST)) == []
    assert list(tmp_path.rglob("*.parquet")) == []
    assert temp_files(tmp_path) == []


def test_column_names_repeating_ignoring_case_raise(tmp_path: Path) -> None:
    """Two columns that differ only in case would collide in DuckDB: refused."""
    table = pa.table({"Amount": [1], "amount": [2]})
    with pytest.raises(StagingError):
        stage(tmp_path, "plain", table)
    assert list(tmp_path.rglob(MANIFEST)) == []


def test_run_ids_sort_by_time(tmp_path: Path) -> None:
    """Run ids parse, name their producer, and sort in the order the runs were created."""
    ids: list[str] = []
    for i, producer in enumerate(["zeta", "alpha", "mid-1", "alpha", "b.c", "zeta"] * 2):
        manifest = stage(tmp_path, "plain", sample(1, start=i), producer=producer)
        assert manifest is not None
        ids.append(manifest.run_id)
    assert len(set(ids)) == len(ids)
    assert sorted(ids) == ids
    parts = [parse_run_id(r) for r in ids]
    assert all(p is not None for p in parts)
    times = [p.created_at for p in parts if p is not None]
    assert times == sorted(times)
    now = dt.datetime.now(dt.UTC)
    assert all(now - dt.timedelta(minutes=5) < t <= now for t in times)
    assert [p.producer for p in parts if p is not None][:3] == ["zeta", "alpha", "mid-1"]
    assert [d.name for d in run_dirs(tmp_path, "plain")] == ids


def test_idempotency_key_is_stored_in_manifest(tmp_path: Path) -> None:
    """The key a producer passes is in the manifest; without one the key is null."""
    stage(tmp_path, "plain", sample(1), producer="cron", key="nightly-2026-03-01")
    with stage_run(tmp_path, "logs", producer="cron") as run:
        run.write(sample(1))
    keyed = check_committed_run(only_run(tmp_path, "plain"))
    unkeyed = check_committed_run(only_run(tmp_path, "logs"))
    assert keyed["key"] == "nightly-2026-03-01"
    assert unkeyed["key"] is None
    parsed = Manifest.from_json((only_run(tmp_path, "plain") / MANIFEST).read_bytes())
    assert parsed.key == "nightly-2026-03-01"


@pytest.mark.parametrize("key", ["", "k" * 513])
def test_invalid_idempotency_key_raises(tmp_path: Path, key: str) -> None:
    """An empty or huge key is refused."""
    with pytest.raises(StagingError):
        stage(tmp_path, "plain", sample(1), key=key)
    assert list(tmp_path.rglob(MANIFEST)) == []


def test_committed_and_abandoned_runs_load_correctly(lake: Lake) -> None:
    """Only committed runs load; an abandoned and an empty run are left out."""
    stage(lake.root, "plain", sample(3), producer="ok")
    with pytest.raises(RuntimeError), stage_run(lake.root, "plain", producer="bad") as bad:
        bad.write(sample(100, start=100))
        raise RuntimeError("boom")
    with stage_run(lake.root, "plain", producer="empty"):
        pass
    report = lake.load()
    assert report.count("loaded") == 1 and not report.rejected
    assert lake.rows("SELECT count(*) FROM plain") == [(3,)]
    assert bad.run_id not in lake.ledger()
    assert bad.run_id in lake.staged("plain")


# ---------------------------------------------------------------- crash: SIGKILL a producer


def _wait_ready(proc: subprocess.Popen[str]) -> None:
    """Wait for the producer's ``ready`` line (its imports are done)."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.poll())


def test_sigkill_producer_leaves_no_torn_file_and_loads_only_committed(
        lake: Lake) -> None:
    """SIGKILL a producer at random moments; only complete, committed runs ever load."""
    rng = random.Random(20261123)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    committed_lines = 0
    for iteration in range(5):
        proc = subprocess.Popen(
            [sys.executable, str(PRODUCER_PROC), str(lake.root), "--table", "plain",
             "--files", "4", "--rows", "40000", "--seed", str(iteration),
             "--producer", f"crashy-{iteration}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        early = ""
        try:
            _wait_ready(proc)
            if iteration == 0:
                # Let one run commit first whatever the machine's load (a busy machine can
                # take longer than the random delay for a whole run), then kill at random.
                assert proc.stdout is not None
                early = proc.stdout.readline()
            time.sleep(rng.uniform(0.05, 0.9))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=20)
        assert proc.returncode == -signal.SIGKILL, err
        committed_lines += (early + out).count("committed ")

    runs = run_dirs(lake.root, "plain")
    committed = [r for r in runs if (r / MANIFEST).exists()]
    uncommitted = [r for r in runs if not (r / MANIFEST).exists()]
    # Each killed producer was almost always inside a run, and some runs finished first.
    assert uncommitted, "no kill landed inside a run; the test exercised nothing"
    assert len(committed) >= committed_lines >= 1

    # Invariant 1: every non-temp Parquet file is whole.
    for path in lake.root.joinpath("staging").rglob("*.parquet"):
        assert ".tmp-" not in path.name
        assert pq.read_table(path).num_rows == 40000
    for path in lake.root.joinpath("staging").rglob("*"):
        if ".tmp-" in path.name:
            assert path.parent in uncommitted  # temp files only in runs that never committed

    # Invariant 2: every committed run matches its manifest byte for byte.
    expected_rows = 0
    for run in committed:
        doc = check_committed_run(run)
        assert len(doc["files"]) == 4
        expected_rows += doc["rows"]
    for run in uncommitted:
        assert not (run / ABANDONED).exists()  # SIGKILL runs no cleanup code

    report = lake.load()
    assert not report.rejected
    assert sorted(r.run_id for r in report.runs if r.status == "loaded") == sorted(
        r.name for r in committed)
    assert lake.rows("SELECT count(*) FROM plain") == [(expected_rows,)]
    assert set(lake.ledger()) == {r.name for r in committed}
    assert all(v == "loaded" for v in lake.ledger().values())
    # Uncommitted runs stay where they are, unloaded; a second load changes nothing.
    assert sorted(lake.staged("plain")) == sorted(r.name for r in uncommitted)
    assert lake.load().count("loaded") == 0
    assert lake.rows("SELECT count(*) FROM plain") == [(expected_rows,)]


# ---------------------------------------------------------------- a producer inside a lake root


@pytest.mark.parametrize("how", ["dash_c", "script_in_root"])
def test_producer_run_from_inside_lake_root_imports_real_package(
        tmp_path: Path, how: str) -> None:
    """With cwd = a lake root holding ``staging/``, ``import staging`` finds the package."""
    root = make_root(tmp_path / "lake")
    (root / "staging" / "plain").mkdir(parents=True)  # what a root looks like once used
    code = (
        "import json, staging, pyarrow as pa\n"
        "from staging import stage\n"
        "m = stage('.', 'plain', pa.table({'id': [1, 2, 3]}), producer='inside')\n"
        "print(json.dumps({'file': staging.__file__, 'run_id': m.run_id}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if how == "dash_c":
        args = [sys.executable, "-c", code]
    else:
        (root / "produce.py").write_text(code)
        args = [sys.executable, "produce.py"]
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["file"] is not None
    assert Path(result["file"]).resolve() == (REPO / "staging" / "__init__.py").resolve()
    assert Path(staging.__file__).resolve() == Path(result["file"]).resolve()
    run = root / "staging" / "plain" / result["run_id"]
    doc = check_committed_run(run)
    assert doc["rows"] == 3 and doc["producer"] == "inside"


def test_verification_yields_every_run_in_order_across_chunk_sizes(lake: Lake) -> None:
    """The loader verifies small runs in chunks on one thread and big runs one per task; a
    mix of both, with corrupt runs inside chunks, comes back in staging order, each run with
    its own outcome."""
    from lakehouse.staged import VerifiedRun, discover_runs
    from loader.prefetch import verify_ahead

    corrupt = set()
    big = set()
    for i in range(150):
        rows = 40_000 if i % 37 == 5 else 3  # a few runs over the 256 KiB "small" line
        table = pa.table({"id": pa.array(range(i * 100_000, i * 100_000 + rows), pa.int64()),
                          "blob": pa.array([f"{i}-{j}-" + "x" * 8 for j in range(rows)])})
        manifest = stage(lake.root, "plain", table, producer=f"p{i:03d}")
        assert manifest is not None
        if rows > 3:
            big.add(manifest.run_id)
        if i % 17 == 3:
            folder = lake.root / "staging" / "plain" / manifest.run_id
            (folder / manifest.files[0].name).write_bytes(b"not parquet at all")
            corrupt.add(manifest.run_id)
    config = lake.config()
    refs = discover_runs(config.paths)
    seen = list(verify_ahead(refs, config))
    assert [ref.run_id for ref, _ in seen] == [ref.run_id for ref in refs]
    rejected = {ref.run_id for ref, outcome in seen if not isinstance(outcome, VerifiedRun)}
    assert rejected == corrupt
    for ref, outcome in seen:
        if isinstance(outcome, VerifiedRun):
            assert outcome.ref == ref
            assert outcome.rows == (40_000 if ref.run_id in big else 3)
    assert big - corrupt and len(corrupt) == 9
