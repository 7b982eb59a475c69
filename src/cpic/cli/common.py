"""What every command shares: common flags, output as a table or JSON, exit codes."""

from __future__ import annotations

import argparse
import json
import sys

import torch

#: exit codes: 0 success, 1 the work failed (a numerical failure, a target not met), 2 bad usage
#: or input (arguments, paths, formats)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_common(parser: argparse.ArgumentParser, device: bool = True, seed: bool = True) -> None:
    """``--json``, ``--quiet`` and (optionally) ``--device``, ``--seed``."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or tables")
    if device:
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def subparser(commands, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A command's parser with its one-line help, description and example epilog."""
    return commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def device_of(args: argparse.Namespace) -> torch.device:
    device = torch.device(getattr(args, "device", "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this torch build sees no CUDA device.")
    return device


def emit(args: argparse.Namespace, summary: dict, lines: list[str]) -> None:
    """Print ``summary`` as JSON with ``--json``, else ``lines`` unless ``--quiet``."""
    if getattr(args, "json", False):
        print(json.dumps(summary))
    elif not getattr(args, "quiet", False):
        print("\n".join(lines))


def fail(command: str, message: str, code: int = EXIT_USAGE) -> int:
    print(f"cpic {command}: {message}", file=sys.stderr)
    return code
