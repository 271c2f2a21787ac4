"""`lake dashboard`: every page through Streamlit's own harness (AppTest) on real fixture
lakes (healthy, failing checks, quarantined runs, before the first load, none at all), the
snapshot replaced while the page is open, and the launcher (docs/DASHBOARD.md)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, lake_cli, make_root
from dashboard_lakes import (
    DASHBOARD_TOML,
    events,
    failing_lake,
    healthy_lake,
    missing_log_day,
    new_lake,
    now_naive,
    quarantined_lake,
)
from streamlit.testing.v1 import AppTest  # the test extra installs Streamlit

PAGES = ("Overview", "Runs", "Checks", "Quarantine", "Table")


def app(root: Path, page: str = "Overview", refresh: float = 0.0) -> AppTest:
    """The dashboard of ``root`` run once by AppTest, on ``page``."""
    at = AppTest.from_string(
        f"from loader.dashboard_app import main\nmain({str(root)!r}, {refresh!r})\n",
        default_timeout=60)
    at.run()
    if page != "Overview":
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements: Any) -> list[str]:
    """The values of a list of AppTest elements."""
    return [str(e.value) for e in elements]


def tiles(at: AppTest) -> dict[str, str]:
    """The Overview's tiles: table -> the tile's HTML."""
    out = {}
    for md in texts(at.markdown):
        if 'class="lake-tile"' in md:
            name = md.split('data-table="', 1)[1].split('"', 1)[0]
            out[name] = md
    return out


def status_of(tile: str) -> str:
    return tile.split('data-status="', 1)[1].split('"', 1)[0]


def metric(at: AppTest, label: str) -> str:
    return next(str(m.value) for m in at.metric if m.label == label)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The fixture lakes, built once for this module; tests that change one use a copy."""
    base = tmp_path_factory.mktemp("dashboard-lakes")
    return {"healthy": healthy_lake(base / "healthy").root,
            "failing": failing_lake(base / "failing").root,
            "quarantined": quarantined_lake(base / "quarantined").root,
            "fresh": new_lake(base / "fresh").root}


def copy_of(root: Path, tmp_path: Path) -> Path:
    """A private copy of a built lake (the snapshot link is relative: it still resolves)."""
    return Path(shutil.copytree(root, tmp_path / root.name, symlinks=True))


@pytest.fixture
def healthy(built: dict[str, Path]) -> Path:
    return built["healthy"]


@pytest.fixture
def failing(built: dict[str, Path]) -> Path:
    return built["failing"]


@pytest.fixture
def quarantined(built: dict[str, Path], tmp_path: Path) -> Path:
    return copy_of(built["quarantined"], tmp_path)  # its tests stage and replay


@pytest.fixture
def before_first_load(built: dict[str, Path]) -> Path:
    return built["fresh"]


# -- Overview ------------------------------------------------------------------------------
def test_overview_of_a_healthy_lake_is_all_ok(healthy: Path) -> None:
    at = app(healthy)
    found = tiles(at)
    assert sorted(found) == ["events", "logs"]
    assert {t: status_of(h) for t, h in found.items()} == {"events": "ok", "logs": "ok"}
    assert "80 rows in 1 partition<" in found["events"] or "80 rows in 2 partitions<" in \
        found["events"]
    assert "SLA 24.0 h: fresh" in found["events"]
    assert "no failing checks" in found["events"]
    assert metric(at, "Runs waiting in staging") == "0"
    assert metric(at, "Quarantined runs") == "0"
    assert any("Snapshot lake.read." in c for c in texts(at.caption))


def test_overview_colours_failing_checks_and_stale_tables(failing: Path) -> None:
    found = tiles(app(failing))
    assert status_of(found["events"]) == "error"  # duplicate keys (error), stale (error)
    assert "failing checks: 2 error, 0 warn" in found["events"]
    assert "2.0 h old, SLA 60 min: stale" in found["events"]
    assert 'color:#c62828' in found["events"].split('class="lake-checks"', 1)[1]
    assert status_of(found["logs"]) == "warn"  # a gap, severity warn
    assert "failing checks: 0 error, 1 warn" in found["logs"]
    assert "no freshness SLA" in found["logs"]


