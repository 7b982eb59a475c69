"""Reconstruction of a real MRI from a fraction of its voxels: PSNR against the fraction read.

cpic: a ``cpic.nn.ImplicitVolume`` (an encoder on the voxel and its
position, a TT of 16 latent features by cross, a decoder back to intensity) trained for
``--steps`` steps on voxels inside the patches its pivots read; then every voxel of the volume
is decoded from the latent TT alone (the implicit representation). Peers at the same budget:
- TT-cross of the intensities themselves (``cpic.cross`` on the QTT of the volume), and
- trilinear interpolation of a regular subsample reading about the same fraction of voxels.
PSNR is over the whole volume, intensities normalised to [0, 1] (peak 1).

Run: ``python benchmarks/reconstruct.py [--volume colin27|mni152] [--ranks 8,16,24]``.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

import cpic
from cpic.data import colin27, mni152
from cpic.layout import QTTLayout
from cpic.nn import ImplicitVolume
from cpic.sampling import IntensityFunction


def psnr(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    mse = float((estimate.float() - truth.float()).square().mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def all_coords(shape) -> torch.Tensor:
    return torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)


def reopen(name: str):
    return colin27("t1_1mm") if name == "colin27" else mni152("t1")


def cpic_reconstruction(name: str, rank: int, steps: int, truth: torch.Tensor, seed: int = 0):
    torch.manual_seed(seed)
    src = reopen(name)
    model = ImplicitVolume(src.shape, hidden=64, features=16, patch=1, rank=rank, positions=True, seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    started = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss, _ = model.loss([src], keys=[src])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - started
    fraction = src.stats.fraction(truth.numel())
    with torch.no_grad():
        latent = model.latent([src], keys=[src])
        coords = all_coords(src.shape)
        decoded = torch.cat([model.query(latent, c[None])[0] for c in coords.split(1 << 20)])
    return psnr(decoded.reshape(src.shape), truth), fraction, seconds


def cross_reconstruction(name: str, rank: int, truth: torch.Tensor):
    src = reopen(name)
    f = IntensityFunction([src], QTTLayout(src.shape, group=True))
    started = time.perf_counter()
    tt, _ = cpic.cross(f, f.shape, rank=rank, sweeps=3, seed=0, n_test=0)
    seconds = time.perf_counter() - started
    coords = all_coords(src.shape)
    values = torch.cat([tt.eval(f.layout.to_index(c)[None])[0] for c in coords.split(1 << 20)])
    return psnr(values.clamp(0, 1).reshape(src.shape), truth), src.stats.fraction(truth.numel()), seconds


def subsample_reconstruction(truth: torch.Tensor, fraction: float):
    stride = max(1, round(fraction ** (-1 / 3)))
    coarse = truth[::stride, ::stride, ::stride]
    up = torch.nn.functional.interpolate(
        coarse[None, None], size=truth.shape, mode="trilinear", align_corners=True
    )[0, 0]
    return psnr(up, truth), coarse.numel() / truth.numel(), stride


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--volume", default="colin27", choices=["colin27", "mni152"])
    parser.add_argument("--ranks", default="8,16,24")
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    src = reopen(args.volume)
    truth = src.read(all_coords(src.shape)).reshape(src.shape)
    print(f"\n### {args.volume} {src.shape}, intensities in [0, 1]: PSNR (dB) against voxels read\n")
    print("| method | rank / stride | voxels read | PSNR dB | seconds |")
    print("|---|---|---|---|---|")
    for rank in [int(r) for r in args.ranks.split(",")]:
        db, fraction, seconds = cpic_reconstruction(args.volume, rank, args.steps, truth)
        print(
            f"| cpic.CPIC reconstruction ({args.steps} steps) | {rank} | {100 * fraction:.2f}% | {db:.1f} | "
            f"{seconds:.0f} |"
        )
        db, cross_fraction, seconds = cross_reconstruction(args.volume, rank, truth)
        print(
            f"| TT-cross of the intensities | {rank} | {100 * cross_fraction:.2f}% | {db:.1f} | "
            f"{seconds:.1f} |"
        )
        db, sub_fraction, stride = subsample_reconstruction(truth, fraction)
        print(f"| trilinear from a regular subsample | {stride} | {100 * sub_fraction:.2f}% | {db:.1f} | - |")


if __name__ == "__main__":
    main()
