"""A run staged under a run id the ledger already knows (issue 12, item 7).

The ledger's row describes a staged run only when the staged manifest is the one it recorded
(``loader/recovery.py``). Another run under a loaded run's id is quarantined as
``run_id_reused`` and kept byte for byte, never archived or deleted, whatever
``retention_days`` says; a run under a quarantined or skipped id is verified and loaded like
a new run; the run the ledger recorded, back in staging after a crash, only finishes its
move. Real lake roots, real DuckDB, the real CLI where the exit code matters, and a real
loader SIGKILLed at the crash points between the ledger commit and the move.
"""

# ruff: noqa: F811  (the s3 fixtures are imported by name, then requested as arguments)
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import LAKE_TOML, Lake, hand_run_id, lake_cli, make_root, write_run_by_hand
from s3server import S3, s3, s3_endpoint  # noqa: F401  (fixtures)
from test_bad_input import events_table, readings_table
from test_crash import batched_toml
from test_hostile import CliLoad, WarehouseView, cli_load, good_table, temp_files

LOGS = "logs"
RUN = hand_run_id(1, "reused")


def lake_at(tmp_path: Path, *, retention_days: int = 7, toml: str = LAKE_TOML) -> Lake:
    lk = Lake(make_root(tmp_path / "lake", toml=toml.replace(
        "retention_days = 7", f"retention_days = {retention_days}")))
    lk.init()
    return lk


def files_of(folder: Path) -> dict[str, bytes | str]:
    """A run folder's files by name: bytes, or ``-> target`` for a symlink (never followed)."""
    return {p.name: f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.iterdir())}


