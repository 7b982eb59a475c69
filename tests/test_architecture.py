"""The layering rules of docs/architecture.md, checked on the source."""

import ast
from pathlib import Path

import cpic

ALLOWED = {
    "util": {"util"},
    "tt": {"tt"},
    "layout": {"layout"},
    "cross": {"cross", "tt", "util"},
    "sources": {"sources", "util"},
    "data": {"data", "sources"},
    "sampling": {"sampling", "layout", "sources"},
    "nn": {"nn", "tt", "layout", "cross", "sources"},
    "train": {"train", "nn", "tt", "layout", "cross", "sources", "data", "util", "_version"},
    "cli": {"cli", "tt", "layout", "cross", "sources", "data", "sampling", "nn", "train", "util", "_version"},
}


def cpic_imports(path: Path) -> set[str]:
    """The cpic subpackages a module imports (``from cpic import x`` counts as ``x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "cpic":
            modules = [f"cpic.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        else:
            continue
        found |= {m.split(".")[1] for m in modules if m.startswith("cpic.")}
    return found


def test_layers_import_only_what_they_may():
    root = Path(cpic.__file__).parent
    for layer, allowed in ALLOWED.items():
        for path in (root / layer).rglob("*.py"):
            bad = cpic_imports(path) - allowed
            assert not bad, (
                f"{path.relative_to(root)} imports {sorted(bad)}; {layer} may import {sorted(allowed)}"
            )
