"""Uncompressed files read through memory maps: ``.npy``, raw binaries and NIfTI."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cpic.sources.array import ArraySource
from cpic.sources.base import SourceError


def _require_file(path: Path) -> None:
    if not path.exists():
        raise SourceError(f"{path}: no such file.")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory, expected a volume file.")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: not readable (permission denied).")


def open_npy(path: Path, channel_axis: int | None = None, nonfinite: str = "raise") -> ArraySource:
    """A ``.npy`` file, memory-mapped (never loaded whole)."""
    _require_file(path)
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty (0 bytes), expected a .npy array.")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise SourceError(f"{path}: not a readable .npy array ({err}).") from None
    except OSError as err:
        raise SourceError(f"{path}: not a readable .npy array ({err}).") from None
    if array.dtype.hasobject or array.dtype.fields is not None:
        raise SourceError(f"{path}: holds {array.dtype} values; expected a numeric array.")
    return ArraySource(array, name=str(path), channel_axis=channel_axis, nonfinite=nonfinite)


def open_raw(
    path: Path,
    shape: Sequence[int] | None,
    dtype,
    order: str = "C",
    offset: int = 0,
    channel_axis: int | None = None,
    spacing: Sequence[float] | None = None,
    nonfinite: str = "raise",
) -> ArraySource:
    """A headerless binary file of ``shape`` and ``dtype`` (``order`` C or F), memory-mapped."""
    _require_file(path)
    if shape is None or dtype is None:
        raise SourceError(
            f"{path}: a raw file needs shape= and dtype= (e.g. shape=(512, 512, 512), dtype='uint16')."
        )
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise SourceError(f"{path}: dtype {dtype!r} is not a NumPy dtype.") from None
    shape = tuple(int(n) for n in shape)
    if order not in ("C", "F"):
        raise SourceError(f"{path}: order must be 'C' or 'F', got {order!r}.")
    expected = int(np.prod(shape)) * dtype.itemsize + offset
    actual = path.stat().st_size
    if actual != expected:
        raise SourceError(
            f"{path}: holds {actual} bytes, but shape {shape} of {dtype} at offset {offset} needs {expected}."
        )
    array = np.memmap(path, dtype=dtype, mode="r", shape=shape, order=order, offset=offset)
    return ArraySource(array, name=str(path), channel_axis=channel_axis, spacing=spacing, nonfinite=nonfinite)


def open_nifti(path: Path, channel_axis: int | None = None, nonfinite: str = "raise") -> ArraySource:
    """A NIfTI-1/2 image: ``.nii`` memory-mapped, ``.nii.gz`` decompressed once into memory.

    The header's scaling (``scl_slope``, ``scl_inter``) is applied to the values read and
    its voxel sizes become the spacing. A 4-D image's fourth axis is its channel axis.
    """
    _require_file(path)
    try:
        import nibabel as nib
    except ImportError:
        raise SourceError(f"{path}: reading NIfTI needs nibabel: pip install 'cpic[io]'.") from None
    try:
        image = nib.load(str(path), mmap=True)
        header = image.header
        shape = tuple(int(n) for n in image.shape)
        dtype = header.get_data_dtype()
        offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, gzip.BadGzipFile, ValueError) as err:
        raise SourceError(f"{path}: not a readable NIfTI image ({err}).") from None
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    scale = None if (slope, inter) == (1.0, 0.0) else (slope, inter)
    spacing = tuple(float(z) for z in header.get_zooms()[:3])
    if channel_axis is None and len(shape) == 4:
        channel_axis = 3
    name = str(path)
    if str(path).endswith(".gz"):
        try:
            array = np.asarray(image.dataobj.get_unscaled())
        except (EOFError, OSError, ValueError, gzip.BadGzipFile) as err:
            raise SourceError(f"{path}: the compressed data is truncated or corrupt ({err}).") from None
    else:
        needed = offset + int(np.prod(shape)) * dtype.itemsize
        if path.stat().st_size < needed:
            raise SourceError(
                f"{path}: the header declares shape {shape} of {dtype} ({needed} bytes with the header), "
                f"but the file holds only {path.stat().st_size} bytes."
            )
        array = np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F", offset=offset)
    spatial = len(shape) - (0 if channel_axis is None else 1)
    return ArraySource(
        array,
        name=name,
        channel_axis=channel_axis,
        spacing=spacing[:spatial],
        nonfinite=nonfinite,
        scale=scale,
    )
