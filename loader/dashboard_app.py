"""The Streamlit health dashboard (`lake dashboard`): Overview, Runs, Checks, Quarantine, Table.

The only module that imports Streamlit. Every refresh (``--refresh`` seconds, a Streamlit
fragment's ``run_every``) opens the snapshot ``lake.read.duckdb`` names *now* through
:func:`loader.dashboard.open_view`, reads the page's data and closes it; the queries are
``lakehouse/dashboard_queries.py``. Each page says so in words when it has nothing to show.

Run by ``streamlit run loader/dashboard_app.py -- --root ROOT --refresh SECONDS``.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pandas as pd
import streamlit as st

from lakehouse import dashboard_queries as dq
from lakehouse.config import TableCheck
from lakehouse.errors import LakehouseError
from loader.dashboard import (
    NothingToShowError,
    View,
    open_view,
    quarantined_runs,
    staging_backlog,
    utcnow_naive,
)

PAGES = ("Overview", "Runs", "Checks", "Quarantine", "Table")
# Tile colours (text, background): the browser test reads the error colour back.
COLOURS = {dq.STATUS_OK: ("#1b7a3d", "#e7f5ec"), dq.STATUS_WARN: ("#a15c00", "#fff4e0"),
           dq.STATUS_ERROR: ("#c62828", "#fdecea"), dq.STATUS_EMPTY: ("#5f6368", "#f1f3f4")}
LABELS = {dq.STATUS_OK: "OK", dq.STATUS_WARN: "WARN", dq.STATUS_ERROR: "ERROR",
          dq.STATUS_EMPTY: "NO DATA"}
TILES_PER_ROW = 3
REPLAY_COMMANDS_SHOWN = 50


def age(seconds: float | None) -> str:
    """A duration in the largest sensible unit: 42 s, 7 min, 3.2 h, 4.0 d."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def when(value: datetime | None, now: datetime) -> str:
    """A naive UTC time and how long ago it was."""
    if value is None:
        return "never"
    return f"{value:%Y-%m-%d %H:%M} UTC ({age((now - value).total_seconds())} ago)"


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Records as a data frame for Streamlit."""
    return pd.DataFrame.from_records(rows)


def declared_of(view: View) -> dict[str, tuple[TableCheck, ...]]:
    """lake.toml's tables and their declared checks."""
    return {name: contract.checks for name, contract in view.config.tables.items()}


def declared_checks(checks: tuple[TableCheck, ...]) -> str:
    """A table's ``checks = { ... }`` in words: ``freshness 60 min (error), no_gaps (warn)``."""
    if not checks:
        return "none declared"
    words = []
    for check in checks:
        if check.name == "freshness":
            value = f" {age(float(check.value))}"
        elif check.name == "max_row_drop":
            value = f" {float(check.value):.0%}"
        else:
            value = ""
        words.append(f"`{check.name}`{value} ({check.severity})")
    return ", ".join(words)


def failures_per_result(history: pd.DataFrame) -> pd.Series:
    """Failures per check result for the history chart: ``failure_count``, but at least one
    for a failing result (a failed ``freshness`` check records a count of 0)."""
    counts = history["failure_count"].astype("Float64").fillna(0)
    return counts.where(history["status"] != "fail", counts.clip(lower=1))


# -- pages --------------------------------------------------------------------------------
def tile_html(tile: dq.TableTile, now: datetime) -> str:
    """One table's tile, coloured by its status."""
    fg, bg = COLOURS[tile.status]
    name = html.escape(tile.table)
    if not tile.exists:
        body = "<div>No data yet: nothing loaded into this table.</div>"
    else:
        if tile.watermark is None:
            fresh = "no watermark (no event time loaded)"
        elif tile.max_age_seconds is None:
            fresh = f"watermark {age(tile.age_seconds)} old; no freshness SLA"
        else:
            fresh = (f"{age(tile.age_seconds)} old, SLA {age(tile.max_age_seconds)}: "
                     f"{'stale' if tile.stale else 'fresh'}")
        checks = (f"failing checks: {tile.failing_errors} error, {tile.failing_warnings} warn"
                  if tile.failing_errors or tile.failing_warnings else "no failing checks")
        check_colour = fg if tile.failing_errors or tile.failing_warnings else "inherit"
        plural = "" if tile.partitions == 1 else "s"
        body = (f"<div>{tile.rows:,} rows in {tile.partitions:,} partition{plural}</div>"
                f"<div>last load {html.escape(when(tile.last_load, now))}</div>"
                f"<div>freshness: {html.escape(fresh)}</div>"
                f'<div class="lake-checks" style="color:{check_colour}">{checks}</div>')
    return (f'<div class="lake-tile" data-table="{name}" data-status="{tile.status}" '
            f'style="border-left:8px solid {fg};background:{bg};padding:0.6rem 0.9rem;'
            f'border-radius:6px;margin-bottom:0.8rem;color:#202124">'
            f'<div style="font-size:1.15rem;font-weight:600">{name} '
            f'<span class="lake-status" style="color:{fg}">{LABELS[tile.status]}</span></div>'
            f"{body}</div>")


