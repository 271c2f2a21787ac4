"""Hostile SQL and hostile export targets (issue 12, items 8 and 9).

`lake query` runs SQL its caller wrote on the published snapshot: exactly one read-only
statement, no settings changed, no file written or read, a private temp directory removed
afterwards, and rows streamed so that memory does not grow with the result. `lake export`
never writes inside the lake: not for a table named ``staging`` exported to the root, not
through a symlink, not into the object-store staging root.

Everything is real: lakes under tmp_path, the `lake` CLI in a subprocess (its own TMPDIR, so
a leftover temp directory is seen), its peak RSS read with ``wait4``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner
from conftest import LAKE_TOML, REPO, Lake, make_root
from test_hostile import files_outside, one_line_error

from lakehouse.errors import UsageError
from lakehouse.export_target import open_target
from lakehouse.layout import LakePaths
from loader.cli import TABLE_MAX_ROWS, cli


def lake_query(root: Path, sql: str, *args: str, tmpdir: Path) -> tuple[int, str, str]:
    """Run `lake query` in a subprocess with its own TMPDIR; return (exit code, stdout,
    stderr)."""
    tmpdir.mkdir(exist_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "loader.cli", "--root", str(root), "query", sql, *args],
        capture_output=True, text=True, cwd=str(REPO), timeout=60,
        env={**os.environ, "TMPDIR": str(tmpdir)})
    return result.returncode, result.stdout, result.stderr


# Runs the command and prints its peak RSS. A small parent of its own, because a child's
# ru_maxrss counts the memory it had between fork and exec: a copy of the pytest process.
_RSS_PROBE = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def lake_query_rss(root: Path, sql: str, fmt: str, tmpdir: Path) -> tuple[int, int]:
    """Run `lake query` with its output thrown away; return (exit code, peak RSS in MiB)."""
    tmpdir.mkdir(exist_ok=True)
    probe = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, sys.executable, "-m", "loader.cli", "--root",
         str(root), "query", sql, "--format", fmt],
        capture_output=True, text=True, cwd=str(REPO), timeout=120,
        env={**os.environ, "TMPDIR": str(tmpdir)})
    code, kib = probe.stdout.split()
    return int(code), int(kib) // 1024


def every_file(root: Path) -> set[str]:
    """Every path under ``root`` (links not followed)."""
    return {str(Path(d, n).relative_to(root)) for d, dirs, files in os.walk(root)
            for n in dirs + files}


@pytest.fixture
def published(lake: Lake) -> Lake:
    """A lake whose ``plain`` table holds 3 rows, published."""
    lake.stage("plain", pa.table({"n": pa.array([1, 2, 3], pa.int64())}))
    assert lake.load().count("loaded") == 1
    return lake


# -- item 8: the temp directory ---------------------------------------------------------------
def test_query_gets_a_private_temp_directory_removed_afterwards(published: Lake,
                                                                tmp_path: Path) -> None:
    """DuckDB always allows its temp directory, even with file access off; by default it is
    ``<snapshot>.tmp`` inside the lake, where a file would outlive the query."""
    scratch = tmp_path / "tmp"
    code, out, err = lake_query(published.root, "SELECT current_setting('temp_directory') "
                                   "AS t", "--format", "csv", tmpdir=scratch)
    assert code == 0, err
    temp_dir = Path(out.splitlines()[1])
    assert temp_dir.parent == scratch and temp_dir.name.startswith("lake-query-")
    assert not temp_dir.exists()
    assert os.listdir(scratch) == []


def test_spilling_then_copying_into_the_temp_directory_leaves_no_file(published: Lake,
                                                                      tmp_path: Path) -> None:
    """The attack from the issue: spill (a small memory limit, a big temp table) so that
    DuckDB creates its temp directory, COPY a file into it, read it back. Before the fix it
    printed 42 and left ``x.csv`` beside the snapshot, seen by neither cleanup nor audit."""
    snapshot = Path(os.path.realpath(published.root / "warehouse" / "lake.read.duckdb"))
    temp_dir = f"{snapshot}.tmp"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before, outside = every_file(published.root), files_outside(published.root)
    attack = ("SET memory_limit = '20MB'; SET threads = 1; "
              "CREATE TEMP TABLE big AS SELECT range AS i, repeat('x', 100) AS s "
              "FROM range(2000000); "
              f"COPY (SELECT 42 AS a) TO '{temp_dir}/x.csv'; "
              f"SELECT * FROM read_csv('{temp_dir}/x.csv')")
    code, out, err = lake_query(published.root, attack, "--format", "csv", tmpdir=scratch)
    one_line_error(code, err, 2)
    assert out == ""
    assert every_file(published.root) == before
    after = files_outside(published.root)
    assert {k: v for k, v in after.items() if k != "tmp"} == \
        {k: v for k, v in outside.items() if k != "tmp"}
    assert os.listdir(scratch) == []


def test_query_cleans_its_temp_directory_when_the_query_fails(published: Lake,
                                                              tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    code, _, err = lake_query(published.root,
                                 "SELECT CASE WHEN range < 15000 THEN range ELSE error('boom') "
                                 "END AS n FROM range(20000)", "--format", "csv",
                                 tmpdir=scratch)
    assert "boom" in one_line_error(code, err, 2)
    assert os.listdir(scratch) == []


# -- item 8: one statement, read-only ---------------------------------------------------------
@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "SELECT 1; SET threads = 1",
                                 "SELECT 1;;SELECT 2 -- two"],
                         ids=["two-selects", "select-then-set", "two-with-comment"])
def test_query_runs_exactly_one_statement(published: Lake, sql: str) -> None:
    result = CliRunner().invoke(cli, ["--root", str(published.root), "query", sql])
    assert result.stdout == ""
    assert "exactly one statement and got 2" in one_line_error(result.exit_code,
                                                               result.stderr, 2)


REFUSED = {
    "set-memory-limit": ("SET memory_limit = '20MB'", "SET"),
    "set-threads": ("SET threads = 1", "SET"),
    "reset": ("RESET memory_limit", "RESET"),
    "unlock-configuration": ("SET lock_configuration = false", "SET"),
    "set-external-access": ("SET enable_external_access = true", "SET"),
    "pragma": ("PRAGMA threads = 1", "PRAGMA"),
    "pragma-profiling": ("PRAGMA enable_profiling", "PRAGMA"),
    "call-enable-logging": ("CALL enable_logging()", "CALL"),
    "checkpoint": ("CHECKPOINT", "CHECKPOINT"),
    "use": ("USE memory", "USE"),
    "install": ("INSTALL httpfs", "INSTALL"),
    "load": ("LOAD httpfs", "LOAD"),
    "copy": ("COPY (SELECT 42) TO '{out}'", "COPY"),
    "export-database": ("EXPORT DATABASE '{out}'", "EXPORT"),
    "attach": ("ATTACH '{out}' AS other", "ATTACH"),
    "create-temp": ("CREATE TEMP TABLE t AS SELECT 42", "CREATE"),
    "explain-analyze-copy": ("EXPLAIN ANALYZE COPY (SELECT 42) TO '{out}'", "EXPLAIN COPY"),
    "comment-then-set": ("/* x */ SET threads = 1", "SET"),
}


@pytest.mark.parametrize("key", list(REFUSED), ids=list(REFUSED))
def test_query_refuses_statements_that_change_settings_or_touch_files(
        published: Lake, tmp_path: Path, key: str) -> None:
    sql, word = REFUSED[key]
    out = tmp_path / "written.out"
    result = CliRunner().invoke(cli, ["--root", str(published.root), "query",
                                      sql.format(out=out)])
    line = one_line_error(result.exit_code, result.stderr, 2)
    assert line.startswith(f"lake: lake query refuses {word} statements: it runs one "
                           "read-only SELECT"), line
    assert result.stdout == ""
    assert not out.exists()


def test_a_select_cannot_turn_on_file_logging(published: Lake, tmp_path: Path) -> None:
    """enable_logging is a table function: inside a SELECT it changed the configuration and
    pointed DuckDB's log at a folder (then aborted the process). The configuration is locked."""
    logs = tmp_path / "logs"
    code, out, err = lake_query(
        published.root, f"SELECT * FROM enable_logging(storage = 'file', "
                        f"storage_path = '{logs}')", tmpdir=tmp_path / "tmp")
    assert "configuration has been locked" in one_line_error(code, err, 2)
    assert out == "" and not logs.exists()


