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
    "data": {"data", "sources", "util"},
    "sampling": {"sampling", "layout", "sources"},
    "nn": {"nn", "tt", "layout", "cross", "sources", "util"},
    "train": {"train", "nn", "tt", "layout", "cross", "sources", "data", "util", "_version"},
    "cli": {"cli", "tt", "layout", "cross", "sources", "data", "sampling", "nn", "train", "util", "_version"},
}


#: entry-point shims, which only forward to the command line and which no module imports:
#: ``python -m cpic.train`` (what torchrun starts on each rank) is ``cpic train``
ENTRY_POINTS = {"train/__main__.py": {"cli"}}


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
            bad = cpic_imports(path) - allowed - ENTRY_POINTS.get(path.relative_to(root).as_posix(), set())
            assert not bad, (
                f"{path.relative_to(root)} imports {sorted(bad)}; {layer} may import {sorted(allowed)}"
            )


def test_nothing_imports_an_entry_point():
    root = Path(cpic.__file__).parent
    shims = {f"cpic.{p[: -len('.py')].replace('/', '.')}" for p in ENTRY_POINTS}
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert not any(f"import {s}" in text or f"from {s} " in text for s in shims), path
