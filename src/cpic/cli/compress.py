"""``cpic compress`` and ``cpic reconstruct``: one volume as a C-PIC implicit representation.

``compress`` fits a :class:`cpic.nn.ImplicitVolume` (latent TT and voxel decoder) to one
volume, reading only the voxels at its cross pivots, and writes two files pairs:

- ``FILE.safetensors`` + ``FILE.json``: the model (encoder and decoder weights), a
  :func:`cpic.train.save_model` file whose provenance says ``kind="compressed-volume"``;
- ``FILE.latent.safetensors`` + ``FILE.latent.json``: the volume's latent TT cores
  (``core_0`` ... ``core_{d-1}``, each ``[r_k, n_k, r_{k+1}]``) as a
  :func:`cpic.train.save_checkpoint`, with the grid, the normalisation, the source's
  voxel-to-world frame (affine, NIfTI transform codes and units: what a NIfTI output of
  ``reconstruct`` carries) and the sha256 of the model's tensors, so that a latent is never
  decoded by another model.

``reconstruct`` decodes any voxel from those files alone: the source volume is not needed.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import torch

import cpic
from cpic.cli import figures
from cpic.cli.common import (
    EXIT_FAILED,
    add_common,
    device_of,
    emit,
    fail,
    memory_budget_option,
    subparser,
)
from cpic.nn import ImplicitVolume
from cpic.sources import SpatialInfo, VolumeSource, open_volume
from cpic.train import (
    CheckpointError,
    checkpoint_paths,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
)
from cpic.tt import TT
from cpic.util import atomic_path
from cpic.util.progress import progress, shows_progress

KIND = "compressed-volume"
LATENT_FORMAT, LATENT_VERSION = "cpic-latent", 1
#: random voxels (not read by the model) on which compress measures its error
HELD_OUT = 20_000
LR = 3e-3
#: what a failed fit raises: a singular or non-finite latent TT, or too little memory for its samples
FIT_FAILURES = (FloatingPointError, torch.linalg.LinAlgError, MemoryError)


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
    p.add_argument("--rank", type=int, default=12, help="TT rank of the latent (default 12)")
    p.add_argument("--features", type=int, default=16, help="latent features per voxel (default 16)")
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
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
    p.add_argument("--chunk", type=int, default=1 << 18, help="voxels decoded per query (default 262144)")
    add_common(p, seed=False)
    p.set_defaults(handler=run_reconstruct)


# ------------------------------------------------------------------ shared helpers
def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop returns


def latent_path(file: str | Path) -> Path:
    """The base name of the latent checkpoint next to the model file ``file``."""
    base = checkpoint_paths(file)[0].with_suffix("")
    return base.with_name(base.name + ".latent")


def _files(file: str | Path) -> list[Path]:
    """The four files of a compressed volume."""
    return [*checkpoint_paths(file), *checkpoint_paths(latent_path(file))]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"--{name} must be a positive integer, got {value}.")


# ------------------------------------------------------------------ compress
def run_compress(args: argparse.Namespace) -> int:
    for name in ("rank", "features", "steps"):
        _positive(name, getattr(args, name))
    device = device_of(args)
    src = open_volume(args.volume, normalize=None if args.normalize == "none" else args.normalize, ndim=3)
    if src.channels:
        raise ValueError(f"{args.volume}: has {src.channels} channels; compress takes one-channel volumes.")
    if min(src.shape) < 2:
        raise ValueError(f"{args.volume}: grid {src.shape} is too thin; compress needs 2+ voxels per axis.")
    torch.manual_seed(args.seed)
    model = ImplicitVolume(
        src.shape,
        features=args.features,
        patch=1,
        rank=args.rank,
        positions=True,
        seed=args.seed,
    ).to(device)
    model.memory_budget = args.memory_budget
    try:
        model.check_memory(1)
    except MemoryError as err:
        return fail("compress", f"refused before starting: {err}", EXIT_FAILED)
    started = time.perf_counter()
    try:
        _train(model, src, args)
        with torch.no_grad():
            latent = model.latent([src], keys=[src])
    except FIT_FAILURES as err:
        return fail("compress", f"the fit failed: {err}", EXIT_FAILED)
    seconds = time.perf_counter() - started
    fraction, unique = src.stats.fraction(src.size), src.stats.unique_voxels  # before the held-out reads
    error = held_out_error(model, latent, src, torch.from_numpy(src.stats.voxel_ids().copy()), args.seed)
    files = _save(model, latent, src, args)
    summary = _compress_summary(args, src, unique, fraction, error, files, seconds)
    emit(args, summary, _compress_lines(summary))
    return 0


def _train(model: cpic.CPIC, src: VolumeSource, args: argparse.Namespace) -> None:
    """``--steps`` AdamW steps on the voxels the pivots read, cosine learning rate, gradients clipped."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    bar = progress(range(args.steps), shows_progress(args), "compress")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        loss, _ = model.loss([src], keys=[src])
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss became {value} at step {step + 1}.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{value:.2e}", refresh=False)


