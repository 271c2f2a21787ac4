"""Hostile files (issue 12, items 1, 3 and 10c): FIFOs, device links, links out of the lake,
oversize markers, and a producer whose run `lake cleanup` abandoned.

Every file Lake reads from ``staging/``, ``quarantine/`` or ``archive/`` goes through
``lakehouse.fsio.read_regular``: opened with O_NOFOLLOW | O_NONBLOCK, checked with fstat to
be a regular file under a size cap. The CLI runs for real in a subprocess with a timeout (a
regression hangs: the test fails after ``HANG_SECONDS`` instead of hanging the suite) and with
its address space capped (a regression that reads ``/dev/zero`` or a sparse 64 GiB file fails
with a MemoryError in a second or two instead of eating the machine's memory).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import LAKE_TOML, REPO, Lake, hand_run_id, make_root, write_run_by_hand
from test_bad_input import logs_table
from test_hostile import Scene, files_outside, temp_files

HANG_SECONDS = 60  # a command that takes longer than this is hung (they take ~2 s)
MEMORY_CAP = 3 << 30  # address space of each CLI run; the loader needs well under 2 GiB
SPARSE_BYTES = 64 << 30  # a regular file that takes no disk and cannot be read whole
ABANDON_NOW = LAKE_TOML.replace("retention_days = 7", "retention_days = 7\nabandon_after_hours = 0")


def capped_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `lake` CLI with a timeout and a capped address space."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    try:
        return subprocess.run([sys.executable, "-m", "loader.cli", "--root", str(root), *args],
                              capture_output=True, text=True, timeout=HANG_SECONDS,
                              cwd=str(root.parent), preexec_fn=limit)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`lake {' '.join(args)}` hung for {HANG_SECONDS} s (killed)")


def json_out(result: subprocess.CompletedProcess[str], *codes: int) -> Any:
    """The command exited with one of ``codes``, without a traceback; its JSON output."""
    assert result.returncode in codes, (result.returncode, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr, \
        result.stderr[-3000:]
    return json.loads(result.stdout)


def sparse(path: Path, size: int = SPARSE_BYTES) -> None:
    """A regular file of ``size`` bytes that takes no disk."""
    with open(path, "wb") as f:
        f.truncate(size)


def outside_parquet(root: Path, ids: list[int]) -> Path:
    """A valid logs Parquet file beside the lake root (outside it)."""
    path = root.parent / "outside.parquet"
    pq.write_table(logs_table(ids), path)
    return path


# ---------------------------------------------------------------- the reader itself


READ_CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "fifo": (lambda p: os.mkfifo(p), "NotRegularFileError"),
    "dev_zero_link": (lambda p: p.symlink_to("/dev/zero"), "NotRegularFileError"),
    "link_to_regular": (lambda p: p.symlink_to(REPO / "pyproject.toml"), "NotRegularFileError"),
    "folder": (lambda p: p.mkdir(), "NotRegularFileError"),
    "sparse_oversize": (sparse, "FileTooLargeError"),
    "one_byte_over": (lambda p: p.write_bytes(b"x" * 1025), "FileTooLargeError"),
    "missing": (lambda p: None, "FileNotFoundError"),
}


@pytest.mark.parametrize("case", list(READ_CASES))
def test_read_regular_refuses_what_is_not_a_small_regular_file(tmp_path: Path,
                                                               case: str) -> None:
    """``read_regular`` raises at once for a link, a FIFO, a folder, a file over the cap or a
    missing one. Run in a subprocess with a timeout: a regression would block on the FIFO."""
    build, error = READ_CASES[case]
    build(tmp_path / "f")
    probe = textwrap.dedent("""
        import sys
        from lakehouse.fsio import read_regular
        try:
            read_regular(sys.argv[1], 1024)
        except OSError as exc:
            print(type(exc).__name__, exc)
        else:
            print("read")
    """)
    done = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "f")], timeout=30,
                          capture_output=True, text=True, cwd=str(REPO))
    assert done.stdout.split(" ")[0] == error, (done.stdout, done.stderr)


def test_read_regular_reads_a_file_up_to_its_cap(tmp_path: Path) -> None:
    from lakehouse.errors import FileTooLargeError
    from lakehouse.fsio import read_regular

    path = tmp_path / "f"
    path.write_bytes(b"y" * 1024)
    assert read_regular(path, 1024) == b"y" * 1024
    path.write_bytes(b"")
    assert read_regular(path, 0) == b""
    big = tmp_path / "big"
    sparse(big, 11)
    with pytest.raises(FileTooLargeError) as caught:
        read_regular(big, 10)
    assert caught.value.size == 11 and caught.value.max_bytes == 10


# ---------------------------------------------------------------- item 1: lake load


def _manifest_fifo(run: Path) -> None:
    (run / "_manifest.json").unlink()
    os.mkfifo(run / "_manifest.json")


def _manifest_dev_zero(run: Path) -> None:
    (run / "_manifest.json").unlink()
    (run / "_manifest.json").symlink_to("/dev/zero")


def _manifest_linked_outside(run: Path) -> None:
    """A valid manifest, moved outside the root and linked back."""
    outside = run.parents[3] / "outside_manifest.json"
    (run / "_manifest.json").rename(outside)
    (run / "_manifest.json").symlink_to(outside)


def _manifest_oversize(run: Path) -> None:
    sparse(run / "_manifest.json")


def _data_dev_urandom(run: Path) -> None:
    """The data file its manifest lists, replaced by a link to an endless device."""
    (run / "part-00000.parquet").unlink()
    (run / "part-00000.parquet").symlink_to("/dev/urandom")


def _data_oversize(run: Path) -> None:
    """A data file far bigger than its manifest entry says (sparse: no disk)."""
    sparse(run / "part-00000.parquet")


LOAD_CASES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "manifest_fifo": (_manifest_fifo, "invalid_run", "FIFO"),
    "manifest_dev_zero": (_manifest_dev_zero, "invalid_run", "symlink"),
    "manifest_linked_outside": (_manifest_linked_outside, "invalid_run", "symlink"),
    "manifest_oversize": (_manifest_oversize, "invalid_run", "bytes"),
    "data_file_dev_urandom": (_data_dev_urandom, "invalid_run", "symlink"),
    "data_file_oversize": (_data_oversize, "manifest_mismatch", "bytes on disk"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_special_files_in_a_run_never_stop_the_load(lake: Lake, case: str) -> None:
    """A FIFO or a /dev/zero link as ``_manifest.json`` (before the fix: `lake load` blocked
    holding the lock, deaf to SIGTERM; or read until memory ran out), a link out of the
    lake, a sparse 64 GiB manifest or data file: the run is quarantined with a reason that
    names the file, the good run beside it loads, exit 3, nothing outside changes."""
    build, code, words = LOAD_CASES[case]
    scene = Scene.start(lake, "logs")
    bad = hand_run_id(5, "evil")
    run = write_run_by_hand(lake.root, "logs", bad,
                            {"part-00000.parquet": logs_table([500, 501])})
    build(run)
    scene.add_good("logs")
    scene.snapshot_outside()
    payload = json_out(capped_cli(lake.root, "load", "--json"), 3)
    (out,) = [r for r in payload["runs"] if r["run_id"] == bad]
    assert (out["status"], out["reason_code"]) == ("quarantined", code), out
    assert words in out["message"], out
    assert bad in lake.quarantined("logs") and bad not in lake.staged("logs")
    assert lake.reason("logs", bad)["code"] == code
    scene.check()
    # The lock was released: the next load runs (nothing left to do).
    json_out(capped_cli(lake.root, "load", "--json"), 0)


# ---------------------------------------------------------------- item 1: cleanup, list, audit


def _abandoned_lake(tmp_path: Path) -> Lake:
    lake = Lake(make_root(tmp_path / "lake", ABANDON_NOW))
    lake.init()
    return lake


MARKER_CASES: dict[str, Callable[[Path], None]] = {
    "fifo": lambda p: os.mkfifo(p),
    "dev_zero": lambda p: p.symlink_to("/dev/zero"),
    "oversize": sparse,
}


@pytest.mark.parametrize("case", list(MARKER_CASES))
def test_special_abandoned_marker_never_stops_cleanup(tmp_path: Path, case: str) -> None:
    """An uncommitted run whose ``_abandoned.json`` is a FIFO, a /dev/zero link or a sparse
    64 GiB file (before the fix: `lake cleanup` blocked, or ran out of memory): cleanup
    quarantines the run as ``abandoned``, says what was wrong with the marker, and
    `lake quarantine list` and `lake audit` then finish too."""
    lake = _abandoned_lake(tmp_path)
    run_id = hand_run_id(7, "gone")
    run = write_run_by_hand(lake.root, "logs", run_id,
                            {"part-00000.parquet": logs_table([1, 2])}, commit=False)
    MARKER_CASES[case](run / "_abandoned.json")
    before = files_outside(lake.root)
    report = json_out(capped_cli(lake.root, "cleanup", "--json"), 0)
    assert report["quarantined_abandoned_runs"] == 1, report
    (action,) = report["actions"]
    assert "_abandoned.json is" in action["detail"] and "not read" in action["detail"], action
    reason = lake.reason("logs", run_id)
    assert reason["code"] == "abandoned" and reason["producer_error"] is None, reason
    assert "_abandoned.json is" in reason["marker_problem"], reason
    listed = json_out(capped_cli(lake.root, "quarantine", "list", "--json"), 0)
    assert [(q["run_id"], q["kind"], q["code"]) for q in listed] == \
        [(run_id, "run", "abandoned")], listed
    audit = json_out(capped_cli(lake.root, "audit", "--json"), 0)
    assert audit["quarantine"]["tables"]["logs"]["reasons"] == {"abandoned": 1}, audit
    assert files_outside(lake.root) == before and temp_files(lake.root) == []


@pytest.mark.parametrize("case", ["fifo", "dev_zero"])
def test_special_reason_file_never_stops_list_or_audit(lake: Lake, case: str) -> None:
    """A ``_reason.json`` in quarantine that is a FIFO or a /dev/zero link (put there by
    hand: Lake writes its reasons atomically over whatever a run held): `lake quarantine
    list` shows the folder and what is wrong, `lake audit` counts it as ``unknown``."""
    folder = lake.root / "quarantine" / "logs" / hand_run_id(3)
    folder.mkdir(parents=True)
    pq.write_table(logs_table([1]), folder / "part-00000.parquet")
    MARKER_CASES[case](folder / "_reason.json")
    listed = json_out(capped_cli(lake.root, "quarantine", "list", "--json"), 0)
    assert len(listed) == 1 and listed[0]["code"] is None, listed
    assert listed[0]["message"].startswith("_reason.json is "), listed
    audit = json_out(capped_cli(lake.root, "audit", "--json"), 0)
    assert audit["quarantine"]["tables"]["logs"]["reasons"] == {"unknown": 1}, audit


# ---------------------------------------------------------------- item 3: linked sidecars


@pytest.mark.parametrize("link", [True, False], ids=["symlink", "regular_file"])
def test_rejected_rows_file_in_an_abandoned_run_never_loads(tmp_path: Path, link: bool) -> None:
    """A producer leaves ``_rejected_rows.parquet`` (a link to a file outside the lake, or a
    file of its own) in a run it never commits. Before the fix, `lake cleanup` quarantined
    it, `lake quarantine list` called it rejected rows, `replay` staged the file (read
    through the link) as a committed run, and `lake load` put the outside rows in the table.
    Now the folder is an abandoned run: replay moves it back uncommitted, nothing loads, and
    the outside file is never read or moved."""
    lake = _abandoned_lake(tmp_path)
    run_id = hand_run_id(9, "sly")
    run = write_run_by_hand(lake.root, "logs", run_id,
                            {"part-00000.parquet": logs_table([1])}, commit=False)
    (run / "part-00000.parquet").unlink()
    if link:
        (run / "_rejected_rows.parquet").symlink_to(outside_parquet(lake.root, [666]))
    else:
        pq.write_table(logs_table([666]), run / "_rejected_rows.parquet")
    before = files_outside(lake.root)
    json_out(capped_cli(lake.root, "cleanup", "--json"), 0)
    listed = json_out(capped_cli(lake.root, "quarantine", "list", "--json"), 0)
    assert [(q["run_id"], q["kind"]) for q in listed] == [(run_id, "run")], listed
    replay = capped_cli(lake.root, "quarantine", "replay", run_id)
    assert replay.returncode == 0, replay.stderr
    payload = json_out(capped_cli(lake.root, "load", "--json"), 0)
    assert payload["runs_loaded"] == 0 and payload["rows_loaded"] == 0, payload
    assert lake.table_rows("logs", "id") == []
    assert lake.staged("logs") == [run_id]  # uncommitted again: never loaded
    assert files_outside(lake.root) == before


def test_replay_never_follows_a_linked_rejected_rows_file(lake: Lake) -> None:
    """Real rejected rows of a ``drop_rows`` load, their file then swapped for a link to a
    file outside the lake: replay refuses with one line (exit 2), stages nothing, and the
    outside file's rows never load."""
    bad = pa.table({"sensor": ["s-1", "bad"], "ts": pa.array([1, 2], pa.timestamp("us")),
                    "celsius": [20.0, 21.0]})
    run_id = hand_run_id(4)
    write_run_by_hand(lake.root, "readings", run_id, {"part-00000.parquet": bad})
    lake.load()
    folder = lake.root / "quarantine" / "readings" / run_id
    assert (folder / "_rejected_rows.parquet").is_file()
    outside = lake.root.parent / "outside.parquet"
    pq.write_table(pa.table({"sensor": ["s-666"], "ts": pa.array([3], pa.timestamp("us")),
                             "celsius": [6.0]}), outside)
    (folder / "_rejected_rows.parquet").unlink()
    (folder / "_rejected_rows.parquet").symlink_to(outside)
    before = files_outside(lake.root)
    result = capped_cli(lake.root, "quarantine", "replay", run_id)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "symlink" in lines[0] and "cannot be replayed" in lines[0], lines
    assert lake.staged("readings") == []
    assert (folder / "_rejected_rows.parquet").is_symlink()
    json_out(capped_cli(lake.root, "load", "--json"), 0)
    assert [r["sensor"] for r in lake.table_rows("readings", "sensor")] == ["s-1"]
    assert files_outside(lake.root) == before


