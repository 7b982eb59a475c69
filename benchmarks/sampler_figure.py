"""The figure and table of ``sampler_curves.py`` runs: validation AUC against voxels read per
prediction, mean ± standard error over the cohorts (seeds) of each method and budget.

Reads the ``RESULT`` lines of the logs it is given (one run of ``sampler_curves.py`` per file,
any sides mixed: one figure per side). Run: ``python benchmarks/sampler_figure.py LOG...
--out docs/sampler_budgets`` (writes ``docs/sampler_budgets_<side>.png`` and prints the table).
"""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from task_figures import budget_figure  # noqa: E402  (a sibling script)

RESULT = re.compile(
    r"RESULT (?P<method>\S+) side (?P<side>\d+) seed (?P<seed>\d+) budget (?P<budget>\S+) .*?"
    r"mean-last-3 (?P<auc>[\d.]+) .*? read (?P<read>\d+) voxels"
)


def mean_se(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], float("nan")
    return statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+", type=Path)
    parser.add_argument("--out", default="", help="figure path stem (no figure without it)")
    args = parser.parse_args()
    runs: dict[tuple[int, str, str], dict[int, tuple[float, int]]] = defaultdict(dict)
    for log in args.logs:
        for m in RESULT.finditer(log.read_text()):
            key = (int(m["side"]), m["method"], m["budget"])
            runs[key][int(m["seed"])] = (float(m["auc"]), int(m["read"]))
    for side in sorted({k[0] for k in runs}):
        print("\n| method | budget | cohorts | voxels read | AUC, mean ± s.e. |\n|---|---|---|---|---|")
        summary = []
        for (s, method, budget), by_seed in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            if s != side:
                continue
            auc = mean_se([a for a, _ in by_seed.values()])
            read = mean_se([float(r) for _, r in by_seed.values()])
            summary.append({"method": method, "read": read, "metric": auc})
            print(f"| {method} | {budget} | {len(by_seed)} | {read[0]:,.0f} | {auc[0]:.3f} ± {auc[1]:.3f} |")
        if args.out:
            summary.sort(key=lambda r: (r["method"], r["read"][0]))
            budgeted = {r["method"] for r in summary} - {"dense"}
            path = Path(f"{args.out}_{side}.png")
            title = f"lesion presence at {side}^3 (validation ROC AUC)"
            budget_figure(summary, budgeted, side**3, "ROC AUC", title, path)
            print(f"\nfigure: {path}")


if __name__ == "__main__":
    main()