def held_out_error(model: cpic.CPIC, latent: TT, src: VolumeSource, seen: torch.Tensor, seed: int) -> dict:
    """PSNR and relative error of the decoded intensities at up to ``HELD_OUT`` random voxels
    that were never read (``seen``: linear ids of every voxel read, training targets included)."""
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, src.size, (min(2 * HELD_OUT, 4 * src.size),), generator=gen).unique()
    ids = ids[~torch.isin(ids, seen.cpu())]
    ids = ids[torch.randperm(len(ids), generator=gen)[:HELD_OUT]]
    if not len(ids):
        return {"voxels": 0, "psnr_db": None, "relative_error": None}
    strides = torch.tensor([math.prod(src.shape[a + 1 :]) for a in range(src.ndim)])
    coords = ids[:, None] // strides % torch.tensor(src.shape)
    truth = src.read(coords).double()
    with torch.no_grad():
        pred = model.query(latent, coords[None])[0].double().cpu()
    mse = float((pred - truth).square().mean())
    # PSNR on the normalised scale (peak 1); without normalisation, peak = the values' range
    peak = 1.0 if src.normalization.method != "none" else float(truth.max() - truth.min()) or 1.0
    psnr = 10 * math.log10(peak**2 / mse) if mse > 0 else math.inf
    rel = float((pred - truth).norm() / truth.norm().clamp_min(1e-12))
    return {"voxels": len(ids), "psnr_db": psnr, "relative_error": rel}


def _save(model: cpic.CPIC, latent: TT, src: VolumeSource, args: argparse.Namespace) -> dict[str, int]:
    """Write the model and the latent checkpoint; returns ``{path: bytes}`` of the four files."""
    norm = src.normalization
    normalization = {"method": norm.method, "low": norm.low, "high": norm.high}
    model_st = save_model(
        model,
        args.output,
        volume=str(args.volume),
        normalize=args.normalize,
        kind=KIND,
        normalization=normalization,
        steps=args.steps,
    )
    cores = {f"core_{k}": core[0].detach().cpu() for k, core in enumerate(latent.cores)}
    meta = {
        "format": LATENT_FORMAT,
        "version": LATENT_VERSION,
        "kind": KIND,
        "grid": list(src.shape),
        "dtype": str(src.dtype),
        "normalization": normalization,
        "spatial": src.spatial.to_dict(),
        "ranks": list(latent.ranks),
        "model_sha256": _sha256(model_st),
    }
    save_checkpoint(latent_path(args.output), cores, meta)
    return {str(p): p.stat().st_size for p in _files(args.output)}