# ---------------------------------------------------------------- item 10c: abandoned producer

PRODUCER = textwrap.dedent("""
    import sys
    import pyarrow as pa
    from staging import StagingError, stage_run

    table = pa.table({"x": [1.0, 2.0], "s": ["a", "b"]})
    try:
        with stage_run(sys.argv[1], "plain", producer="slow") as run:
            run.write(table)
            print("wrote", run.run_id, flush=True)
            sys.stdin.readline()  # the test runs `lake cleanup` meanwhile
            if sys.argv[2] == "write":
                run.write(table)
        print("committed", flush=True)
    except Exception as exc:
        print(type(exc).__name__, str(exc).replace("\\n", " "), flush=True)
""")


@pytest.mark.parametrize("step", ["write", "commit"])
def test_producer_of_an_abandoned_run_gets_a_staging_error(tmp_path: Path, step: str) -> None:
    """A producer pauses after its first file; `lake cleanup` (abandon_after_hours = 0)
    moves the idle run to quarantine. Its next write, or its commit, raises StagingError
    saying the run was abandoned by cleanup and what to do (before the fix: a raw
    FileNotFoundError on a temp path). The data already written is in quarantine, whole."""
    lake = _abandoned_lake(tmp_path)
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(lake.root), step],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd=str(lake.root))  # inside the root, as DESIGN.md says
    try:
        assert producer.stdout is not None and producer.stdin is not None
        first = producer.stdout.readline().split()
        assert first[:1] == ["wrote"], first
        run_id = first[1]
        report = json_out(capped_cli(lake.root, "cleanup", "--json"), 0)
        assert report["quarantined_abandoned_runs"] == 1, report
        out, _ = producer.communicate("go\n", timeout=HANG_SECONDS)
    finally:
        producer.kill()
        producer.wait()
    kind, _, message = out.strip().partition(" ")
    assert kind == "StagingError", out
    assert f"run {run_id} of plain was abandoned" in message, message
    assert "lake cleanup" in message and "abandon_after_hours" in message, message
    assert "new run" in message and ".tmp-" not in message, message
    assert sorted(p.name for p in (lake.root / "quarantine" / "plain" / run_id).iterdir()) \
        == ["_reason.json", "part-00000.parquet"]
    assert lake.staged("plain") == [] and temp_files(lake.root) == []


def test_producer_refuses_to_commit_a_manifest_the_loader_would_not_read(
        lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run of so many files that its manifest passes the markers' cap is refused at
    commit with a StagingError (and abandoned), not committed for the loader to reject.
    The cap is lowered here so that 30 files reach it (the real one needs ~50,000)."""
    import staging.writer as writer
    from staging import StagingError, stage_run

    monkeypatch.setattr(writer, "MARKER_MAX_BYTES", 4096)
    table = pa.table({"x": [1.0], "s": ["a"]})
    with pytest.raises(StagingError, match="stage fewer, bigger files per run"):
        with stage_run(lake.root, "plain") as run:
            for _ in range(30):
                run.write(table)
    assert run.state == "abandoned"
    (folder,) = (lake.root / "staging" / "plain").iterdir()
    assert not (folder / "_manifest.json").exists() and (folder / "_abandoned.json").is_file()
