"""Voxels read by TT-cross grow with log(volume size): the evidence, and an out-of-core proof.

Part 1: Morton QTT (modes of 8) at a fixed rank of a procedural volume (a smooth random field
of five plane waves, QTT rank <= 10) of side 2^6 ... 2^12 (up to 2^15 with --huge; nothing is
stored), of its raw intensities and of a fixed random encoder's features (an MLP on 3x3x3
patches, 8 features), and of real volumes (Colin27 0.5 mm, MNI152; padded to the next power
of two). Per size: unique voxels read, fraction of the grid, held-out relative error (1,000
random entries), peak RSS (each size runs in a fresh process). Fits unique voxels against
log2(voxels) and saves the plot.

Part 2 (--ooc): writes a 1024^3 uint8 .npy (1 GiB) and a 1024^3 Zarr v3 array (tensorstore,
64^3 chunks, zstd) into a temporary folder, then runs cross over each in a fresh process and
reports peak RSS and the fraction of voxels read (targets: < 0.5 GiB, < 0.1%).

Run: python benchmarks/sampling_scale.py [--huge] [--ooc | --ooc-only] [--plot PNG]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RANK = 10
SWEEPS = 3


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib() -> float:
    """This process's resident-memory high-water mark (``VmHWM``; ``ru_maxrss`` would carry
    the parent's peak across ``fork``/``exec``)."""
    hwm = _status_mib("VmHWM")
    return hwm if hwm == hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def anon_rss_mib() -> float:
    return _status_mib("RssAnon")


class EncoderFunction:
    """Features of a fixed random MLP on 3^3 patches: ``f(idx [1, P, d]) -> [1, P]``."""

    def __init__(self, source, layout, features: int = 8):
        torch.manual_seed(0)
        self.source, self.layout = source, layout
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(27, 32), torch.nn.Tanh(), torch.nn.Linear(32, features)
        ).requires_grad_(False)
        self.limit = torch.tensor(layout.grid_shape) - 1

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        coords = torch.minimum(self.layout.to_coords(idx[0]), self.limit)
        unique, inverse = torch.unique(coords, dim=0, return_inverse=True)  # encode each voxel once
        features = self.mlp(self.source.gather(unique, patch=3, border="edge"))
        return features[inverse, idx[0, :, -1]][None]


def make_source(kind: str, side: int, path: str | None = None):
    from cpic.data import band_limited_noise, colin27, mni152
    from cpic.sources import open_volume

    if kind in ("intensity", "features"):
        return band_limited_noise((side,) * 3, cutoff=4.0, waves=5, seed=0)
    if kind == "colin27":
        return colin27("t1")
    if kind == "mni152":
        return mni152("t1")
    if kind in ("npy", "zarr"):
        return open_volume(path, normalize="range")
    raise ValueError(kind)


def run_one(kind: str, side: int, path: str | None = None) -> dict:
    """One cross in this process; returns the row as a dict."""
    import cpic
    from cpic.layout import QTTLayout
    from cpic.sampling import IntensityFunction

    rss_before = peak_rss_mib()
    source = make_source(kind, side, path)
    features = 8 if kind == "features" else None
    layout = QTTLayout(source.shape, group=True, features=features)
    f = EncoderFunction(source, layout) if kind == "features" else IntensityFunction([source], layout)
    started = time.perf_counter()
    tt, info = cpic.cross(f, layout.tensor_shape, rank=RANK, sweeps=SWEEPS, seed=0, n_test=1000)
    seconds = time.perf_counter() - started
    return {
        "kind": kind,
        "grid": list(source.shape),
        "voxels": source.size,
        "unique_voxels": source.stats.unique_voxels,
        "fraction": source.stats.unique_voxels / source.size,
        "tensor_entries": info.unique_evaluations,
        "error": float(info.error.max()),
        "seconds": seconds,
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_mib": rss_before,
        "anon_rss_mib": anon_rss_mib(),
        "chunks_touched": source.stats.chunks_touched,
        "bytes_read": source.stats.bytes_read,
    }


