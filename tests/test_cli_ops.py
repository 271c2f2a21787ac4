"""The operations commands through the CLI: audit, compact, cleanup, quarantine list."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from click.testing import CliRunner
from conftest import Lake

from loader.audit import AUDIT_KEYS
from loader.cli import cli


def invoke(lake: Lake, *args: str) -> object:
    return CliRunner().invoke(cli, ["--root", str(lake.root), *args])


def _load_some(lake: Lake) -> None:
    lake.stage("plain", pa.table({"id": [1, 2, 3]}))
    lake.stage("logs", pa.table({"id": [1, 1], "ts": pa.array([0, 0], pa.timestamp("us"))}))
    lake.load()  # the logs run has a duplicate key: quarantined


def test_audit_json_out_and_strict(lake: Lake, tmp_path: Path) -> None:
    _load_some(lake)
    out = tmp_path / "audit.json"
    result = invoke(lake, "audit", "--json", "--out", str(out))
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload) == set(AUDIT_KEYS)
    assert json.loads(out.read_text()) == payload
    assert payload["tables"]["plain"]["rows"] == 3
    assert any(p["code"] == "quarantined_runs" for p in payload["problems"])
    text = invoke(lake, "audit")
    assert text.exit_code == 0 and "plain" in text.output
    # An error-level problem makes --strict exit 3.
    (lake.root / "warehouse" / "lake.read.duckdb").unlink()
    strict = invoke(lake, "audit", "--strict", "--json")
    assert strict.exit_code == 3
    assert any(p["severity"] == "error" for p in json.loads(strict.output)["problems"])


def test_compact_dry_run_then_compact(lake: Lake) -> None:
    _load_some(lake)
    before = (lake.root / "warehouse" / "lake.duckdb").read_bytes()
    inode = (lake.root / "warehouse" / "lake.duckdb").stat().st_ino
    rows = lake.rows("SELECT * FROM plain ORDER BY ALL")
    dry = invoke(lake, "compact", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["dry_run"] is True
    assert (lake.root / "warehouse" / "lake.duckdb").read_bytes() == before
    # A freshly loaded warehouse has nothing to give back: the rebuild is dropped.
    kept = invoke(lake, "compact", "--keep-backups", "1")
    assert kept.exit_code == 0, kept.output
    assert kept.stdout.startswith("kept the warehouse as it is: rebuilt ")
    assert "kept lake.duckdb: the rebuilt file is not smaller" in kept.stderr
    # The original is kept; its one change is the compaction's own run row.
    assert (lake.root / "warehouse" / "lake.duckdb").stat().st_ino == inode
    assert lake.rows("SELECT * FROM plain ORDER BY ALL") == rows
    assert lake.rows("SELECT job_name, status FROM meta.ingestion_runs WHERE job_name = "
                     "'compact'") == [("compact", "success")]
    assert not (lake.root / "warehouse" / "backups").exists() or not any(
        (lake.root / "warehouse" / "backups").iterdir())
    assert [p.name for p in (lake.root / "warehouse").iterdir()
            if ".tmp-" in p.name] == []
    done = invoke(lake, "compact", "--keep-backups", "1", "--force")
    assert done.exit_code == 0, done.output
    assert "compacted" in done.output and "verified" in done.output
    assert len(list((lake.root / "warehouse" / "backups").iterdir())) == 1
    assert lake.rows("SELECT count(*) FROM plain") == [(3,)]


def test_cleanup_and_quarantine_list_text(lake: Lake) -> None:
    _load_some(lake)
    cleaned = invoke(lake, "cleanup", "--dry-run")
    assert cleaned.exit_code == 0
    assert cleaned.output.startswith("cleanup: would remove 0 temp files")
    listed = invoke(lake, "quarantine", "list")
    assert listed.exit_code == 0
    assert "logs" in listed.output and "contract_violation" in listed.output
    empty = invoke(lake, "quarantine", "list", "--table", "plain")
    assert empty.output.strip() == "quarantine is empty"


# -- replay never trusts the manifest that got a run rejected (found by make chaos) --------
def _logs(ids: list[int]) -> pa.Table:
    ts = pa.array(["2026-03-01T10:00:00"] * len(ids)).cast(pa.timestamp("us"))
    return pa.table({"id": pa.array(ids, pa.int64()), "ts": ts, "msg": ["m"] * len(ids)})


def test_replay_uses_the_folder_name_not_the_rejected_manifests_run_id(lake: Lake) -> None:
    from conftest import hand_run_id, write_run_by_hand

    from loader.quarantine import replay_run

    good = lake.stage("logs", _logs([1]))
    assert good is not None
    lake.load()
    liar = hand_run_id(2)
    made_up = hand_run_id(77)
    for bad, claimed in ((liar, good.run_id), (hand_run_id(3), made_up)):
        write_run_by_hand(lake.root, "logs", bad, {"part-00000.parquet": _logs([100, 101])},
                          manifest={"run_id": claimed})
        report = lake.load()
        assert [(o.run_id, o.reason_code) for o in report.runs] == [(bad, "manifest_mismatch")]
        result = replay_run(lake.config(), bad)
        assert result.staged == f"staging/logs/{bad}"  # back under its own folder name
        again = lake.load()
        # Rejected again for the same reason, back in quarantine, nothing else touched.
        assert [(o.run_id, o.status, o.reason_code) for o in again.runs] == [
            (bad, "quarantined", "manifest_mismatch")]
        assert bad in lake.quarantined("logs")
        assert lake.ledger()[bad] == "quarantined"
    assert lake.rows("SELECT id FROM logs") == [(1,)]  # no row of a rejected run loaded
    assert lake.archived("logs") == [good.run_id]  # the real run's archive holds one folder
    assert made_up not in lake.ledger() and made_up not in lake.staged("logs")