def test_overview_counts_quarantine_and_backlog(quarantined: Path) -> None:
    from staging import stage

    stage(quarantined, "logs", events(0, 1, now_naive()).select(["event_id"]),
          producer="late")  # waits in staging: nothing loads it
    at = app(quarantined)
    assert metric(at, "Quarantined runs") == "1"
    assert metric(at, "Runs waiting in staging") == "1"
    assert metric(at, "Oldest waiting run") not in ("-", "")
    # The last load of events rejected a run: pandera's isin check failed there.
    assert status_of(tiles(at)["events"]) == "error"
    assert "failing checks: 1 error, 0 warn" in tiles(at)["events"]


def test_a_clean_load_after_a_rejection_turns_the_table_ok_again(quarantined: Path) -> None:
    """Failing means failing in the table's last checked run: the rejected run stays on the
    Quarantine page, not red on the Overview forever."""
    from conftest import Lake

    assert status_of(tiles(app(quarantined))["events"]) == "error"
    Lake(quarantined).stage("events", events(300, 5, now_naive()), producer="web-4")
    Lake(quarantined).load()
    at = app(quarantined)
    assert status_of(tiles(at)["events"]) == "ok"
    assert metric(at, "Quarantined runs") == "1"


def test_a_load_that_only_rejects_runs_keeps_the_tables_failing_checks(
        built: dict[str, Path], tmp_path: Path) -> None:
    """The table-level checks judge the whole table and run only in a load that wrote rows
    to it: a later load that only quarantines a run of events leaves them failing."""
    from conftest import Lake

    failing = copy_of(built["failing"], tmp_path)
    lake = Lake(failing)
    lake.stage("events", events(200, 2, now_naive(), kind="bogus"), producer="web-5")
    lake.load(table="events")  # logs' aborting run stays waiting
    assert len(lake.quarantined("events")) == 1
    assert "failing checks: 3 error, 0 warn" in tiles(app(failing))["events"]
    checks = app(failing, "Checks").dataframe[0].value
    assert sorted(checks["check"]) == ["freshness", "isin(['view', 'click', 'purchase'])",
                                       "no_duplicate_keys"]


def test_the_checks_and_sla_shown_are_those_lake_toml_declares_now(
        built: dict[str, Path], tmp_path: Path) -> None:
    """A table-level check dropped from lake.toml stops failing on the page (its last result
    would otherwise stand for good), and the freshness SLA is lake.toml's, read on each
    refresh."""
    from dashboard_lakes import FAILING_TOML

    failing = copy_of(built["failing"], tmp_path)
    toml = failing / "lake.toml"
    toml.write_text(FAILING_TOML.replace('freshness = "1h", no_duplicate_keys = true',
                                         'freshness = "1h"'))
    tile = tiles(app(failing))["events"]
    assert "failing checks: 1 error, 0 warn" in tile and "SLA 60 min: stale" in tile
    assert list(app(failing, "Checks").dataframe[0].value["check"]) == ["freshness"]
    toml.write_text(FAILING_TOML.replace('checks = { freshness = "1h", no_duplicate_keys = '
                                         'true }\n', ""))
    tile = tiles(app(failing))["events"]
    assert status_of(tile) == "ok", tile
    assert "no freshness SLA" in tile and "no failing checks" in tile


def test_overview_before_the_first_load(before_first_load: Path) -> None:
    at = app(before_first_load)
    assert {t: status_of(h) for t, h in tiles(at).items()} == {"events": "empty",
                                                             "logs": "empty"}
    assert any("No load has run yet" in i for i in texts(at.info))


def test_no_lake_and_no_snapshot_say_what_to_run(tmp_path: Path) -> None:
    at = app(tmp_path / "nowhere")
    assert any("No lake at" in i and "init" in i for i in texts(at.info))
    root = make_root(tmp_path / "uninitialised", DASHBOARD_TOML)
    at = app(root)
    assert any("Nothing is published yet" in i and "lake load" in i for i in texts(at.info))
    assert not tiles(at)


