"""Training throughput of ``cpic train`` in 1 and 2 processes (torch.distributed, gloo, this machine).

A cohort of ``--count`` volumes of ``--side``^3 float32 is written as .npy files (memory-mapped
by the workers) or as sharded Zarr v3 (``--format zarr``, read through tensorstore). The same
``cpic train`` command runs with ``--nproc 1`` and ``--nproc 2`` (same seed, same global batch),
each ``--repeats`` times, alternating, and the table reports per configuration the median time of
an epoch after the first (the first selects every volume's pivots cold), volumes per second, the
speed-up over one process and the largest parameter difference between the two models.

Threads: one process runs with all cores' threads and with one thread; with ``--nproc 2`` each
worker gets ``cores / 2`` threads (OMP_NUM_THREADS, as the launcher sets by default). On a
loaded machine, several threads per process can be much slower than one (they wait for each
other), so the 1-thread row is the fair baseline there.

Run: ``python benchmarks/distributed.py [--count 32] [--side 32] [--epochs 4] [--repeats 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.torch import load_file


def write_cohort(root: Path, count: int, side: int, fmt: str) -> Path:
    """``count`` noisy balls of two sizes (label = size) and their manifest ``root/cohort.csv``."""
    rng = np.random.default_rng(0)
    grid = np.indices((side,) * 3, dtype=np.float32)
    rows = ["path,label"]
    for i in range(count):
        centre = side / 2 + rng.normal(scale=side / 16, size=3)
        radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        label = i % 2
        volume = (radius < side * (0.2 + 0.1 * label)).astype(np.float32)
        volume += 0.1 * rng.standard_normal(volume.shape, dtype=np.float32)
        name = f"v{i}.{'zarr' if fmt == 'zarr' else 'npy'}"
        if fmt == "zarr":
            write_zarr3_sharded(root / name, volume, chunk=min(16, side))
        else:
            np.save(root / name, volume)
        rows.append(f"{name},{label}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    return root / "cohort.csv"


def write_zarr3_sharded(path: Path, volume: np.ndarray, chunk: int = 32, shard: int | None = None) -> None:
    """``volume`` as Zarr v3: ``chunk``^3 chunks (the unit of a read) in shards of ``shard``^3
    (the unit of a file or object; default the whole volume), zstd-compressed."""
    import tensorstore as ts

    shard_shape = list(volume.shape) if shard is None else [shard] * volume.ndim
    codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}]
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(volume.shape),
            "data_type": str(volume.dtype),
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard_shape}},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {"chunk_shape": [chunk] * volume.ndim, "codecs": codecs},
                }
            ],
        },
    }
    ts.open(spec, create=True, delete_existing=True).result().write(volume).result()


def train(manifest: Path, out: Path, nproc: int, threads: int, args) -> dict:
    """One ``cpic train`` run; its JSON summary plus the wall time of the whole command."""
    command = [sys.executable, "-m", "cpic.cli.main", "train", str(manifest), "-o", str(out), "--json"]
    command += ["--val", "0", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)]
    command += ["--rank", str(args.rank), "--features", str(args.features), "--patch", str(args.patch)]
    command += ["--nproc", str(nproc), "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"cpic train --nproc {nproc} failed:\n{done.stderr}")
    summary = json.loads(done.stdout)
    summary["wall"] = time.perf_counter() - started
    return summary


def max_difference(a: Path, b: Path) -> float:
    first, second = load_file(f"{a}.safetensors"), load_file(f"{b}.safetensors")
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=32, help="volumes in the cohort")
    parser.add_argument("--side", type=int, default=32, help="volume side")
    parser.add_argument("--format", choices=("npy", "zarr"), default="npy")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=6)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--patch", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_cohort(root, args.count, args.side, args.format)
        configs = [(1, cores), (1, 1), (2, max(1, cores // 2))]
        runs: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
        for _ in range(args.repeats):
            for nproc, threads in configs:
                out = root / f"model{nproc}"
                runs[nproc, threads].append(train(manifest, out, nproc, threads, args))
        difference = max_difference(root / "model1", root / "model2")
    print(
        f"{args.count} volumes of {args.side}^3 ({args.format}), batch {args.batch_size}, rank {args.rank}, "
        f"{args.features} features, {args.patch}^3 patches, {args.epochs} epochs, {cores} cores, "
        f"{args.repeats} runs each"
    )
    print()
    print(
        "| processes | threads each | epoch (s) | volumes / s | vs 1 process, 1 thread "
        "| first epoch (s) | command (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(row["seconds"] for s in runs[1, 1] for row in s["history"][1:])
    for (nproc, threads), summaries in runs.items():
        epoch = statistics.median(row["seconds"] for s in summaries for row in s["history"][1:])
        first = statistics.median(s["history"][0]["seconds"] for s in summaries)
        wall = statistics.median(s["wall"] for s in summaries)
        print(
            f"| {nproc} | {threads} | {epoch:.3f} | {args.count / epoch:.1f} | {base / epoch:.2f}x "
            f"| {first:.3f} | {wall:.1f} |"
        )
    print()
    print(f"largest parameter difference between the 1- and 2-process models: {difference:.1e}")


if __name__ == "__main__":
    main()
