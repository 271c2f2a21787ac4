"""The chaos runner (``benchmarks/chaos.py``, ``make chaos``) itself, so it cannot silently rot.

A short run (a few seconds of chaos: producers killed, loads killed at random moments and at
crash points, readers reading) must pass every invariant; and its checks must not be vacuous:
a row deleted from, or duplicated in, the warehouse it leaves behind must be reported as lost or
duplicated. The catalogue of hostile inputs must stay at least 25 kinds, deterministic, and
point at cases of the hostile-input tests that exist.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from benchmarks.chaos_check import Checker
from benchmarks.chaos_hostile import CATALOGUE, Ctx, parquet_bytes

REPO = Path(__file__).resolve().parent.parent


def test_a_short_chaos_run_keeps_every_invariant_and_its_checks_bite() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--minutes", "0.2", "--seed", "1", "--json",
         "--keep"], cwd=str(REPO), capture_output=True, text=True, timeout=900)
    assert proc.stdout, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    work, root = Path(result["work"]), Path(result["root"])
    try:
        failed = [c for c in result["checks"] if not c["ok"]]
        assert proc.returncode == 0 and result["ok"], json.dumps(failed, indent=1)[-4000:]
        assert (result["rows_lost"], result["rows_duplicated"], result["rows_unexpected"]) == (
            0, 0, 0)
        assert result["reader_queries_failed"] == 0
        assert result["reader_queries_served"] > 0
        assert result["runs_staged"] > 0 and result["rows_expected"] > 0
        assert result["processes_killed_total"] > 0
        assert {c["name"] for c in result["checks"]} >= {
            "tables_equal_model", "committed_runs_as_model", "hostile_runs_quarantined",
            "uncommitted_never_loaded", "quarantine_has_reasons", "no_temp_files",
            "readers_never_failed", "audit_no_errors", "snapshot_equals_warehouse"}

        # The checks bite: lose one row of a good run, duplicate another.
        con = duckdb.connect(str(root / "warehouse" / "lake.duckdb"))
        try:
            con.execute("DELETE FROM logs WHERE id = (SELECT max(id) FROM logs)")
            con.execute("INSERT INTO events SELECT * FROM events LIMIT 1")
        finally:
            con.close()
        checker = Checker(root, work, seed=1)
        figures = checker.run(listed=None)
        assert figures["rows_lost"] == 1, figures
        assert figures["rows_duplicated"] == 1, figures
        assert not checker.checks["tables_equal_model"].ok
        assert not checker.checks["snapshot_equals_warehouse"].ok
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_catalogue_has_25_deterministic_kinds_that_name_real_tests() -> None:
    assert len(CATALOGUE) >= 25
    assert len({k.name for k in CATALOGUE}) == len(CATALOGUE)
    for kind in CATALOGUE:
        ctx = Ctx(seed=1, pid=3, seq=17)
        first, again = kind.build(ctx), kind.build(ctx)
        assert first and len(first) == len(again), kind.name
        for a, b in zip(first, again, strict=True):
            assert a.api or a.write is not None, kind.name
            assert a.api or a.expect, f"{kind.name}: a hand-written run needs reason codes"
            if a.api:
                assert a.data is not None and b.data is not None
                assert parquet_bytes(a.data) == parquet_bytes(b.data), (
                    f"{kind.name} is not deterministic")  # (bytes: NaN equals itself there)
        if "::" in kind.ref:
            module, _, test = kind.ref.partition("::")
            function = test.split("[")[0]
            assert hasattr(importlib.import_module(module), function), kind.ref


@pytest.mark.parametrize("where", ["data", "data/sub"])
def test_chaos_refuses_the_repository_data_folder(where: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.chaos", "--minutes", "0.01", "--root",
         str(REPO / where)], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "refusing" in proc.stderr