def test_a_lake_without_tables(tmp_path: Path) -> None:
    root = new_lake(tmp_path / "bare", "[lake]\nretention_days = 7\n").root
    for page, message in (("Overview", "No tables yet"), ("Table", "No tables yet"),
                          ("Runs", "No runs recorded yet"), ("Checks", "No check results"),
                          ("Quarantine", "Quarantine is empty")):
        at = app(root, page)
        assert any(message in m for m in texts(at.info) + texts(at.success)), page


def test_a_table_without_partitions_or_event_time(tmp_path: Path) -> None:
    import pyarrow as pa

    lake = new_lake(tmp_path / "plain", "[tables.plain]\nmerge = \"append\"\n")
    lake.stage("plain", pa.table({"id": [1, 2, 3]}))
    lake.load()
    tile = tiles(app(lake.root))["plain"]
    assert status_of(tile) == "ok"
    assert "3 rows in 1 partition<" in tile and "no watermark (no event time loaded)" in tile
    at = app(lake.root, "Table")
    assert any("No watermark yet" in i for i in texts(at.info))


# -- every page on every lake ----------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_every_fixture_lake(built: dict[str, Path], page: str) -> None:
    """No page raises, and each says something, on each kind of lake."""
    for name, root in built.items():
        at = app(root, page)
        assert at.title[0].value == f"Lake health · {page}", name
        shown = (len(at.dataframe) + len(at.info) + len(at.success) + len(at.markdown)
                 + len(at.code))
        assert shown, (name, page)


# -- Runs -------------------------------------------------------------------------------------
def test_runs_page_latest_run_per_job_timeline_failures_and_killed(failing: Path) -> None:
    at = app(failing, "Runs")
    latest = at.dataframe[0].value
    assert dict(zip(latest["job"], latest["error_type"], strict=True)) == {
        "load": "LoadAbortedError", "compact": "killed"}
    assert len(at.get("vega_lite_chart")) == 2  # durations and rows loaded
    failures = at.dataframe[1].value
    assert list(failures["job"]) == ["load"]
    [message] = failures["error_message"]
    assert message.startswith("load aborted at run ") and "key_not_null" in message
    killed = at.dataframe[2].value
    assert list(killed["job"]) == ["compact"] and list(killed["error_type"]) == ["killed"]
    assert "died before it closed this run" in killed["error_message"][0]
    at.radio(key="runs_window").set_value("Last 30 days").run()
    assert any(s.value == "Loads in the last 30 days" for s in at.subheader)


def test_runs_page_of_a_healthy_lake(healthy: Path) -> None:
    at = app(healthy, "Runs")
    assert set(at.dataframe[0].value["job"]) == {"load", "compact", "cleanup", "export"}
    assert "No failed runs in the last 7 days." in texts(at.success)
    assert "No killed runs in the last 7 days." in texts(at.success)
    # The versions the producers staged with (stage(..., version=...)), per table.
    versions = at.dataframe[1].value
    assert [tuple(r) for r in versions[["table", "producer", "version", "runs"]].itertuples(
        index=False)] == [("events", "web-1", "0.1.0", 1), ("events", "web-2", "0.2.0", 1),
                          ("logs", "cron", "0.1.0", 1)]


def test_runs_page_before_the_first_load(before_first_load: Path) -> None:
    at = app(before_first_load, "Runs")
    assert any("No runs recorded yet" in i for i in texts(at.info))


# -- Checks ----------------------------------------------------------------------------------
def test_checks_page_failing_by_table_and_partition_with_history(failing: Path) -> None:
    at = app(failing, "Checks")
    events_failing, logs_failing = at.dataframe[0].value, at.dataframe[1].value
    assert set(events_failing["check"]) == {"freshness", "no_duplicate_keys"}
    dup = events_failing[events_failing["check"] == "no_duplicate_keys"].iloc[0]
    assert (dup["column"], dup["failure_count"], dup["severity"], dup["examples"]) == (
        "event_id", 3, "error", "7, 8, 9")
    # no_gaps judges the whole table: the missing day is its example, not its partition.
    gap = logs_failing.iloc[0]
    assert (gap["check"], gap["severity"], gap["column"], gap["failure_count"]) == (
        "no_gaps", "warn", "ts", 1)
    assert gap["examples"] == missing_log_day(now_naive())
    # Failing checks come first in the history's choice; each is fail in the last load.
    assert at.selectbox(key="check_choice").value == ("events", "freshness")
    assert list(at.dataframe[2].value["status"]) == ["fail", "fail"]
    # The duplicate keys: a pass in the first load, then the fail after the hand edit.
    at.selectbox(key="check_choice").set_value(("events", "no_duplicate_keys")).run()
    assert list(at.dataframe[2].value["status"]) == ["fail", "pass"]
    # The passing checks every load records are there too, pandera's included.
    options = at.selectbox(key="check_choice").options
    assert {"events · contract", "events · manifest_verified",
            "logs · contract"} <= set(options)


