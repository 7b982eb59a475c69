"""Decoding a compressed volume: any box of voxels, slab by slab, and writing it out."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from cpic.implicit.files import CompressedVolume, load_compressed
from cpic.nn import ImplicitVolume
from cpic.sources import SpatialInfo
from cpic.tt import TT
from cpic.util import atomic_path
from cpic.util.progress import progress as progress_bar

#: voxels decoded per query unless told otherwise
CHUNK = 1 << 18


def decode(
    model: ImplicitVolume, latent: TT, box: list[tuple[int, int]], chunk: int = CHUNK, progress: bool = False
) -> torch.Tensor:
    """Decoded intensities (normalised scale) of the box ``[(lo, hi), ...]``, slab by slab of
    about ``chunk`` voxels.

    Example:
        >>> import cpic
        >>> from cpic.implicit import reconstruction_model
        >>> src = cpic.open_volume(torch.rand(8, 8, 8), normalize="range")
        >>> model = reconstruction_model(src.shape, rank=2, features=2)
        >>> latent = model.latent([src], keys=[src]).detach()
        >>> decode(model, latent, [(0, 8), (2, 4), (5, 6)], chunk=4).shape
        torch.Size([8, 2, 1])
    """
    if chunk < 1:
        raise ValueError(f"--chunk must be a positive integer, got {chunk}.")
    sizes = [hi - lo for lo, hi in box]
    out = torch.empty(sizes)
    plane = math.prod(sizes[1:])
    rows = max(1, chunk // plane)
    starts = range(0, sizes[0], rows)
    rest = [torch.arange(lo, hi) for lo, hi in box[1:]]
    with torch.no_grad():
        for start in progress_bar(starts, progress, "decode", total=len(starts)):
            first = torch.arange(box[0][0] + start, box[0][0] + min(start + rows, sizes[0]))
            coords = torch.stack(torch.meshgrid(first, *rest, indexing="ij"), -1).reshape(-1, len(box))
            values = model.query(latent, coords)[0].cpu()
            out[start : start + len(first)] = values.reshape(len(first), *sizes[1:])
    return out


def reconstruct(
    file: str | Path | CompressedVolume,
    box: list[tuple[int, int]] | None = None,
    *,
    chunk: int = CHUNK,
    normalized: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """The voxels of ``box`` (default: the whole grid) of a compressed volume (a path or
    :func:`~cpic.implicit.load_compressed`'s result), in the source's units unless ``normalized``.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.implicit import reconstruction_model, save_compressed
        >>> src = cpic.open_volume(torch.rand(8, 8, 8) * 100, normalize="range")
        >>> model = reconstruction_model(src.shape, rank=2, features=2)
        >>> latent = model.latent([src], keys=[src]).detach()
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_compressed(f"{d}/v", model, latent, src)
        ...     reconstruct(f"{d}/v", [(0, 8), (0, 8), (3, 4)]).shape
        torch.Size([8, 8, 1])
    """
    volume = file if isinstance(file, CompressedVolume) else load_compressed(file, device)
    box = [(0, n) for n in volume.grid] if box is None else box
    block = decode(volume.model, volume.latent, box, chunk, progress)
    if normalized:
        return block
    norm = volume.normalization
    return block * (norm["high"] - norm["low"] if norm["high"] != norm["low"] else 1.0) + norm["low"]


def block_writer(output: str):
    """The function ``write(path, block, spatial, squeeze)`` that writes a decoded ``block`` to
    ``output`` by its suffix, atomically: ``.npy`` (axis ``squeeze`` dropped, for a slice), or
    ``.nii``/``.nii.gz`` in the ``spatial`` frame of the block's first voxel; a clear error for
    other suffixes or, for NIfTI, without nibabel.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     write = block_writer(f"{d}/b.npy")
        ...     write(f"{d}/b.npy", torch.zeros(2, 1, 3), SpatialInfo.from_spacing((1, 1, 1)), 1)
        ...     np.load(f"{d}/b.npy").shape
        (2, 3)
    """
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


def _write_npy(path: str, block: torch.Tensor, spatial: SpatialInfo, squeeze: int | None) -> None:
    array = block.numpy()
    with atomic_path(path) as temp:
        np.save(temp, array.squeeze(squeeze) if squeeze is not None else array)


def _write_nifti(path: str, block: torch.Tensor, spatial: SpatialInfo, squeeze: int | None) -> None:
    import nibabel as nib

    with atomic_path(path) as temp:
        nib.save(spatial.nifti_image(block.numpy().astype(np.float32)), temp)
