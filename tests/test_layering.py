"""The layers, checked in the source with `ast`: only `earmark/index/` talks to Redis (no
`import redis`, no reaching through a store's raw client elsewhere)."""

from __future__ import annotations

import ast
from pathlib import Path

import earmark

PACKAGE = Path(earmark.__file__).parent
INDEX = PACKAGE / "index"


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(encoding="utf-8"), str(path))) for path in sorted(PACKAGE.rglob("*.py"))]


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


def test_the_checks_find_what_they_look_for():
    source = ("import redis.exceptions\nfrom redis.asyncio import Redis\n"
              "async def f(self, services):\n    await self.store.client.xlen('k')\n    services.store.client.get('k')\n")
    assert len(redis_uses(ast.parse(source))) == 4
    assert redis_uses(ast.parse("import redisvl_like\nclient = http.client\nself.store.call(f)\n")) == []


def test_only_the_index_package_talks_to_redis():
    offenders = {str(path.relative_to(PACKAGE.parent)): found for path, tree in _modules()
                 if not path.is_relative_to(INDEX) and (found := redis_uses(tree))}
    assert offenders == {}
