"""The layering rules of docs/architecture.md, checked on the source."""

import ast
import re
from pathlib import Path

import cpic

ALLOWED = {
    "util": {"util"},
    "tt": {"tt"},
    "layout": {"layout"},
    "tci": {"tci", "tt", "util"},
    "sources": {"sources", "util"},
    "data": {"data", "sources", "util"},
    "sampling": {"sampling", "layout", "sources"},
    "nn": {"nn", "tt", "layout", "tci", "sources", "util"},
    "train": {"train", "nn", "tt", "layout", "tci", "sources", "data", "util", "_version"},
    "implicit": {"implicit", "train", "nn", "tt", "layout", "sources", "util"},
    "cli": {
        "cli", "tt", "layout", "tci", "sources", "data", "sampling", "nn", "train", "implicit", "util",
        "_version",
    },  # fmt: skip
}
ROOT = Path(cpic.__file__).parent

#: entry-point shims, which only forward to the command line and which no module imports:
#: ``python -m cpic.train`` (what torchrun starts on each rank) is ``cpic train``
ENTRY_POINTS = {"train/__main__.py": {"cli"}}
#: the cli modules every command may import; main.py registers the commands
CLI_SHARED = {"cpic.cli", "cpic.cli.common", "cpic.cli.figures"}
#: what only the library does: optimisers and backward passes (training loops), raw file
#: formats (safetensors, hashes, checkpoint writing), metrics
CLI_FORBIDDEN_IMPORTS = {"torch.optim", "safetensors", "hashlib", "cpic.train.checkpoint.save_checkpoint"}
CLI_FORBIDDEN_NAMES = {"save_checkpoint", "AdamW", "RAdam"}
CLI_FORBIDDEN_ATTRIBUTES = {"optim", "backward", "zero_grad", "clip_grad_norm_"}
METRIC_WORDS = {"loss", "psnr", "error", "mse", "metric", "accuracy", "auc"}


def module_name(path: Path) -> str:
    """``cpic/cli/train.py`` -> ``cpic.cli.train``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, absolute or relative (``from . import x``, ``from .x import
    y``; ``package``: the file's package, by default found from its place under cpic), as dotted
    names; ``from m import n`` counts as ``m`` and ``m.n``."""
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return found


def cpic_imports(path: Path, package: str | None = None) -> set[str]:
    """The cpic subpackages a module imports (``from cpic import x`` counts as ``x``)."""
    return {m.split(".")[1] for m in imported_modules(path, package) if m.startswith("cpic.")}


def test_relative_imports_are_resolved(tmp_path):
    """The checks below see ``from . import x`` and ``from .x import y`` too."""
    assert module_name(ROOT / "cli" / "common.py") == "cpic.cli.common"
    module = tmp_path / "command.py"
    module.write_text("from . import train\nfrom ..train import fit\nfrom .common import emit\n")
    found = imported_modules(module, package="cpic.cli")
    assert {"cpic.cli.train", "cpic.train.fit", "cpic.cli.common.emit"} <= found
    assert cpic_imports(module, package="cpic.cli") == {"cli", "train"}


def test_layers_import_only_what_they_may():
    for layer, allowed in ALLOWED.items():
        for path in (ROOT / layer).rglob("*.py"):
            bad = cpic_imports(path) - allowed - ENTRY_POINTS.get(path.relative_to(ROOT).as_posix(), set())
            assert not bad, (
                f"{path.relative_to(ROOT)} imports {sorted(bad)}; {layer} may import {sorted(allowed)}"
            )


def test_every_layer_is_checked():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages == set(ALLOWED), sorted(packages ^ set(ALLOWED))


def test_nothing_imports_an_entry_point():
    shims = {f"cpic.{p[: -len('.py')].replace('/', '.')}" for p in ENTRY_POINTS}
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        assert not any(f"import {s}" in text or f"from {s} " in text for s in shims), path


def _cli_modules() -> list[Path]:
    return sorted((ROOT / "cli").glob("*.py"))


def test_no_command_imports_another_command():
    commands = {module_name(p) for p in _cli_modules()} - CLI_SHARED - {"cpic.cli.main"}
    for path in _cli_modules():
        if path.name == "main.py":
            continue
        mine = module_name(path)
        bad = {m for m in imported_modules(path) if m in commands or m.rpartition(".")[0] in commands}
        bad = {m for m in bad if not m.startswith(mine)}
        assert not bad, f"{path.relative_to(ROOT)} imports the command module(s) {sorted(bad)}"


def test_cli_holds_no_training_loop_file_format_or_metric():
    """The commands call the library: no optimiser, backward pass, raw model-file writing or
    metric is defined in cli/."""
    for path in _cli_modules():
        tree = ast.parse(path.read_text())
        where = path.relative_to(ROOT)
        imports = imported_modules(path)
        bad = {m for m in imports for f in CLI_FORBIDDEN_IMPORTS if m == f or m.startswith(f + ".")}
        assert not bad, f"{where} imports {sorted(bad)}"
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names
        }
        assert not names & CLI_FORBIDDEN_NAMES, f"{where} uses {sorted(names & CLI_FORBIDDEN_NAMES)}"
        attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not attributes & CLI_FORBIDDEN_ATTRIBUTES, (
            f"{where} uses {sorted(attributes & CLI_FORBIDDEN_ATTRIBUTES)}"
        )
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                words = set(re.split(r"_+", node.name.lower()))
                assert not words & METRIC_WORDS, f"{where} defines {node.name}(), a metric or loss"
