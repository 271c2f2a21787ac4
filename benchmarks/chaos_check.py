"""The end of a chaos run: DESIGN.md's invariants checked against the reference model.

Runs after the final clean ``lake load`` and ``lake cleanup``, with nothing else running. The
truth comes from the producers' journals (what each began, and what it knows it committed),
the run folders (a manifest on disk also means committed: a producer may die between its
manifest and its journal line), and the reference model ``tests/model.py``, which replays
every committed run a producer made through the producer API and says what the ledger and the
tables must hold. Hand-written hostile runs must be quarantined with one of their reason codes.

Producers never share a key, a partition or a file's content, so the model replays each
producer's runs on their own (after the setup runs, which loaded first): across producers the
order of loads cannot change a result.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import duckdb
import pyarrow.parquet as pq

from benchmarks.chaos_hostile import KINDS_BY_NAME, Ctx, Step
from benchmarks.chaos_lake import (
    KEY_COLUMNS,
    RESPEC_TABLE,
    TABLES,
    Plan,
    good_rows,
    model_specs,
    read_journal,
    respec_model_spec,
    respecced,
    split,
)
from lakehouse.layout import parse_run_id

REPO = Path(__file__).resolve().parent.parent
MODEL_PATH = REPO / "tests" / "model.py"
AREAS = ("staging", "archive", "quarantine")


def load_model() -> ModuleType:
    """Import ``tests/model.py`` (the reference model the property tests use)."""
    name = "lake_reference_model"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODEL_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclass
class Run:
    """One run a chaos process began (from the journals)."""

    role: str  # "g": good producer (pid 0: the setup runs); "h": hostile producer
    pid: int
    seq: int
    table: str
    folder: str
    kind: str | None = None
    step: int = 0
    rows: int = 0
    files: int = 1
    link: str | None = None
    retry: bool = False
    api: bool = False  # hostile: staged through stage_run
    journal_committed: bool = False
    committed: bool = False
    reuse: bool = False  # hostile: staged under the id of a run of its producer that loaded
    digests: dict[str, str] = field(default_factory=dict)  # reuse: its files' SHA-256

    @property
    def key(self) -> tuple[str, str]:
        return (self.table, self.folder)

    @property
    def modelled(self) -> bool:
        """The reference model decides its outcome (it went through the producer API)."""
        return self.role == "g" or self.api

    def hostile_step(self, seed: int) -> Step:
        assert self.kind is not None
        return KINDS_BY_NAME[self.kind].build(Ctx(seed, self.pid, self.seq))[self.step]


@dataclass
class Check:
    """One invariant: passed, or the first problems found."""

    name: str
    meaning: str
    problems: list[str] = field(default_factory=list)
    count: int = 0

    @property
    def ok(self) -> bool:
        return self.count == 0

    def fail(self, message: str) -> None:
        self.count += 1
        if len(self.problems) < 20:
            self.problems.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "meaning": self.meaning,
                "failures": self.count, "problems": self.problems}


@dataclass
class Folder:
    """A run folder on disk (``<run_id>.N`` when a second folder of the run was needed)."""

    area: str
    table: str
    run: str
    path: Path


class Checker:
    """Reads the journals, the folders and the warehouse; checks every invariant."""

    def __init__(self, root: Path, work: Path, seed: int) -> None:
        self.root, self.work, self.seed = root, work, seed
        self.model = load_model()
        self.checks: dict[str, Check] = {}
        self.runs: dict[tuple[str, str], Run] = {}
        # runs staged under the id of a loaded run (their key is that run's): never in the model
        self.reused: list[Run] = []
        self.failed_producer_runs: list[str] = []
        self.folders: dict[tuple[str, str], list[Folder]] = {}
        self.ledger: dict[tuple[str, str], tuple[str, str | None, int, int]] = {}
        self.figures: dict[str, Any] = {}

    def check(self, name: str, meaning: str) -> Check:
        if name not in self.checks:
            self.checks[name] = Check(name, meaning)
        return self.checks[name]

    # -- reading ----------------------------------------------------------------------------
    def read_journals(self) -> None:
        for path in sorted((self.work / "journal").glob("*.jsonl")):
            role, pid = path.stem[0], int(path.stem[1:])
            by_folder: dict[tuple[str, bool], Run] = {}
            for ev in read_journal(path):
                reuse = bool(ev.get("reuse"))
                if ev["ev"] == "failed":
                    self.failed_producer_runs.append(f"{path.stem} seq {ev['seq']}: "
                                                     f"{ev.get('error')}")
                elif ev["ev"] == "begin" and reuse:
                    run = Run(role, pid, ev["seq"], ev["table"], ev["run"], kind=ev.get("kind"),
                              step=ev.get("step", 0), reuse=True, digests=ev["files"])
                    self.reused.append(run)
                    by_folder[(run.folder, True)] = run
                elif ev["ev"] == "begin":
                    run = Run(role, pid, ev["seq"], ev["table"], ev["run"], kind=ev.get("kind"),
                              step=ev.get("step", 0), rows=ev.get("rows", 0),
                              files=ev.get("files", 1), link=ev.get("link"),
                              retry=bool(ev.get("retry")))
                    if run.kind is not None:
                        run.api = run.hostile_step(self.seed).api
                    self.runs[run.key] = by_folder[(run.folder, False)] = run
                elif ev["ev"] == "reuse_lost" and (ev["run"], True) in by_folder:
                    # another hostile producer staged under that id first: never staged
                    self.reused.remove(by_folder.pop((ev["run"], True)))
                elif ev["ev"] == "committed" and (ev.get("run"), reuse) in by_folder:
                    by_folder[(ev["run"], reuse)].journal_committed = True

    def read_folders(self) -> None:
        for area in AREAS:
            base = self.root / area
            if not base.is_dir():
                continue
            for table_dir in base.iterdir():
                if table_dir.name.startswith(".") or not table_dir.is_dir():
                    continue
                for entry in table_dir.iterdir():
                    run = entry.name
                    head, _, tail = run.rpartition(".")
                    if area != "staging" and tail.isdigit() and parse_run_id(head):
                        run = head  # a second folder of the same run
                    self.folders.setdefault((table_dir.name, run), []).append(
                        Folder(area, table_dir.name, run, entry))

    def read_ledger(self) -> None:
        check = self.check("ledger_once", "every run has at most one ledger row")
        for table, run_id, status, code, loaded, rejected in self.query(
                self.root / "warehouse" / "lake.duckdb",
                "SELECT table_name, run_id, status, reason_code, coalesce(rows_loaded, 0), "
                "coalesce(rows_rejected, 0) FROM meta.staged_runs"):
            if (table, run_id) in self.ledger:
                check.fail(f"{table}/{run_id!r} has two ledger rows")
            self.ledger[(table, run_id)] = (status, code, int(loaded), int(rejected))

    @staticmethod
    def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(db), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    # -- committed or not -------------------------------------------------------------------
    def decide_committed(self) -> None:
        # lexists: a hostile manifest may be a FIFO or a link to a device (never opened).
        for run in self.runs.values():
            run.committed = run.journal_committed or any(
                os.path.lexists(f.path / "_manifest.json") or (f.path / "_symlink").is_symlink()
                or (f.area == "staging" and f.path.is_symlink())
                for f in self.folders.get(run.key, []))
        for run in self.reused:  # renamed into staging whole: committed once it is there
            run.committed = run.journal_committed or any(
                f.area != "staging" and self.digests(f.path) == run.digests
                for f in self.folders.get(run.key, []))

    # -- the model --------------------------------------------------------------------------
    def staged_run(self, run: Run) -> Any:
        """The model's view of a committed run: its columns, its files' rows, its key."""
        if run.role == "g":
            plan = Plan(self.seed, run.pid, run.seq, run.table, run.rows, run.files,
                        abandon=False)
            parts, key = split(good_rows(plan), plan.files), plan.key
        else:
            step = run.hostile_step(self.seed)
            assert step.data is not None
            parts, key = [step.data], step.key
        columns = tuple((f.name, str(f.type)) for f in parts[0].schema)
        files = tuple(tuple(tuple(r.values()) for r in part.to_pylist()) for part in parts)
        if "files" in getattr(self.model.StagedRun, "__dataclass_fields__", {}):
            return self.model.StagedRun(run.table, columns, files, key)
        # An older model: one file per run (producers never repeat a file, so only the
        # rows matter).
        return self.model.StagedRun(run.table, columns, tuple(r for f in files for r in f), key)

    def expected(self) -> tuple[dict[tuple[str, str], Any], dict[str, Counter[tuple[Any, ...]]],
                                dict[str, list[str]]]:
        """The model's outcome per modelled committed run, and the rows of every table."""
        specs = model_specs(self.model)
        modelled = sorted((r for r in self.runs.values() if r.committed and r.modelled),
                          key=lambda r: r.folder)
        setup = [r for r in modelled if r.role == "g" and r.pid == 0]
        groups: dict[tuple[str, int], list[Run]] = {}
        for r in modelled:
            if not (r.role == "g" and r.pid == 0):
                groups.setdefault((r.role, r.pid), []).append(r)
        outcomes: dict[tuple[str, str], Any] = {}
        rows: dict[str, Counter[tuple[Any, ...]]] = {t: Counter() for t in TABLES}
        columns: dict[str, list[str]] = {}
        for members in [[], *groups.values()]:
            inputs = setup + members
            result = self.model.simulate(specs, [self.staged_run(r) for r in inputs])
            if respecced(self.work) and hasattr(self.model, "repartition"):
                # `lake repartition logs` ran (to completion before the final load): every
                # row of logs takes the partition the new spec gives it; logs (append, no
                # row check) keeps the same rows whichever spec its runs loaded under.
                result.tables[RESPEC_TABLE] = self.model.repartition(
                    result.tables[RESPEC_TABLE], respec_model_spec(self.model))
            first = 0 if not members else len(setup)
            for run, outcome in zip(inputs[first:], result.outcomes[first:], strict=True):
                outcomes[run.key] = outcome
            for table, state in result.tables.items():
                columns[table] = sorted(state.columns)
                for row in state.rows:
                    if row[self.model.RUN_KEY] < first:
                        continue
                    run = inputs[row[self.model.RUN_KEY]]
                    rows[table][self.row_tuple(columns[table], row, run.folder)] += 1
        return outcomes, rows, columns

    def row_tuple(self, columns: list[str], row: dict[str, Any], run_id: str) -> tuple[Any, ...]:
        return (*(row[c] for c in columns), row[self.model.PARTITION_COLUMN], run_id)

    # -- the checks -------------------------------------------------------------------------
    def check_runs(self, outcomes: dict[tuple[str, str], Any]) -> None:
        once = self.check("committed_runs_as_model",
                          "every committed good (and API-staged hostile) run has the ledger "
                          "row and the folder the reference model says: loaded once, skipped "
                          "or quarantined")
        rejected = self.check("hostile_runs_quarantined",
                              "every committed hand-written hostile run is quarantined with one "
                              "of its kind's reason codes")
        uncommitted = self.check("uncommitted_never_loaded",
                                 "a run that never committed is never loaded: still in staging "
                                 "without a manifest, or in quarantine as abandoned")
        for run in self.runs.values():
            ledger = self.ledger.get(run.key)
            folders = self.folders.get(run.key, [])
            areas = sorted(f.area for f in folders)
            name = f"{run.role}{run.pid} seq {run.seq} {run.kind or ''} {run.table}/{run.folder!r}"
            if not run.committed:
                if ledger is not None and ledger[:2] != ("quarantined", "abandoned"):
                    uncommitted.fail(f"{name}: never committed but ledger says {ledger}")
                if areas not in (["staging"], ["quarantine"]) and not (run.link and not areas):
                    uncommitted.fail(f"{name}: never committed, folders in {areas}")
                if areas == ["quarantine"] and self.reason_code(folders[0].path) != "abandoned":
                    uncommitted.fail(f"{name}: never committed, quarantined as "
                                     f"{self.reason_code(folders[0].path)}")
                continue
            if run.modelled:
                want = outcomes[run.key]
                expect = (want.status, want.reason_code, want.rows_loaded, want.rows_rejected)
                if ledger != expect:
                    once.fail(f"{name}: ledger {ledger}, model {expect}")
                    continue
                self.check_folders(once, name, want.status, want.reason_code,
                                   want.rows_rejected, folders)
            else:
                codes = run.hostile_step(self.seed).expect
                if ledger is None or ledger[0] != "quarantined" or ledger[1] not in codes:
                    rejected.fail(f"{name}: ledger {ledger}, expected quarantined as one of "
                                  f"{sorted(codes)}")
                    continue
                self.check_folders(rejected, name, "quarantined", ledger[1], 0, folders)

    def check_reused(self) -> None:
        check = self.check("reused_ids_kept",
                           "a run staged under the id of a loaded run is quarantined as "
                           "run_id_reused with every file byte for byte, while the loaded "
                           "run keeps its ledger row and its archived folder")
        for run in self.reused:
            if not run.committed:
                continue
            name = f"h{run.pid} seq {run.seq} {run.table}/{run.folder!r}"
            kept = [f for f in self.folders.get(run.key, [])
                    if f.area == "quarantine" and self.reason_code(f.path) == "run_id_reused"
                    and self.digests(f.path) == run.digests]
            if not kept:
                found = {f"{f.area}/{f.path.name}": (self.reason_code(f.path),
                                                     sorted(self.digests(f.path)))
                         for f in self.folders.get(run.key, [])}
                check.fail(f"{name}: not in quarantine as run_id_reused byte for byte "
                           f"({found})")
            ledger = self.ledger.get(run.key)
            if ledger is None or ledger[0] != "loaded":
                check.fail(f"{name}: the ledger row of the loaded run became {ledger}")

    @staticmethod
    def digests(folder: Path) -> dict[str, str]:
        """The SHA-256 of each regular file of a folder but _reason.json (links and special
        files are never opened: they count as a mismatch)."""
        import hashlib

        out = {}
        for entry in sorted(folder.iterdir()):
            if entry.name == "_reason.json":
                continue
            out[entry.name] = (hashlib.sha256(entry.read_bytes()).hexdigest()
                               if entry.is_file() and not entry.is_symlink() else "special")
        return out

    def check_folders(self, check: Check, name: str, status: str, code: str | None,
                      rows_rejected: int, folders: list[Folder]) -> None:
        """Loaded and skipped runs are archived; rejected runs (and rejected rows) are in
        quarantine with their reason; nothing is left in staging."""
        by_area = {f.area: f.path for f in folders}
        if "staging" in by_area:
            check.fail(f"{name}: still in staging after the final load")
        if status in ("loaded", "skipped") and "archive" not in by_area:
            check.fail(f"{name}: {status} but not archived ({sorted(by_area)})")
        if status == "quarantined" or (status == "loaded" and rows_rejected):
            where = by_area.get("quarantine")
            if where is None:
                check.fail(f"{name}: rejected ({code}) but not in quarantine ({sorted(by_area)})")
                return
            reason = self.reason_code(where)
            if status == "quarantined" and reason != code:
                check.fail(f"{name}: _reason.json says {reason}, the ledger {code}")
            if status == "loaded" and rows_rejected:
                rejected = where / "_rejected_rows.parquet"
                got = pq.ParquetFile(rejected).metadata.num_rows if rejected.is_file() else None
                if got != rows_rejected:
                    check.fail(f"{name}: {rows_rejected} rows rejected, "
                               f"_rejected_rows.parquet holds {got}")

    @staticmethod
    def reason_code(folder: Path) -> str | None:
        try:
            return str(json.loads((folder / "_reason.json").read_text())["code"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def check_unknown(self) -> None:
        check = self.check("no_unknown_runs",
                           "a folder or ledger row no producer journaled (a producer killed "
                           "before its first line) never committed and never loaded")
        for key, folders in self.folders.items():
            if key in self.runs:
                continue
            if any(os.path.lexists(f.path / "_manifest.json") for f in folders):
                check.fail(f"{key}: unknown committed run in {[f.area for f in folders]}")
            led = self.ledger.get(key)
            if led is not None and led[:2] != ("quarantined", "abandoned"):
                check.fail(f"{key}: unknown run, ledger {led}")
        for key, led in self.ledger.items():
            if key not in self.runs and key not in self.folders:
                check.fail(f"{key}: ledger row {led} for a run that exists nowhere")

    def check_tables(self, rows: dict[str, Counter[tuple[Any, ...]]],
                     columns: dict[str, list[str]]) -> None:
        exact = self.check("tables_equal_model",
                           "every table holds exactly the model's rows: each committed good "
                           "run's rows once, no row of an uncommitted or rejected run")
        snap = self.check("snapshot_equals_warehouse",
                          "the published snapshot holds the same rows and ledger as the "
                          "warehouse")
        warehouse = self.root / "warehouse" / "lake.duckdb"
        snapshot = self.root / "warehouse" / "lake.read.duckdb"
        lost = duplicated = unexpected = expected_total = 0
        for table in TABLES:
            cols = columns[table]
            select = ", ".join(f'"{c}"' for c in cols)
            sql = f'SELECT {select}, _lake_partition, _lake_run_id FROM "{table}"'
            got = Counter(self.query(warehouse, sql))
            want = rows[table]
            expected_total += sum(want.values())
            missing = want - got
            extra = got - want
            lost += sum(missing.values())
            key_index = [cols.index(c) for c in KEY_COLUMNS[table]]
            got_keys = Counter(tuple(r[i] for i in key_index) for r in got.elements())
            want_keys = Counter(tuple(r[i] for i in key_index) for r in want.elements())
            dup = sum(max(0, n - want_keys[k]) for k, n in got_keys.items() if n > 1)
            duplicated += dup
            unexpected += max(0, sum(extra.values()) - dup)
            for row in list(missing)[:5]:
                exact.fail(f"{table}: row missing {self.short(row)}")
            for row in list(extra)[:5]:
                exact.fail(f"{table}: row not expected {self.short(row)}")
            exact.count += max(0, len(missing) - 5) + max(0, len(extra) - 5)
            if Counter(self.query(snapshot, sql)) != got:
                snap.fail(f"{table}: snapshot differs from the warehouse")
        ledger_sql = ("SELECT table_name, run_id, status, reason_code, rows_loaded "
                      "FROM meta.staged_runs")
        if Counter(self.query(snapshot, ledger_sql)) != Counter(self.query(warehouse, ledger_sql)):
            snap.fail("the snapshot's ledger differs from the warehouse's")
        self.figures.update(rows_expected=expected_total, rows_lost=lost,
                            rows_duplicated=duplicated, rows_unexpected=unexpected)

    def check_run_metrics(self, outcomes: dict[tuple[str, str], Any],
                          rows: dict[str, Counter[tuple[Any, ...]]]) -> None:
        """Issue 14: the run log's row counts agree with the model, per table.

        ``meta.ingestion_run_assets`` commits with the rows it counts, so even across
        SIGKILLed loads: rows_inserted - rows_deleted is the table's row count; for
        append, rows_inserted is the rows the model loaded and nothing is updated or
        deleted; for upsert and replace_partition, rows_inserted + rows_updated is at most
        the rows the model loaded (it equals them when each run is its own batch: a batch
        of several runs writes a key or a partition once, the model run by run).
        """
        check = self.check("run_metrics_match_model",
                           "rows_inserted + rows_updated (and - rows_deleted) in "
                           "meta.ingestion_run_assets match the model's rows per table")
        sums = {str(t): (int(i), int(u), int(d)) for t, i, u, d in self.query(
            self.root / "warehouse" / "lake.duckdb",
            "SELECT asset_key, coalesce(sum(rows_inserted), 0), coalesce(sum(rows_updated), 0), "
            "coalesce(sum(rows_deleted), 0) FROM meta.ingestion_run_assets a "
            # Loads only: a repartition moves rows (deleted from old partitions, inserted in
            # new ones), which the model does not count as loaded.
            "WHERE a.run_id IN (SELECT run_id FROM meta.ingestion_runs WHERE job_name = 'load') "
            "GROUP BY 1")}
        merges = {name: spec.merge for name, spec in model_specs(self.model).items()}
        loaded: Counter[str] = Counter()
        for (table, _), outcome in outcomes.items():
            if outcome is not None and outcome.status == "loaded":
                loaded[table] += outcome.rows_loaded
        for table in TABLES:
            inserted, updated, deleted = sums.get(table, (0, 0, 0))
            held = sum(rows[table].values())
            if inserted - deleted != held:
                check.fail(f"{table}: rows_inserted {inserted} - rows_deleted {deleted} != "
                           f"{held} rows the model holds")
            if merges.get(table) == "append" and (inserted, updated, deleted) != (
                    loaded[table], 0, 0):
                check.fail(f"{table}: append logged {inserted} inserted, {updated} updated, "
                           f"{deleted} deleted; the model loaded {loaded[table]} rows")
            elif inserted + updated > loaded[table]:
                check.fail(f"{table}: rows_inserted + rows_updated = {inserted + updated} > "
                           f"{loaded[table]} rows the model loaded")
        self.figures["run_metrics"] = {t: dict(zip(("inserted", "updated", "deleted"),
                                                   sums.get(t, (0, 0, 0)), strict=True))
                                       for t in TABLES}

    @staticmethod
    def short(row: tuple[Any, ...]) -> str:
        return repr(tuple(str(v)[:40] for v in row))

    def check_quarantine(self, listed: list[dict[str, Any]] | None) -> None:
        check = self.check("quarantine_has_reasons",
                           "every rejected run (ledger: quarantined) is in quarantine/ with a "
                           "_reason.json of the ledger's code, and every folder there is "
                           "accounted for by the ledger and listed by `lake quarantine list`")
        folders = [f for fs in self.folders.values() for f in fs if f.area == "quarantine"]
        by_run: dict[tuple[str, str], list[Folder]] = {}
        for f in folders:
            by_run.setdefault((f.table, f.run), []).append(f)
        for (table, run_id), (status, code, _, rejected) in self.ledger.items():
            if status != "quarantined" and not rejected:
                continue
            want = code if status == "quarantined" else "rows_dropped"
            found = by_run.get((table, run_id), [])
            if not found:
                check.fail(f"{table}/{run_id!r}: ledger {status} {code}, no quarantine folder")
            elif want not in {self.reason_code(f.path) for f in found}:
                check.fail(f"{table}/{run_id!r}: _reason.json "
                           f"{[self.reason_code(f.path) for f in found]}, ledger {want}")
        for f in folders:
            rel = f.path.relative_to(self.root)
            if not (f.path / "_reason.json").is_file():
                check.fail(f"{rel}: no _reason.json")
            led = self.ledger.get((f.table, f.run))
            if led is not None and led[0] == "loaded" and self.reason_code(
                    f.path) == "run_id_reused":
                continue  # another run under a loaded run's id: the ledger keeps the loaded row
            if led is None or (led[0] != "quarantined" and not led[3]):
                check.fail(f"{rel}: in quarantine, ledger {led}")
        if listed is None:
            check.fail("`lake quarantine list --json` failed")
        elif sorted(q["path"] for q in listed) != sorted(
                str(f.path.relative_to(self.root)) for f in folders):
            check.fail(f"`lake quarantine list` shows {len(listed)} entries, "
                       f"quarantine/ holds {len(folders)}")

    def check_leftovers(self) -> None:
        temp = self.check("no_temp_files", "no *.tmp-* file or folder anywhere under the root "
                          "after `lake cleanup --grace-minutes 0`")
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                if ".tmp-" in name:
                    temp.fail(str(Path(dirpath, name).relative_to(self.root)))
        left = self.check("nothing_half_done", "no committed run left in staging, no "
                          "half-deleted folder in archive/.trash, no lock holder note")
        trash = self.root / "archive" / ".trash"
        if trash.is_dir() and any(trash.iterdir()):
            left.fail(f"archive/.trash holds {len(list(trash.iterdir()))} entries")
        if (self.root / "warehouse" / "lake.lock.json").exists():
            left.fail("warehouse/lake.lock.json left behind")
        for (table, name), folders in self.folders.items():
            for f in folders:
                if f.area == "staging" and os.path.lexists(f.path / "_manifest.json"):
                    left.fail(f"staging/{table}/{name!r} is committed but still staged")
        outside = self.check("outside_untouched", "files outside the root that hostile runs "
                             "point at (symlinks, absolute paths) are never moved or deleted")
        for run in self.runs.values():
            if not run.committed or run.kind is None:
                continue
            base = self.work / "outside"
            need = {"symlinked_data_file": [base / f"h{run.pid}-{run.seq}-target.parquet"],
                    "manifest_names_a_file_outside": [
                        base / f"h{run.pid}-{run.seq}-listed.parquet"],
                    "symlinked_run_folder": [Path(run.link or "") / "part-00000.parquet",
                                             Path(run.link or "") / "_manifest.json"]}
            for path in need.get(run.kind, []):
                if not path.is_file():
                    outside.fail(f"{run.kind} of h{run.pid} seq {run.seq}: {path} is gone")

    def check_producers(self) -> None:
        check = self.check("producers_never_failed",
                           "no producer's stage_run failed unexpectedly (only SIGKILL stops one)")
        for message in self.failed_producer_runs:
            check.fail(message)

    def check_run_log(self, calls: list[Any]) -> None:
        """Every `lake` command the chaos run started has what the model's run log allows
        (``tests/model.py`` ``run_log_rows``): a job that ended has exactly one row, closed;
        a killed one none, or one closed as success or ``killed``; read-only commands and dry
        runs none; and after the final loader tick no row is left ``started`` and no row
        belongs to a process we did not start. Calls match rows by pid (a pid the system
        gave to two of our calls is left out: its rows cannot be told apart)."""
        check = self.check("run_log_truthful",
                           "each lake command has the run-log rows the model allows (one "
                           "closed row per writing job, none for read-only or dry runs); "
                           "none left started")
        rows = self.query(self.root / "warehouse" / "lake.duckdb",
                          "SELECT run_id, job_name, status, error_type, pid "
                          "FROM meta.ingestion_runs ORDER BY started_at")
        by_pid: dict[int | None, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_pid.setdefault(row[4], []).append(row)
            if row[2] == "started":
                check.fail(f"{row[1]} run {row[0]} (pid {row[4]}) is still started")
        seen = Counter(call.pid for call in calls)
        killed = -9
        for call in calls:
            if seen[call.pid] > 1:
                continue
            name = ("quarantine replay" if call.command == "quarantine"
                    and call.args[:1] == ["replay"] else call.command)
            # A SIGTERM while Python starts (-15) did nothing, like a kill before the lock.
            exit_code = None if call.rc in (killed, -15) else call.rc
            job = self.model.JobCall(name, exit_code, "--dry-run" in call.args)
            allowed = self.model.run_log_rows(job)
            mine = by_pid.pop(call.pid, [])
            if len(mine) > 1:
                check.fail(f"lake {name} (pid {call.pid}, exit {call.rc}) has {len(mine)} "
                           "run rows")
                continue
            state = (mine[0][2], mine[0][3]) if mine else None
            if mine and mine[0][1] != self.model.RUN_LOG_JOBS.get(name):
                check.fail(f"lake {name} (pid {call.pid}) recorded job {mine[0][1]!r}")
            elif not self.model.row_state_allowed(state, allowed):
                check.fail(f"lake {name} {' '.join(call.args)} (pid {call.pid}, exit "
                           f"{call.rc}{', ' + call.crash_point if call.crash_point else ''})"
                           f": run row {state}, the model allows {sorted(map(str, allowed))}")
        for pid, left in by_pid.items():
            if seen[pid] == 0:
                check.fail(f"{len(left)} run rows of pid {pid}, which no lake command of "
                           "ours ran")
        self.figures["run_log"] = dict(Counter(
            f"{job} {status}" + (f" {error}" if error else "")
            for _, job, status, error, _ in rows).most_common())
        self.figures["run_log_pids_reused"] = sum(1 for n in seen.values() if n > 1)

    # -- all of it ----------------------------------------------------------------------------
    def run(self, listed: list[dict[str, Any]] | None) -> dict[str, Any]:
        self.read_journals()
        self.read_folders()
        self.read_ledger()
        self.decide_committed()
        outcomes, rows, columns = self.expected()
        self.check_runs(outcomes)
        self.check_reused()
        self.check_unknown()
        self.check_tables(rows, columns)
        self.check_run_metrics(outcomes, rows)
        self.check_quarantine(listed)
        self.check_leftovers()
        self.check_producers()
        good = [r for r in self.runs.values() if r.role == "g" and r.pid != 0]
        hostile = [r for r in self.runs.values() if r.role == "h"]
        bad_kinds: Counter[str] = Counter(r.kind for r in [*hostile, *self.reused]
                                          if r.committed and r.kind)
        self.figures.update(
            runs_begun=len(good) + len(hostile),
            good_runs_committed=sum(r.committed for r in good),
            good_runs_uncommitted=sum(not r.committed for r in good),
            good_runs_retried=sum(r.retry for r in good),
            hostile_runs_committed=sum(r.committed for r in [*hostile, *self.reused]),
            hostile_runs_uncommitted=sum(not r.committed for r in hostile),
            bad_inputs_by_kind=dict(sorted(bad_kinds.items())),
            ledger=dict(Counter(f"{s}" + (f" {c}" if c else "")
                                for s, c, _, _ in self.ledger.values()).most_common()),
        )
        return self.figures