def restage(root: Path, table: str, run_id: str, n: int) -> dict[str, bytes | str]:
    """Stage a valid run of other rows (keys 10n, 10n + 1) under ``run_id``; its files."""
    folder = root / "staging" / table / run_id
    shutil.rmtree(folder, ignore_errors=True)
    write_run_by_hand(root, table, run_id, {"part-00000.parquet": good_table(table, n)})
    return files_of(folder)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under the root but the lock files, with its bytes."""
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith("lake.lock")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ledger_row(lake: Lake, table: str, run_id: str) -> list[tuple[Any, ...]]:
    return lake.rows("SELECT status, reason_code, manifest_sha256 FROM meta.staged_runs "
                     f"WHERE table_name = '{table}' AND run_id = '{run_id}'")


def keys_of(lake: Lake, table: str, run_id: str) -> list[int]:
    with WarehouseView(lake) as view:
        return [r[0] for r in view.rows(f'SELECT id FROM "{table}" WHERE _lake_run_id = ? '
                                        "ORDER BY id", [run_id])]


def quarantined_with(lake: Lake, table: str, code: str) -> dict[str, dict[str, bytes | str]]:
    """The quarantine folders of ``table`` whose reason has ``code``: folder -> files."""
    found = {}
    for name in lake.quarantined(table):
        folder = lake.root / "quarantine" / table / name
        if json.loads((folder / "_reason.json").read_text())["code"] == code:
            found[name] = {k: v for k, v in files_of(folder).items() if k != "_reason.json"}
    return found


def statuses(load: CliLoad) -> dict[str, tuple[str, str | None]]:
    assert load.payload is not None, load.stderr
    return {r["run_id"]: (r["status"], r["reason_code"]) for r in load.payload["runs"]}


# -- a loaded run's id reused ------------------------------------------------------------------
@pytest.mark.parametrize("retention_days", [0, 7])
def test_reused_id_of_a_loaded_run_is_quarantined_and_kept(tmp_path: Path,
                                                           retention_days: int) -> None:
    lake = lake_at(tmp_path, retention_days=retention_days)
    write_run_by_hand(lake.root, LOGS, RUN, {"part-00000.parquet": good_table(LOGS, 1)})
    recorded = sha256(lake.root / "staging" / LOGS / RUN / "_manifest.json")
    first = cli_load(lake)
    assert first.returncode == 0 and statuses(first) == {RUN: ("loaded", None)}, first.stderr
    archived = files_of(lake.root / "archive" / LOGS / RUN) if retention_days else None

    staged = restage(lake.root, LOGS, RUN, 2)  # other rows, another manifest, the same id
    good = hand_run_id(900, "good")
    write_run_by_hand(lake.root, LOGS, good, {"part-00000.parquet": good_table(LOGS, 900)})
    load = cli_load(lake)

    assert load.returncode == 3, load.stderr  # something was rejected
    assert statuses(load) == {RUN: ("quarantined", "run_id_reused"), good: ("loaded", None)}
    assert quarantined_with(lake, LOGS, "run_id_reused") == {RUN: staged}  # byte for byte
    reason = lake.reason(LOGS, RUN)
    assert "new run id" in reason["message"] and "\n" not in reason["message"]
    assert lake.staged(LOGS) == []
    # The loaded run is untouched: its rows, its ledger row, its archived copy.
    assert keys_of(lake, LOGS, RUN) == [10, 11]
    assert ledger_row(lake, LOGS, RUN) == [("loaded", None, recorded)]
    if archived is not None:
        assert lake.archived(LOGS) == sorted([RUN, good])
        assert files_of(lake.root / "archive" / LOGS / RUN) == archived
    assert temp_files(lake.root) == []

    again = cli_load(lake)  # nothing left to do; the quarantined run stays
    assert (again.returncode, statuses(again)) == (0, {})
    assert quarantined_with(lake, LOGS, "run_id_reused") == {RUN: staged}


@pytest.mark.parametrize("how", ["manifest_symlinked_to_the_archived_one",
                                 "manifest_copied_files_changed", "extra_file"])
def test_a_run_posing_as_the_loaded_one_is_not_recovered(tmp_path: Path, how: str) -> None:
    """The staged manifest has the recorded checksum only through a link, or the recorded
    manifest sits beside files that are not the loaded run's: never archived or deleted."""
    lake = lake_at(tmp_path, retention_days=0 if how != "manifest_symlinked_to_the_archived_one"
                   else 7)
    run = write_run_by_hand(lake.root, LOGS, RUN, {"part-00000.parquet": good_table(LOGS, 1)})
    manifest = (run / "_manifest.json").read_bytes()
    assert lake.load().count("loaded") == 1
    staged = restage(lake.root, LOGS, RUN, 2)
    folder = lake.root / "staging" / LOGS / RUN
    if how == "manifest_symlinked_to_the_archived_one":
        (folder / "_manifest.json").unlink()
        (folder / "_manifest.json").symlink_to(lake.root / "archive" / LOGS / RUN /
                                              "_manifest.json")
    elif how == "manifest_copied_files_changed":
        (folder / "_manifest.json").write_bytes(manifest)  # the loaded run's, byte for byte
    else:
        shutil.rmtree(folder)
        write_run_by_hand(lake.root, LOGS, RUN, {"part-00000.parquet": good_table(LOGS, 1)})
        (folder / "_manifest.json").write_bytes(manifest)
        (folder / "part-00001.parquet").write_bytes(b"not listed")
    staged = files_of(folder)

    report = lake.load()
    assert [(r.run_id, r.status, r.reason_code) for r in report.runs] == [
        (RUN, "quarantined", "run_id_reused")]
    assert quarantined_with(lake, LOGS, "run_id_reused") == {RUN: staged}
    assert keys_of(lake, LOGS, RUN) == [10, 11]


# -- a quarantined run's id -------------------------------------------------------------------
@pytest.mark.parametrize("fix", ["data", "contract"])
def test_a_quarantined_run_fixed_by_hand_and_moved_back_loads(tmp_path: Path, fix: str) -> None:
    lake = lake_at(tmp_path)
    table = "events" if fix == "data" else "extra"
    data = events_table([1, 2], kind="nope")  # fails the contract's isin check
    write_run_by_hand(lake.root, table, RUN, {"part-00000.parquet": data})
    first = cli_load(lake)
    assert statuses(first) == {RUN: ("quarantined", "contract_violation" if fix == "data"
                                     else "invalid_run")}
    os.rename(lake.root / "quarantine" / table / RUN, lake.root / "staging" / table / RUN)
    if fix == "data":  # the producer's data corrected, its manifest written again
        write_run_by_hand(lake.root, table, RUN,
                          {"part-00000.parquet": events_table([1, 2], kind="view")})
    else:  # the run was right; the table was missing from lake.toml
        toml = lake.root / "lake.toml"
        toml.write_text(toml.read_text() + textwrap.dedent("""
            [tables.extra]
            merge = "append"
            """))

    load = cli_load(lake)
    assert (load.returncode, statuses(load)) == (0, {RUN: ("loaded", None)}), load.stderr
    assert lake.rows(f"SELECT count(*) FROM {table} WHERE _lake_run_id = '{RUN}'") == [(2,)]
    assert lake.rows("SELECT run_id, status FROM meta.staged_runs") == [(RUN, "loaded")]
    assert lake.quarantined(table) == [] and lake.staged(table) == []
    assert lake.archived(table) == [RUN]