def overview_page(view: View, now: datetime) -> None:
    """One tile per table; the staging backlog and the quarantine count."""
    data = dq.overview(view.wh, declared_of(view), now)
    backlog = staging_backlog(view.config, now)
    quarantined = quarantined_runs(view.config, now)
    a, b, c, d = st.columns(4)
    a.metric("Tables", len(data.tiles))
    b.metric("Runs waiting in staging", backlog.runs)
    c.metric("Oldest waiting run", age(backlog.oldest_age_seconds))
    d.metric("Quarantined runs", len(quarantined))
    if not data.tiles:
        st.info("No tables yet: declare them in lake.toml ([tables.<name>]), stage runs, "
                "then run `lake load`.")
        return
    if data.loads == 0:
        st.info("No load has run yet: stage runs, then run `lake load`.")
    for start in range(0, len(data.tiles), TILES_PER_ROW):
        columns = st.columns(TILES_PER_ROW)
        for column, tile in zip(columns, data.tiles[start:start + TILES_PER_ROW], strict=False):
            column.markdown(tile_html(tile, now), unsafe_allow_html=True)


def runs_page(view: View, now: datetime) -> None:
    """Latest run per job, the load timeline, failures and killed runs."""
    st.subheader("Latest run per job")
    latest = dq.latest_runs(view.wh)
    if not latest:
        st.info("No runs recorded yet: `lake load` records each run here.")
        return
    st.dataframe(frame(latest), hide_index=True)
    days = 7 if st.radio("Window", ["Last 7 days", "Last 30 days"], horizontal=True,
                         key="runs_window") == "Last 7 days" else 30
    since = dq.days_ago(now, days)
    timeline = dq.load_timeline(view.wh, since)
    st.subheader(f"Loads in the last {days} days")
    if timeline:
        df = frame(timeline)
        df["duration_s"] = df["duration_ms"].fillna(0) / 1000
        left, right = st.columns(2)
        left.caption("Duration (s)")
        left.bar_chart(df, x="started_at", y="duration_s")
        right.caption("Rows loaded")
        right.bar_chart(df, x="started_at", y="rows_loaded")
    else:
        st.info(f"No loads in the last {days} days.")
    failed = dq.failed_runs(view.wh, since)
    st.subheader(f"Failures in the last {days} days")
    errors = [r for r in failed if not r["killed"]]
    if errors:
        st.dataframe(frame(errors).drop(columns=["killed"]), hide_index=True)
    else:
        st.success(f"No failed runs in the last {days} days.")
    st.subheader(f"Killed runs in the last {days} days")
    killed = [r for r in failed if r["killed"]]
    if killed:
        st.dataframe(frame(killed).drop(columns=["killed"]), hide_index=True)
    else:
        st.success(f"No killed runs in the last {days} days.")
    st.subheader(f"Producer versions in the last {days} days")
    versions = dq.producer_versions(view.wh, since)
    if versions:
        st.dataframe(frame(versions), hide_index=True)
    else:
        st.info(f"No staged runs left staging in the last {days} days.")


def checks_page(view: View, now: datetime) -> None:
    """Failing checks by table and partition, and one check's history."""
    failing = dq.failing_checks(view.wh, declared_of(view))
    known = view.wh.fetchall("SELECT DISTINCT asset_key, check_name FROM meta.asset_checks "
                             "ORDER BY 1, 2", action="listing checks")
    if not known:
        st.info("No check results yet: every load records its checks here.")
        return
    st.subheader("Failing checks (table-level: latest result; others: each table's last "
                 "validated runs)")
    if failing:
        for table in dict.fromkeys(r["table"] for r in failing):
            rows = [r for r in failing if r["table"] == table]
            st.markdown(f"**{html.escape(table)}**: {len(rows)} failing")
            st.dataframe(frame(rows).drop(columns=["table"]), hide_index=True)
    else:
        st.success("No failing checks: every table's last checks passed.")
    st.subheader("History")
    failing_pairs = {(r["table"], r["check"]) for r in failing}
    options = sorted(known, key=lambda p: (tuple(p) not in failing_pairs, p))
    choice = st.selectbox("Check", options, format_func=lambda p: f"{p[0]} · {p[1]}",
                          key="check_choice")
    if choice is not None:
        history = dq.check_history(view.wh, choice[0], choice[1])
        df = frame(history)
        df["failures"] = failures_per_result(df)
        st.scatter_chart(df, x="checked_at", y="failures", color="status")
        st.dataframe(df.drop(columns=["failures"]), hide_index=True)


