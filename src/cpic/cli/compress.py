"""``cpic compress`` and ``cpic reconstruct``: one volume from a read budget, in one file.

``compress`` is :func:`cpic.implicit.compress` + :func:`cpic.implicit.save_compressed`;
``reconstruct`` is :func:`cpic.implicit.load_compressed` + :func:`cpic.implicit.write_reconstruction`,
from that file alone: the source volume is not needed (but ``--figure`` compares with it when it
is still there).
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
    device_of,
    emit,
    fail,
    memory_budget_option,
    positive_int,
    read_budget_type,
    subparser,
)
from cpic.sources import open_volume
from cpic.util.outputs import check_writable, refuse_inputs
from cpic.util.progress import shows_progress
from cpic.util.units import human_bytes


def register(commands) -> None:
    """``cpic compress`` and ``cpic reconstruct``."""
    _register_compress(commands)
    _register_reconstruct(commands)


def read_budget_arg(text: str) -> int | float:
    """``"0.5%"`` -> 0.005 (a fraction of the voxels), ``"20000"`` -> 20000 voxels; checked as
    every command's ``--read-budget`` (:func:`cpic.cli.common.read_budget_type`).

    Example:
        >>> read_budget_arg("0.5%"), read_budget_arg("20000")
        (0.005, 20000)
    """
    raw = read_budget_type(text)
    return float(raw[:-1]) / 100 if raw.endswith("%") else int(float(raw))


def _register_compress(commands) -> None:
    p = subparser(
        commands,
        "compress",
        help="store one volume from a small fraction of its voxels, measured against interpolation",
        description=(
            "Read a budget of voxels of one volume and store what reconstructs it: 'refine' reads a "
            "coarse lattice, then the nodes of the finer lattice where the coarse one predicts them "
            "least surely (cubic and linear predictions apart, corner values spread), and decodes by "
            "cubic splines level by level; 'lattice' reads a regular lattice (cubic splines); 'auto' "
            "(default) reads every 2nd-4th node of that regular lattice first and, where the "
            "differences between its neighbours are heavy-tailed (kurtosis above "
            f"{implicit.EDGE_KURTOSIS:g}: edges), refines; else (a smooth field) reads the rest of the "
            "lattice, so that nothing is read twice; 'implicit' fits a neural implicit model on the "
            "voxels its cross pivots read "
            "(--rank, --features, --steps). Every run prints held-out PSNR on voxels never read "
            "(peak: the 0.5-99.5 percentile spread of their values), a foreground PSNR (voxels above "
            "an Otsu threshold) and the same figures for cubic interpolation of a regular lattice "
            "reading at most as many voxels."
        ),
        example="cpic compress brain.nii.gz -o brain.cpic --read-budget 0.5%",
    )
    p.add_argument("volume", metavar="VOLUME", help="a volume: .npy, .nii/.nii.gz, .zarr, .h5:/dataset, .tif")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the compressed volume (one file)")
    p.add_argument("--method", choices=implicit.COMPRESS_METHODS, default=implicit.DEFAULT_METHOD,
                   help=f"how to read and decode (default {implicit.DEFAULT_METHOD})")  # fmt: skip
    p.add_argument("--read-budget", type=read_budget_arg, default=implicit.DEFAULT_BUDGET, metavar="B",
                   help=f"voxels to read: a percentage (0.5%%) or a count (default "
                   f"{100 * implicit.DEFAULT_BUDGET:g}%%; auto, refine and lattice)")  # fmt: skip
    implicit_flags = (("rank", "TT rank of the latent", 12), ("features", "latent features per voxel", 16),
                      ("steps", "training steps", 300))  # fmt: skip
    for name, what, value in implicit_flags:
        p.add_argument(
            f"--{name}", type=positive_int, default=value, help=f"implicit: {what} (default {value})"
        )
    p.add_argument("--memory-budget", **memory_budget_option("to start a step (implicit)"))
    add_common(p)
    p.set_defaults(handler=run_compress)


def _register_reconstruct(commands) -> None:
    p = subparser(
        commands,
        "reconstruct",
        help="decode a volume, a region or a slice from a compress FILE (no source volume)",
        description=(
            "Decode intensities from the file 'cpic compress' wrote: the whole volume, a region or one "
            "slice, to .npy, NIfTI in the source's frame (needs nibabel) or a Zarr array decoded slab "
            "by slab (needs tensorstore), and/or a PNG of slices of the source (when it can still be "
            "read), the reconstruction and their difference. A --slice is written to .npy as a 2-D "
            "array, to NIfTI and Zarr as a one-voxel-thick volume."
        ),
        example="cpic reconstruct brain.cpic -o brain_decoded.nii.gz --figure brain.png",
    )
    p.add_argument("file", metavar="FILE", help="what 'cpic compress -o FILE' wrote")
    p.add_argument(
        "-o", "--output", metavar="OUT", help="write the decoded voxels: OUT.npy, .nii, .nii.gz, .zarr"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--slice", metavar="AXIS:INDEX", help="one slice, e.g. 2:90 or z:90")
    where.add_argument("--region", metavar="X0:X1,Y0:Y1,Z0:Z1", help="a box, e.g. 0:64,:,10:20")
    p.add_argument("--figure", metavar="PNG", help="save a figure of the slice (else of three mid slices)")
    p.add_argument(
        "--normalized",
        action="store_true",
        help="map values by the stored 0.5-99.5 percentiles to about [0, 1] (default: original units)",
    )
    p.add_argument("--chunk", type=positive_int, default=implicit.CHUNK,
                   help=f"voxels decoded per slab (default {implicit.CHUNK})")  # fmt: skip
    add_common(p, seed=False)
    p.set_defaults(handler=run_reconstruct)


# ------------------------------------------------------------------ compress
def run_compress(args: argparse.Namespace) -> int:
    check_writable([args.output], "compressed volume (-o)")
    refuse_inputs([args.output], [args.volume], "-o", args.overwrite)
    device = device_of(args)
    src = open_volume(args.volume, ndim=3)
    settings = {}
    if args.method == "implicit":
        settings = {"rank": args.rank, "features": args.features, "steps": args.steps,
                    "device": device, "memory_budget": args.memory_budget,
                    "progress": shows_progress(args)}  # fmt: skip
    try:
        result = implicit.compress(
            src, method=args.method, budget=args.read_budget, seed=args.seed, **settings
        )
    except implicit.RefusedToStart as err:
        return fail("compress", f"refused before starting: {err}", EXIT_FAILED)
    except implicit.FIT_FAILURES as err:
        return fail("compress", f"the fit failed: {err}", EXIT_FAILED)
    result.volume.meta["provenance"] = {"volume": str(args.volume), **{k: v for k, v in settings.items()
                                        if k in ("rank", "features", "steps")}}  # fmt: skip
    size = implicit.save_compressed(args.output, result.volume)
    summary = _compress_summary(args, src, result, size)
    emit(args, summary, _compress_lines(summary))
    return 0


def _compress_summary(args, src, result: implicit.CompressResult, size: int) -> dict:
    volume_bytes = src.size * src.itemsize
    path = Path(str(args.volume))
    return {
        "volume": str(args.volume),
        "output": str(args.output),
        "method": result.volume.method,
        "choice": result.volume.meta.get("choice"),
        "grid": list(src.shape),
        "dtype": str(src.dtype),
        "normalization": result.volume.normalization,
        "voxels": src.size,
        "voxels_read": result.voxels_read,
        "fraction_read": result.fraction_read,
        "held_out": result.error,
        "baseline": result.baseline,
        "file_bytes": size,
        "volume_bytes": volume_bytes,
        "input_file_bytes": path.stat().st_size if path.is_file() else None,
        "compression": volume_bytes / size,
        "seconds": result.seconds,
    }


def _db(value) -> str:
    return "n/a" if value is None else f"{value:.2f} dB"


def _choice_text(choice: dict | None) -> str:
    if choice is None:
        return ""
    side = ">" if choice["chosen"] == "refine" else "<="
    return (f" (auto: pilot of {choice['pilot_voxels']:,} voxels, difference kurtosis "
            f"{choice['pilot_kurtosis']:.1f} {side} {choice['edge_kurtosis']:g})")  # fmt: skip


def _compress_lines(s: dict) -> list[str]:
    e, b, norm = s["held_out"], s["baseline"], s["normalization"]
    rel = "n/a" if e["relative_error"] is None else f"{e['relative_error']:.2e}"
    base_rel = "n/a" if b["relative_error"] is None else f"{b['relative_error']:.2e}"
    disk = "" if s["input_file_bytes"] is None else f", {human_bytes(s['input_file_bytes'])} on disk"
    peak = "n/a" if e["peak"] is None else f"{e['peak']:.4g}"
    return [
        f"cpic compress: {s['volume']} ({'x'.join(map(str, s['grid']))}, {s['dtype']}; values read span "
        f"{norm['low']:.4g}..{norm['high']:.4g} at the 0.5/99.5 percentiles)",
        f"  method               {s['method']}" + _choice_text(s["choice"]),
        f"  voxels read          {s['voxels_read']:,} of {s['voxels']:,} ({100 * s['fraction_read']:.3f}%)",
        f"  held-out PSNR        {_db(e['psnr_db'])}, foreground {_db(e['foreground_psnr_db'])}, "
        f"rel. error {rel} ({e['voxels']:,} voxels never read, {e['foreground_voxels']:,} foreground; "
        f"peak {peak})",
        f"  cubic lattice        {_db(b['psnr_db'])}, foreground {_db(b['foreground_psnr_db'])}, "
        f"rel. error {base_rel} (baseline: {b['voxels_read']:,} voxels read, same held-out voxels)",
        f"  file                 {human_bytes(s['file_bytes'])}; volume {human_bytes(s['volume_bytes'])} as "
        f"{s['dtype']}{disk} ({s['compression']:,.1f}x the file)",
        f"  time                 {s['seconds']:.1f} s",
        f"  wrote                {s['output']}",
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
        raise ValueError("nothing to do: give -o OUT (.npy, .nii, .nii.gz, .zarr) and/or --figure PNG.")
    if args.output:
        implicit.check_output(args.output)
    if args.figure and not args.figure.lower().endswith(".png"):
        raise ValueError(f"--figure must be a .png path, got {args.figure!r}.")
    if args.figure:
        figures.require_matplotlib()
    outputs = [p for p in (args.output, args.figure) if p]
    zarr = bool(args.output) and args.output.lower().rstrip("/").endswith(".zarr")
    check_writable(outputs[1:] if zarr else outputs)
    if zarr:
        check_writable(args.output, "Zarr output (-o)", folder=Path(args.output).is_dir())
    volume = implicit.load_compressed(args.file, device_of(args))
    inputs = [args.file, *filter(None, [volume.source_volume])]
    refuse_inputs(outputs, inputs, "-o/--figure", args.overwrite)
    shape = volume.grid
    cut = parse_slice(args.slice, shape) if args.slice else None
    box = parse_region(args.region, shape) if args.region else [(0, n) for n in shape]
    if cut is not None:
        box[cut[0]] = (cut[1], cut[1] + 1)
    started = time.perf_counter()
    if args.output:
        span = implicit.write_reconstruction(
            volume, args.output, box, squeeze=None if cut is None else cut[0], normalized=args.normalized,
            chunk=args.chunk, progress=shows_progress(args),
        )  # fmt: skip
    else:
        span = None
    source_read = False
    if args.figure:
        shown, source_read = _figure(args, volume, cut, box)
        span = span or shown
    seconds = time.perf_counter() - started
    summary = {
        "file": str(args.file),
        "method": volume.method,
        "grid": list(shape),
        "region": [list(b) for b in box],
        "slice": None if cut is None else list(cut),
        "voxels_decoded": int(torch.tensor([hi - lo for lo, hi in box]).prod()),
        "scale": "normalised" if args.normalized else "original",
        "normalization": volume.normalization,
        "min": span["min"],
        "max": span["max"],
        "output": args.output,
        "figure": args.figure,
        "figure_reads_source": source_read,
        "seconds": seconds,
    }
    emit(args, summary, _reconstruct_lines(summary))
    return 0


def _source_slices(volume, boxes, normalized: bool):
    """The source's voxels of ``boxes`` when its file can still be opened (uncounted), else ``None``."""
    try:
        src = open_volume(volume.source_volume, ndim=3)
    except (OSError, ValueError, TypeError):
        return None
    if tuple(src.shape) != volume.grid:
        return None
    blocks = []
    for box in boxes:
        axes = [torch.arange(lo, hi) for lo, hi in box]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        values = src.read(coords, normalize=False).float().reshape([len(a) for a in axes])
        blocks.append(implicit.normalised(volume, values) if normalized else values)
    return blocks


