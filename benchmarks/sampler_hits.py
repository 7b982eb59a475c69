"""Which lesions a design's reads touch: per method, the share of lesions with at least one voxel
read inside them and the mean number of such voxels, over the lesion volumes of a cohort.

Reads are those of one untrained prediction (``random``, ``lattice``: the model of
``benchmarks/tasks.py``; ``strided``: its ``n^3`` view; ``view``: a strided view of half the
budget, what explore-exploit's stage 1 reads before its scorer chooses). A voxel is inside a
lesion when its centre lies in the lesion's ellipsoid (the deformed position, as the volume is
computed). It says whether a cue can reach a model at all: a design that touches a lesion in
few volumes cannot learn to find it, whatever it is trained on. (``lesion_hits.py`` asks the
same of cross pivots.)

Every option but ``--designs`` is ``benchmarks/tasks.py``'s (task, side, count, seed, budget,
model settings). Run: ``OMP_NUM_THREADS=1 python benchmarks/sampler_hits.py --task needle
--side 512 --count 40 --read-budget 1%`` (the needle task's volumes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from cpic.nn.baselines import subsample

sys.path.insert(0, str(Path(__file__).parent))
from tasks import build, cohort, parse, strided_side  # noqa: E402  (a sibling script)

DESIGNS = ("random", "lattice", "strided", "view")


def read_ids(design: str, args, source, budget: int) -> torch.Tensor:
    """Linear ids of the distinct voxels one prediction of ``design`` reads of ``source``."""
    source.stats.reset()
    if design in ("strided", "view"):
        subsample(source, strided_side(budget if design == "strided" else budget // 2))
    else:
        with torch.no_grad():
            build(design, args, 2, budget, args.seed).read([source])
    ids = torch.from_numpy(source.stats.voxel_ids().copy())
    source.stats.reset()
    return ids


def inside(source, ids: torch.Tensor) -> torch.Tensor:
    """``[lesions]``: how many of the voxels ``ids`` lie inside each lesion of ``source``."""
    function = source.function
    p = function.to_anatomy(source.coords_of(ids))
    return torch.tensor([int((lesion.scaled_distance(p) < 1).sum()) for lesion in function.lesions])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", default=",".join(DESIGNS))
    own, rest = parser.parse_known_args(argv)
    args = parse(rest + ["--methods", "random"])  # tasks.py's cohort and model settings
    budget = args.budgets[-1]
    sources, _, _ = cohort(args, args.seed)
    with_lesions = [s for s in sources if s.function.lesions]
    lines = [
        f"Lesions touched, {args.task} at {args.side}^3, {budget} voxels read "
        f"({100 * budget / args.side**3:.3g}%), {len(with_lesions)} volumes with lesions:",
        "",
        "| design | voxels read | lesions touched | lesion voxels read, mean per lesion |",
        "|---|---|---|---|",
    ]
    for design in own.designs.split(","):
        hits, read = [], 0
        for s in with_lesions:
            ids = read_ids(design, args, s, budget)
            read += len(ids)
            hits.append(inside(s, ids))
        hits = torch.cat(hits).float()
        lines.append(
            f"| {design} | {read // len(with_lesions):,} | {int((hits > 0).sum())} of {len(hits)} "
            f"({100 * float((hits > 0).float().mean()):.0f}%) | {float(hits.mean()):.1f} |"
        )
    report = "\n".join(lines)
    print(report)
    return report


if __name__ == "__main__":
    main()
