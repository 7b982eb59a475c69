"""Whole-volume tasks at equal reads: every sampler and baseline reads the same voxels per prediction.

Tasks (volumes from ``cpic.data.lesion_cohort``: the Colin27 T1 head, deformed, bias field and
noise, every other volume with 1-3 ellipsoidal lesions; ``shapes``: ``cpic.data.shape_cohort``):

- ``lesion``: lesion presence (ROC AUC);
- ``lesion-count``, ``lesion-volume``: number of lesions, total lesion volume in voxels
  (regression, mean absolute error; trained on standardised targets);
- ``needle``: presence of small lesions (radii ``--needle-radius`` mm) at ``--side`` 512: small
  enough that a 64^3 area-averaged view loses them. ``--calibrate`` prints the ROC AUC of the
  detector "largest deviation of a ``--dense-side``^3 view from the cohort's mean head" (the
  one of docs/results.md) instead of training: pick radii where it is at most 0.75.
- ``shapes``: the 10 classes of the shape cohort (macro ROC AUC).

Methods. The patch methods are one ``cpic.CPIC`` (same encoder, projection, head, and
``sampled_max=True``) differing only in its read policy ``reads=``:

- ``cross``: cross pivots (``CrossPivots``, rank ``--rank``; it reads what its pivots need: its
  reads are reported, not forced); ``random``: uniform patches; ``lattice``: a jittered lattice
  of patches; ``explore-exploit``: a strided view (``--explore`` of the budget) scored by a small
  CNN, then full-resolution patches in the best-scoring view cells;
- ``strided``: the dense CNN (``DenseCNN(view="strided")``) on the voxels of an ``n^3``
  lattice, ``n^3`` at most the budget;
- ``attention``: attention sampling (``AttentionPatches``); its strided view takes the fraction
  ``--attention-view`` of the budget, its patches the rest;
- ``dense-max``: the dense CNN on every voxel, area-averaged to ``--dense-side``^3 (the ceiling).

Each method at each read budget (``--read-budget 1%`` or ``--read-budgets 0.25%,0.5%,1%``, in
percent of the volume or in voxels) trains for ``--minutes`` of wall clock on each of
``--cohorts`` cohorts (seeds ``--seed``, ``--seed`` + 1, ...; 80/20 split) and is scored on
the validation volumes after training. The report gives per method and budget the mean ± standard
error over cohorts and the paired difference (per cohort) to the best non-adaptive design at
that budget (the best of ``random``, ``lattice``, ``strided`` by mean).

Run: ``python benchmarks/tasks.py --task lesion --side 256 --count 240 --minutes 4 --cohorts 5
--read-budgets 0.25%,0.5%,1% --plot docs --write docs/results_tasks.md``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import cpic
from cpic.data import SHAPE_CLASSES, lesion_cohort, shape_cohort
from cpic.data.lesions import CONTRAST, RADIUS_MM
from cpic.layout import QTTLayout
from cpic.nn import (
    Classification,
    CrossPivots,
    ExploreExploit,
    LatticePatches,
    PatchBudget,
    RandomPatches,
    Regression,
    lattice,
)
from cpic.nn.baselines import AttentionPatches, DenseCNN
from cpic.train.metrics import roc_auc
from cpic.util.units import voxel_budget

METHODS = ("cross", "random", "lattice", "explore-exploit", "strided", "attention", "dense-max")
#: the methods whose reads a budget sets (the others are trained once per cohort)
BUDGETED = ("random", "lattice", "explore-exploit", "strided", "attention")
#: the designs that do not look at what they read before choosing where to read
NON_ADAPTIVE = ("random", "lattice", "strided")


@dataclass(frozen=True)
class Task:
    name: str
    label: str  # the column of lesion_cohort's label table ("" for shapes)
    metric: str  # "auc" (higher is better) or "mae" (lower is better)

    @property
    def higher_is_better(self) -> bool:
        return self.metric == "auc"


TASKS = {
    "lesion": Task("lesion", "presence", "auc"),
    "lesion-count": Task("lesion-count", "count", "mae"),
    "lesion-volume": Task("lesion-volume", "volume", "mae"),
    "needle": Task("needle", "presence", "auc"),
    "shapes": Task("shapes", "", "auc"),
}


# ------------------------------------------------------------------ cohorts and models
def cohort(args, seed: int):
    """Sources, targets (long class ids or float values) and classes (0 for regression)."""
    task = TASKS[args.task]
    if task.name == "shapes":
        sources, labels = shape_cohort(args.count, side=args.side, seed=seed)
        return sources, labels, len(SHAPE_CLASSES)
    radius = args.needle_radius if task.name == "needle" else RADIUS_MM
    sources, labels = lesion_cohort(args.count, side=args.side, seed=seed, oedema=args.oedema, radius=radius)
    if task.metric == "auc":
        return sources, labels[task.label], 2
    return sources, labels[task.label].float(), 0


def strided_side(budget: int) -> int:
    """The largest ``n`` with ``n^3 <= budget`` (the strided view's side)."""
    n = round(budget ** (1 / 3))
    return n - 1 if n**3 > budget else n


def attention_plan(args, budget: int) -> tuple[int, int]:
    """``(view side, patches)`` of attention sampling: the view takes ``--attention-view`` of the
    budget, whole patches of ``--patch^3`` voxels the rest."""
    view = strided_side(int(args.attention_view * budget))
    return view, (budget - view**3) // args.patch**3


def read_policy(method: str, args, budget: int | None, seed: int):
    """The read policy of a patch method: cross pivots, or a sampler at ``budget`` voxels."""
    if method == "cross":
        return CrossPivots(args.rank, sweeps=args.sweeps, seed=seed)
    if method == "explore-exploit":
        return ExploreExploit(budget, args.features, explore=args.explore)
    return {"random": RandomPatches, "lattice": LatticePatches}[method](budget)


def check_budget(method: str, args, budget: int) -> None:
    """Refuse a budget too small for ``method`` (one line naming ``--read-budget``)."""
    if method in ("random", "lattice", "explore-exploit"):
        policy: PatchBudget = read_policy(method, args, budget, 0)
        need = policy.minimum(args.patch, 3)
    else:
        need = {"strided": 5**3, "attention": math.ceil(2**3 / args.attention_view) + args.patch**3}.get(
            method, 0
        )
    if budget < need:
        raise ValueError(
            f"--read-budget: {method} needs at least {need} voxels per prediction, got {budget} "
            f"({100 * budget / args.side**3:.3g}% of {args.side}^3)."
        )
    if method == "attention" and attention_plan(args, budget)[1] < 1:
        raise ValueError(f"--read-budget: {budget} voxels leave attention sampling no patch.")


def build(method: str, args, classes: int, budget: int | None, seed: int):
    head = Classification(classes) if classes else Regression()
    grid = (args.side,) * 3
    if method == "dense-max":
        return DenseCNN(head, side=args.dense_side, pool="mean+max")
    if method == "strided":
        return DenseCNN(head, side=strided_side(budget), pool="mean+max", view="strided")
    common = dict(features=args.features, patch=args.patch, positions=True, seed=seed)
    if method == "attention":
        view, samples = attention_plan(args, budget)
        return AttentionPatches(grid, head, samples, view=view, pool="mean+max", **common)
    return cpic.CPIC(
        grid,
        head,
        layout=QTTLayout(lattice(grid, args.stride), features=args.features, group=True),
        stride=args.stride,
        background=0.0,
        projection=args.projection,
        sampled_max=True,
        reads=read_policy(method, args, budget, seed),
        **common,
    )


# ------------------------------------------------------------------ training and scoring
def predict(model, sources, batch: int) -> torch.Tensor:
    model.eval()
    with torch.no_grad():  # C-PIC without keys: fresh reads (one look at a new volume)
        out = torch.cat([model(sources[i : i + batch]).cpu() for i in range(0, len(sources), batch)])
    model.train()
    return out


def metric(task: Task, output: torch.Tensor, targets: torch.Tensor, scale: tuple[float, float]) -> float:
    """ROC AUC of the class probabilities, or the mean absolute error in the targets' units."""
    if task.metric == "auc":
        prob = output.softmax(1)
        return roc_auc(prob if prob.shape[1] > 2 else prob[:, 1], targets)
    mean, std = scale
    return float((output * std + mean - targets).abs().mean())


def train(method: str, args, budget: int | None, seed: int) -> tuple[dict, torch.nn.Module, list]:
    """Train ``method`` for ``--minutes`` (or ``--epochs``) on cohort ``seed``; its score, model and
    validation sources."""
    task = TASKS[args.task]
    sources, targets, classes = cohort(args, seed)
    n_val = max(len(sources) // 5, 2)
    train_idx, val = list(range(n_val, len(sources))), sources[:n_val]
    scale = (0.0, 1.0)
    if not classes:  # regression on standardised targets; the error is reported in their units
        fit = targets[train_idx]
        scale = (float(fit.mean()), float(fit.std().clamp_min(1e-6)))
    fitted = (targets - scale[0]) / scale[1] if not classes else targets
    torch.manual_seed(seed)
    model = build(method, args, classes, budget, seed).to(args.device)
    if method == "dense-max":
        dense_views(model, args, sources, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    trained, steps, epochs = 0.0, 0, 0

    def more() -> bool:  # a budget of epochs (fair on a shared machine) or of wall clock
        return epochs < args.epochs if args.epochs else trained < 60 * args.minutes

    while more():
        epochs += 1
        started = time.perf_counter()
        if args.refresh and epochs > 1 and (epochs - 1) % args.refresh == 0:
            if isinstance(getattr(model, "reads", None), CrossPivots):
                model.refresh_pivots()
            elif hasattr(model, "refresh"):  # attention sampling draws new positions as often
                model.refresh()
        order = torch.randperm(len(train_idx), generator=gen).tolist()
        for i in range(0, len(order), args.batch):
            items = [train_idx[j] for j in order[i : i + args.batch]]
            part = [sources[j] for j in items]
            opt.zero_grad(set_to_none=True)
            loss, _ = model.loss(part, fitted[items], keys=part)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            steps += 1
            if not args.epochs and trained + time.perf_counter() - started > 60 * args.minutes:
                break
        trained += time.perf_counter() - started
    for s in val:  # what one prediction reads of a volume it has not seen
        s.stats.reset()
    output = predict(model, val, args.batch)
    # the dense view reads every voxel (its views may come from the cache: not counted here)
    read = args.side**3 if method == "dense-max" else sum(s.stats.unique_voxels for s in val) / len(val)
    row = {
        "method": method,
        "budget": budget,
        "seed": seed,
        "metric": metric(task, output, targets[:n_val], scale),
        "read": read,
        "epochs": epochs,
        "step_seconds": trained / max(steps, 1),
    }
    print(f"  {method} budget={budget} seed={seed}: {row}", flush=True)
    return row, model, val


def dense_views(model: DenseCNN, args, sources, seed: int) -> None:
    """Fill the dense CNN's area-averaged views, from ``--cache`` when an earlier run wrote them
    (every voxel is read, which for a procedural cohort means computed: slow, so done once)."""
    version = "-".join(f"{v:g}" for v in CONTRAST) if args.task != "shapes" else "v1"
    if args.task == "needle":
        version += "-r" + "-".join(f"{r:g}" for r in args.needle_radius)
    version += "-oedema" if args.oedema else ""
    kind = "shapes" if args.task == "shapes" else "lesion"  # the count and volume tasks share the volumes
    path = Path(args.cache) / f"{kind}-{version}-{args.side}-{seed}-{args.count}-{model.side}.pt"
    if path.exists():
        model.views.update(torch.load(path))
        return
    for s in sources:
        model.view(s)
        s.stats.reset()  # the ids of every voxel would take 8 bytes each
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.views, path)


def calibrate(args, seeds: list[int]) -> str:
    """ROC AUC of "the largest deviation of the dense view from the cohort's mean head"."""
    lines = [
        f"### {args.task} at {args.side}^3: detector on the {args.dense_side}^3 area-averaged view",
        "",
        "| cohort seed | volumes | ROC AUC of the largest deviation from the mean head |",
        "|---|---|---|",
    ]
    aucs = []
    for seed in seeds:
        sources, _, _ = cohort(args, seed)
        presence = torch.tensor([int(bool(s.function.lesions)) for s in sources])
        model = DenseCNN(Classification(2), side=args.dense_side)
        dense_views(model, args, sources, seed)
        views = torch.stack([model.views[s.name].flatten() for s in sources])
        aucs.append(roc_auc((views - views.mean(0)).amax(1), presence))
        lines.append(f"| {seed} | {len(sources)} | {aucs[-1]:.3f} |")
    mean, se = mean_se(aucs)
    lines.append(f"| mean ± s.e. | | {mean:.3f} ± {se:.3f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the report
def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (NaN with fewer than two values)."""
    t = torch.tensor(values, dtype=torch.float64)
    se = float(t.std() / math.sqrt(len(t))) if len(t) > 1 else float("nan")
    return float(t.mean()), se


def summarise(args, rows: list[dict], budgets: list[int]) -> list[dict]:
    """Per budget and method: the metric and reads over cohorts, and the paired difference to the
    best non-adaptive design at that budget (positive: better than it)."""
    task = TASKS[args.task]
    sign = 1.0 if task.higher_is_better else -1.0
    out = []
    for budget in budgets:
        at = {
            m: {r["seed"]: r for r in rows if r["method"] == m and r["budget"] in (budget, None)}
            for m in dict.fromkeys(r["method"] for r in rows)
        }
        means = {m: mean_se([r["metric"] for r in by.values()])[0] for m, by in at.items()}
        candidates = [m for m in NON_ADAPTIVE if m in at]
        best = max(candidates, key=lambda m: sign * means[m]) if candidates else None
        for method, by in at.items():
            summary = {
                "budget": budget,
                "method": method,
                "cohorts": len(by),
                "metric": mean_se([r["metric"] for r in by.values()]),
                "read": mean_se([r["read"] for r in by.values()]),
                "epochs": mean_se([r["epochs"] for r in by.values()])[0],
                "step_seconds": mean_se([r["step_seconds"] for r in by.values()])[0],
                "best": best,
            }
            if best is not None and method != best:
                paired = [sign * (by[s]["metric"] - at[best][s]["metric"]) for s in by if s in at[best]]
                summary["difference"] = mean_se(paired)
                summary["ratio"] = means[method] / means[best] if means[best] else float("nan")
            out.append(summary)
    return out


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [
            line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if "model name" in line
        ]
        cpu = names[0] if names else cpu
    where = f"{cpu}, {os.cpu_count()} cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        where += f", {torch.cuda.get_device_name(torch.device(device))}"
    return f"{where}; torch {torch.__version__} on {device}"


def markdown(args, summary: list[dict], argv: list[str]) -> str:
    task = TASKS[args.task]
    name = "ROC AUC" if task.metric == "auc" else f"MAE ({task.label})"
    volume = args.side**3
    lines = [
        f"### {args.task} at {args.side}^3: {args.count} volumes per cohort (80/20 split), "
        f"{args.cohorts} cohort(s), "
        + (f"{args.epochs} epochs" if args.epochs else f"{args.minutes:g} min")
        + " of training per method and cohort",
        "",
        f"Command: `python benchmarks/tasks.py {' '.join(argv)}`; "
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine(args.device)}.",
        "",
        f"Patch methods: cpic.CPIC, {args.patch}^3 patches + position, {args.features} features, stride "
        f"{args.stride}, projection {args.projection} plus each feature's max over the patches read; "
        f"cross: rank {args.rank}, {args.sweeps} sweep(s), pivots re-selected every {args.refresh} epochs; "
        f"attention: its strided view is {100 * args.attention_view:g}% of the budget; "
        f"dense-max: {args.dense_side}^3 area-averaged view of every voxel. "
        f"Mean ± s.e. over cohorts; the difference is paired per cohort against the best "
        f"non-adaptive design (of {', '.join(NON_ADAPTIVE)}) at the budget, positive when better.",
        "",
        f"| budget | method | {name} | distinct voxels read per prediction | vs best non-adaptive | "
        + ("ratio of MAE | " if task.metric == "mae" else "")
        + "epochs | train step |",
        "|---|---|---|---|---|" + ("---|" if task.metric == "mae" else "") + "---|---|",
    ]
    for s in summary:
        metric_mean, metric_se = s["metric"]
        read = s["read"][0]
        if s["method"] == s["best"]:
            versus = "(best non-adaptive)"
        elif "difference" in s:
            d, se = s["difference"]
            versus = f"{d:+.3f} ± {se:.3f} ({d / se:+.1f} s.e.)" if se > 0 else f"{d:+.3f}"
        else:
            versus = "-"
        ratio = ""
        if task.metric == "mae":
            ratio = f"{s['ratio']:.2f} | " if "ratio" in s else "- | "
        lines.append(
            f"| {s['budget']} ({100 * s['budget'] / volume:.3g}%) | {s['method']} | "
            f"{metric_mean:.3f} ± {metric_se:.3f} | {read:.0f} ({100 * read / volume:.3g}%) | {versus} | "
            f"{ratio}{s['epochs']:.1f} | {1000 * s['step_seconds']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the command line
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=tuple(TASKS), default="lesion")
    parser.add_argument("--side", type=int, default=None, help="grid side (default 512 for needle, else 256)")
    parser.add_argument("--count", type=int, default=240, help="volumes per cohort")
    parser.add_argument("--cohorts", type=int, default=5, help="cohorts (seeds --seed, --seed + 1, ...)")
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per method and cohort")
    parser.add_argument("--epochs", type=int, default=0, help="train this many epochs instead of --minutes")
    parser.add_argument("--methods", default=",".join(METHODS))
    budgets = parser.add_mutually_exclusive_group()
    budgets.add_argument("--read-budget", default="1%", help="voxels read per prediction: '1%%' or a count")
    budgets.add_argument("--read-budgets", default="", help="several, comma-separated: one row per budget")
    parser.add_argument(
        "--explore", type=float, default=0.5, help="explore-exploit: the budget's stage-1 share"
    )
    parser.add_argument("--attention-view", type=float, default=0.5, help="attention: the view's share")
    parser.add_argument("--needle-radius", default="1,2", help="needle: lesion radii in mm, 'low,high'")
    parser.add_argument("--oedema", action="store_true", help="lesion tasks: a faint oedema halo per lesion")
    parser.add_argument("--calibrate", action="store_true", help="only the dense-view detector's AUC")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8, help="cross: TT rank")
    parser.add_argument("--sweeps", type=int, default=2, help="cross: sweeps of a cold pivot selection")
    parser.add_argument("--refresh", type=int, default=2, help="cross, attention: new reads every N epochs")
    parser.add_argument("--patch", type=int, default=3)
    parser.add_argument("--stride", type=int, default=1, help="patch centres on every n-th voxel")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--projection", default="moments")
    parser.add_argument("--dense-side", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=".cache/tasks", help="where the dense CNN's views are kept")
    parser.add_argument("--plot", default="", help="write the figures into this folder")
    parser.add_argument("--write", default="", help="append the markdown report to this file")
    args = parser.parse_args(argv)
    args.side = args.side or (512 if args.task == "needle" else 256)
    try:
        try:
            args.needle_radius = tuple(float(r) for r in args.needle_radius.split(","))
        except ValueError:
            args.needle_radius = ()
        if len(args.needle_radius) != 2 or not 0 < args.needle_radius[0] <= args.needle_radius[1]:
            raise ValueError("--needle-radius: expected 'low,high' millimetres with 0 < low <= high.")
        if not 0 < args.attention_view < 1:
            raise ValueError(f"--attention-view: a share of the budget in (0, 1), got {args.attention_view}.")
        args.methods = args.methods.split(",")
        if args.calibrate and args.task == "shapes":
            raise ValueError("--calibrate: the detector needs a lesion task, not shapes.")
        unknown = [m for m in args.methods if m not in METHODS]
        if unknown:
            raise ValueError(
                f"--methods: unknown {', '.join(unknown)}; expected some of {', '.join(METHODS)}."
            )
        texts = (args.read_budgets or args.read_budget).split(",")
        try:
            args.budgets = sorted({voxel_budget(t, args.side**3) for t in texts})
        except ValueError as err:
            raise ValueError(f"--read-budget: {err}") from None
        for budget in [] if args.calibrate else args.budgets:  # the calibration trains nothing
            for method in args.methods:
                check_budget(method, args, budget)
    except ValueError as err:
        parser.error(str(err))
    return args


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    seeds = [args.seed + c for c in range(args.cohorts)]
    if args.calibrate:
        report = calibrate(args, seeds)
        print(report)
        return report
    rows, shown = [], {}  # shown: the models of the first cohort at the largest budget
    for seed in seeds:
        for method in args.methods:
            for budget in args.budgets if method in BUDGETED else [None]:
                row, model, val = train(method, args, budget, seed)
                rows.append(row)
                if seed == seeds[0] and budget in (None, args.budgets[-1]):
                    shown[method] = (model, val)
    summary = summarise(args, rows, args.budgets)
    report = markdown(args, summary, argv)
    print("\n" + report)
    names = []
    if args.plot:
        from task_figures import budget_figure, reads_figure  # a sibling script

        folder = Path(args.plot)
        folder.mkdir(parents=True, exist_ok=True)
        task = TASKS[args.task]
        ylabel = "ROC AUC" if task.metric == "auc" else f"MAE of the {task.label}"
        title = f"{args.task} at {args.side}^3, {args.cohorts} cohort(s), mean ± s.e."
        stem = folder / f"tasks_{args.task}_{args.side}"
        names.append(budget_figure(summary, BUDGETED, args.side**3, ylabel, title, Path(f"{stem}_reads.png")))
        half = max(args.patch // 2, args.side // 64)  # a strided view's planes fall inside this slab
        names.append(reads_figure(shown, predict, half, Path(f"{stem}_where.png")))
    if args.write:
        path = Path(args.write)
        links = [os.path.relpath(n, path.parent) for n in names]
        with path.open("a") as out:
            out.write("\n" + report + "".join(f"\n![{n}]({n})\n" for n in links))
    return report


if __name__ == "__main__":
    main()