def test_checks_page_when_all_pass(healthy: Path) -> None:
    at = app(healthy, "Checks")
    assert any("No failing checks" in s for s in texts(at.success))


# -- Quarantine ---------------------------------------------------------------------------
def test_quarantine_page_gives_the_exact_replay_command(quarantined: Path) -> None:
    at = app(quarantined, "Quarantine")
    table = at.dataframe[0].value
    assert list(table["table"]) == ["events"]
    assert table["code"][0] and table["message"][0]
    command = at.code[0].value
    assert command.startswith(f"lake --root {shlex.quote(str(quarantined))} quarantine replay ")
    # The command as shown works: the run goes back to staging.
    args = shlex.split(command)[3:]  # after `lake --root ROOT`
    done = lake_cli(quarantined, *args)
    assert done.returncode == 0, done.stderr
    assert len(list((quarantined / "staging" / "events").iterdir())) == 1
    at = app(quarantined, "Quarantine")
    assert any("Quarantine is empty" in s for s in texts(at.success))


def test_quarantine_page_when_empty(healthy: Path) -> None:
    assert any("Quarantine is empty" in s for s in texts(app(healthy, "Quarantine").success))


# -- Table --------------------------------------------------------------------------------
def test_table_page_partitions_watermarks_schema_contract(healthy: Path) -> None:
    at = app(healthy, "Table")
    assert at.selectbox(key="table_choice").value == "events"
    assert len(at.get("vega_lite_chart")) == 1  # rows per partition
    marks = at.dataframe[0].value
    assert list(marks["scope"]) == ["ALL", "click", "view"]  # watermark_scope = "kind"
    schema = at.dataframe[1].value
    assert {"event_id", "ts", "kind", "amount", "_lake_partition"} <= set(schema["column"])
    contract = " ".join(texts(at.markdown))
    assert "merge: `upsert`" in contract and "primary key: `event_id`" in contract
    assert ("checks: `freshness` 24.0 h (error), `no_duplicate_keys` (error), "
            "`max_row_drop` 20% (error)") in contract
    assert "watermark scope: `kind`" in contract
    at.selectbox(key="table_choice").set_value("logs").run()
    assert "merge: `append`" in " ".join(texts(at.markdown))
    assert "checks: `no_gaps` (error)" in " ".join(texts(at.markdown))
    assert "watermark scope: `ALL only`" in " ".join(texts(at.markdown))


def test_table_page_before_the_first_load(before_first_load: Path) -> None:
    at = app(before_first_load, "Table")
    assert any("nothing has been loaded into events" in i for i in texts(at.info))
    assert any("No watermark yet" in i for i in texts(at.info))


# -- the snapshot, never the warehouse --------------------------------------------------
def test_a_snapshot_replaced_while_the_page_is_open_is_read_again(
        built: dict[str, Path], tmp_path: Path) -> None:
    from conftest import Lake

    healthy = copy_of(built["healthy"], tmp_path)
    at = app(healthy)
    assert "80 rows" in tiles(at)["events"]
    first = (healthy / "warehouse" / "lake.read.duckdb").resolve().name
    Lake(healthy).stage("events", events(500, 20, now_naive()), producer="web-9")
    Lake(healthy).load()  # publishes a new version
    assert (healthy / "warehouse" / "lake.read.duckdb").resolve().name != first
    at.run()  # the next refresh
    assert not at.exception
    assert "100 rows" in tiles(at)["events"]
    assert any("A newer snapshot was published" in i and first in i for i in texts(at.info))