def in_fresh_process(kind: str, side: int, path: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, str(side)] + ([path] if path else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_log(rows: list[dict]) -> tuple[float, float]:
    """Slope and R^2 of unique voxels against log2(voxels)."""
    x = np.log2([r["voxels"] for r in rows])
    y = np.array([r["unique_voxels"] for r in rows], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    return float(slope), float(r2)


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    print(
        "| volume | grid | voxels | unique voxels read | fraction | held-out error | peak RSS MiB | time s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        grid = "x".join(map(str, r["grid"]))
        print(
            f"| {r['kind']} | {grid} | {r['voxels']:.3g} | {r['unique_voxels']:,} | {r['fraction']:.2e} | "
            f"{r['error']:.3g} | {r['peak_rss_mib']:.0f} | {r['seconds']:.2f} |"
        )


def plot(series: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in series.items():
        x = [math.log2(r["voxels"]) for r in rows]
        ax[0].plot(x, [r["unique_voxels"] for r in rows], "o-", label=name)
        ax[1].semilogy(x, [r["fraction"] for r in rows], "o-", label=name)
    ax[0].set(xlabel="log2(voxels in the grid)", ylabel="unique voxels read", title=f"TT-cross, rank {RANK}")
    ax[1].set(xlabel="log2(voxels in the grid)", ylabel="fraction of the grid read")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nplot saved to {path}")


def write_big(folder: Path, side: int = 1024) -> tuple[Path, Path]:
    """A smooth 1024^3 uint8 volume as .npy (memory-map writes) and Zarr v3 (tensorstore), slab by slab."""
    import tensorstore as ts

    g = np.linspace(0.0, 1.0, side, dtype=np.float32)
    npy_path, zarr_path = folder / "big.npy", folder / "big.zarr"
    out = np.lib.format.open_memmap(npy_path, mode="w+", dtype=np.uint8, shape=(side,) * 3)
    store = ts.open(
        {
            "driver": "zarr3",
            "kvstore": {"driver": "file", "path": str(zarr_path)},
            "metadata": {
                "shape": [side] * 3,
                "data_type": "uint8",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [64, 64, 64]}},
                "codecs": [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1}}],
            },
        },
        create=True,
        delete_existing=True,
    ).result()
    step = 64
    for z0 in range(0, side, step):
        x = g[z0 : z0 + step, None, None]
        slab = (
            120
            + 60 * np.sin(6 * x) * np.cos(5 * g[None, :, None])
            + 50 * np.exp(-((g[None, None, :] - 0.5) ** 2) * 8)
        )
        slab = np.broadcast_to(slab, (len(x), side, side)).astype(np.uint8)
        out[z0 : z0 + step] = slab
        store[z0 : z0 + step].write(slab).result()
        out.flush()
    del out
    return npy_path, zarr_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--max-side", type=int, default=4096, help="largest procedural side (default 4096)")
    parser.add_argument("--huge", action="store_true", help="also sides 2^13 ... 2^15")
    parser.add_argument("--ooc", action="store_true", help="the 1 GiB out-of-core proof (.npy and Zarr v3)")
    parser.add_argument("--ooc-only", action="store_true", help="only the out-of-core proof")
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--plot", type=Path, default=Path("docs/sampling_scale.png"), help="where to save the plot"
    )
    args = parser.parse_args()
    if args.one:
        kind, side, *path = args.one
        print(json.dumps(run_one(kind, int(side), path[0] if path else None)))
        return
    if args.write:
        write_big(args.write)
        return
    if not args.ooc_only:
        scaling(args)
    if args.ooc or args.ooc_only:
        out_of_core()


def scaling(args: argparse.Namespace) -> None:
    sides = [2**k for k in range(6, int(math.log2(args.max_side)) + 1)]
    if args.huge:
        sides += [2**13, 2**14, 2**15]
    series = {}
    for kind in ("intensity", "features"):
        rows = [in_fresh_process(kind, side) for side in sides]
        slope, r2 = fit_log(rows)
        print_rows(f"{kind}: band-limited field, QTT rank {RANK}, {SWEEPS} sweeps", rows)
        print(f"\nunique voxels = {slope:,.0f} * log2(voxels) + c,  R^2 = {r2:.4f}")
        series[kind] = rows
    real = []
    for kind in ("colin27", "mni152"):
        try:
            real.append(in_fresh_process(kind, 0))
        except subprocess.CalledProcessError as err:
            print(f"\n{kind}: skipped ({err.stderr.strip().splitlines()[-1]})")
    if real:
        print_rows(f"real volumes, QTT rank {RANK}, {SWEEPS} sweeps", real)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(series, args.plot)


def out_of_core() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([sys.executable, __file__, "--write", tmp], check=True)  # keeps this process small
        print(f"\nwrote 1024^3 uint8 .npy and Zarr v3 in {time.perf_counter() - started:.0f} s")
        npy_path, zarr_path = Path(tmp) / "big.npy", Path(tmp) / "big.zarr"
        rows = [in_fresh_process("npy", 1024, str(npy_path)), in_fresh_process("zarr", 1024, str(zarr_path))]
    print_rows("out of core: 1024^3 uint8 (1 GiB) on disk", rows)
    for r in rows:
        print(
            f"{r['kind']}: peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(after imports {r['rss_before_mib']:.0f} MiB, "
            f"anonymous {r['anon_rss_mib']:.0f} MiB); {100 * r['fraction']:.4f}% of voxels read; "
            f"{r['chunks_touched']:,} chunks/pages touched, {r['bytes_read'] / 2**20:.1f} MiB fetched"
        )


if __name__ == "__main__":
    main()
