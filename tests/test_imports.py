"""The direction of imports: ``staging -> lakehouse <- loader``, and producers stay light.

Runtime checks import in a fresh interpreter and read ``sys.modules``; static checks parse
every module's source with ``ast`` so an import hidden in a function is caught too.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

HEAVY = {"duckdb", "pandera"}
LIGHT_LAKEHOUSE = {"lakehouse", "lakehouse.layout", "lakehouse.fsio", "lakehouse.manifest",
                   "lakehouse.errors"}


def modules_after(code: str, cwd: Path) -> set[str]:
    """Run ``code`` in a fresh interpreter and return the top-level names in sys.modules."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def top_names(modules: set[str]) -> set[str]:
    """The top-level package of each module name."""
    return {m.split(".")[0] for m in modules}


def imported_modules(path: Path, *, runtime_only: bool = False) -> set[str]:
    """Every absolute module a source file imports, anywhere in it (also dynamic imports);
    with ``runtime_only``, not those under ``if TYPE_CHECKING:`` (they never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif node.level > 0:
                package = path.parent.name
                found.add(f"{package}.{node.module}" if node.module else package)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and node.args and \
                    isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def sources(package: str) -> list[Path]:
    """Every Python file of a package at the repo root."""
    files = sorted((REPO / package).rglob("*.py"))
    assert files, package
    return files


def test_importing_staging_loads_no_duckdb_or_pandera(tmp_path: Path) -> None:
    """A producer that imports staging pays for neither duckdb, pandera nor the loader."""
    loaded = top_names(modules_after("import staging", tmp_path))
    assert "staging" in loaded
    assert not loaded & (HEAVY | {"loader"}), sorted(loaded & (HEAVY | {"loader"}))


def test_staging_a_run_loads_no_duckdb_or_pandera(tmp_path: Path) -> None:
    """Even after staging a real run, neither duckdb nor pandera was imported."""
    code = ("import pyarrow as pa\nfrom staging import stage_run, stage\n"
            f"root = {str(tmp_path / 'root')!r}\n"
            "with stage_run(root, 'plain', producer='light') as run:\n"
            "    run.write(pa.table({'id': [1, 2]}))\n"
            "stage(root, 'plain', pa.record_batch({'id': [3]}))\n")
    loaded = top_names(modules_after(code, tmp_path))
    assert not loaded & (HEAVY | {"loader"}), sorted(loaded & (HEAVY | {"loader"}))
    assert len(list((tmp_path / "root" / "staging" / "plain").glob("*/_manifest.json"))) == 2


@pytest.mark.parametrize("module", sorted(LIGHT_LAKEHOUSE))
def test_light_lakehouse_modules_import_nothing_heavy(tmp_path: Path, module: str) -> None:
    """``lakehouse`` and the modules producers use load no duckdb, pandera or data frames."""
    loaded = top_names(modules_after(f"import {module}", tmp_path))
    heavy = HEAVY | {"pyarrow", "pandas", "polars", "numpy", "staging", "loader"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_lakehouse_init_imports_no_heavy_module() -> None:
    """``lakehouse/__init__.py`` imports only the standard library (statically)."""
    imports = imported_modules(REPO / "lakehouse" / "__init__.py")
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    assert {m.split(".")[0] for m in imports} <= stdlib, imports


@pytest.mark.parametrize("path", sources("lakehouse"), ids=lambda p: p.name)
def test_lakehouse_imports_neither_staging_nor_loader(path: Path) -> None:
    """The core never imports the producer or the loader package."""
    imports = top_names(imported_modules(path))
    assert not imports & {"staging", "loader"}, sorted(imports & {"staging", "loader"})


@pytest.mark.parametrize("path", sources("staging"), ids=lambda p: p.name)
def test_staging_imports_no_duckdb_pandera_or_loader(path: Path) -> None:
    """The producer package imports no duckdb, pandera or loader, and only light lakehouse."""
    imports = imported_modules(path)
    assert not top_names(imports) & (HEAVY | {"loader"}), sorted(imports)
    core = {m for m in imports if m.split(".")[0] == "lakehouse"}
    # ``from lakehouse.layout import X`` records both the module and ``lakehouse.layout.X``.
    modules = {".".join(m.split(".")[:2]) for m in core}
    assert modules <= LIGHT_LAKEHOUSE, sorted(modules - LIGHT_LAKEHOUSE)


def test_import_checker_sees_hidden_imports(tmp_path: Path) -> None:
    """The static checker finds imports inside functions, relative ones and dynamic ones."""
    pkg = tmp_path / "staging"
    pkg.mkdir()
    src = pkg / "mod.py"
    src.write_text("import os\n"
                   "def f():\n    import duckdb\n    from pandera import Column\n"
                   "def g():\n    import importlib\n    importlib.import_module('loader.cli')\n"
                   "from .writer import stage\n")
    imports = imported_modules(src)
    assert {"os", "duckdb", "pandera", "loader.cli", "staging.writer"} <= imports
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import duckdb\n")
    assert "duckdb" in imported_modules(src)
    assert "duckdb" not in imported_modules(src, runtime_only=True)


def module_name(path: Path) -> str:
    """``lakehouse/db.py`` -> ``lakehouse.db``; ``loader/__init__.py`` -> ``loader``."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(packages: tuple[str, ...], *, runtime_only: bool = False
                 ) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports, anywhere in its source."""
    paths = {module_name(p): p for package in packages for p in sources(package)}
    return {name: {m for m in imported_modules(path, runtime_only=runtime_only)
                   if m in paths and m != name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in ``graph`` as a path that ends where it starts; [] when none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str]:
        if node in path:
            return [*path[path.index(node):], node]
        if node in done:
            return []
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return []

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return []


def test_no_import_cycle_in_lakehouse_or_loader() -> None:
    """No module of lakehouse/ or loader/ imports, through others, itself. Imports inside
    functions count (a command module and its job must not need each other); imports for
    type hints only (``if TYPE_CHECKING:``) do not, since they never run."""
    cycle = find_cycle(import_graph(("lakehouse", "loader"), runtime_only=True))
    assert not cycle, " -> ".join(cycle)


def test_lakehouse_never_imports_loader() -> None:
    """Parts never reach for a job: no lakehouse module names a loader module, directly."""
    graph = import_graph(("lakehouse", "loader"))
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] == "lakehouse"
                   for d in deps if d.split(".")[0] == "loader")
    assert not wrong, wrong


def test_cycle_finder_finds_a_cycle() -> None:
    """The cycle check itself works: a two-module circle and a longer one are found."""
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}, "d": set()}) == ["b", "c", "b"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
