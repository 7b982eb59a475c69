"""Does the cross find lesions? How often the voxels C-PIC reads fall in a lesion, against
random patches reading as many voxels.

For the lesion-bearing volumes of ``cpic.data.lesion_cohort`` at ``--side^3``, an untrained
C-PIC model (3^3 MLP patches + position, 16 features) selects its pivots by cross; we count the
volumes where (a) any voxel read during the selection and (b) any voxel of the patches the
training step encodes (the interpolation, what ``sampled_max`` pools over) lies inside a lesion
(where it adds more than half its contrast), and how many lesion voxels were read. The
random-patch column reads the same number of distinct voxels as the selection, in 3^3 patches
at uniformly random centres.

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


def random_patch_ids(side: int, voxels: int, patch: int, rng: np.random.Generator) -> np.ndarray:
    """Distinct voxel ids of random ``patch^3`` patches, about ``voxels`` of them."""
    offsets = np.stack(np.meshgrid(*[np.arange(patch) - patch // 2] * 3, indexing="ij"), -1).reshape(-1, 3)
    ids = np.empty(0, np.int64)
    while len(ids) < voxels:
        centres = rng.integers(0, side, (max((voxels - len(ids)) // patch**3, 1), 3))
        coords = np.clip(centres[:, None] + offsets, 0, side - 1).reshape(-1, 3)
        ids = np.union1d(ids, np.ravel_multi_index(coords.T, (side,) * 3))
    return ids[:voxels]


def measure(sources, side: int, rank: int, sweeps: int, group: bool, stride: int, seed: int) -> dict:
    torch.manual_seed(seed)
    layout = QTTLayout(lattice((side,) * 3, stride), features=16, group=group)
    model = cpic.CPIC(
        (side,) * 3, Classification(2), features=16, patch=3, positions=True, background=0.0,
        projection="moments", sampled_max=True, rank=rank, sweeps=sweeps, layout=layout, seed=seed,
        stride=stride,
    )  # fmt: skip
    rows, started = [], time.perf_counter()
    with torch.no_grad():
        for i, src in enumerate(sources):
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
            random = random_patch_ids(side, len(selection), 3, rng)
            cross, cross_halo = lesion_voxels(src, selection)
            drawn, drawn_halo = lesion_voxels(src, random)
            rows.append((len(selection), cross, lesion_voxels(src, step)[0], drawn, cross_halo, drawn_halo))
    r = np.array(rows, dtype=np.float64)
    return {
        "config": f"rank {rank}, {sweeps} sweeps, {'grouped 8' if group else 'binary 2'} modes, "
        f"stride {stride}",
        "read": r[:, 0].mean() / side**3,
        "hit_selection": (r[:, 1] > 0).mean(),
        "hit_step": (r[:, 2] > 0).mean(),
        "hit_random": (r[:, 3] > 0).mean(),
        "lesion_read_cross": r[:, 1].mean(),
        "lesion_read_random": r[:, 3].mean(),
        "hit_halo_selection": (r[:, 4] > 0).mean(),
        "hit_halo_random": (r[:, 5] > 0).mean(),
        "seconds": (time.perf_counter() - started) / len(sources),
    }


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
    print(
        f"{len(sources)} lesion-bearing volumes of {args.side}^3 (lesions: "
        f"{np.mean([s.function.lesion_voxels for s in sources]):.0f} voxels on average)\n"
    )
    halo = " oedema hit: selection / random |" if args.oedema else ""
    print("| C-PIC selection | voxels read | volumes hit: selection | hit: training step's patches | "
          f"hit: random patches, as many voxels | lesion voxels read: cross / random |{halo}")  # fmt: skip
    print("|---|---|---|---|---|---|" + "---|" * bool(halo))
    for text in args.configs.split(","):
        rank, sweeps, kind, stride = text.split(":")
        r = measure(sources, args.side, int(rank), int(sweeps), kind == "group", int(stride), args.seed)
        print(
            f"| {r['config']} | {100 * r['read']:.2f}% | {r['hit_selection']:.2f} | {r['hit_step']:.2f} | "
            f"{r['hit_random']:.2f} | {r['lesion_read_cross']:.0f} / {r['lesion_read_random']:.0f} |"
            + (f" {r['hit_halo_selection']:.2f} / {r['hit_halo_random']:.2f} |" if halo else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
