"""``cpic demo``: the main job on a built-in default."""

from __future__ import annotations

import argparse
import math

import torch

from cpic._version import __version__
from cpic.cli.common import add_common, emit, fail, subparser
from cpic.cross import cross
from cpic.data import blob_field
from cpic.layout import QTTLayout


def register(commands) -> None:
    demo = subparser(
        commands,
        "demo",
        help="TT-cross of a built-in procedural volume: voxels read, error, time",
        description="Approximate a built-in procedural volume by TT-cross, reading few voxels.",
        example="cpic demo --side 512 --rank 12 --json",
    )
    demo.add_argument("--side", type=int, default=256, help="voxels per side, a power of two (default 256)")
    demo.add_argument("--rank", type=int, default=20, help="TT rank (default 20)")
    demo.add_argument("--sweeps", type=int, default=4, help="cross sweeps (default 4)")
    add_common(demo, device=False)
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    side = args.side
    if side < 2 or side & (side - 1):
        return fail("demo", f"--side must be a power of two >= 2, got {side}.")
    layout = QTTLayout((side,) * 3, group=True)
    shape = (side,) * 3

    def volume(idx: torch.Tensor) -> torch.Tensor:
        return blob_field(layout.to_coords(idx), shape, seed=args.seed)

    tt, info = cross(
        volume, layout.tensor_shape, rank=args.rank, sweeps=args.sweeps, seed=args.seed, n_test=1000
    )
    voxels = math.prod(shape)
    summary = {
        "grid": list(shape),
        "tensor_shape": list(layout.tensor_shape),
        "rank": args.rank,
        "sweeps": info.sweeps,
        "voxels_read": info.unique_evaluations,
        "fraction_read": info.unique_evaluations / voxels,
        "held_out_relative_error": float(info.error.max()),
        "tt_parameters": tt.numel(),
        "compression": voxels / tt.numel(),
        "seconds": info.time,
    }
    emit(
        args,
        summary,
        [
            f"cpic {__version__}: TT-cross of a procedural {side}^3 volume (QTT, Morton order)",
            f"  voxels in grid       {voxels:,}",
            f"  voxels read          {summary['voxels_read']:,} ({100 * summary['fraction_read']:.4f}%)",
            f"  held-out rel. error  {summary['held_out_relative_error']:.2e} (1000 random voxels)",
            f"  TT parameters        {summary['tt_parameters']:,} ({summary['compression']:,.0f}x smaller)",
            f"  time                 {summary['seconds']:.3f} s",
        ],
    )
    return 0
