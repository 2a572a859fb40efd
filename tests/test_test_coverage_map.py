"""Tests mirror modules: every module on the request path (`service/api/`, `service/pipeline/`,
`service/engines/` with `upstream/`) and every module of `fingerprint/` and `index/` is imported
by at least one test file (tests/test_*.py), found with `ast`, so none is tested only through
what happens to call it. Packages' `__init__.py` hold only a docstring and are not counted."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_layering import PACKAGE, imported_names, module_name

TESTS = Path(__file__).parent
MIRRORED = (PACKAGE / "service" / "api", PACKAGE / "service" / "pipeline", PACKAGE / "service" / "engines",
            PACKAGE / "fingerprint", PACKAGE / "index")


def mirrored_modules() -> list[str]:
    """The dotted names of the modules that must each have a test importing them."""
    return sorted(module_name(path) for folder in MIRRORED for path in folder.rglob("*.py")
                  if path.name != "__init__.py")


def names_imported_by(test_files: list[Path]) -> set[str]:
    """Every name the test files import (a module, or a name inside one)."""
    names = set()
    for path in test_files:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names |= {name for _, name in imported_names(tree, "tests")}
    return names


def untested(modules: list[str], imported: set[str]) -> list[str]:
    """The modules no test file imports."""
    return [module for module in modules if module not in imported]


def test_the_map_finds_imports_of_every_form(tmp_path):
    (tmp_path / "test_a.py").write_text("import earmark.index.keys\nfrom earmark.index import breaker\n"
                                        "from earmark.index.store import Store\n")
    imported = names_imported_by([tmp_path / "test_a.py"])
    modules = ["earmark.index.keys", "earmark.index.breaker", "earmark.index.store", "earmark.index.replica"]
    assert untested(modules, imported) == ["earmark.index.replica"]


def test_the_map_covers_the_request_path_fingerprint_and_index():
    modules = mirrored_modules()
    assert {"earmark.service.api.app", "earmark.service.pipeline.recognition", "earmark.service.engines.pool",
            "earmark.service.engines.upstream.base", "earmark.fingerprint.decode", "earmark.index.store"} <= set(modules)
    assert not any(module.endswith("__init__") or module.startswith("earmark.service.ops") for module in modules)


def test_every_mirrored_module_has_a_test_that_imports_it():
    imported = names_imported_by(sorted(TESTS.glob("test_*.py")))
    assert untested(mirrored_modules(), imported) == []
