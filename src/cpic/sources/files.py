"""Uncompressed files read through memory maps: ``.npy``, raw binaries and NIfTI."""

from __future__ import annotations

import contextlib
import gzip
import logging
import math
import os
import stat
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from cpic.sources.array import ArraySource
from cpic.sources.base import SourceError
from cpic.sources.spatial import SpatialInfo

#: the largest .nii.gz decompressed into memory (a larger one must be a .nii, memory-mapped)
_MAX_DECOMPRESSED = 16 * 2**30


@contextlib.contextmanager
def quiet(logger: str) -> Iterator[None]:
    """Silence a reader library's logger: its complaints become one SourceError, not stderr noise.

    Example:
        >>> import logging
        >>> with quiet("nibabel"):
        ...     logging.getLogger("nibabel").warning("not shown")
        >>> logging.getLogger("nibabel").level
        0
    """
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


def require_file(path: Path) -> None:
    """Refuse a path that is missing, a directory, not a regular file (a FIFO would block the
    reader forever) or not readable, with a message naming it.

    Example:
        >>> try:
        ...     require_file(Path("/"))
        ... except SourceError as err:
        ...     print(err)
        /: is a directory, expected a volume file.
    """
    if not path.exists():
        raise SourceError(f"{path}: no such file.")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory, expected a volume file.")
    if not stat.S_ISREG(path.stat().st_mode):
        raise SourceError(f"{path}: not a regular file (a pipe, socket or device), expected a volume file.")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: not readable (permission denied).")
    try:
        with open(path, "rb"):
            pass
    except PermissionError:
        raise SourceError(f"{path}: not readable (permission denied).") from None


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data offset)`` of a ``.npy`` file, checked against its size."""
    size = path.stat().st_size
    if size == 0:
        raise SourceError(f"{path}: the file is empty (0 bytes), expected a .npy array.")
    with open(path, "rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
        except ValueError:
            raise SourceError(
                f"{path}: not a .npy file (it does not start with the .npy magic bytes)."
            ) from None
        try:
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read(fh, max_header_size=1 << 16)
        except Exception as err:  # numpy's header parser raises many kinds of error on garbage
            raise SourceError(f"{path}: the .npy header is corrupt ({type(err).__name__}: {err}).") from None
        offset = fh.tell()
    if dtype.hasobject:
        raise SourceError(f"{path}: holds Python objects (a pickle); cpic never unpickles input files.")
    if any(n < 0 for n in shape):
        raise SourceError(f"{path}: the .npy header declares a negative shape {shape}.")
    needed = offset + math.prod(shape) * dtype.itemsize
    if size != needed:
        which = "only" if size < needed else ""
        raise SourceError(
            f"{path}: the header declares shape {shape} of {dtype} ({needed} bytes with the header), but the "
            f"file holds {which + ' ' if which else ''}{size} bytes (truncated, or a header that lies)."
        )
    return shape, dtype, fortran, offset


def open_npy(path: Path, channel_axis: int | None = None, nonfinite: str = "raise") -> ArraySource:
    """A ``.npy`` file, memory-mapped (never loaded whole); its header is checked against its size."""
    require_file(path)
    shape, dtype, _, _ = _npy_header(path)
    if dtype.fields is not None:
        raise SourceError(f"{path}: holds {dtype} values; expected a numeric array.")
    if 0 in shape or not shape:
        raise SourceError(f"{path}: shape {shape} has no voxels.")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise SourceError(f"{path}: not a readable .npy array ({err}).") from None
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
    require_file(path)
    if shape is None or dtype is None:
        raise SourceError(
            f"{path}: a raw file needs shape= and dtype= (e.g. shape=(512, 512, 512), dtype='uint16')."
        )
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise SourceError(f"{path}: dtype {dtype!r} is not a NumPy dtype.") from None
    shape = tuple(int(n) for n in shape)
    if not shape or any(n < 1 for n in shape):
        raise SourceError(f"{path}: shape {shape} must have at least one axis, each >= 1.")
    if order not in ("C", "F"):
        raise SourceError(f"{path}: order must be 'C' or 'F', got {order!r}.")
    expected = math.prod(shape) * dtype.itemsize + offset
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
    its voxel sizes become the spacing, and its affine, transform codes and units the source's
    ``spatial`` frame (cpic's axes are the file's ``i, j, k``). A 4-D image's fourth axis is its
    channel axis.
    """
    require_file(path)
    try:
        import nibabel as nib
    except ImportError:
        raise SourceError(f"{path}: reading NIfTI needs nibabel: pip install 'cpic[io]'.") from None
    failures = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, OSError)
    try:
        with quiet("nibabel"):
            image = nib.load(str(path), mmap=True)
            header = image.header
            shape = tuple(int(n) for n in image.shape)
            dtype = header.get_data_dtype()
            offset = int(getattr(image.dataobj, "offset", header.get_data_offset()))
    except (*failures, gzip.BadGzipFile, zlib.error, ValueError, OverflowError) as err:
        raise SourceError(f"{path}: not a readable NIfTI image ({err}).") from None
    if not shape or any(n < 1 for n in shape):
        raise SourceError(f"{path}: the header declares shape {shape}; every axis must be >= 1.")
    slope = float(getattr(image.dataobj, "slope", 1.0))
    inter = float(getattr(image.dataobj, "inter", 0.0))
    scale = None if (slope, inter) == (1.0, 0.0) else (slope, inter)
    spacing = tuple(float(z) for z in header.get_zooms()[:3])
    if channel_axis is None and len(shape) == 4:
        channel_axis = 3
    name = str(path)
    if str(path).endswith(".gz"):
        needed = math.prod(shape) * dtype.itemsize
        if needed > _MAX_DECOMPRESSED:
            raise SourceError(
                f"{path}: the header declares shape {shape} of {dtype} ({needed} bytes once decompressed); "
                f"decompress it to .nii (read through a memory map) to open a volume this large."
            )
        try:
            array = np.asarray(image.dataobj.get_unscaled())
        except (EOFError, OSError, ValueError, gzip.BadGzipFile, zlib.error) as err:
            raise SourceError(f"{path}: the compressed data is truncated or corrupt ({err}).") from None
    else:
        needed = offset + math.prod(shape) * dtype.itemsize
        if path.stat().st_size < needed:
            raise SourceError(
                f"{path}: the header declares shape {shape} of {dtype} ({needed} bytes with the header), "
                f"but the file holds only {path.stat().st_size} bytes."
            )
        array = np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F", offset=offset)
    axes = len(shape) - (0 if channel_axis is None else 1)
    source = ArraySource(
        array,
        name=name,
        channel_axis=channel_axis,
        spacing=spacing[:axes],
        nonfinite=nonfinite,
        scale=scale,
    )
    if source.ndim <= 3:
        try:
            source.spatial = SpatialInfo.from_nifti(header)
        except (*failures, ValueError) as err:  # e.g. a header whose affine is not finite
            raise SourceError(f"{path}: the header's voxel-to-world frame is unusable ({err}).") from None
    return source