def _figure(args, volume, cut, box) -> dict:
    """Slices of the reconstruction (the slice, else three mid slices of the box), beside the
    source's and the difference when the source is there; returns the min and max shown and
    whether the source was read."""
    if cut is not None:
        boxes, axes = [box], [cut[0]]
    else:
        boxes, axes = [], [0, 1, 2]
        for axis in axes:
            mid = (box[axis][0] + box[axis][1]) // 2
            boxes.append([b if a != axis else (mid, mid + 1) for a, b in enumerate(box)])
    decoded = [
        implicit.decode_box(volume, b, args.normalized).select(a, 0).numpy() for b, a in zip(boxes, axes)
    ]
    source = None if volume.source_volume is None else _source_slices(volume, boxes, args.normalized)
    truth = None if source is None else [s.select(a, 0).numpy() for s, a in zip(source, axes)]
    titles = [f"axis {a} = {b[a][0]}" for a, b in zip(axes, boxes)]
    figures.reconstruction_slices(decoded, truth, titles, args.figure, f"{args.file} ({volume.method})")
    shown = {"min": float(min(d.min() for d in decoded)), "max": float(max(d.max() for d in decoded))}
    return shown, truth is not None


def _reconstruct_lines(s: dict) -> list[str]:
    what = (
        f"slice {s['slice'][1]} of axis {s['slice'][0]}"
        if s["slice"]
        else "region " + ",".join(f"{lo}:{hi}" for lo, hi in s["region"])
    )
    lines = [
        f"cpic reconstruct: {s['file']} ({s['method']}, {'x'.join(map(str, s['grid']))}), {what}",
        f"  voxels decoded       {s['voxels_decoded']:,} in {s['seconds']:.2f} s ("
        + ("the figure read the source's slices)" if s["figure_reads_source"] else "no source voxel read)"),
        f"  values               {s['min']:.4g} .. {s['max']:.4g} ({s['scale']} scale)",
    ]
    if s["output"]:
        lines.append(f"  wrote                {s['output']}")
    if s["figure"]:
        lines.append(f"  figure               {s['figure']}")
    return lines