def test_a_snapshot_deleted_under_the_page_says_so(built: dict[str, Path],
                                                    tmp_path: Path) -> None:
    healthy = copy_of(built["healthy"], tmp_path)
    at = app(healthy)
    link = healthy / "warehouse" / "lake.read.duckdb"
    gone = "snapshots/lake.read.20000101T000000.000000Z.duckdb"
    tmp = link.with_name("link.tmp")
    os.symlink(gone, tmp)
    os.replace(tmp, link)  # as a publish does, to a version deleted before it was opened
    at.run()
    assert not at.exception
    assert any("Nothing is published yet" in i or "replaced while the page read it" in i
               for i in texts(at.info))


def test_the_dashboard_reads_while_a_writer_holds_the_warehouse(healthy: Path) -> None:
    """It never opens lake.duckdb: a read-write connection held elsewhere (as a load holds
    it) does not stop any page."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]);"
         "print('held', flush=True); time.sleep(60)",
         str(healthy / "warehouse" / "lake.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        for page in PAGES:
            at = app(healthy, page)
            assert not at.error, (page, texts(at.error))
            assert any(c.startswith("Snapshot lake.read.") for c in texts(at.caption)), \
                (page, texts(at.info))  # the page read the snapshot, no message instead
    finally:
        holder.kill()
        holder.wait()


def test_auto_refresh_runs_the_page_in_a_fragment(healthy: Path) -> None:
    at = app(healthy, refresh=5)
    assert any("reread every 5 s" in c for c in texts(at.caption))
    assert sorted(tiles(at)) == ["events", "logs"]


# -- the launcher -------------------------------------------------------------------------
def test_without_the_extra_lake_dashboard_names_the_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['streamlit'] = None\n"  # as if it were not installed
            "from loader.cli import main\n"
            f"sys.argv = ['lake', '--root', {str(tmp_path)!r}, 'dashboard']\nmain()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=str(REPO))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("lake: the dashboard needs Streamlit, which is not "
                                   "installed: run pip install 'lake[dashboard]'")


def test_streamlit_command_serves_the_app_headless_without_telemetry(tmp_path: Path) -> None:
    from loader.dashboard import APP, streamlit_command

    command = streamlit_command(tmp_path, host="127.0.0.1", port=8600, refresh=7)
    assert command[1:5] == ["-m", "streamlit", "run", str(APP)]
    flags = dict(zip(command[5::2], command[6::2], strict=False))
    assert flags["--server.port"] == "8600" and flags["--server.address"] == "127.0.0.1"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert command[-4:] == ["--root", str(tmp_path.resolve()), "--refresh", "7"]


def test_only_the_app_imports_streamlit() -> None:
    from test_imports import imported_modules, sources

    importers = sorted(str(p.relative_to(REPO)) for package in ("lakehouse", "loader", "staging")
                       for p in sources(package)
                       if any(m.split(".")[0] == "streamlit" for m in imported_modules(p)))
    assert importers == ["loader/dashboard_app.py"]


def test_app_module_parses_what_lake_dashboard_passes() -> None:
    from loader.dashboard_app import parse_args

    args = parse_args(["--root", "/srv/lake", "--refresh", "15"])
    assert (args.root, args.refresh) == ("/srv/lake", 15.0)


def test_the_history_chart_counts_a_failing_result_as_at_least_one_failure() -> None:
    """A failed freshness check records failure_count 0: charted as 0 it would look like a
    pass."""
    import pandas as pd

    from loader.dashboard_app import failures_per_result

    history = pd.DataFrame({"status": ["fail", "pass", "fail", "fail"],
                            "failure_count": [0, 0, None, 3]})
    assert list(failures_per_result(history)) == [1, 0, 1, 3]


def test_read_every_page_gives_what_the_pages_show(failing: Path) -> None:
    """`make bench` times read_every_page: it runs every page's reads on the real lake."""
    from loader.dashboard import read_every_page

    counts = read_every_page(failing)
    assert (counts["tiles"], counts["failing_checks"], counts["failed_30d"],
            counts["backlog"], counts["producer_versions_30d"], counts["events.watermarks"]) == (
        2, 3, 2, 1, 3, 3)
