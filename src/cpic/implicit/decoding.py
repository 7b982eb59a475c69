"""Decoding a compressed volume: any voxels, any box slab by slab, and writing it out
(``.npy``, NIfTI in the source's frame, or a Zarr array written slab by slab in bounded memory)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from cpic.implicit.files import CompressedVolume, load_compressed
from cpic.implicit.refine import decode_lattice, finest_lattice
from cpic.sources import SpatialInfo
from cpic.util import atomic_path
from cpic.util.checks import check_int
from cpic.util.outputs import temp_sibling
from cpic.util.progress import progress as progress_bar

#: voxels decoded per slab unless told otherwise
CHUNK = 1 << 20
SUFFIXES = (".npy", ".nii", ".nii.gz", ".zarr")


def _volume(file: str | Path | CompressedVolume, device="cpu") -> CompressedVolume:
    return file if isinstance(file, CompressedVolume) else load_compressed(file, device)


def _original_units(volume: CompressedVolume, values: torch.Tensor) -> torch.Tensor:
    norm = volume.normalization
    return values * (norm["high"] - norm["low"] if norm["high"] != norm["low"] else 1.0) + norm["low"]


def normalised(volume: CompressedVolume, values: torch.Tensor) -> torch.Tensor:
    """``values`` in the source's units mapped by the stored normalisation (about 0..1).

    Example:
        >>> volume = CompressedVolume("lattice", {"normalization": {"low": 10.0, "high": 20.0}})
        >>> normalised(volume, torch.tensor([10.0, 15.0])).tolist()
        [0.0, 0.5]
    """
    norm = volume.normalization
    return (values - norm["low"]) / (norm["high"] - norm["low"] if norm["high"] != norm["low"] else 1.0)


def decode_box(
    volume: CompressedVolume, box: list[tuple[int, int]], normalized: bool = False
) -> torch.Tensor:
    """The float32 voxels of ``box`` ``[(lo, hi), ...]``, in the source's units unless ``normalized``.

    Example:
        >>> import cpic
        >>> from cpic.implicit import compress
        >>> volume = compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=40).volume
        >>> decode_box(volume, [(0, 8), (2, 4), (5, 6)]).shape
        torch.Size([8, 2, 1])
    """
    if volume.method == "implicit":
        axes = [torch.arange(lo, hi) for lo, hi in box]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(box))
        with torch.no_grad():
            out = volume.model.query(volume.latent, coords[None])[0].cpu().reshape([len(a) for a in axes])
        return out if normalized else _original_units(volume, out)
    if volume._finest is None:
        volume._finest = finest_lattice(volume.reads)
    out = decode_lattice(volume.reads, box, finest=volume._finest)
    return normalised(volume, out) if normalized else out


def slabs(box: list[tuple[int, int]], chunk: int = CHUNK) -> Iterator[list[tuple[int, int]]]:
    """``box`` cut along axis 0 into slabs of about ``chunk`` voxels (at least one plane).

    Example:
        >>> list(slabs([(0, 4), (0, 2)], chunk=4))
        [[(0, 2), (0, 2)], [(2, 4), (0, 2)]]
    """
    check_int("chunk", chunk)
    rows = max(1, chunk // math.prod(hi - lo for lo, hi in box[1:]))
    for start in range(box[0][0], box[0][1], rows):
        yield [(start, min(start + rows, box[0][1])), *box[1:]]


def values_at(volume: CompressedVolume, coords: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Decoded values (source units) at the voxel coordinates ``coords [K, 3]``.

    Example:
        >>> import cpic
        >>> from cpic.implicit import compress
        >>> volume = compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=40).volume
        >>> values_at(volume, torch.tensor([[1, 2, 3]])).shape
        torch.Size([1])
    """
    if not len(coords):
        return torch.empty(0)
    if volume.method == "implicit":
        with torch.no_grad():
            return _original_units(volume, volume.model.query(volume.latent, coords[None])[0].cpu())
    out = torch.empty(len(coords))
    for box in slabs([(0, n) for n in volume.grid], chunk):
        (lo, hi) = box[0]
        inside = (coords[:, 0] >= lo) & (coords[:, 0] < hi)
        if inside.any():
            c = coords[inside]
            out[inside] = decode_box(volume, box)[c[:, 0] - lo, c[:, 1], c[:, 2]]
    return out


