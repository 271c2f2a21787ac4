"""Staging in an object store: producers PUT to S3, the loader reads and moves runs there.

Against moto's S3 server over HTTP (tests/s3server.py). The warehouse stays on local disk
under the lake root; ``[lake] staging_root`` points staging/archive/quarantine at the bucket.
"""

# ruff: noqa: F811  (the s3 fixtures are imported by name, then requested as arguments)
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import LAKE_TOML, REPO, Lake, lake_cli, make_root
from s3server import S3, s3, s3_endpoint  # noqa: F401  (fixtures)

from lakehouse.config import load_config
from lakehouse.errors import ConfigError, StagingUnavailableError
from lakehouse.object_area import ObjectArea
from staging import stage, stage_run


def s3_lake(tmp_path: Path, s3: S3, extra: str = "") -> Lake:
    """A local lake root whose staging lives in the test bucket."""
    toml = LAKE_TOML.replace("[lake]\n", textwrap.dedent(f"""\
        [lake]
        staging_root = "{s3.url}"
        staging_options = {{ endpoint_url = "{s3.endpoint}" }}
        {extra}
        """), 1)
    lk = Lake(make_root(tmp_path / "lake", toml))
    lk.init()
    return lk


def logs(ids: list[int], day: str = "2026-03-01") -> pa.Table:
    ts = pa.array([f"{day}T10:00:00"] * len(ids)).cast(pa.timestamp("us"))
    return pa.table({"id": pa.array(ids, pa.int64()), "ts": ts,
                     "msg": [f"m{i}" for i in ids]})


def test_a_producer_puts_final_names_and_the_manifest_last(s3: S3) -> None:
    with stage_run(s3.url, "logs", producer="p1", storage_options=s3.options) as run:
        run.write(logs([1, 2]))
        run.write(logs([3]))
        # Before the manifest the run is objects without a manifest: never loaded.
        assert s3.keys() == [f"staging/logs/{run.run_id}/part-00000.parquet",
                             f"staging/logs/{run.run_id}/part-00001.parquet"]
        assert ObjectArea.at(s3.url, s3.options).discover() == []
    keys = s3.keys()
    assert keys == [f"staging/logs/{run.run_id}/{name}" for name in
                    ("_manifest.json", "part-00000.parquet", "part-00001.parquet")]
    assert not [k for k in keys if ".tmp-" in k]  # one PUT per object, no temp names
    manifest = json.loads(s3.fs.cat_file(f"{s3.bucket}/lake/{keys[0]}"))
    assert [f["name"] for f in manifest["files"]] == ["part-00000.parquet", "part-00001.parquet"]
    refs = ObjectArea.at(s3.url, s3.options).discover()
    assert [(r.table, r.run_id) for r in refs] == [("logs", run.run_id)]


