"""``cpic bench``: the repository's benchmark scripts, run as subprocesses, their tables printed.

The scripts live in ``benchmarks/`` of a source checkout (they are not part of the installed
package); ``--benchmarks DIR`` points elsewhere.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import cpic
from cpic.cli.common import EXIT_FAILED, add_common, emit, fail, subparser

#: script -> (full arguments, --quick arguments)
SCRIPTS = {
    "cross_peers.py": ([], ["--sections", "a", "--repeats", "1"]),
    "train_step.py": ([], ["--sides", "64", "--repeats", "1", "--batch", "4"]),
}


def register(commands) -> None:
    p = subparser(
        commands,
        "bench",
        help="run the benchmarks (cpic against tntorch/teneva) and print their tables",
        description=(
            "Run benchmarks/cross_peers.py (cross: cpic vs tntorch and teneva) and "
            "benchmarks/train_step.py (one differentiable training step: cpic vs tntorch) in "
            "subprocesses and print their Markdown tables. Needs a source checkout and the dev "
            "extras (tntorch, teneva). --quick takes about 15 s, the full run much longer."
        ),
        example="cpic bench --quick",
    )
    p.add_argument("--quick", action="store_true", help="tiny settings: one section, one repeat")
    p.add_argument("--only", choices=sorted(SCRIPTS), action="append", help="only this script (repeatable)")
    p.add_argument("--benchmarks", metavar="DIR", help="the benchmarks folder (default: the checkout's)")
    add_common(p, device=False, seed=False, threads=False)
    p.set_defaults(handler=run)


def benchmarks_dir(given: str | None) -> Path:
    """The folder holding the scripts; a clear error when this is an installed package."""
    folder = Path(given) if given else Path(cpic.__file__).resolve().parents[2] / "benchmarks"
    missing = [name for name in SCRIPTS if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"no benchmark scripts in {folder} (missing {', '.join(missing)}): they ship with the source "
            "checkout, not the installed package; clone the repository or pass --benchmarks DIR."
        )
    return folder


def run_script(path: Path, arguments: list[str], echo: bool) -> dict:
    """Run one script with this Python; stream its output when ``echo``, else capture it."""
    command = [sys.executable, str(path), *arguments]
    started = time.perf_counter()
    if echo:
        print(f"\n$ {' '.join([Path(sys.executable).name, path.name, *arguments])}", flush=True)
        done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
        output = None
    else:
        done = subprocess.run(command, capture_output=True, text=True)
        output = done.stdout
    return {
        "script": path.name,
        "arguments": arguments,
        "returncode": done.returncode,
        "seconds": time.perf_counter() - started,
        "output": output,
        "error": _last_line(done.stderr) if done.returncode else None,
    }


def _last_line(text: str) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def run(args: argparse.Namespace) -> int:
    folder = benchmarks_dir(args.benchmarks)
    echo = not (args.json or args.quiet)
    results = []
    for name in args.only or list(SCRIPTS):
        full, quick = SCRIPTS[name]
        results.append(run_script(folder / name, quick if args.quick else full, echo))
    failed = [r for r in results if r["returncode"]]
    summary = {"quick": args.quick, "benchmarks": str(folder), "runs": results}
    done = ", ".join(f"{r['script']} {r['seconds']:.0f} s (exit {r['returncode']})" for r in results)
    lines = ["", f"cpic bench{' --quick' if args.quick else ''}: {done}"]
    emit(args, summary, lines)
    for r in failed:
        fail("bench", f"{r['script']} failed (exit {r['returncode']}): {r['error']}", EXIT_FAILED)
    return EXIT_FAILED if failed else 0