def test_a_quarantine_move_cut_short_by_sigkill_ends_in_quarantine_once(tmp_path: Path) -> None:
    """Killed after the commit that recorded the run quarantined, before its move: the next
    load verifies it again, and it ends in quarantine once, under one ledger row."""
    lake = lake_at(tmp_path)
    write_run_by_hand(lake.root, "events", RUN,
                      {"part-00000.parquet": events_table([1], kind="nope")})
    killed = lake_cli(lake.root, "load", env={"LAKE_TEST_CRASH_AT": "load.after_commit"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert lake.staged("events") == [RUN] and lake.ledger() == {RUN: "quarantined"}

    load = cli_load(lake)
    assert statuses(load) == {RUN: ("quarantined", "contract_violation")}
    assert lake.quarantined("events") == [RUN] and lake.staged("events") == []
    assert lake.rows("SELECT status, reason_code FROM meta.staged_runs") == [
        ("quarantined", "contract_violation")]
    assert statuses(cli_load(lake)) == {}


def test_a_quarantined_run_is_never_replaced_by_the_rows_of_its_id_reused(tmp_path: Path) -> None:
    """drop_rows: the rejected rows of a new run under a quarantined run's id go beside the
    quarantined run (``<run>.1``), never over it."""
    lake = lake_at(tmp_path)
    t = dt.datetime(2026, 3, 1)
    write_run_by_hand(lake.root, "readings", RUN, {"part-00000.parquet": readings_table(
        [("s-1", t, 1.0)])}, manifest={"rows": 5})  # a manifest that lies: quarantined whole
    assert lake.load().runs[0].reason_code == "manifest_mismatch"
    kept = files_of(lake.root / "quarantine" / "readings" / RUN)

    write_run_by_hand(lake.root, "readings", RUN, {"part-00000.parquet": readings_table(
        [("s-1", t, 1.0), ("bad", t, 2.0)])})
    report = lake.load()
    assert [(r.run_id, r.status, r.rows_loaded, r.rows_rejected) for r in report.runs] == [
        (RUN, "loaded", 1, 1)]
    assert files_of(lake.root / "quarantine" / "readings" / RUN) == kept
    assert sorted(files_of(lake.root / "quarantine" / "readings" / f"{RUN}.1")) == [
        "_reason.json", "_rejected_rows.parquet"]


def test_reused_id_of_a_drop_rows_run_keeps_its_rejected_rows(tmp_path: Path) -> None:
    lake = lake_at(tmp_path, retention_days=0)
    t = dt.datetime(2026, 3, 1)
    write_run_by_hand(lake.root, "readings", RUN, {"part-00000.parquet": readings_table(
        [("s-1", t, 1.0), ("bad", t, 2.0)])})
    assert lake.load().runs[0].rows_rejected == 1
    rejected = files_of(lake.root / "quarantine" / "readings" / RUN)
    write_run_by_hand(lake.root, "readings", RUN, {"part-00000.parquet": readings_table(
        [("s-2", t, 3.0)])})
    staged = files_of(lake.root / "staging" / "readings" / RUN)

    assert [r.reason_code for r in lake.load().runs] == ["run_id_reused"]
    assert files_of(lake.root / "quarantine" / "readings" / RUN) == rejected
    assert quarantined_with(lake, "readings", "run_id_reused") == {f"{RUN}.1": staged}


# -- crash, then a different manifest under the id -------------------------------------------
@pytest.mark.parametrize("point", ["load.after_commit", "load.mid_archive"])
def test_sigkill_between_commit_and_move_then_a_reused_id(tmp_path: Path, point: str) -> None:
    """A loader SIGKILLed between its commit and its moves leaves committed runs in staging.
    One of them is then replaced by another run under the same id: the genuine ones only
    finish their move (once), the impostor is kept in quarantine (retention_days = 0 would
    have deleted it), and the genuine run staged again later is still only recovered."""
    lake = Lake(make_root(tmp_path / "lake", toml=batched_toml(3, retention_days=0)))
    lake.init()
    runs = [hand_run_id(n, "crash") for n in (1, 2, 3, 4)]  # the first three: one batch
    for n, run_id in enumerate(runs, start=1):
        write_run_by_hand(lake.root, LOGS, run_id, {"part-00000.parquet": good_table(LOGS, n)})
    killed = lake_cli(lake.root, "load", env={"LAKE_TEST_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert lake.ledger() == dict.fromkeys(runs[:3], "loaded")
    left = lake.staged(LOGS)
    assert left == (runs if point == "load.after_commit" else runs[1:])
    genuine, reused = left[-3], runs[2]
    saved = tmp_path / "genuine"
    shutil.copytree(lake.root / "staging" / LOGS / genuine, saved)
    impostor = restage(lake.root, LOGS, reused, 7)

    load = cli_load(lake)
    assert load.returncode == 3, load.stderr
    expected = {r: ("recovered", None) for r in left if r not in (reused, runs[3])}
    expected |= {reused: ("quarantined", "run_id_reused"), runs[3]: ("loaded", None)}
    assert statuses(load) == expected
    assert quarantined_with(lake, LOGS, "run_id_reused") == {reused: impostor}
    assert lake.staged(LOGS) == [] and lake.archived(LOGS) == []
    for n, run_id in enumerate(runs, start=1):
        assert keys_of(lake, LOGS, run_id) == [10 * n, 10 * n + 1]  # exactly once each

    shutil.copytree(saved, lake.root / "staging" / LOGS / genuine)  # the same run again
    again = cli_load(lake)
    assert (again.returncode, statuses(again)) == (0, {genuine: ("recovered", None)})
    assert lake.rows("SELECT count(*), count(DISTINCT id) FROM logs") == [(8, 8)]
    assert quarantined_with(lake, LOGS, "run_id_reused") == {reused: impostor}


# -- the dry run says what the load does ---------------------------------------------------------
def test_the_dry_run_predicts_what_recovery_does(tmp_path: Path) -> None:
    lake = lake_at(tmp_path)
    ids = {name: hand_run_id(n, name) for n, name in enumerate(
        ["recorded", "reused", "fixed", "keyed", "skipped"], start=1)}
    for n, name in enumerate(("recorded", "reused", "keyed"), start=1):
        write_run_by_hand(lake.root, LOGS, ids[name], {"part-00000.parquet": good_table(
            LOGS, n)}, manifest={"key": "k1"} if name == "keyed" else None)
    write_run_by_hand(lake.root, "events", ids["fixed"],
                      {"part-00000.parquet": events_table([1], kind="nope")})
    lake.load()
    write_run_by_hand(lake.root, LOGS, ids["skipped"], {
        "part-00000.parquet": good_table(LOGS, 5)}, manifest={"key": "k1"})
    assert lake.load().runs[0].reason_code == "duplicate_key"
    # Now: the recorded run back after a crash, another run under a loaded id, the
    # quarantined run fixed by hand, and a new run under the skipped run's id.
    shutil.copytree(lake.root / "archive" / LOGS / ids["recorded"],
                    lake.root / "staging" / LOGS / ids["recorded"])
    restage(lake.root, LOGS, ids["reused"], 30)
    os.rename(lake.root / "quarantine" / "events" / ids["fixed"],
              lake.root / "staging" / "events" / ids["fixed"])
    write_run_by_hand(lake.root, "events", ids["fixed"],
                      {"part-00000.parquet": events_table([1], kind="view")})
    restage(lake.root, LOGS, ids["skipped"], 40)
    expected = {ids["recorded"]: ("recovered", None),
                ids["reused"]: ("quarantined", "run_id_reused"),
                ids["fixed"]: ("loaded", None), ids["skipped"]: ("loaded", None)}

    before = tree(lake.root)
    dry = cli_load(lake, "--dry-run")
    assert tree(lake.root) == before
    assert {k: (s.replace("would_", "").replace("recover", "recovered").replace(
        "quarantine", "quarantined").replace("load", "loaded"), c)
        for k, (s, c) in statuses(dry).items()} == expected
    assert dry.returncode == 3
    real = cli_load(lake)
    assert (real.returncode, statuses(real)) == (3, expected)
    assert lake.ledger()[ids["skipped"]] == "loaded"


# -- staging in an object store --------------------------------------------------------------
def put_run(s3: S3, hand: Path, table: str, data: Any) -> dict[str, bytes]:
    """Stage a run under ``RUN`` in the bucket by hand (the manifest last); its objects."""
    run = write_run_by_hand(hand, table, RUN, {"part-00000.parquet": data})
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    for name in sorted(files, key=lambda f: f == "_manifest.json"):
        s3.fs.pipe_file(f"{s3.bucket}/lake/staging/{table}/{RUN}/{name}", files[name])
    return files


def objects(s3: S3, folder: str) -> dict[str, bytes]:
    return {k.rsplit("/", 1)[1]: s3.fs.cat_file(f"{s3.bucket}/lake/{k}")
            for k in s3.keys(folder)}


def s3_lake_without_retention(tmp_path: Path, s3: S3) -> Lake:
    from test_object_staging import s3_lake

    lake = s3_lake(tmp_path, s3)
    toml = lake.root / "lake.toml"
    toml.write_text(toml.read_text().replace("retention_days = 7", "retention_days = 0"))
    return lake


def test_reused_id_in_an_object_store_is_quarantined_and_kept(tmp_path: Path, s3: S3) -> None:
    lake = s3_lake_without_retention(tmp_path, s3)
    put_run(s3, tmp_path / "first", LOGS, good_table(LOGS, 1))
    first = lake_cli(lake.root, "load", "--json", env=s3.env)
    assert first.returncode == 0 and s3.keys() == [], first.stderr
    staged = put_run(s3, tmp_path / "second", LOGS, good_table(LOGS, 2))
    load = lake_cli(lake.root, "load", "--json", env=s3.env)
    assert load.returncode == 3, load.stderr
    assert [(r["status"], r["reason_code"]) for r in json.loads(load.stdout)["runs"]] == [
        ("quarantined", "run_id_reused")]
    assert s3.keys("staging") == [] and s3.runs("quarantine", LOGS) == [RUN]
    kept = objects(s3, f"quarantine/{LOGS}/{RUN}")
    assert json.loads(kept.pop("_reason.json"))["code"] == "run_id_reused"
    assert kept == staged
    assert keys_of(lake, LOGS, RUN) == [10, 11]


def test_reused_id_in_an_object_store_never_joins_the_rejected_rows(tmp_path: Path,
                                                                     s3: S3) -> None:
    """The quarantine folder of the loaded run's id holds its rejected rows (drop_rows): the
    reused run is copied beside it, never into it."""
    lake = s3_lake_without_retention(tmp_path, s3)
    t = dt.datetime(2026, 3, 1)
    put_run(s3, tmp_path / "first", "readings", readings_table([("s-1", t, 1.0),
                                                                 ("bad", t, 2.0)]))
    assert lake.load().runs[0].rows_rejected == 1
    rejected = objects(s3, f"quarantine/readings/{RUN}")
    assert sorted(rejected) == ["_reason.json", "_rejected_rows.parquet"]
    staged = put_run(s3, tmp_path / "second", "readings", readings_table([("s-2", t, 3.0)]))

    assert [r.reason_code for r in lake.load().runs] == ["run_id_reused"]
    assert objects(s3, f"quarantine/readings/{RUN}") == rejected
    kept = objects(s3, f"quarantine/readings/{RUN}.1")
    assert json.loads(kept.pop("_reason.json"))["code"] == "run_id_reused"
    assert kept == staged