def test_the_loader_loads_runs_staged_in_s3_and_archives_them_there(tmp_path: Path,
                                                                     s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    first = stage(s3.url, "logs", logs([1, 2, 3]), storage_options=s3.options)
    second = stage(s3.url, "logs", logs([4, 5], "2026-03-02"), storage_options=s3.options)
    assert first and second
    report = lk.load()
    assert [o.status for o in report.runs] == ["loaded", "loaded"]
    assert lk.rows("SELECT id FROM logs ORDER BY id") == [(i,) for i in range(1, 6)]
    assert s3.keys("staging") == []
    assert s3.runs("archive", "logs") == sorted([first.run_id, second.run_id])
    # The archived copy is complete: its manifest and its data, byte for byte.
    assert s3.keys(f"archive/logs/{first.run_id}") == [
        f"archive/logs/{first.run_id}/_manifest.json",
        f"archive/logs/{first.run_id}/part-00000.parquet"]
    assert not (lk.root / "staging" / "logs").exists()  # nothing went to local staging
    assert lk.load().runs == []  # loaded exactly once


def test_a_bad_run_in_s3_is_quarantined_there_with_its_reason(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    good = stage(s3.url, "logs", logs([1]), storage_options=s3.options)
    bad = stage(s3.url, "logs", logs([2]), storage_options=s3.options)
    assert good and bad
    # Corrupt the bad run's data after its commit (the manifest's checksum no longer matches).
    key = f"{s3.bucket}/lake/staging/logs/{bad.run_id}/part-00000.parquet"
    s3.fs.pipe_file(key, b"PAR1 not really parquet")
    result = lake_cli(lk.root, "--staging-root", s3.url, "load", "--json", env=s3.env)
    assert result.returncode == 3, result.stderr
    assert lk.rows("SELECT id FROM logs") == [(1,)]
    assert s3.runs("quarantine", "logs") == [bad.run_id]
    reason = json.loads(s3.fs.cat_file(
        f"{s3.bucket}/lake/quarantine/logs/{bad.run_id}/_reason.json"))
    assert reason["code"] == "manifest_mismatch"
    assert s3.keys("staging") == []
    assert s3.runs("archive", "logs") == [good.run_id]


def test_drop_rows_puts_the_rejected_rows_in_s3_quarantine(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    ts = pa.array(["2026-03-01T00:00:00"] * 3).cast(pa.timestamp("us"))
    data = pa.table({"sensor": ["s-1", "bad", "s-3"], "ts": ts, "celsius": [1.0, 2.0, 3.0]})
    manifest = stage(s3.url, "readings", data, storage_options=s3.options)
    assert manifest
    lk.load()
    assert lk.rows("SELECT sensor FROM readings ORDER BY 1") == [("s-1",), ("s-3",)]
    keys = s3.keys(f"quarantine/readings/{manifest.run_id}")
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["_reason.json",
                                                         "_rejected_rows.parquet"]
    assert s3.runs("archive", "readings") == [manifest.run_id]


def test_retention_zero_deletes_loaded_runs_from_the_bucket(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    (lk.root / "lake.toml").write_text(
        (lk.root / "lake.toml").read_text().replace("retention_days = 7", "retention_days = 0"))
    stage(s3.url, "logs", logs([1]), storage_options=s3.options)
    lk.load()
    assert s3.keys() == []
    assert lk.rows("SELECT count(*) FROM logs") == [(1,)]


def test_a_half_finished_move_is_finished_by_the_next_load(tmp_path: Path, s3: S3) -> None:
    """The state a crash between the copy and the last delete leaves: the run is whole in
    archive/, and staging still holds its manifest (deleted last) but not its data."""
    lk = s3_lake(tmp_path, s3)
    manifest = stage(s3.url, "logs", logs([1, 2]), storage_options=s3.options)
    assert manifest
    result = lake_cli(lk.root, "load", env={**s3.env, "LAKE_TEST_CRASH_AT": "load.mid_archive"})
    assert result.returncode == -signal.SIGKILL
    run = f"{s3.bucket}/lake/staging/logs/{manifest.run_id}"
    archived = f"{s3.bucket}/lake/archive/logs/{manifest.run_id}"
    # The crash hit after the first run's move; rebuild the in-between state by hand.
    if not s3.fs.exists(f"{run}/_manifest.json"):
        s3.fs.copy(f"{archived}/_manifest.json", f"{run}/_manifest.json")
    s3.fs.invalidate_cache()
    report = lk.load()
    assert [o.status for o in report.runs] == ["recovered"]
    assert lk.rows("SELECT count(*) FROM logs") == [(2,)]
    assert s3.keys("staging") == []
    assert s3.keys(f"archive/logs/{manifest.run_id}") == [
        f"archive/logs/{manifest.run_id}/_manifest.json",
        f"archive/logs/{manifest.run_id}/part-00000.parquet"]


@pytest.mark.parametrize("point", ["load.after_verify", "load.before_commit",
                                   "load.after_commit", "load.mid_archive",
                                   "load.after_archive"])
def test_a_loader_killed_at_any_point_loads_s3_runs_exactly_once(tmp_path: Path, s3: S3,
                                                                  point: str) -> None:
    lk = s3_lake(tmp_path, s3, "batch_max_runs = 2")
    staged = [stage(s3.url, "logs", logs([10 * i, 10 * i + 1]), storage_options=s3.options)
              for i in range(5)]
    killed = lake_cli(lk.root, "load", env={**s3.env, "LAKE_TEST_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = lake_cli(lk.root, "load", "--json", env=s3.env)
    assert again.returncode == 0, again.stderr
    assert lk.rows("SELECT count(*), count(DISTINCT id) FROM logs") == [(10, 10)]
    assert s3.keys("staging") == []
    assert s3.runs("archive", "logs") == sorted(m.run_id for m in staged if m)
    for m in staged:
        assert m and len(s3.keys(f"archive/logs/{m.run_id}")) == 2  # data + manifest


PRODUCER = """
import sys, time
import pyarrow as pa
from staging import stage_run
with stage_run(sys.argv[1], "logs", producer="killed") as run:
    run.write(pa.table({"id": pa.array([1], pa.int64()),
                        "ts": pa.array([0], pa.timestamp("us")), "msg": ["x"]}))
    print(run.run_id, flush=True)
    time.sleep(60)
"""


def test_a_producer_killed_mid_run_leaves_nothing_loadable(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, s3.url], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, **s3.env}, cwd=str(REPO))
    assert proc.stdout is not None
    run_id = proc.stdout.readline().strip()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert s3.keys("staging") == [f"staging/logs/{run_id}/part-00000.parquet"]
    assert lk.load().runs == []
    assert ObjectArea.at(s3.url, s3.options).uncommitted() == {
        ("logs", run_id): {"part-00000.parquet": s3.fs.size(
            f"{s3.bucket}/lake/staging/logs/{run_id}/part-00000.parquet")}}


def test_an_unreachable_store_fails_the_load_and_moves_nothing(tmp_path: Path, s3: S3) -> None:
    lk = s3_lake(tmp_path, s3)
    stage(s3.url, "logs", logs([1]), storage_options=s3.options)
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    toml = (lk.root / "lake.toml").read_text().replace(s3.endpoint, dead)
    (lk.root / "lake.toml").write_text(toml)
    with pytest.raises(StagingUnavailableError, match="cannot list"):
        lk.load()
    (lk.root / "lake.toml").write_text(toml.replace(dead, s3.endpoint))
    assert len(s3.keys("staging")) == 2  # still staged, not quarantined
    assert [o.status for o in lk.load().runs] == ["loaded"]


def test_root_must_be_local_and_staging_root_must_be_a_url(tmp_path: Path, s3: S3) -> None:
    result = subprocess.run([sys.executable, "-m", "loader.cli", "--root", s3.url, "load"],
                            capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 2
    assert "--staging-root s3://" in result.stderr
    assert not list(tmp_path.iterdir())  # created nothing locally
    root = make_root(tmp_path / "lake", LAKE_TOML.replace(
        "[lake]\n", '[lake]\nstaging_root = "/var/staging"\n', 1))
    with pytest.raises(ConfigError, match="object store URL"):
        load_config(root)
    bad_cli = lake_cli(root, "--staging-root", "relative/dir", "load")
    assert bad_cli.returncode == 2 and "object store URL" in bad_cli.stderr


def test_staging_root_from_the_environment(tmp_path: Path, s3: S3) -> None:
    lk = Lake(make_root(tmp_path / "lake"))
    lk.init()
    stage(s3.url, "logs", logs([7]), storage_options=s3.options)
    result = lake_cli(lk.root, "load", "--json", env={**s3.env, "LAKE_STAGING_ROOT": s3.url})
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    assert [r["status"] for r in out["runs"]] == ["loaded"]
    assert lk.rows("SELECT id FROM logs") == [(7,)]