def _compress_summary(args, src, unique, fraction, error, files, seconds) -> dict:
    model_bytes = sum(list(files.values())[:2])
    total = sum(files.values())
    volume_bytes = src.size * src.itemsize
    path = Path(str(args.volume))
    on_disk = path.stat().st_size if path.is_file() else None
    return {
        "volume": str(args.volume),
        "output": str(checkpoint_paths(args.output)[0].with_suffix("")),
        "grid": list(src.shape),
        "dtype": str(src.dtype),
        "normalization": {
            "method": src.normalization.method,
            "low": src.normalization.low,
            "high": src.normalization.high,
        },
        "rank": args.rank,
        "features": args.features,
        "steps": args.steps,
        "voxels": src.size,
        "voxels_read": unique,
        "fraction_read": fraction,
        "held_out_voxels": error["voxels"],
        "held_out_psnr_db": error["psnr_db"],
        "held_out_relative_error": error["relative_error"],
        "files": files,
        "model_bytes": model_bytes,
        "latent_bytes": total - model_bytes,
        "file_bytes": total,
        "volume_bytes": volume_bytes,
        "input_file_bytes": on_disk,
        "compression": volume_bytes / total,
        "seconds": seconds,
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
def load_compressed(file: str | Path, device: torch.device) -> tuple[cpic.CPIC, TT, dict]:
    """The model, the latent TT and the latent's metadata of a ``cpic compress`` output."""
    if not checkpoint_paths(file)[1].exists():
        raise FileNotFoundError(
            f"{file}: no such compressed volume ({checkpoint_paths(file)[1]} is missing)."
        )
    model, meta = load_model(file, device=device)
    if meta.get("provenance", {}).get("kind") != KIND:
        raise CheckpointError(
            f"{file}: a cpic model, but not a compressed volume (written by 'cpic compress')."
        )
    tensors, latent_meta = load_checkpoint(latent_path(file), device=device)
    if latent_meta.get("format") != LATENT_FORMAT or latent_meta.get("version") != LATENT_VERSION:
        raise CheckpointError(f"{latent_path(file)}: not a cpic latent of version {LATENT_VERSION}.")
    if latent_meta.get("model_sha256") != _sha256(checkpoint_paths(file)[0]):
        raise CheckpointError(f"{latent_path(file)}: this latent was written with another model file.")
    dtype = next(model.parameters()).dtype
    for name, core in tensors.items():
        if core.dtype != dtype or not bool(torch.isfinite(core).all()):
            raise CheckpointError(
                f"{latent_path(file)}: core {name!r} must hold finite {dtype} values, got {core.dtype}"
                + ("" if core.dtype != dtype else " with NaN or Inf")
                + "."
            )
    try:
        latent = TT([tensors[f"core_{k}"][None] for k in range(len(tensors))])
    except (KeyError, ValueError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"{latent_path(file)}: the TT cores are inconsistent ({err}).") from None
    if latent.shape[:-1] != model.layout.tensor_shape[:-1]:
        raise CheckpointError(f"{latent_path(file)}: TT modes {latent.shape} do not fit the model's layout.")
    return model.eval(), latent, latent_meta


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


def decode(model: cpic.CPIC, latent: TT, box, chunk: int, args: argparse.Namespace) -> torch.Tensor:
    """Decoded intensities (normalised scale) of the box ``[(lo, hi), ...]``, slab by slab."""
    sizes = [hi - lo for lo, hi in box]
    out = torch.empty(sizes)
    plane = math.prod(sizes[1:])
    rows = max(1, chunk // plane)
    starts = range(0, sizes[0], rows)
    rest = [torch.arange(lo, hi) for lo, hi in box[1:]]
    with torch.no_grad():
        for start in progress(starts, shows_progress(args), "decode", total=len(starts)):
            first = torch.arange(box[0][0] + start, box[0][0] + min(start + rows, sizes[0]))
            coords = torch.stack(torch.meshgrid(first, *rest, indexing="ij"), -1).reshape(-1, len(box))
            values = model.query(latent, coords)[0].cpu()
            out[start : start + len(first)] = values.reshape(len(first), *sizes[1:])
    return out


def run_reconstruct(args: argparse.Namespace) -> int:
    if args.output is None and args.figure is None:
        raise ValueError("nothing to do: give -o OUT (.npy, .nii, .nii.gz) and/or --figure PNG.")
    _positive("chunk", args.chunk)
    writer = _writer(args.output) if args.output else None
    if args.figure and not args.figure.lower().endswith(".png"):
        raise ValueError(f"--figure must be a .png path, got {args.figure!r}.")
    if args.figure:
        figures.require_matplotlib()
    model, latent, meta = load_compressed(args.file, device_of(args))
    spatial = _spatial(args.file, meta)
    shape = tuple(meta["grid"])
    cut = parse_slice(args.slice, shape) if args.slice else None
    box = parse_region(args.region, shape) if args.region else [(0, n) for n in shape]
    if cut is not None:
        box[cut[0]] = (cut[1], cut[1] + 1)
    started = time.perf_counter()
    block = decode(model, latent, box, args.chunk, args)
    seconds = time.perf_counter() - started
    norm = meta["normalization"]
    if not args.normalized:
        block = block * (norm["high"] - norm["low"] if norm["high"] != norm["low"] else 1.0) + norm["low"]
    if writer is not None:
        writer(args.output, block, cut, spatial.resampled((1, 1, 1), [lo for lo, _ in box]))
    if args.figure:
        _figure(args, block, cut, box)
    summary = {
        "file": str(args.file),
        "grid": list(shape),
        "region": [list(b) for b in box],
        "slice": None if cut is None else list(cut),
        "voxels_decoded": block.numel(),
        "scale": "normalised" if args.normalized else "original",
        "normalization": norm,
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


def _writer(output: str):
    """The function writing ``output`` by its suffix; a clear error for others or without nibabel."""
    lower = output.lower()
    if lower.endswith(".npy"):
        return _write_npy
    if lower.endswith((".nii", ".nii.gz")):
        try:
            import nibabel  # noqa: F401
        except ImportError:
            raise ValueError("writing NIfTI needs nibabel: pip install 'cpic[io]', or write .npy.") from None
        return _write_nifti
    raise ValueError(f"-o must end in .npy, .nii or .nii.gz, got {output!r}.")


def _spatial(file: str, meta: dict) -> SpatialInfo:
    """The source's frame as compress recorded it; files without one (older) hold its affine."""
    try:
        if "spatial" in meta:
            return SpatialInfo.from_dict(meta["spatial"])
        return SpatialInfo(meta["affine"])  # nibabel's default codes, as these files were written
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"{latent_path(file)}: the recorded voxel-to-world frame is unusable ({err})."
        ) from None


def _write_npy(path: str, block: torch.Tensor, cut, spatial: SpatialInfo) -> None:
    array = block.numpy()
    with atomic_path(path) as temp:
        np.save(temp, array.squeeze(cut[0]) if cut is not None else array)


def _write_nifti(path: str, block: torch.Tensor, cut, spatial: SpatialInfo) -> None:
    """The block in the source's frame, its first voxel where it sat in the volume."""
    import nibabel as nib

    with atomic_path(path) as temp:
        nib.save(spatial.nifti_image(block.numpy().astype(np.float32)), temp)


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
