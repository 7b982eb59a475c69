"""``open_volume``: one entry point for every kind of volume."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cpic.sources.array import ArraySource
from cpic.sources.base import SourceError, VolumeSource
from cpic.sources.chunked import HDF5Source, TiffSource, ZarrSource, split_dataset
from cpic.sources.files import open_nifti, open_npy, open_raw, quiet, require_file
from cpic.sources.limits import LoadLimits
from cpic.sources.procedural import ProceduralSource
from cpic.sources.pyramid import hdf5_level_names, with_levels, zarr_level_paths

FORMATS = ("array", "npy", "raw", "nifti", "zarr", "hdf5", "tiff", "procedural")
_SUFFIXES = {
    ".npy": "npy",
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".zarr": "zarr",
    ".h5": "hdf5",
    ".hdf5": "hdf5",
    ".hdf": "hdf5",
    ".he5": "hdf5",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".raw": "raw",
    ".bin": "raw",
    ".dat": "raw",
}


def detect_format(location: str) -> str:
    """The format of a path or URL from its suffix (or its ``zarr.json``/``.zarray``).

    Example:
        >>> detect_format("scan.nii.gz"), detect_format("gs://bucket/vol.zarr"), detect_format("a.h5:/x")
        ('nifti', 'zarr', 'hdf5')
    """
    if "://" in location and not location.startswith("file://"):
        return "zarr"
    path = Path(location.removeprefix("file://"))
    base, _ = split_dataset(str(path))
    lower = base.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return _SUFFIXES[suffix]
    if path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zarray", ".zgroup")):
        return "zarr"
    if not path.exists():
        raise SourceError(f"{location}: no such file or directory.")
    raise SourceError(
        f"{location}: unknown volume format; expected one of .npy, .nii, .nii.gz, .zarr, "
        f".h5 (file.h5:/dataset), .tif/.tiff, or a raw file with format='raw', shape= and dtype=."
    )


def open_volume(
    x,
    *,
    format: str | None = None,
    shape: Sequence[int] | None = None,
    dtype=None,
    order: str = "C",
    offset: int = 0,
    channel_axis: int | None = None,
    spacing: Sequence[float] | None = None,
    normalize=None,
    nonfinite: str = "raise",
    ndim: int | None = None,
    cache_bytes: int = 0,
    allow_external: bool | None = None,
    memory_budget: int | None = None,
) -> VolumeSource:
    """Open a volume for on-demand reading.

    ``x`` is a NumPy array or torch tensor; a path (``.npy``, ``.nii``/``.nii.gz``, ``.zarr``,
    ``file.h5:/dataset``, ``.tif``, or a raw file with ``format="raw"``, ``shape``, ``dtype``,
    ``order`` and ``offset``); a URL of a Zarr array; or a function of voxel coordinates with
    ``shape`` (a procedural volume). ``channel_axis`` marks a channel axis (four MRI
    sequences in one source). ``normalize``: None, ``"range"``, ``"percentile"`` or
    ``(low, high)``. ``nonfinite``: ``"raise"`` or ``"zero"`` for NaN/Inf voxels. ``ndim``
    requires that many grid axes. ``cache_bytes > 0`` keeps voxels read (up to that many
    bytes) so that repeated patches are served without reading storage again.

    Only the files named are read: an HDF5 dataset with external storage, behind an external
    link or virtual, or a local Zarr store with a chunk that links out of the store, is
    refused unless ``allow_external=True``. A load that would allocate memory scaling with the
    file (a ``.nii.gz`` decompressed, one chunk or page decoded) is checked first against
    ``memory_budget`` bytes (default: half the available memory). Both defaults may be set
    for a block with :func:`cpic.sources.open_defaults`.

    Example:
        >>> import numpy as np, torch
        >>> from cpic import open_volume
        >>> src = open_volume(np.random.rand(32, 40, 24).astype(np.float32), normalize="range")
        >>> src.shape, src.gather(torch.tensor([[5, 6, 7]]), patch=5).shape
        ((32, 40, 24), torch.Size([1, 125]))
    """
    limits = LoadLimits.resolve(allow_external, memory_budget)
    source = _open(x, format, shape, dtype, order, offset, channel_axis, spacing, nonfinite, limits)
    if ndim is not None and source.ndim != ndim:
        raise SourceError(
            f"{source.name}: has {source.ndim} grid axes {source.shape}, expected {ndim}"
            + (" (pass channel_axis= if one axis holds channels)." if source.ndim == ndim + 1 else ".")
        )
    if spacing is not None and len(spacing) != source.ndim:
        raise SourceError(f"{source.name}: spacing {tuple(spacing)} must have {source.ndim} values.")
    if spacing is not None:
        source.spacing = tuple(float(s) for s in spacing)
        if source._spatial is not None:  # a file's frame, with the voxel sizes asked for
            source.spatial = source._spatial.with_spacing(source.spacing)
    return source.set_normalization(normalize).enable_cache(cache_bytes)


def _open(x, format, shape, dtype, order, offset, channel_axis, spacing, nonfinite, limits) -> VolumeSource:
    if format is not None and format not in FORMATS:
        raise SourceError(f"format must be one of {FORMATS}, got {format!r}.")
    if isinstance(x, VolumeSource):
        return x
    if isinstance(x, (np.ndarray, torch.Tensor)):
        if x.dtype == object or (isinstance(x, np.ndarray) and x.dtype.fields is not None):
            raise SourceError(f"array: holds {x.dtype} values; expected a numeric array.")
        if x.ndim == 0 or 0 in x.shape:
            raise SourceError(f"array: shape {tuple(x.shape)} has no voxels.")
        if isinstance(x, np.ndarray) and x.dtype.kind in "SUVMmbc":
            raise SourceError(f"array: holds {x.dtype} values; expected a real numeric array.")
        return ArraySource(x, channel_axis=channel_axis, spacing=spacing, nonfinite=nonfinite)
    if callable(x):
        return ProceduralSource(x, shape, spacing=spacing, nonfinite=nonfinite)
    if not isinstance(x, (str, Path)):
        raise SourceError(
            f"cannot open a {type(x).__name__}: pass an array, a tensor, a path, a URL or a function."
        )
    location = str(x)
    fmt = format or ("raw" if shape is not None and dtype is not None else detect_format(location))
    path = Path(location.removeprefix("file://"))
    if fmt == "npy":
        return open_npy(path, channel_axis, nonfinite)
    if fmt == "raw":
        return open_raw(path, shape, dtype, order, offset, channel_axis, spacing, nonfinite)
    if fmt == "nifti":
        return open_nifti(path, channel_axis, nonfinite, limits)
    if fmt == "zarr":
        levels = _zarr_levels(location)
        if levels is None:
            return ZarrSource(location, channel_axis, nonfinite, limits)
        return with_levels(location, [ZarrSource(p, channel_axis, nonfinite, limits) for p in levels])
    if fmt == "hdf5":
        file, dataset = split_dataset(location)
        require_file(Path(file))
        levels = hdf5_level_names(Path(file), dataset)
        if levels is None:
            return HDF5Source(Path(file), dataset, channel_axis, nonfinite, limits)
        sources = [HDF5Source(Path(file), name, channel_axis, nonfinite, limits) for name in levels]
        return with_levels(location, sources)
    if fmt == "tiff":
        require_file(path)
        with quiet("tifffile"):
            return TiffSource(path, nonfinite, limits)
    raise SourceError(f"{location}: format {fmt!r} needs a function, not a path.")


def _zarr_levels(location: str) -> list[str] | None:
    """The levels of a Zarr group at ``location`` (None: an array, or a store not there)."""
    if "://" not in location and not Path(location).is_dir():
        return None  # ZarrSource names what is missing
    try:
        import tensorstore  # noqa: F401
    except ImportError:
        return None  # ZarrSource names the package to install
    return zarr_level_paths(location)


__all__ = ["FORMATS", "detect_format", "open_volume"]