@pytest.mark.parametrize("sql", [
    "SELECT 1;", "/* a comment */ SELECT 1", "WITH a AS (SELECT 1 AS n) SELECT n FROM a",
    "FROM (VALUES (1)) t(n)", "DESCRIBE plain", "SHOW TABLES", "SUMMARIZE plain",
    "EXPLAIN SELECT count(*) FROM plain", "EXPLAIN ANALYZE SELECT count(*) FROM plain",
    "SELECT * FROM query('SELECT 1')",
], ids=["trailing-semicolon", "comment", "with", "from-first", "describe", "show", "summarize",
        "explain", "explain-analyze", "query-function"])
def test_query_allows_one_read_only_statement(published: Lake, sql: str) -> None:
    result = CliRunner().invoke(cli, ["--root", str(published.root), "query", sql,
                                      "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert result.stdout


# -- item 8: streaming ------------------------------------------------------------------------
BIG_ROWS = 1_500_000


@pytest.fixture(scope="module")
def big_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """A published lake whose ``plain`` table holds BIG_ROWS rows (two columns)."""
    lake = Lake(make_root(tmp_path_factory.mktemp("big") / "lake", LAKE_TOML))
    lake.init()
    ids = pa.array(range(BIG_ROWS), pa.int64())
    text = pc.binary_join_element_wise("row ", pc.cast(ids, pa.string()), "")
    lake.stage("plain", pa.table({"i": ids, "s": text}))
    assert lake.load().count("loaded") == 1
    return lake


@pytest.mark.parametrize(("fmt", "rows"), [("csv", BIG_ROWS), ("json", 300_000)],
                         ids=["csv", "json"])
def test_large_results_are_streamed_in_bounded_memory(big_lake: Lake, tmp_path: Path, fmt: str,
                                                      rows: int) -> None:
    """Before the fix every row was fetched as Python tuples first (20M rows: 3.9 GB; here
    1.5M rows as csv grew the process by ~750 MiB, 300k as json by ~450 MiB)."""
    code, base = lake_query_rss(big_lake.root, "SELECT 1", fmt, tmp_path / "tmp")
    assert code == 0
    code, peak = lake_query_rss(big_lake.root, f"SELECT * FROM plain LIMIT {rows}", fmt,
                                tmp_path / "tmp")
    assert code == 0
    assert peak - base < 150, (base, peak)


def test_csv_and_json_stream_every_row_exactly(big_lake: Lake) -> None:
    """Several batches: the text is what writing the whole result at once gave."""
    sql = "SELECT i, s, i % 3 = 0 AS third FROM plain WHERE i < 25000 ORDER BY i"
    rows = [(i, f"row {i}", i % 3 == 0) for i in range(25000)]
    result = CliRunner().invoke(cli, ["--root", str(big_lake.root), "query", sql,
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    expected = [{"i": i, "s": s, "third": t} for i, s, t in rows]
    assert result.stdout == json.dumps(expected, indent=2) + "\n"
    result = CliRunner().invoke(cli, ["--root", str(big_lake.root), "query", sql,
                                      "--format", "csv"])
    assert result.exit_code == 0, result.output
    buf = io.StringIO()
    csv.writer(buf).writerows([("i", "s", "third"), *rows])
    assert result.stdout_bytes.decode() == buf.getvalue()


def test_table_format_shows_the_first_rows_and_says_there_are_more(big_lake: Lake) -> None:
    result = CliRunner().invoke(cli, ["--root", str(big_lake.root), "query",
                                      "SELECT i FROM plain ORDER BY i"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 + TABLE_MAX_ROWS + 1
    assert lines[2].strip() == "0" and lines[-2].strip() == str(TABLE_MAX_ROWS - 1)
    assert lines[-1] == (f"(first {TABLE_MAX_ROWS:,} rows shown; --format csv or json prints "
                         "them all)")
    exact = CliRunner().invoke(cli, ["--root", str(big_lake.root), "query",
                                     f"SELECT i FROM plain ORDER BY i LIMIT {TABLE_MAX_ROWS}"])
    assert exact.exit_code == 0 and len(exact.stdout.splitlines()) == 2 + TABLE_MAX_ROWS


# -- item 9: export targets -------------------------------------------------------------------
EXPORT_TOML = LAKE_TOML + """
[tables.staging]
merge = "append"

[tables.lake]
merge = "append"
"""


@pytest.fixture
def export_lake(tmp_path: Path) -> Lake:
    """A lake at tmp_path/lake with tables named ``staging`` and ``lake``, both loaded."""
    lake = Lake(make_root(tmp_path / "lake", EXPORT_TOML))
    lake.init()
    for table in ("staging", "lake"):
        lake.stage(table, pa.table({"n": pa.array([1, 2, 3], pa.int64())}))
    assert lake.load().count("loaded") == 2
    return lake


def _targets(lake: Lake, tmp_path: Path) -> dict[str, tuple[str, str]]:
    link = tmp_path / "looks-outside"
    link.symlink_to(lake.root / "warehouse")
    return {
        "staging-to-root": ("staging", str(lake.root)),
        "inside-root": ("lake", str(lake.root / "exports")),
        "link-into-root": ("lake", str(link)),
        "table-folder-is-root": ("lake", str(lake.root.parent)),
        "file-url-to-root": ("staging", f"file://{lake.root}"),
    }


@pytest.mark.parametrize("case", ["staging-to-root", "inside-root", "link-into-root",
                                  "table-folder-is-root", "file-url-to-root"])
def test_export_never_writes_inside_the_lake(export_lake: Lake, tmp_path: Path,
                                             case: str) -> None:
    table, to = _targets(export_lake, tmp_path)[case]
    before = every_file(export_lake.root)
    result = subprocess.run(
        [sys.executable, "-m", "loader.cli", "--root", str(export_lake.root), "export", table,
         "--to", to], capture_output=True, text=True, cwd=str(REPO), timeout=60)
    line = one_line_error(result.returncode, result.stderr, 2)
    assert "the lake root" in line and "export to a folder outside the lake root" in line
    assert every_file(export_lake.root) == before
    # The lake still works: a new run of the table loads.
    export_lake.stage("staging", pa.table({"n": pa.array([4], pa.int64())}))
    assert export_lake.load().count("loaded") == 1


@pytest.mark.parametrize(("staging_root", "to", "table"), [
    ("memory://bucket/lake", "memory://bucket/lake", "staging"),
    ("memory://bucket/lake", "memory://bucket/lake/archive", "events"),
    ("memory://bucket/lake", "memory://bucket", "lake"),
    ("s3://bucket/lake", "s3://bucket/lake/", "quarantine"),
], ids=["staging-table-to-staging-root", "inside-staging-root", "table-folder-is-staging-root",
        "s3-trailing-slash"])
def test_export_never_writes_inside_an_object_store_staging_root(
        tmp_path: Path, staging_root: str, to: str, table: str) -> None:
    pytest.importorskip("s3fs")
    paths = LakePaths.at(tmp_path / "lake")
    with pytest.raises(UsageError, match="the lake's staging root"):
        open_target(to, table, paths, staging_root)


def test_export_beside_an_object_store_staging_root_is_allowed(tmp_path: Path) -> None:
    paths = LakePaths.at(tmp_path / "lake")
    target = open_target("memory://bucket/exports", "staging", paths, "memory://bucket/lake")
    assert target.base_url == "memory://bucket/exports/staging"
    local = open_target(str(tmp_path / "exports"), "staging", paths, "memory://bucket/lake")
    assert local.base == str(tmp_path / "exports" / "staging")
