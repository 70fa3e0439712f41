"""The package layering is pinned: a lower unit never imports a higher one, not even inside a function.

``errors`` <- ``units`` <- ``checks`` <- ``cache`` <- ``localcluster``, ``source``, ``sampling``, ``metrics``
<- ``discovery``, ``prefetcher``, ``dataloader`` <- ``kubeflow_components`` <- the facade, ``demo``
<- ``cli`` <- ``__main__``. Units of one level never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import shardcache

ROOT = Path(shardcache.__file__).parent
LEVELS = {
    "errors": 0,
    "units": 1,
    "checks": 2,
    "cache": 3,
    "localcluster": 4, "source": 4, "sampling": 4, "metrics": 4,
    "discovery": 5, "prefetcher": 5, "dataloader": 5,
    "kubeflow_components": 6,
    "__init__": 7, "demo": 7,
    "cli": 8,
    "__main__": 9,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    """Top-level unit of shardcache -> the units it imports (every import statement, at any depth)."""
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        module = ".".join(parts).removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                if node.module:
                    targets = [".".join([*base, node.module])]
                else:  # ``from . import x``: x is a module of that package, or a name of its __init__
                    targets = [".".join([*base, alias.name]) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target == "shardcache" or target.startswith("shardcache."):
                    dst = _unit(target)
                    if dst == "__version__":  # a constant of the facade, read by the CLI and the components
                        continue
                    if dst != _unit(module):
                        edges.setdefault(_unit(module), set()).add(dst)
    return edges


def test_every_unit_has_a_level() -> None:
    units = {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert units <= set(LEVELS), f"give these a level in LEVELS: {sorted(units - set(LEVELS))}"


@pytest.mark.parametrize("unit", sorted(LEVELS))
def test_imports_go_down_only(unit: str) -> None:
    wrong = sorted(dst for dst in _imports().get(unit, set()) if LEVELS[dst] >= LEVELS[unit])
    assert not wrong, f"shardcache.{unit} (level {LEVELS[unit]}) imports {wrong}, which are not below it"
