"""Reconstruction of a volume from a fraction of its voxels: PSNR against the fraction read.

For each volume and fraction f, a regular lattice of the smallest stride reading at most f of
the voxels sets the read count R; at exactly R reads (``auto``: at most R):
- ``auto``: ``cpic compress``'s default, refinement or the lattice as a pilot of the lattice
  chooses (``cpic.implicit.choose_reads``), labelled with its choice;
- ``refine``: cpic's adaptive dyadic lattice refinement (``cpic compress --method refine``);
- ``lattice cubic`` and ``lattice trilinear``: that regular lattice, decoded by natural cubic
  splines (``cpic compress --method lattice``) or linearly;
- ``TT-SVD``: the TT-SVD of the full volume (every voxel read) with the largest rank whose cores
  hold at most R numbers (equal storage);
- ``implicit`` (with ``--implicit STEPS``): the neural implicit model on its cross pivots (it
  reads what its pivots read, not R).
PSNR over every voxel the method did not read, peak = the spread between the 0.5th and 99.5th
percentiles of the volume; "fg" = the voxels above the volume's Otsu threshold.

Volumes: Colin27 T1 1 mm, MNI152 2009a T1, the InVesalius head CT (HU), and a band-limited field
(``cpic.data.band_limited_noise``, 128^3, frequencies below 2 cycles per side: a 0.1% lattice
samples it about 3 times above its Nyquist rate).

Run: ``OMP_NUM_THREADS=1 python benchmarks/reconstruct.py [--volumes colin27,ct] [--fractions
0.1,0.5] [--plot psnr.png]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from cpic.data import band_limited_noise, colin27, head_ct, mni152
from cpic.implicit import (
    CompressedVolume,
    choose_reads,
    decode_lattice,
    fit_implicit,
    otsu_threshold,
    read_lattice,
    refine,
    values_at,
)
from cpic.tt.svd import tt_svd

VOLUMES = {
    "colin27": lambda: colin27("t1_1mm", normalize=None),
    "mni152": lambda: mni152("t1", normalize=None),
    "ct": lambda: head_ct(normalize=None),
    "band-limited": lambda: band_limited_noise((128, 128, 128), cutoff=2.0, waves=16, seed=0),
}


def dense(source) -> torch.Tensor:
    return source.read_planes(0, source.shape[0], normalize=False).float()


class Scorer:
    """PSNR and foreground PSNR of an estimate over the voxels a method did not read."""

    def __init__(self, truth: torch.Tensor):
        self.truth = truth
        sample = truth.reshape(-1)[:: max(1, truth.numel() // 200_000)].double()
        low, high = torch.quantile(sample, torch.tensor([0.005, 0.995], dtype=torch.float64)).tolist()
        self.peak = high - low
        self.foreground = truth > otsu_threshold(sample)

    def __call__(self, estimate: torch.Tensor, read: torch.Tensor | None) -> tuple[float, float]:
        unread = torch.ones_like(self.truth, dtype=torch.bool)
        if read is not None:
            unread[tuple(read.T)] = False
        err = (estimate.double() - self.truth.double()).square()
        out = []
        for mask in (unread, unread & self.foreground):
            mse = float(err[mask].mean())
            out.append(10 * math.log10(self.peak**2 / mse) if mse > 0 else math.inf)
        return out[0], out[1]


def tt_svd_at(truth: torch.Tensor, storage: int) -> torch.Tensor:
    n0, n1, n2 = truth.shape
    rank = 1
    while (rank + 1) * n0 + (rank + 1) ** 2 * n1 + (rank + 1) * n2 <= storage:
        rank += 1
    cores = tt_svd(truth[None].double(), max_rank=rank)
    out = cores[0][0]
    for core in cores[1:]:
        out = torch.tensordot(out, core[0], dims=1)
    return out.reshape(truth.shape).float()


def rows_of(name: str, fractions: list[float], implicit_steps: int | None) -> list[dict]:
    source = VOLUMES[name]()
    truth = dense(source)
    score = Scorer(truth)
    rows = []
    for fraction in fractions:
        started = time.perf_counter()
        lattice = read_lattice(source, max(8, round(fraction * truth.numel())))
        count = lattice.count
        results = {
            "lattice trilinear": score(decode_lattice(lattice, kind="linear"), lattice.coords),
            "lattice cubic": score(decode_lattice(lattice), lattice.coords),
        }
        reads = refine(source, count)
        results["refine"] = score(decode_lattice(reads), reads.coords)
        choice = choose_reads(source, count)
        results[f"auto -> {choice.method}"] = score(decode_lattice(choice.reads), choice.reads.coords)
        results["TT-SVD"] = score(tt_svd_at(truth, count), None)
        for method, (db, fg) in results.items():
            reads_made = choice.reads.count if method.startswith("auto") else count
            rows.append({"volume": name, "fraction": count / truth.numel(), "reads": reads_made,
                         "method": method, "psnr": db, "fg": fg})  # fmt: skip
        print(f"  {name} {100 * fraction:g}%: {time.perf_counter() - started:.1f} s", flush=True)
    if implicit_steps:
        src = VOLUMES[name]()
        src.set_normalization("percentile")
        model, latent = fit_implicit(src, steps=implicit_steps)
        read = src.voxels_read()
        norm = src.normalization
        meta = {"grid": list(src.shape), "normalization": {"low": norm.low, "high": norm.high}}
        volume = CompressedVolume("implicit", meta, model=model, latent=latent)
        coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in src.shape], indexing="ij"), -1)
        estimate = values_at(volume, coords.reshape(-1, 3)).reshape(src.shape)
        db, fg = score(estimate, read)
        rows.append({"volume": name, "fraction": len(read) / truth.numel(), "reads": len(read),
                     "method": f"implicit ({implicit_steps} steps)", "psnr": db, "fg": fg})  # fmt: skip
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| volume | fraction read | voxels read | method | PSNR dB | fg PSNR dB |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['volume']} | {100 * r['fraction']:.3f}% | {r['reads']:,} | {r['method']} | "
              f"{r['psnr']:.2f} | {r['fg']:.2f} |" for r in rows]  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["volume"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)

    def family(row: dict) -> str:  # "auto -> refine" and "auto -> lattice" are one curve
        return row["method"].split(" -> ")[0]

    for ax, name in zip(axes[0], names):
        for method in dict.fromkeys(family(r) for r in rows if r["volume"] == name):
            mine = [r for r in rows if r["volume"] == name and family(r) == method]
            ax.plot([100 * r["fraction"] for r in mine], [r["psnr"] for r in mine], "o-", label=method)
        ax.set(xscale="log", xlabel="voxels read (%)", ylabel="PSNR (dB)", title=name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--volumes", default=",".join(VOLUMES), help=f"comma list of {', '.join(VOLUMES)}")
    parser.add_argument("--fractions", default="0.1,0.5,2,5", help="percentages of the voxels read")
    parser.add_argument("--implicit", type=int, metavar="STEPS", help="also the implicit model, STEPS steps")
    parser.add_argument("--plot", metavar="PNG", help="draw PSNR against the fraction read")
    args = parser.parse_args()
    fractions = [float(f) / 100 for f in args.fractions.split(",")]
    rows = []
    for name in args.volumes.split(","):
        if name not in VOLUMES:
            parser.error(f"unknown volume {name!r}; expected one of {', '.join(VOLUMES)}")
        rows += rows_of(name, fractions, args.implicit)
    print()
    print(table(rows))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
