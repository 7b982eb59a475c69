"""Does the cross find lesions? How often the voxels C-PIC reads fall in a lesion, against
random patches reading as many voxels.

For the lesion-bearing volumes of ``cpic.data.lesion_cohort`` at ``--side^3``, an untrained
C-PIC model (3^3 MLP patches + position, 16 features) selects its pivots by cross; we count the
volumes where (a) any voxel read during the selection and (b) any voxel of the patches the
training step encodes (the interpolation, what ``sampled_max`` pools over) lies inside a lesion
(where it adds more than half its contrast), and how many lesion voxels were read. The
random-patch column reads the same number of distinct voxels as the selection, in 3^3 patches
at uniformly random centres. How widely each set of reads is spread is counted in the cells of
a 16^3 grid over the volume (16^3 voxels at 256^3, about a lesion's diameter) that hold head
tissue: a lesion can only be found in a cell that some read reaches.

Run: ``python benchmarks/lesion_hits.py --side 256 --volumes 24`` (``--configs 8:2:group:1,8:2:binary:4``:
rank:sweeps:layout:stride, grouped modes of size 8 or binary modes of size 2, patch centres on
every stride-th voxel; ``--oedema``: the lesions in their oedema halos, hits still counted in the
lesion itself, plus a column for hits in the halo).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import cpic
from cpic.data import lesion_cohort
from cpic.data.lesions import OEDEMA_CONTRAST
from cpic.layout import QTTLayout
from cpic.nn import Classification, lattice


def lesion_voxels(source, ids: np.ndarray) -> tuple[int, int]:
    """How many of the voxels ``ids`` (C-order linear) lie inside one of the source's lesions,
    and how many inside their oedema (where it takes away more than half its contrast; 0 for a
    volume without)."""
    f = source.function
    coords = torch.from_numpy(np.stack(np.unravel_index(ids, source.shape), 1))
    p = f.to_anatomy(coords)
    lesion = f.lesion_mask(p, oedema=False)
    inside = int((lesion > 0.5 * min(le.contrast for le in f.lesions)).sum())
    if not f.oedema:
        return inside, 0
    return inside, int((f.lesion_mask(p) - lesion < OEDEMA_CONTRAST / 2).sum())


def cells_touched(ids: np.ndarray, side: int, cells: int = 16) -> np.ndarray:
    """Which of the ``cells^3`` equal cells of the grid (side 16 at 256^3, about a lesion's
    diameter) hold at least one of the voxels ``ids``: how widely a set of reads is spread."""
    coords = np.stack(np.unravel_index(ids, (side,) * 3), 1) * cells // side
    return np.unique(np.ravel_multi_index(coords.T, (cells,) * 3))


def head_cells(source, cells: int = 16, samples: int = 4) -> np.ndarray:
    """The cells (as in :func:`cells_touched`) where the lesion-free head has tissue (above a
    fifth of the intensity range) at one of ``samples^3`` points spread over the cell."""
    side = source.shape[0]
    step = side // (cells * samples)
    axis = torch.arange(cells * samples) * step + step // 2
    coords = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    tissue = source.function(coords, with_lesions=False, noise=False) > 0.2
    return np.unique(np.ravel_multi_index((coords[tissue].numpy() * cells // side).T, (cells,) * 3))


def random_patch_ids(side: int, voxels: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct voxel ids of random ``patch^3`` patches, about ``voxels`` of them."""
    offsets = np.stack(np.meshgrid(*[np.arange(patch) - patch // 2] * 3, indexing="ij"), -1).reshape(-1, 3)
    ids = np.empty(0, np.int64)
    while len(ids) < voxels:
        centres = rng.integers(0, side, (max((voxels - len(ids)) // patch**3, 1), 3))
        coords = np.clip(centres[:, None] + offsets, 0, side - 1).reshape(-1, 3)
        ids = np.union1d(ids, np.ravel_multi_index(coords.T, (side,) * 3))
    return ids[:voxels]


def measure(sources, heads, side: int, rank: int, sweeps: int, group: bool, stride: int, seed: int) -> dict:
    """One selection configuration over ``sources``; ``heads`` are their :func:`head_cells`."""
    torch.manual_seed(seed)
    layout = QTTLayout(lattice((side,) * 3, stride), features=16, group=group)
    model = cpic.CPIC(
        (side,) * 3, Classification(2), features=16, patch=3, positions=True, background=0.0,
        projection="moments", sampled_max=True, rank=rank, sweeps=sweeps, layout=layout, seed=seed,
        stride=stride,
    )  # fmt: skip
    rows, started = [], time.perf_counter()
    with torch.no_grad():
        for i, (src, head) in enumerate(zip(sources, heads)):
            src.stats.reset()
            f = model.feature_function([src])
            info = model.pivots.pivots(
                f.subset, f.shape, [i], dtype=f.dtype, device=f.device, seeds=[seed + i]
            )
            selection = src.stats.voxel_ids().copy()
            src.stats.reset()
            cpic.interpolate(f, info)
            step = src.stats.voxel_ids().copy()
            rng = np.random.default_rng(seed + i)
            reads = {
                "cross": selection,
                "step": step,
                "random": random_patch_ids(side, len(selection), 3, rng),
                "random_step": random_patch_ids(side, len(step), 3, rng),
            }
            row = {"read": len(selection) / side**3, "head_cells": len(head)}
            for name, ids in reads.items():
                row[f"lesion_{name}"], row[f"halo_{name}"] = lesion_voxels(src, ids)
                row[f"cells_{name}"] = len(np.intersect1d(cells_touched(ids, side), head))
            rows.append(row)
    mean = {key: np.mean([row[key] for row in rows]) for key in rows[0]}
    hits = {f"hit_{name}": np.mean([row[f"lesion_{name}"] > 0 for row in rows]) for name in reads}
    halo = {f"halo_hit_{name}": np.mean([row[f"halo_{name}"] > 0 for row in rows]) for name in reads}
    config = f"rank {rank}, {sweeps} sweeps, {'grouped 8' if group else 'binary 2'} modes, stride {stride}"
    seconds = (time.perf_counter() - started) / len(sources)
    return {"config": config, **mean, **hits, **halo, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--volumes", type=int, default=24, help="lesion-bearing volumes")
    parser.add_argument("--configs", default="8:2:group:1,8:4:group:1,8:2:binary:1,8:2:group:2,8:2:group:4",
                        help="rank:sweeps:group|binary:stride, comma-separated")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oedema", action="store_true", help="each lesion in a faint oedema halo")
    args = parser.parse_args()
    sources, _ = lesion_cohort(2 * args.volumes, side=args.side, seed=args.seed, oedema=args.oedema)
    sources = [s for s in sources if s.function.lesions]
    heads = [head_cells(s) for s in sources]  # the same for every configuration
    print(
        f"{len(sources)} lesion-bearing volumes of {args.side}^3 (lesions: "
        f"{np.mean([s.function.lesion_voxels for s in sources]):.0f} voxels on average)\n"
    )
    halo = " oedema hit: selection / random |" if args.oedema else ""
    print("| C-PIC selection | voxels read | volumes hit: selection | hit: training step's patches | "
          "hit: random patches, as many voxels as the selection / as the step | lesion voxels read: "
          "cross / random | head cells reached (of a 16^3 grid): selection / step / random, as many "
          f"voxels as the selection / as the step |{halo}")  # fmt: skip
    print("|---|---|---|---|---|---|---|" + "---|" * bool(halo))
    for text in args.configs.split(","):
        rank, sweeps, kind, stride = text.split(":")
        r = measure(
            sources, heads, args.side, int(rank), int(sweeps), kind == "group", int(stride), args.seed
        )
        print(
            f"| {r['config']} | {100 * r['read']:.2f}% | {r['hit_cross']:.2f} | {r['hit_step']:.2f} | "
            f"{r['hit_random']:.2f} / {r['hit_random_step']:.2f} | "
            f"{r['lesion_cross']:.0f} / {r['lesion_random']:.0f} | {r['cells_cross']:.0f} / "
            f"{r['cells_step']:.0f} / {r['cells_random']:.0f} / {r['cells_random_step']:.0f} "
            f"of {r['head_cells']:.0f} |"
            + (f" {r['halo_hit_cross']:.2f} / {r['halo_hit_random']:.2f} |" if halo else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