def reconstruct(
    file: str | Path | CompressedVolume,
    box: list[tuple[int, int]] | None = None,
    *,
    normalized: bool = False,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """The voxels of ``box`` (default: the whole grid) of a compressed volume (a path or
    :func:`~cpic.implicit.load_compressed`'s result), in the source's units unless ``normalized``.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import compress, save_compressed
        >>> volume = compress(cpic.open_volume(torch.rand(8, 8, 8) * 100), budget=40).volume
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_compressed(f"{d}/v.cpic", volume)
        ...     reconstruct(f"{d}/v.cpic", [(0, 8), (0, 8), (3, 4)]).shape
        torch.Size([8, 8, 1])
    """
    volume = _volume(file, device)
    return decode_box(volume, [(0, n) for n in volume.grid] if box is None else box, normalized)


def check_output(output: str) -> None:
    """A clear error unless ``output`` ends in a suffix :func:`write_reconstruction` writes and
    its format's package is installed.

    Example:
        >>> check_output("brain.png")
        Traceback (most recent call last):
        ...
        ValueError: -o must end in .npy, .nii, .nii.gz or .zarr, got 'brain.png'.
    """
    lower = output.lower().rstrip("/")
    if not lower.endswith(SUFFIXES):
        raise ValueError(f"-o must end in .npy, .nii, .nii.gz or .zarr, got {output!r}.")
    for suffix, package in (((".nii", ".nii.gz"), "nibabel"), ((".zarr",), "tensorstore")):
        if lower.endswith(suffix):
            try:
                __import__(package)
            except ImportError:
                raise ValueError(f"writing {suffix[0]} needs {package}: pip install 'cpic[io]'.") from None


def write_reconstruction(
    volume: CompressedVolume,
    output: str,
    box: list[tuple[int, int]],
    *,
    squeeze: int | None = None,
    normalized: bool = False,
    chunk: int = CHUNK,
    progress: bool = False,
) -> dict:
    """Decode ``box`` slab by slab into ``output`` (by suffix, replaced atomically): ``.npy``
    (axis ``squeeze`` dropped, for a slice), ``.nii``/``.nii.gz`` in the source's frame shifted to
    the box, or a float32 Zarr v2 array (chunks of at most 64 voxels an axis; memory bounded by
    ``chunk``). Returns the min and max decoded.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import compress
        >>> volume = compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=40).volume
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_reconstruction(volume, f"{d}/b.npy", [(0, 8), (3, 4), (0, 8)], squeeze=1)
        ...     np.load(f"{d}/b.npy").shape
        (8, 8)
    """
    check_output(output)
    shape = [hi - lo for lo, hi in box]
    lower = output.lower().rstrip("/")
    spatial: SpatialInfo = volume.spatial.resampled((1, 1, 1), [lo for lo, _ in box])
    low, high = math.inf, -math.inf
    pieces = list(slabs(box, chunk))
    with (_folder_in_place if lower.endswith(".zarr") else atomic_path)(output) as temp:
        if lower.endswith(".zarr"):
            store = _zarr(temp, shape)
        else:
            array = np.empty(shape, np.float32)
        for piece in progress_bar(pieces, progress, "decode", total=len(pieces)):
            block = decode_box(volume, piece, normalized).numpy()
            low, high = min(low, float(block.min())), max(high, float(block.max()))
            rows = slice(piece[0][0] - box[0][0], piece[0][1] - box[0][0])
            if lower.endswith(".zarr"):
                store[rows].write(block).result()
            else:
                array[rows] = block
        if lower.endswith(".npy"):
            np.save(temp, array.squeeze(squeeze) if squeeze is not None else array)
        elif not lower.endswith(".zarr"):
            import nibabel as nib

            nib.save(spatial.nifti_image(array), temp)
    return {"min": low, "max": high}


@contextlib.contextmanager
def _folder_in_place(final: str) -> Iterator[Path]:
    """A hidden sibling folder to write, renamed onto ``final`` when done (an earlier ``final``
    is moved aside first and removed after); removed if the block fails."""
    final_path = Path(final.rstrip("/"))
    temp, old = temp_sibling(final_path), temp_sibling(final_path)
    try:
        yield temp
        if final_path.exists():
            os.replace(final_path, old)
        os.replace(temp, final_path)
    finally:
        for leftover in (temp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def _zarr(path: Path, shape: list[int]):
    import tensorstore as ts

    chunks = [min(n, 64) for n in shape]
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)},
            "metadata": {"shape": shape, "chunks": chunks, "dtype": "<f4"}, "create": True}  # fmt: skip
    return ts.open(spec).result()
