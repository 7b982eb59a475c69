"""``cpic compress`` and ``cpic reconstruct``: one volume as a C-PIC implicit representation.

``compress`` is :func:`cpic.implicit.compress` + :func:`cpic.implicit.save_compressed` (the
files are described there); ``reconstruct`` is :func:`cpic.implicit.load_compressed` +
:func:`cpic.implicit.reconstruct`, from those files alone: the source volume is not needed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cpic import implicit
from cpic.cli import figures
from cpic.cli.common import (
    EXIT_FAILED,
    add_common,
    default,
    device_of,
    emit,
    fail,
    memory_budget_option,
    subparser,
)
from cpic.sources import open_volume
from cpic.train import checkpoint_paths
from cpic.util.outputs import check_writable, refuse_inputs
from cpic.util.progress import shows_progress
from cpic.util.units import human_bytes


def register(commands) -> None:
    """``cpic compress`` and ``cpic reconstruct``."""
    _register_compress(commands)
    _register_reconstruct(commands)


def _register_compress(commands) -> None:
    p = subparser(
        commands,
        "compress",
        help="fit an implicit representation of one volume, reading a small fraction of it",
        description=(
            "Fit a C-PIC reconstruction model (encoder -> latent TT by cross -> decoder) to one volume, "
            "reading only the voxels at its cross pivots, and save the model plus the volume's latent "
            "TT. Intensities are learnt after normalisation (--normalize); reconstruct maps them back "
            "with the stored affine (low, high)."
        ),
        example="cpic compress brain.nii.gz -o brain.cpic --rank 12 --steps 300",
    )
    p.add_argument("volume", metavar="VOLUME", help="a volume: .npy, .nii/.nii.gz, .zarr, .h5:/dataset, .tif")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output base name (FILE.* files)")
    for name, what in (("rank", "TT rank of the latent"), ("features", "latent features per voxel"),
                       ("steps", "training steps")):  # fmt: skip
        value = default(implicit.compress, name)
        p.add_argument(f"--{name}", type=int, default=value, help=f"{what} (default {value})")
    p.add_argument("--memory-budget", **memory_budget_option("to start a step"))
    p.add_argument(
        "--normalize",
        choices=("range", "percentile", "none"),
        default="range",
        help="intensity normalisation before fitting (default range)",
    )
    add_common(p)
    p.set_defaults(handler=run_compress)


def _register_reconstruct(commands) -> None:
    p = subparser(
        commands,
        "reconstruct",
        help="decode a volume, a region or a slice from a compress FILE (no source volume)",
        description=(
            "Decode intensities from the files 'cpic compress' wrote (FILE.* and FILE.latent.*): the "
            "whole volume, a region or one slice, to .npy or NIfTI (needs nibabel), and/or a PNG of a "
            "slice. A --slice is written to .npy as a 2-D array, to NIfTI as a one-voxel-thick volume."
        ),
        example="cpic reconstruct brain.cpic -o brain_decoded.nii.gz --figure brain.png",
    )
    p.add_argument("file", metavar="FILE", help="what 'cpic compress -o FILE' wrote")
    p.add_argument("-o", "--output", metavar="OUT", help="write the decoded voxels: OUT.npy, .nii or .nii.gz")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--slice", metavar="AXIS:INDEX", help="one slice, e.g. 2:90 or z:90")
    where.add_argument("--region", metavar="X0:X1,Y0:Y1,Z0:Z1", help="a box, e.g. 0:64,:,10:20")
    p.add_argument("--figure", metavar="PNG", help="save a figure of the slice (else of three mid slices)")
    p.add_argument(
        "--normalized",
        action="store_true",
        help="keep the model's normalised scale (default: original units)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=implicit.CHUNK,
        help=f"voxels decoded per query (default {implicit.CHUNK})",
    )
    add_common(p, seed=False)
    p.set_defaults(handler=run_reconstruct)


# ------------------------------------------------------------------ compress
def run_compress(args: argparse.Namespace) -> int:
    outputs = implicit.compressed_files(args.output)
    check_writable(outputs, "compressed volume (-o)")
    refuse_inputs(outputs, [args.volume], "-o", args.overwrite)
    device = device_of(args)
    src = open_volume(args.volume, normalize=None if args.normalize == "none" else args.normalize, ndim=3)
    try:
        result = implicit.compress(
            src,
            rank=args.rank,
            features=args.features,
            steps=args.steps,
            seed=args.seed,
            device=device,
            memory_budget=args.memory_budget,
            progress=shows_progress(args),
        )
    except implicit.RefusedToStart as err:
        return fail("compress", f"refused before starting: {err}", EXIT_FAILED)
    except implicit.FIT_FAILURES as err:
        return fail("compress", f"the fit failed: {err}", EXIT_FAILED)
    files = implicit.save_compressed(
        args.output,
        result.model,
        result.latent,
        src,
        volume=str(args.volume),
        normalize=args.normalize,
        steps=args.steps,
    )
    summary = _compress_summary(args, src, result, files)
    emit(args, summary, _compress_lines(summary))
    return 0


def _compress_summary(args, src, result: implicit.CompressResult, files: dict[str, int]) -> dict:
    model_bytes = sum(list(files.values())[:2])
    total = sum(files.values())
    volume_bytes = src.size * src.itemsize
    path = Path(str(args.volume))
    on_disk = path.stat().st_size if path.is_file() else None
    norm = src.normalization
    return {
        "volume": str(args.volume),
        "output": str(checkpoint_paths(args.output)[0].with_suffix("")),
        "grid": list(src.shape),
        "dtype": str(src.dtype),
        "normalization": {"method": norm.method, "low": norm.low, "high": norm.high},
        "rank": args.rank,
        "features": args.features,
        "steps": args.steps,
        "voxels": src.size,
        "voxels_read": result.voxels_read,
        "fraction_read": result.fraction_read,
        "held_out_voxels": result.error["voxels"],
        "held_out_psnr_db": result.error["psnr_db"],
        "held_out_relative_error": result.error["relative_error"],
        "files": files,
        "model_bytes": model_bytes,
        "latent_bytes": total - model_bytes,
        "file_bytes": total,
        "volume_bytes": volume_bytes,
        "input_file_bytes": on_disk,
        "compression": volume_bytes / total,
        "seconds": result.seconds,
    }


def _compress_lines(s: dict) -> list[str]:
    norm = s["normalization"]
    psnr = "n/a" if s["held_out_psnr_db"] is None else f"{s['held_out_psnr_db']:.1f} dB"
    rel = "n/a" if s["held_out_relative_error"] is None else f"{s['held_out_relative_error']:.2e}"
    peak = "normalised, peak 1" if norm["method"] != "none" else "peak = value range"
    disk = "" if s["input_file_bytes"] is None else f", {human_bytes(s['input_file_bytes'])} on disk"
    return [
        f"cpic compress: {s['volume']} ({'x'.join(map(str, s['grid']))}, {s['dtype']}, "
        f"normalize={norm['method']} [{norm['low']:.4g}, {norm['high']:.4g}])",
        f"  voxels read          {s['voxels_read']:,} of {s['voxels']:,} ({100 * s['fraction_read']:.2f}%)",
        f"  held-out PSNR        {psnr} on {s['held_out_voxels']:,} voxels not trained on ({peak})",
        f"  held-out rel. error  {rel}",
        f"  model file           {human_bytes(s['model_bytes'])} (encoder + decoder weights)",
        f"  latent file          {human_bytes(s['latent_bytes'])} (TT cores, ranks <= {s['rank']})",
        f"  volume               {human_bytes(s['volume_bytes'])} as {s['dtype']}{disk} "
        f"({s['compression']:,.1f}x the files)",
        f"  time                 {s['seconds']:.1f} s ({s['steps']} steps)",
        f"  wrote                {s['output']}.{{safetensors,json}} and {s['output']}.latent.*",
    ]


# ------------------------------------------------------------------ reconstruct
def parse_slice(text: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """``"z:90"`` or ``"2:90"`` -> ``(axis, index)``; negative indices count from the end."""
    axis, sep, index = text.partition(":")
    axis = {"x": "0", "y": "1", "z": "2"}.get(axis.strip().lower(), axis.strip())
    if not sep or not axis.isdigit() or not index.strip().lstrip("-").isdigit():
        raise ValueError(f"--slice must be AXIS:INDEX, e.g. 2:90 or z:90, got {text!r}.")
    a, i = int(axis), int(index)
    if a >= len(shape):
        raise ValueError(f"--slice axis {a} does not exist in a {len(shape)}-D grid {shape}.")
    if not -shape[a] <= i < shape[a]:
        raise ValueError(f"--slice index {i} is outside 0..{shape[a] - 1} on axis {a}.")
    return a, i % shape[a]


def parse_region(text: str, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """``"0:64,:,10:20"`` -> ``[(0, 64), (0, n1), (10, 20)]`` (empty bounds: the whole axis)."""
    parts = text.split(",")
    if len(parts) != len(shape):
        raise ValueError(f"--region needs {len(shape)} ranges like 0:64,:,10:20, got {text!r}.")
    box = []
    for axis, (part, n) in enumerate(zip(parts, shape)):
        lo, sep, hi = part.partition(":")
        try:
            lo, hi = int(lo) if lo.strip() else 0, int(hi) if hi.strip() else n
        except ValueError:
            raise ValueError(f"--region range {part!r} must be START:STOP integers.") from None
        if not sep or not 0 <= lo < hi <= n:
            raise ValueError(f"--region range {part!r} on axis {axis} must satisfy 0 <= START < STOP <= {n}.")
        box.append((lo, hi))
    return box


def run_reconstruct(args: argparse.Namespace) -> int:
    if args.output is None and args.figure is None:
        raise ValueError("nothing to do: give -o OUT (.npy, .nii, .nii.gz) and/or --figure PNG.")
    writer = implicit.block_writer(args.output) if args.output else None
    if args.figure and not args.figure.lower().endswith(".png"):
        raise ValueError(f"--figure must be a .png path, got {args.figure!r}.")
    if args.figure:
        figures.require_matplotlib()
    outputs = [p for p in (args.output, args.figure) if p]
    check_writable(outputs)
    volume = implicit.load_compressed(args.file, device_of(args))
    inputs = [*implicit.compressed_files(args.file), *filter(None, [volume.source_volume])]
    refuse_inputs(outputs, inputs, "-o/--figure", args.overwrite)
    spatial = volume.spatial
    shape = volume.grid
    cut = parse_slice(args.slice, shape) if args.slice else None
    box = parse_region(args.region, shape) if args.region else [(0, n) for n in shape]
    if cut is not None:
        box[cut[0]] = (cut[1], cut[1] + 1)
    started = time.perf_counter()
    block = implicit.reconstruct(
        volume, box, chunk=args.chunk, normalized=args.normalized, progress=shows_progress(args)
    )
    seconds = time.perf_counter() - started
    if writer is not None:
        writer(
            args.output,
            block,
            spatial.resampled((1, 1, 1), [lo for lo, _ in box]),
            None if cut is None else cut[0],
        )
    if args.figure:
        _figure(args, block, cut, box)
    summary = {
        "file": str(args.file),
        "grid": list(shape),
        "region": [list(b) for b in box],
        "slice": None if cut is None else list(cut),
        "voxels_decoded": block.numel(),
        "scale": "normalised" if args.normalized else "original",
        "normalization": volume.normalization,
        "min": float(block.min()),
        "max": float(block.max()),
        "output": args.output,
        "figure": args.figure,
        "seconds": seconds,
    }
    emit(args, summary, _reconstruct_lines(summary))
    return 0


def _figure(args, block: torch.Tensor, cut, box) -> None:
    where = ", ".join(f"{lo}:{hi}" for lo, hi in box)
    if cut is not None:
        image = block.select(cut[0], 0)
        figures.slice_figure(image.numpy(), args.figure, f"{args.file}: axis {cut[0]} = {cut[1]}")
    else:
        figures.orthogonal_slices([block.numpy()], args.figure, [f"{args.file} [{where}]"])


def _reconstruct_lines(s: dict) -> list[str]:
    what = (
        f"slice {s['slice'][1]} of axis {s['slice'][0]}"
        if s["slice"]
        else "region " + ",".join(f"{lo}:{hi}" for lo, hi in s["region"])
    )
    lines = [
        f"cpic reconstruct: {s['file']} ({'x'.join(map(str, s['grid']))}), {what}",
        f"  voxels decoded       {s['voxels_decoded']:,} in {s['seconds']:.2f} s (no source voxel read)",
        f"  values               {s['min']:.4g} .. {s['max']:.4g} ({s['scale']} scale)",
    ]
    if s["output"]:
        lines.append(f"  wrote                {s['output']}")
    if s["figure"]:
        lines.append(f"  figure               {s['figure']}")
    return lines
