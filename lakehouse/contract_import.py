"""Contract modules: finding and importing the schema modules a lake root holds.

``lake.toml`` names a table's schema as ``module:attribute`` (``contracts.events:Events``),
a module under the lake root. It is imported under a private package named after the root,
never with the root on ``sys.path``, so a contract file cannot shadow a real module.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lakehouse.config import LakeConfig


def contract_package(root: Path) -> str:
    """The private package name a lake root's contract modules are imported under.

    Derived from the root's path, so two roots in one process (tests) never share modules,
    and prefixed so no real top-level module can shadow a contract or be shadowed by one.
    """
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return f"_lake_contracts_{digest}"


def import_contract_module(config: LakeConfig, module_name: str) -> Any:
    """Import ``module_name`` (``contracts.events``) from files under the lake root.

    The root is never put on ``sys.path``: a file such as ``<root>/glob.py`` must not replace
    the standard library (or a package pandera probes) for the loader. Instead the module is
    imported as ``<private package>.contracts.events``, where the private package's only
    search location is the root, so packages, ``__init__.py`` files and relative imports
    (``from . import common``) work as usual. While contracts import, and only then, the
    top-level names that ``lake.toml``'s ``schema`` keys start with (``contracts``) also
    resolve to the root's copy, so ``from contracts import common`` keeps working; no other
    name does, and afterwards nothing of the root is importable by its plain name.
    """
    root = config.root
    parts = module_name.split(".")
    if not module_name or not all(p.isidentifier() for p in parts):
        raise ValueError(f"{module_name!r} is not a module path")
    package = _private_package(root)
    names = {top for top in _schema_tops(config) if _under_root(root, top)}
    importlib.invalidate_caches()  # files written since the last import must be seen
    with _aliases(package, names):
        return importlib.import_module(f"{package.__name__}.{module_name}")


def _private_package(root: Path) -> types.ModuleType:
    """The root's private package (created once per process), searched in the root only."""
    name = contract_package(root)
    existing = sys.modules.get(name)
    if isinstance(existing, types.ModuleType):
        return existing
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    return module


def _schema_tops(config: LakeConfig) -> set[str]:
    """The top-level module names of every table's ``schema`` reference, except names of
    the standard library (a contract module may be called ``pprint.py``, but an ``import
    pprint`` anywhere must still find the real one)."""
    return {top for c in config.tables.values() if c.schema
            for top in [c.schema.partition(":")[0].split(".")[0]]
            if top not in sys.stdlib_module_names}


def _under_root(root: Path, top: str) -> bool:
    return (root / top).is_dir() or (root / f"{top}.py").is_file()


@contextmanager
def _aliases(package: types.ModuleType, names: set[str]) -> Iterator[None]:
    """While the block runs, ``import <name>...`` for ``names`` gives the root's modules.

    Entries of those names already in ``sys.modules`` (another root's, or a real package
    of that name) are put aside and restored afterwards; the aliases are removed.
    """
    if not names:
        yield
        return
    finder = _AliasFinder(package.__name__, names)
    aside = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in names}
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(aside)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``contracts.x`` as the already-private ``<package>.contracts.x``."""

    def __init__(self, package: str, names: set[str]) -> None:
        self.package, self.names = package, names

    def find_spec(self, fullname: str, path: Any = None, target: Any = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname.split(".")[0] not in self.names:
            return None
        private = f"{self.package}.{fullname}"
        if importlib.util.find_spec(private) is None:
            return None  # not under the root: the usual finders report it missing
        module = importlib.import_module(private)
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(module),
                                              is_package=hasattr(module, "__path__"))


class _AliasLoader(importlib.abc.Loader):
    """Gives the import system an already-imported module under a second name."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self.module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self.spec  # the import system set the alias's spec; keep the real one
