"""Run the commands shown in docs/usage.md and the README, and write what they print back into them.

Every ```` ```console ```` block of docs/usage.md, and every block of the README that follows an
``<!-- console -->`` comment, is a list of ``$ cpic ...`` or ``$ cat ...`` lines (``\\``
continues a line) each followed by its output. This script runs them in order, in a scratch
folder holding the toy cohort the page describes (24 int16 volumes of 32^3, noise, every other
one with a bright cube: ``scans/scanNN.npy`` and ``cohort.csv`` with ``diagnosis`` and ``age``,
plus ``train.json``), and replaces each output with what the command printed. One-line JSON is
wrapped at 110 columns with the per-epoch rows (``history``, ``sampling_scale``) shown as
``[...]``; the scratch folder is shown as ``/data``.

    python scripts/regenerate_docs.py              # rewrite the pages
    python scripts/regenerate_docs.py --check      # exit 1 if an output's shape differs
    python scripts/regenerate_docs.py --skip-slow  # leave blocks of slow commands as they are
    python scripts/regenerate_docs.py --only "cohort lesion lesions/" --keep /tmp/worked
                                                   # one block (the README's worked example), its
                                                   # files (the figure) kept in /tmp/worked
    python scripts/regenerate_docs.py --exclude "lesions/ --count 200"   # all but that block

``--check`` compares shapes, not numbers: each line with every number replaced by ``#`` (times,
losses and fractions change from machine to machine; labels, columns and JSON keys must not).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "docs" / "usage.md", ROOT / "README.md")
#: commands whose block is left alone with --skip-slow (a minute or more on 2 cores, or data
#: packages that may be absent)
SLOW = ("cpic demo", "cpic bench", "cpic compress", "cpic reconstruct", "cpic cohort lesion")
#: JSON entries shown as [...] (per-epoch and per-size rows)
ELIDED = ("history", "sampling_scale")
WIDTH = 110
NUMBER = re.compile(r"-?\d[\d,]*(\.\d+)?(e[-+]?\d+)?")


@dataclass
class Step:
    """One ``$ command`` and the output lines below it."""

    command: list[str]
    output: list[str] = field(default_factory=list)


@dataclass
class Block:
    """A console block: its line span in the page and its steps."""

    start: int  # the line after the opening fence
    stop: int  # the closing fence
    steps: list[Step]


def toy_cohort(folder: Path, count: int = 24, side: int = 32, seed: int = 0) -> None:
    """The cohort docs/usage.md describes, in ``folder``: int16 noise, every other volume with
    a bright cube (``lesion``), an ``age`` column."""
    rng = np.random.default_rng(seed)
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    rows = ["path,diagnosis,age"]
    for i in range(count):
        volume = rng.normal(100, 12, (side,) * 3)
        if i % 2:
            lo = rng.integers(4, side - 12, 3)
            volume[lo[0] : lo[0] + 8, lo[1] : lo[1] + 8, lo[2] : lo[2] + 8] += 80
        np.save(folder / "scans" / f"scan{i:02d}.npy", np.clip(volume, 0, 32767).astype(np.int16))
        rows.append(f"scans/scan{i:02d}.npy,{'lesion' if i % 2 else 'healthy'},{int(rng.integers(40, 80))}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")
    train = {"target": "diagnosis", "extra": ["age"], "epochs": 30, "rank": 8, "projection": "moments"}
    (folder / "train.json").write_text(json.dumps(train) + "\n")


def blocks(lines: list[str], readme: bool) -> list[Block]:
    """The console blocks of a page (the README's only after an ``<!-- console -->`` line)."""
    found, i = [], 0
    while i < len(lines):
        opening = lines[i].strip() == "```console" or (
            readme and lines[i].strip() == "```" and i > 0 and lines[i - 1].strip() == "<!-- console -->"
        )
        if not opening:
            i += 1
            continue
        stop = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        found.append(Block(i + 1, stop, _steps(lines[i + 1 : stop])))
        i = stop + 1
    return found


#: the commands a page shows (other ``$ `` lines are output: ``cpic bench`` echoes its scripts')
COMMANDS = ("$ cpic ", "$ cat ")


def _steps(body: list[str]) -> list[Step]:
    steps: list[Step] = []
    continued = False
    for line in body:
        if line.startswith(COMMANDS) or continued:
            if continued:
                steps[-1].command.append(line)
            else:
                steps.append(Step([line[2:]]))
            continued = line.rstrip().endswith("\\")
        elif steps:
            steps[-1].output.append(line)
    return steps


def shell_line(step: Step) -> str:
    """The command as one shell line, comments dropped."""
    text = " ".join(part.rstrip().removesuffix("\\").strip() for part in step.command)
    return re.sub(r"\s+#.*$", "", text)


def run(step: Step, folder: Path) -> list[str]:
    """What the command prints (stdout, then stderr), as the page shows it."""
    command = shell_line(step)
    cpic = f"{shlex.quote(sys.executable)} -m cpic.cli.main"
    env = dict(os.environ, COLUMNS="110")
    done = subprocess.run(
        ["bash", "-c", f'cpic() {{ {cpic} "$@"; }}; {command}'],
        cwd=folder,
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0 and "exit" not in command:
        raise SystemExit(f"{command!r} failed ({done.returncode}):\n{done.stderr}")
    # progress bars go to stderr and are not shown; messages and warnings ("cpic ...:") are
    messages = [line for line in done.stderr.splitlines() if line.startswith("cpic ")]
    text = "\n".join([done.stdout.rstrip("\n"), *messages])
    text = text.replace(str(folder.resolve()), "/data").replace(str(folder), "/data")
    lines = []
    for line in text.rstrip("\n").splitlines():
        lines += wrap_json(line) if line.startswith("{") else [line]
    return lines


def shorten(value):
    """``value`` with the lists of :data:`ELIDED` shown as ``[...]`` and floats to 4 digits."""
    if isinstance(value, list):
        return [shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: "[...]" if k in ELIDED and v else shorten(v) for k, v in value.items()}
    if isinstance(value, float):
        return float(f"{value:.4g}")
    return value


def wrap_json(line: str) -> list[str]:
    """A one-line JSON object, shortened and wrapped at :data:`WIDTH` columns."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return [line]
    text = json.dumps(shorten(value)).replace('"[...]"', "[...]")
    return textwrap.wrap(text, WIDTH, subsequent_indent=" ", break_on_hyphens=False, break_long_words=False)


def shape(lines: list[str]) -> str:
    """The text with every number replaced by ``#``, the reason for a thread count (it depends
    on the environment: ``OMP_NUM_THREADS`` or the machine's load) by ``(...)``, and all white
    space (line breaks included: JSON is wrapped) by one space."""
    text = re.sub(r"(threads +#) \([^)]*\)", r"\1 (...)", NUMBER.sub("#", " ".join(lines)))
    return re.sub(r"\s+", " ", text).strip()


def regenerate(
    page: Path,
    folder: Path,
    check: bool,
    skip_slow: bool,
    seen: dict,
    only: str | None = None,
    exclude: str | None = None,
) -> list[str]:
    """Run the page's blocks in order (only those with a command containing ``only``, if given,
    and none with a command containing ``exclude``); rewrite it (or, with ``check``, return the
    differences). ``seen`` holds the outputs of commands already run (the README repeats the
    demo's)."""
    lines = page.read_text().splitlines()
    problems, bodies = [], []
    for block in blocks(lines, page.name == "README.md"):
        commands = [shell_line(s) for s in block.steps]
        if skip_slow and any(c.startswith(SLOW) for c in commands):
            continue
        if only is not None and not any(only in c for c in commands):
            continue
        if exclude is not None and any(exclude in c for c in commands):
            continue
        body = []
        for step in block.steps:
            command = shell_line(step)
            if command not in seen:
                seen[command] = run(step, folder)
            printed = seen[command]
            if check and shape(printed) != shape(step.output):
                problems.append(
                    f"{page.name}: $ {command}\n  page: {shape(step.output)}\n  now:  {shape(printed)}"
                )
            body += [("$ " if k == 0 else "") + part for k, part in enumerate(step.command)] + printed
        bodies.append((block, body))
    for block, body in reversed(bodies):  # from the end, so that earlier spans stay valid
        lines[block.start : block.stop] = body
    if not check:
        page.write_text("\n".join(lines) + "\n")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="compare shapes only; change nothing")
    parser.add_argument("--skip-slow", action="store_true", help=f"leave blocks of {', '.join(SLOW)} alone")
    parser.add_argument("--only", metavar="TEXT", help="only the blocks with a command containing TEXT")
    parser.add_argument("--exclude", metavar="TEXT", help="leave the blocks with a command containing TEXT")
    parser.add_argument("--keep", metavar="DIR", help="run in DIR (created) and keep what the commands wrote")
    args = parser.parse_args(argv)
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        toy_cohort(folder)
        seen: dict[str, list[str]] = {}
        for page in PAGES:
            problems += regenerate(page, folder, args.check, args.skip_slow, seen, args.only, args.exclude)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
