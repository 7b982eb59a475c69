"""One training step of each patch sampler: the latent as patches (``SparseLatent``) against the
same latent as a TT, beside the floor (the encoder alone, forward and backward, on the same
patches, reads included).

The model is the one of ``sampler_curves.py`` (3^3 patches plus position, 8 features, mean
projection, each feature's maximum over the patches). For every sampler and side the step
reads ``--batch`` lesion-cohort volumes at ``--read-budget`` per volume; each time is the best
of ``--repeats`` steps after a warm-up step (which reads and caches the explore-exploit views).

Run: ``OMP_NUM_THREADS=2 python benchmarks/sampler_step.py --sides 128,256 --batch 4``.
"""

from __future__ import annotations

import argparse
import time

import torch

import cpic
from cpic.data import lesion_cohort
from cpic.nn import Classification, make_sampler


def best_time(step, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return min(times)


def time_step(model, sources, target: torch.Tensor, repeats: int) -> tuple[int, float, float, float]:
    """Patches per batch, and the best times of the floor, the step on patches, the step on a TT."""

    def step(as_tt: bool) -> int:
        reads = model.read(sources, keys=sources, peaks=True)
        latent = reads.tt if as_tt else reads.latent
        parts = [model.projection(latent, model.layout), reads.peaks]
        if reads.summary is not None:
            parts.append(reads.summary)
        model.head.loss(model.head(torch.cat(parts, 1)), target).backward()
        return len(reads.patches.ids)

    patches = step(False)  # warm-up: views read and kept
    ids = model.read(sources, keys=sources).patches.ids

    def floor() -> None:
        model.feature_function(sources).encode(ids).sum().backward()

    return (
        patches,
        best_time(floor, repeats),
        best_time(lambda: step(False), repeats),
        best_time(lambda: step(True), repeats),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", default="128,256")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--read-budget", default="0.5%")
    parser.add_argument("--samplers", default="random,lattice,explore-exploit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch}, {args.read_budget}")
    print()
    print(
        "| side | sampler | patches per volume | floor (s) | step, patches (s) | step, TT (s) "
        "| patches / floor | TT / floor |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for side in (int(s) for s in args.sides.split(",")):
        sources, labels = lesion_cohort(args.batch, side=side, seed=0)
        target = torch.as_tensor(labels["presence"]).long()
        for name in args.samplers.split(","):
            policy = make_sampler(name, (side,) * 3, args.read_budget, features=8, patch=3)
            model = cpic.CPIC(
                (side,) * 3,
                Classification(2),
                features=8,
                patch=3,
                positions=True,
                sampled_max=True,
                reads=policy,
                seed=0,
            )
            patches, base, sparse, dense = time_step(model, sources, target, args.repeats)
            print(
                f"| {side}^3 | {name} | {patches // args.batch} | {base:.3f} | {sparse:.3f} | {dense:.3f} | "
                f"{sparse / base:.2f} | {dense / base:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
