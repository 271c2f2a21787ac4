"""The crash-point registry (lakehouse/failpoints.py) matches the code, and arms by full name.

The crash tests themselves (test_crash.py, test_compaction.py, test_export.py,
test_object_ops.py, ...) SIGKILL jobs at these points; this file keeps the registry honest:
every registered point is hit somewhere, and every hit names a registered point, so a test
can never arm a point that no code reaches.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from lakehouse import failpoints
from lakehouse.errors import UsageError

PACKAGES = ("lakehouse", "loader", "staging")


def source_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _names_in(arg: ast.expr) -> list[str] | None:
    """The point names an argument of ``hit`` can take: literals, or a choice of literals."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.IfExp):
        body, orelse = _names_in(arg.body), _names_in(arg.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def hits() -> dict[str, list[str]]:
    """Every ``failpoints.hit(...)`` in the code: point name -> where (``file:line``)."""
    found: dict[str, list[str]] = {}
    for path in source_files():
        if path.name == "failpoints.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "hit" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "failpoints"):
                continue
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            assert len(node.args) == 1 and not node.keywords, where
            names = _names_in(node.args[0])
            assert names is not None, f"{where}: a point is named by a literal, never computed"
            for name in names:
                found.setdefault(name, []).append(where)
    return found


def test_every_registered_point_is_hit_and_every_hit_is_registered() -> None:
    found = hits()
    assert sorted(set(found) - set(failpoints.POINTS)) == [], found
    assert sorted(set(failpoints.POINTS) - set(found)) == []


def test_points_are_job_dot_moment_with_a_description() -> None:
    for name, description in failpoints.POINTS.items():
        job, _, moment = name.partition(".")
        assert job.isidentifier() and moment.isidentifier(), name
        assert description
    jobs = {name.split(".", 1)[0] for name in failpoints.POINTS}
    assert jobs == {"load", "compact", "export", "cleanup", "replay", "store", "repartition",
                    "publish"}
    assert sum(len(failpoints.named(job)) for job in jobs) == len(failpoints.POINTS)
    assert failpoints.named("load")[0] == "load.after_lock"


def test_no_code_kills_itself_or_takes_a_crash_point_but_the_registry() -> None:
    for path in source_files():
        if path.name == "failpoints.py":
            continue
        text = path.read_text()
        assert "crash_at" not in text, path
        assert "signal.SIGKILL" not in text, path
        assert ".step = " not in text, path  # the old ObjectArea hook


@pytest.mark.parametrize("name", ["after_commit", "load", "load.nowhere", ""])
def test_arming_an_unknown_point_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="unknown crash point"):
        failpoints.arm(name)
    with pytest.raises(UsageError, match="unknown crash point"):
        failpoints.arm_from_environment({failpoints.ENVIRONMENT_VARIABLE: name or "x.y"})


def test_hitting_an_unregistered_point_is_a_bug() -> None:
    with pytest.raises(KeyError):
        failpoints.hit("load.nowhere")


KILLED_AT = """
import sys
from lakehouse import failpoints
failpoints.arm_from_environment()
for name in sys.argv[1:]:
    print(name, flush=True)
    failpoints.hit(name)
print("done", flush=True)
"""


@pytest.mark.parametrize("armed", [None, "", "load.after_commit", "store.copied"])
def test_an_armed_point_kills_there_and_nowhere_else(armed: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENVIRONMENT_VARIABLE}
    if armed is not None:
        env[failpoints.ENVIRONMENT_VARIABLE] = armed
    walk = ["load.after_lock", "load.after_commit", "store.mid_copy", "store.copied"]
    proc = subprocess.run([sys.executable, "-c", KILLED_AT, *walk], capture_output=True,
                          text=True, env=env, timeout=60)
    if armed:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert proc.stdout.split() == walk[: walk.index(armed) + 1]
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [*walk, "done"]
