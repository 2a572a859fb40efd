"""The layers, checked in the source with `ast`: only `earmark/index/` talks to Redis (no
`import redis`, no reaching through a store's raw client elsewhere), and only the API layer
(`earmark/service/api/`) turns errors into HTTP statuses: the layers below raise errors that
name their kind (earmark/errors.py), mapped to statuses in one place (service/api/errors.py).
Nothing below the API (the pipeline, the engines, `fingerprint/`, `index/`) imports it.

Reading another server's status (the upstream engines', `earmark batch` reading earmark's own
answers) is not answering with one, and is not looked for."""

from __future__ import annotations

import ast
from pathlib import Path

import earmark
from earmark.errors import Kind
from earmark.service.api.errors import STATUS

PACKAGE = Path(earmark.__file__).parent
INDEX = PACKAGE / "index"
API = PACKAGE / "service" / "api"
# The layers a request reaches after the API: none of them may import it.
BELOW_API = (PACKAGE / "service" / "pipeline", PACKAGE / "service" / "engines", PACKAGE / "fingerprint", INDEX)
# Modules that hold HTTP statuses or the exceptions that carry them.
STATUS_MODULES = ("earmark.service.api.errors", "http", "starlette.status", "starlette.exceptions")


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


def module_name(path: Path) -> str:
    """The dotted name a source file imports as (`earmark/index/store.py` -> `earmark.index.store`)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(tree: ast.Module, package: str = "") -> list[tuple[int, str]]:
    """Every module a source may import, with its line: `import a.b` gives `a.b`; `from a import b`
    gives both `a` and `a.b` (b may be a module); relative imports are resolved against
    `package`, the dotted name of the package the source is in."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return found


def _name(node: ast.AST) -> str:
    """The last name of `store`, `self.store`, `services.store`; "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def redis_uses(tree: ast.Module) -> list[str]:
    """What in a module talks to Redis itself: an import of redis, or a store's raw `client`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {alias.name}" for alias in node.names
                      if alias.name.split(".")[0] == "redis"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "redis":
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr == "client" and _name(node.value).endswith("store"):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def status_uses(tree: ast.Module) -> list[str]:
    """Where a module answers with HTTP statuses itself: an import of the API's errors (or of
    another module of statuses), or an error class that carries a `status`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {alias.name}" for alias in node.names
                      if alias.name in STATUS_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in STATUS_MODULES:
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.ClassDef):
            found += [f"line {inner.lineno}: {node.name} sets {ast.unparse(target)}"
                      for inner in ast.walk(node) for target in _assigned(inner) if _is_status(target)]
    return found


def _assigned(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, ast.AnnAssign) and node.value is not None:  # a bare annotation is a dataclass field
        return [node.target]
    return []


def _is_status(target: ast.expr) -> bool:
    """`status = ...` in a class body, or `self.status = ...` in its methods."""
    return ((isinstance(target, ast.Name) and target.id == "status")
            or (isinstance(target, ast.Attribute) and target.attr == "status" and _name(target.value) == "self"))


def test_the_checks_find_what_they_look_for():
    source = ("import redis.exceptions\nfrom redis.asyncio import Redis\n"
              "async def f(self, services):\n    await self.store.client.xlen('k')\n    services.store.client.get('k')\n")
    assert len(redis_uses(ast.parse(source))) == 4
    assert redis_uses(ast.parse("import redisvl_like\nclient = http.client\nself.store.call(f)\n")) == []
    source = ("from earmark.service.api.errors import ApiError\nfrom http import HTTPStatus\n"
              "class A(ValueError):\n    status = 415\n"
              "class B(ValueError):\n    status: int = 422\n"
              "class C(ValueError):\n    def __init__(self, status):\n        self.status = status\n")
    assert len(status_uses(ast.parse(source))) == 5
    reading = ("from earmark.service.api.app import create_app\n"
               "class Answer:\n    status: int\n"
               "def f(response):\n    status = response.status_code\n    return status in (429, 503)\n")
    assert status_uses(ast.parse(reading)) == []


def test_only_the_index_package_talks_to_redis():
    offenders = {str(path.relative_to(PACKAGE.parent)): found for path, tree in _modules()
                 if not path.is_relative_to(INDEX) and (found := redis_uses(tree))}
    assert offenders == {}


def test_only_the_api_layer_answers_with_http_statuses():
    offenders = {str(path.relative_to(PACKAGE.parent)): found for path, tree in _modules()
                 if not path.is_relative_to(API) and (found := status_uses(tree))}
    assert offenders == {}


def test_imported_names_resolves_what_a_source_can_import():
    source = "import earmark.service.api.app\nfrom earmark.service import api\nfrom ..api.uploads import Upload\n"
    names = [name for _, name in imported_names(ast.parse(source), "earmark.service.pipeline")]
    assert names == ["earmark.service.api.app", "earmark.service", "earmark.service.api",
                     "earmark.service.api.uploads", "earmark.service.api.uploads.Upload"]
    assert module_name(API / "uploads.py") == "earmark.service.api.uploads"
    assert module_name(API / "__init__.py") == "earmark.service.api"


def test_nothing_below_the_api_imports_it():
    """The pipeline, the engines, `fingerprint/` and `index/` serve the API and never reach back up
    into it: what they share with it (the upload's bytes, the cache directives) lives with them."""
    api = module_name(API / "__init__.py")
    offenders = {str(path.relative_to(PACKAGE.parent)): found for path, tree in _modules()
                 if any(path.is_relative_to(layer) for layer in BELOW_API)
                 and (found := [f"line {line}: {name}" for line, name in
                                imported_names(tree, module_name(path.parent / "__init__.py"))
                                if name == api or name.startswith(api + ".")])}
    assert offenders == {}


def test_every_kind_of_error_has_its_status():
    assert set(STATUS) == set(Kind)


def test_the_engines_never_import_the_pool_that_runs_them():
    """The pool (engines/pool.py) runs the engines; an engine importing it would be the one
    import going back up (its errors are in engines/errors.py, below both)."""
    engines = PACKAGE / "service" / "engines"
    offenders = [str(path.relative_to(PACKAGE.parent)) for path, tree in _modules()
                 if path.is_relative_to(engines) and path.name != "pool.py"
                 and any(isinstance(node, ast.ImportFrom) and node.module == "earmark.service.engines.pool"
                         for node in ast.walk(tree))]
    assert offenders == []
