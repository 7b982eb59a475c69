"""Uncompressed files read through memory maps: ``.npy``, raw binaries and NIfTI."""

from __future__ import annotations

import contextlib
import gzip
import io
import logging
import math
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cpic.sources.array import ArraySource
from cpic.sources.base import SourceError
from cpic.sources.limits import LoadLimits
from cpic.sources.spatial import SpatialInfo
from cpic.util.guard import check_path, open_file


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
    reader forever, a device never ends) or not readable, with a message naming it.

    Example:
        >>> try:
        ...     require_file(Path("/"))
        ... except SourceError as err:
        ...     print(err)
        /: is a directory, expected a volume file.
    """
    check_path(path, "volume file", error=SourceError)


def _npy_header(path: Path, fh: BinaryIO) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data offset)`` of the ``.npy`` file ``fh`` (opened from
    ``path``), checked against its size."""
    size = os.fstat(fh.fileno()).st_size
    if size == 0:
        raise SourceError(f"{path}: the file is empty (0 bytes), expected a .npy array.")
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
    with open_file(path, "volume file", error=SourceError) as fh:
        shape, dtype, fortran, offset = _npy_header(path, fh)
        if dtype.fields is not None:
            raise SourceError(f"{path}: holds {dtype} values; expected a numeric array.")
        if 0 in shape or not shape:
            raise SourceError(f"{path}: shape {shape} has no voxels.")
        order = "F" if fortran else "C"
        try:
            array = np.memmap(fh, dtype=dtype, mode="r", shape=shape, order=order, offset=offset)
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
    with open_file(path, "volume file", error=SourceError) as fh:
        actual = os.fstat(fh.fileno()).st_size
        if actual != expected:
            raise SourceError(
                f"{path}: holds {actual} bytes, but shape {shape} of {dtype} at offset {offset} "
                f"needs {expected}."
            )
        array = np.memmap(fh, dtype=dtype, mode="r", shape=shape, order=order, offset=offset)
    return ArraySource(array, name=str(path), channel_axis=channel_axis, spacing=spacing, nonfinite=nonfinite)


def open_nifti(
    path: Path, channel_axis: int | None = None, nonfinite: str = "raise", limits: LoadLimits | None = None
) -> ArraySource:
    """A NIfTI-1/2 image: ``.nii`` memory-mapped, ``.nii.gz`` decompressed once into memory.

    The header's scaling (``scl_slope``, ``scl_inter``) is applied to the values read and
    its voxel sizes become the spacing, and its affine, transform codes and units the source's
    ``spatial`` frame (cpic's axes are the file's ``i, j, k``). A 4-D image's fourth axis is its
    channel axis. A ``.nii.gz`` is decompressed only after the size its header declares has been
    checked against ``limits``' memory budget, and no further than that size (a gzip bomb behind
    a small header inflates no more than the header says).
    """
    try:
        import nibabel as nib
    except ImportError:
        raise SourceError(f"{path}: reading NIfTI needs nibabel: pip install 'cpic[io]'.") from None
    with open_file(path, "volume file", error=SourceError) as fh:
        return _nifti_source(path, fh, nib, channel_axis, nonfinite, limits)


def _nifti_source(path: Path, fh: BinaryIO, nib, channel_axis, nonfinite, limits) -> ArraySource:
    """:func:`open_nifti` of the file ``fh``, opened from ``path``."""
    gz = str(path).endswith(".gz")
    failures = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, EOFError, OSError)
    try:
        with quiet("nibabel"):
            header = _nifti_header(gzip.GzipFile(fileobj=fh, mode="rb") if gz else fh, nib)
            shape = tuple(int(n) for n in header.get_data_shape())
            dtype = header.get_data_dtype()
            offset = int(header.get_data_offset())
            slope, inter = header.get_slope_inter()
    except (*failures, gzip.BadGzipFile, zlib.error, ValueError, OverflowError) as err:
        raise SourceError(f"{path}: not a readable NIfTI image ({err}).") from None
    if not shape or any(n < 1 for n in shape):
        raise SourceError(f"{path}: the header declares shape {shape}; every axis must be >= 1.")
    slope = 1.0 if slope is None or not math.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not math.isfinite(inter) else float(inter)
    scale = None if (slope, inter) == (1.0, 0.0) else (slope, inter)
    spacing = tuple(float(z) for z in header.get_zooms()[:3])
    if channel_axis is None and len(shape) == 4:
        channel_axis = 3
    if gz:
        needed = math.prod(shape) * dtype.itemsize
        (limits or LoadLimits.resolve()).require_memory(
            str(path),
            needed,
            f"the header declares shape {shape} of {dtype}, decompressed",
            "; decompress it to .nii, which is read through a memory map, or raise the budget",
        )
        array = _inflate(path, fh, shape, dtype, offset)
    else:
        needed = offset + math.prod(shape) * dtype.itemsize
        size = os.fstat(fh.fileno()).st_size
        if size < needed:
            raise SourceError(
                f"{path}: the header declares shape {shape} of {dtype} ({needed} bytes with the header), "
                f"but the file holds only {size} bytes."
            )
        array = np.memmap(fh, dtype=dtype, mode="r", shape=shape, order="F", offset=offset)
    axes = len(shape) - (0 if channel_axis is None else 1)
    source = ArraySource(
        array,
        name=str(path),
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


def _nifti_header(stream: BinaryIO, nib):
    """The NIfTI-1 or -2 header at the start of ``stream`` (a ``.nii`` file, or a ``.nii.gz``
    being decompressed: the rest is not inflated); a single-file image's magic is required."""
    block = stream.read(540)
    if len(block) < 348:
        raise ValueError(f"it holds {len(block)} bytes (decompressed), less than a NIfTI header")
    sizes = {int.from_bytes(block[:4], order) for order in ("little", "big")}  # sizeof_hdr, either byte order
    if not sizes & {348, 540}:
        raise ValueError("its first 4 bytes are not a NIfTI header size (348 or 540)")
    klass, size = (nib.Nifti1Header, 348) if 348 in sizes else (nib.Nifti2Header, 540)
    header = klass.from_fileobj(io.BytesIO(block[:size]))
    if bytes(header["magic"]).rstrip(b"\0") not in (b"n+1", b"n+2"):
        raise ValueError(f"its magic {bytes(header['magic'])!r} is not a single-file NIfTI's (n+1, n+2)")
    return header


def _inflate(path: Path, file: BinaryIO, shape: tuple[int, ...], dtype: np.dtype, offset: int) -> np.ndarray:
    """The voxels of the ``.nii.gz`` ``file`` (opened from ``path``): the stream after ``offset``
    decompressed into one array of exactly the declared size (never more), Fortran order as
    NIfTI stores them."""
    array = np.empty(shape, dtype=dtype, order="F")
    view = memoryview(array.reshape(-1, order="A").view(np.uint8))
    try:
        file.seek(0)
        with gzip.GzipFile(fileobj=file, mode="rb") as fh:
            fh.seek(offset)
            got = 0
            while got < len(view):
                n = fh.readinto(view[got : got + (1 << 24)])
                if not n:
                    break
                got += n
    except (EOFError, OSError, gzip.BadGzipFile, zlib.error) as err:
        raise SourceError(f"{path}: the compressed data is truncated or corrupt ({err}).") from None
    if got < len(view):
        raise SourceError(
            f"{path}: the compressed data is truncated: it holds {got} of the {len(view)} bytes "
            f"the header declares (shape {shape} of {dtype})."
        )
    if not dtype.isnative:  # swapped in place: torch reads native byte order only
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array
