"""What the storage layout costs C-PIC's patch reads: .npy memory map against Zarr v3 chunk sizes.

One volume of ``--side``^3 float32 (a smooth random field) is stored as .npy and as sharded Zarr
v3 with chunks of 8^3 ... 64^3 (one shard per volume; zstd). For each, a fresh source is read
the way one training step reads it: one cold pivot selection of a C-PIC model (rank
``--rank``, ``--features`` features, ``--patch``^3 patches) followed by the differentiable
interpolation. Reported from ``source.stats``: distinct voxels delivered, storage units (pages,
chunks) touched, bytes fetched from storage, read amplification (bytes fetched / bytes of the
distinct voxels), and the median time of the reads (``--repeats`` fresh opens).

Run: ``python benchmarks/patch_reads.py [--side 128] [--rank 8] [--patch 3] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import cpic
from cpic.nn import Regression

sys.path.insert(0, str(Path(__file__).parent))
from distributed import write_zarr3_sharded  # noqa: E402  (the layout docs/scaling.md recommends)


def smooth_field(side: int, seed: int = 0) -> np.ndarray:
    """A band-limited random field: a few low-frequency cosines."""
    rng = np.random.default_rng(seed)
    x = np.indices((side,) * 3, dtype=np.float32) / side
    out = np.zeros((side,) * 3, np.float32)
    for _ in range(8):
        k = rng.integers(1, 5, size=3)
        out += np.cos(2 * np.pi * (k[:, None, None, None] * x).sum(0) + rng.uniform(0, 2 * np.pi))
    return out


def measure(location: str, model: cpic.CPIC) -> dict:
    """Open ``location`` afresh and read what one training step of ``model`` reads."""
    source = cpic.open_volume(location)
    source.name = "volume"  # the same pivot seed, so the same voxels, in every layout
    loss, _ = model.loss([source], torch.zeros(1), keys=[object()])  # a new key: a cold selection
    loss.backward()
    stats = source.stats
    return {
        "unique": stats.unique_voxels,
        "units": stats.chunks_touched,
        "bytes": stats.bytes_read,
        "seconds": stats.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=128)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--patch", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    volume = smooth_field(args.side)
    model = cpic.CPIC(volume.shape, Regression(), features=args.features, patch=args.patch, rank=args.rank)
    with tempfile.TemporaryDirectory() as tmp:
        layouts = {"npy (memory map, 4 KiB pages)": f"{tmp}/v.npy"}
        np.save(layouts["npy (memory map, 4 KiB pages)"], volume)
        for chunk in (8, 16, 32, 64):
            if chunk <= args.side:
                path = f"{tmp}/c{chunk}.zarr"
                write_zarr3_sharded(Path(path), volume, chunk=chunk)
                layouts[f"Zarr v3, {chunk}^3 chunks ({4 * chunk**3 // 1024} KiB)"] = path
        rows = {name: [measure(loc, model) for _ in range(args.repeats)] for name, loc in layouts.items()}
    print(
        f"{args.side}^3 float32, C-PIC rank {args.rank}, {args.features} features, {args.patch}^3 patches: "
        f"one cold pivot selection + interpolation; median of {args.repeats} fresh opens"
    )
    print()
    print("| layout | distinct voxels | pages / chunks | MiB fetched | amplification | read time (ms) |")
    print("|---|---|---|---|---|---|")
    for name, runs in rows.items():
        first = runs[0]
        amplification = first["bytes"] / (4 * first["unique"])
        seconds = statistics.median(r["seconds"] for r in runs)
        print(
            f"| {name} | {first['unique']:,} | {first['units']:,} | {first['bytes'] / 2**20:.2f} "
            f"| {amplification:.1f}x | {1000 * seconds:.1f} |"
        )


if __name__ == "__main__":
    main()