def quarantine_page(view: View, now: datetime) -> None:
    """Quarantined runs with reason, message and age, and the command that replays each."""
    runs = quarantined_runs(view.config, now)
    if not runs:
        st.success("Quarantine is empty: no rejected runs.")
        return
    st.subheader(f"{len(runs)} quarantined")
    st.dataframe(frame([{"table": r["table"], "run": r["run_id"], "code": r["code"],
                         "message": r["message"], "age": age(r["age_seconds"]),
                         "kind": r["kind"]} for r in runs]), hide_index=True)
    st.subheader("Replay (after fixing the cause)")
    for r in runs[:REPLAY_COMMANDS_SHOWN]:
        st.caption(f"{r['table']} · {r['run_id']} · {r['code']}")
        st.code(r["replay"], language="bash")
    if len(runs) > REPLAY_COMMANDS_SHOWN:
        st.caption(f"... and {len(runs) - REPLAY_COMMANDS_SHOWN} more: `lake quarantine list`")


def table_page(view: View, now: datetime) -> None:
    """One table: partitions and their rows, watermarks per scope, schema, contract."""
    present = dq.data_tables(view.wh)
    names = sorted(set(view.config.tables) | set(present))
    if not names:
        st.info("No tables yet: declare them in lake.toml, then run `lake load`.")
        return
    table = st.selectbox("Table", names, key="table_choice")
    if table is None:
        return
    contract = view.config.tables.get(table)
    left, right = st.columns([2, 1])
    with left:
        st.subheader("Partitions")
        if table in present:
            parts = dq.partition_rows(view.wh, table)
            if parts:
                df = frame(parts)
                df["partition"] = df["partition"].astype(str)
                st.bar_chart(df, x="partition", y="rows")
            else:
                st.info(f"{table} is empty.")
        else:
            st.info(f"No data yet: nothing has been loaded into {table}.")
        st.subheader("Watermarks")
        marks = dq.watermarks(view.wh, table)
        if marks:
            st.dataframe(frame(marks), hide_index=True)
        else:
            st.info("No watermark yet: it is set by the first load of an event time.")
    with right:
        st.subheader("Contract")
        if contract is None:
            st.warning(f"{table} is not declared in lake.toml.")
        else:
            partition = ", then ".join(f"{p.column} by {p.granularity}"
                                       for p in contract.partitions) or "none"
            st.markdown("\n".join([
                f"- schema: `{contract.schema or contract.schema_file or 'none (any columns)'}`",
                f"- primary key: `{', '.join(contract.primary_key) or 'none'}`",
                f"- partitioned: {partition}",
                f"- merge: `{contract.merge}`, on invalid: `{contract.on_invalid}`",
                f"- schema evolution: `{contract.schema_evolution}`",
                f"- checks: {declared_checks(contract.checks)}",
                f"- watermark scope: `{contract.watermark_scope or 'ALL only'}`"]))
        st.subheader("Schema")
        schema = dq.table_schema(view.wh, table)
        if schema:
            st.dataframe(frame(schema), hide_index=True)
        else:
            st.info("No columns yet: the table is created by its first load.")


DRAW: dict[str, Callable[[View, datetime], None]] = {
    "Overview": overview_page, "Runs": runs_page, "Checks": checks_page,
    "Quarantine": quarantine_page, "Table": table_page}


# -- the frame around a page --------------------------------------------------------------
def draw(root: str, page: str, refresh: float) -> None:
    """One refresh of one page: resolve the snapshot link again, read, draw, close."""
    now = utcnow_naive()
    try:
        with open_view(root) as view:
            previous = st.session_state.get("lake_version")
            if previous and previous != view.version:
                st.info(f"A newer snapshot was published while this page was open "
                        f"({previous} -> {view.version}): showing it.")
            st.session_state["lake_version"] = view.version
            every = f"every {refresh:g} s" if refresh else "on reload"
            st.caption(f"Snapshot {view.version}, published "
                       f"{when(view.published_at.replace(tzinfo=None), now)}; reread {every}.")
            DRAW[page](view, now)
    except NothingToShowError as exc:
        st.info(str(exc))
    except LakehouseError as exc:
        st.error(f"Could not read the lake: {exc}")


def main(root: str, refresh: float = 0.0) -> None:
    """The app: a page picker in the sidebar, and the page, redrawn every ``refresh`` s."""
    st.set_page_config(page_title="Lake health", layout="wide")
    page = st.sidebar.radio("Page", PAGES, key="page") or PAGES[0]
    st.sidebar.caption(f"Lake root: {root}")
    st.title(f"Lake health · {page}")
    if refresh > 0:
        st.fragment(run_every=refresh)(draw)(root, page, refresh)
    else:
        draw(root, page, refresh)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """``--root ROOT --refresh SECONDS`` (what `lake dashboard` passes after ``--``)."""
    parser = argparse.ArgumentParser(prog="lake dashboard app")
    parser.add_argument("--root", required=True)
    parser.add_argument("--refresh", type=float, default=0.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    main(args.root, args.refresh)
