"""Samplers at equal reads, by learning curve: lesion presence, a fixed number of epochs each.

The same ``cpic.CPIC`` (3^3 patches + position, 8 features, mean projection, ``sampled_max``)
reads with ``LatticePatches``, ``RandomPatches`` or ``ExploreExploit`` at one read budget per
prediction, or with ``CrossPivots`` (``cross``: the largest rank whose cold cross reads at most
the budget, found on one training volume; pivots kept per volume and re-selected every 2
epochs); ``attention`` is ``AttentionPatches`` (its strided view ``--attention-view`` of the
budget, its patches the rest, redrawn every 2 epochs); the ``strided`` baseline is
``DenseCNN`` (mean and max pooled) on the ``n^3`` strided view with ``n^3`` at most the budget,
and the ``dense`` ceiling is the same CNN on the volume area-averaged to ``--dense-side``^3
(every voxel read). Every method trains ``--epochs`` epochs (a budget that a shared machine
cannot skew, unlike wall clock) on the cohort's last 3/4 and is scored after every epoch on its
first 1/4; the result is the mean validation ROC AUC of the last 3 epochs (one epoch's AUC on
40 volumes swings by about 0.05). ``benchmarks/tasks.py`` runs the wider protocol (wall-clock
budgets, regression and needle tasks, the "where each sampler read" slices).

Run: ``OMP_NUM_THREADS=1 python benchmarks/sampler_curves.py --side 128 --count 160 --epochs 30
--read-budget 0.5% --seed 0`` (one cohort per seed; prints one ``RESULT`` line per method).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import cpic
from cpic.data import lesion_cohort
from cpic.nn import (
    AttentionPatches,
    Classification,
    CrossPivots,
    DenseCNN,
    ExploreExploit,
    LatticePatches,
    RandomPatches,
)
from cpic.train.metrics import roc_auc
from cpic.util.units import voxel_budget

sys.path.insert(0, str(Path(__file__).parent))
from tasks import attention_plan, strided_side  # noqa: E402  (a sibling script)

METHODS = ("lattice", "random", "explore-exploit", "cross", "attention", "strided", "dense")
REFRESH = 2  # cross and attention: new reads every this many epochs


def patch_model(args, policy) -> cpic.CPIC:
    return cpic.CPIC(
        (args.side,) * 3,
        Classification(2),
        features=args.features,
        patch=args.patch,
        positions=True,
        sampled_max=True,
        reads=policy,
        seed=args.seed,
    )


def cross_rank(args, source, budget: int) -> int:
    """The largest rank (at least 1) whose cold cross on ``source`` reads at most ``budget`` voxels
    (every read counted, as for the other methods)."""
    best = 1
    for rank in range(1, 33):
        source.stats.reset()
        with torch.no_grad():
            patch_model(args, CrossPivots(rank, sweeps=2, seed=args.seed)).read([source])
        if source.stats.voxels_read > budget:
            break
        best = rank
    source.stats.reset()
    return best


def build(method: str, args, budget: int, probe):
    grid = (args.side,) * 3
    if method == "strided":
        return DenseCNN(Classification(2), side=strided_side(budget), pool="mean+max", view="strided")
    if method == "dense":  # the ceiling: every voxel read, area-averaged
        return DenseCNN(Classification(2), side=args.dense_side, pool="mean+max", view="average")
    if method == "attention":
        view, samples = attention_plan(args, budget)
        return AttentionPatches(
            grid,
            Classification(2),
            samples,
            view=view,
            pool="mean+max",
            features=args.features,
            patch=args.patch,
            positions=True,
            seed=args.seed,
        )
    policy = {
        "cross": lambda: CrossPivots(
            cross_rank(args, probe, budget), sweeps=2, refresh_every=REFRESH, seed=args.seed
        ),
        "lattice": lambda: LatticePatches(budget),
        "random": lambda: RandomPatches(budget),
        "explore-exploit": lambda: ExploreExploit(
            budget,
            features=args.features,
            explore=args.explore,
            exploration=args.exploration,
            stage2=args.stage2,
        ),
    }[method]()
    return patch_model(args, policy)


def scores(model, sources, batch: int = 8) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(sources[i : i + batch]) for i in range(0, len(sources), batch)])
    model.train()
    return out.softmax(1)[:, 1]


def run(method: str, args, sources, labels, budget: int) -> dict:
    torch.manual_seed(args.seed)
    n_val = len(sources) // 4
    model = build(method, args, budget, probe=sources[n_val])
    train, val = list(range(n_val, len(sources))), sources[:n_val]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    aucs, started = [], time.perf_counter()
    for epoch in range(args.epochs):
        if method == "attention" and epoch and epoch % REFRESH == 0:
            model.refresh()
        order = torch.randperm(len(train), generator=gen).tolist()
        for i in range(0, len(order), 8):
            items = [train[j] for j in order[i : i + 8]]
            part = [sources[j] for j in items]
            opt.zero_grad(set_to_none=True)
            loss, _ = model.loss(part, labels[items], keys=part)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        for s in val:
            s.stats.reset()
        aucs.append(roc_auc(scores(model, val), labels[:n_val]))
        # the dense CNNs keep their views: a prediction reads them once
        if method in ("strided", "dense"):
            read = model.side**3 if method == "strided" else args.side**3
        else:
            read = max(s.stats.voxels_read for s in val)
        print(f"  {method} epoch {epoch + 1}: auc {aucs[-1]:.3f}, read {read} voxels", flush=True)
    seconds = time.perf_counter() - started
    return {"auc": sum(aucs[-3:]) / 3, "best": max(aucs), "read": read, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="the cohort")
    parser.add_argument("--read-budget", default="0.5%")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--explore", type=float, default=0.5, help="explore-exploit: the view's share")
    parser.add_argument(
        "--exploration", type=float, default=1.0, help="explore-exploit: Gumbel noise scale in training"
    )
    parser.add_argument(
        "--stage2", default="patches", help="explore-exploit: patches (jittered) or cross in the chosen cells"
    )
    parser.add_argument("--attention-view", type=float, default=0.5, help="attention: the view's share")
    parser.add_argument("--dense-side", type=int, default=64, help="dense: the side of its averaged view")
    parser.add_argument("--patch", type=int, default=3)
    parser.add_argument("--features", type=int, default=8)
    args = parser.parse_args()
    sources, labels = lesion_cohort(args.count, side=args.side, seed=args.seed)
    labels = torch.as_tensor(labels["presence"]).long()
    budget = voxel_budget(args.read_budget, args.side**3)
    for method in args.methods.split(","):
        r = run(method, args, sources, labels, budget)
        name = f"{method}+cross" if method == "explore-exploit" and args.stage2 == "cross" else method
        print(
            f"RESULT {name} side {args.side} seed {args.seed} budget {args.read_budget} ({budget} voxels): "
            f"mean-last-3 {r['auc']:.3f} best {r['best']:.3f} read {r['read']} voxels "
            f"({100 * r['read'] / args.side**3:.2f}%) time {r['seconds']:.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
