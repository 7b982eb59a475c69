"""Chunked and paged formats: Zarr (through tensorstore), HDF5 (h5py) and TIFF stacks (tifffile)."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cpic.sources.array import split_channels
from cpic.sources.base import SourceError, VolumeSource
from cpic.sources.files import quiet
from cpic.sources.limits import LoadLimits
from cpic.util.guard import check_path


def _chunk_index(coords: np.ndarray, chunks: tuple[int, ...], grid: tuple[int, ...]) -> np.ndarray:
    """Linear id of the chunk holding each coordinate row."""
    cell = coords // np.asarray(chunks)
    return np.ravel_multi_index(tuple(cell.T), grid)


class ZarrSource(VolumeSource):
    """A Zarr v2 or v3 array read through tensorstore: one batched ``vindex`` read per gather.

    ``location`` is a local path or any URL tensorstore understands (``file://``, ``gs://``,
    ``s3://``, ``http(s)://``). A local store is scanned first: an entry that is a FIFO, a
    device or a socket is refused, and so is a symlink leaving the store unless
    ``limits.allow_external``. One chunk must fit ``limits``' memory budget.
    """

    def __init__(
        self,
        location: str,
        channel_axis: int | None = None,
        nonfinite: str = "raise",
        limits: LoadLimits | None = None,
    ):
        limits = limits or LoadLimits.resolve()
        try:
            import tensorstore as ts
        except ImportError:
            raise SourceError(
                f"{location}: reading Zarr needs tensorstore: pip install 'cpic[io]'."
            ) from None
        kvstore = location if "://" in location else {"driver": "file", "path": str(Path(location).resolve())}
        if isinstance(kvstore, dict):
            if not Path(location).exists():
                raise SourceError(f"{location}: no such Zarr array.")
            check_path(location, "Zarr store", folder=True, error=SourceError)
            _check_store(Path(location), limits)
        last = None
        for driver in ("zarr3", "zarr"):
            try:
                store = ts.open({"driver": driver, "kvstore": kvstore}, read=True).result()
                break
            except (ValueError, RuntimeError) as err:  # tensorstore raises ValueError on a wrong driver
                last = err
        else:
            raise SourceError(f"{location}: not a readable Zarr v2/v3 array ({last}).")
        shape, channels = split_channels(store.shape, channel_axis, location)
        super().__init__(location, shape, store.dtype.numpy_dtype, channels, nonfinite=nonfinite)
        self.store = store
        self.channel_axis = None if channel_axis is None else channel_axis % store.ndim
        chunks = tuple(int(c) for c in store.chunk_layout.read_chunk.shape)
        self._chunks = tuple(c for a, c in enumerate(chunks) if a != self.channel_axis)
        self._grid = tuple(-(-n // c) for n, c in zip(self.shape, self._chunks))
        self.chunk_bytes = int(np.prod(chunks)) * np.dtype(self.dtype).itemsize
        limits.require_memory(location, self.chunk_bytes, f"one chunk of shape {chunks} of {self.dtype}")

    def _read(self, coords: Tensor) -> Tensor:
        axes = [c for c in coords.numpy().T]
        if self.channel_axis is None:
            values = self.store.vindex[tuple(axes)].read().result()
        else:
            axes.insert(self.channel_axis, np.arange(self.channels)[:, None])
            axes = [a if a.ndim == 2 else a[None, :] for a in axes]
            values = self.store.vindex[tuple(axes)].read().result().T  # [C, U] -> [U, C]
        return torch.from_numpy(np.ascontiguousarray(values))

    def _chunk_ids(self, coords: Tensor) -> np.ndarray:
        return _chunk_index(coords.numpy(), self._chunks, self._grid)


class HDF5Source(VolumeSource):
    """A dataset of an HDF5 file (``file.h5:/group/dataset``) read with h5py.

    Requested voxels are grouped by chunk and each touched chunk is read once (a hyperslab),
    in storage order.
    """

    def __init__(
        self,
        path: Path,
        dataset: str | None,
        channel_axis: int | None = None,
        nonfinite: str = "raise",
        limits: LoadLimits | None = None,
    ):
        limits = limits or LoadLimits.resolve()
        try:
            import h5py
        except ImportError:
            raise SourceError(f"{path}: reading HDF5 needs h5py: pip install 'cpic[io]'.") from None
        try:
            self.file = h5py.File(path, "r")
        except Exception as err:  # OSError mostly; h5py's parser may raise others on garbage
            raise SourceError(f"{path}: not a readable HDF5 file ({err}).") from None
        try:
            self.data, dataset = self._dataset(h5py, path, dataset, limits)
            _check_storage(h5py, self.data, f"{path}:{dataset}", path, limits)
            data_shape, chunks, dtype = self.data.shape, self.data.chunks, self.data.dtype
            if chunks is None:  # contiguous: read in blocks that fit the budget, not in one
                chunks = _blocks_within(data_shape, dtype.itemsize, limits.budget)
            what = f"one chunk of shape {chunks}"
            limits.require_memory(f"{path}:{dataset}", math.prod(chunks) * dtype.itemsize, what)
        except SourceError:
            self.file.close()
            raise
        except Exception as err:  # h5py raises many kinds of error on a corrupt file
            self.file.close()
            raise SourceError(f"{path}: not a readable HDF5 file ({err}).") from None
        shape, channels = split_channels(data_shape, channel_axis, f"{path}:{dataset}")
        super().__init__(f"{path}:{dataset}", shape, dtype, channels, nonfinite=nonfinite)
        if channels is not None and channel_axis % self.data.ndim != self.data.ndim - 1:
            raise SourceError(f"{self.name}: only a trailing channel axis is supported for HDF5.")
        self._chunks = tuple(chunks[: self.ndim])
        self._grid = tuple(-(-n // c) for n, c in zip(self.shape, self._chunks))
        self.chunk_bytes = int(np.prod(chunks)) * dtype.itemsize

    def _dataset(self, h5py, path: Path, dataset: str | None, limits: LoadLimits):
        """The dataset named, or the file's only one, and its name; an external link on the way
        to it is refused unless ``limits.allow_external``."""
        if dataset is None:
            names = []
            self.file.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
            if len(names) != 1:
                raise SourceError(f"{path}: holds datasets {names}; name one as '{path}:/name'.")
            dataset = names[0]
        _check_links(h5py, self.file, path, dataset, limits)
        if dataset not in self.file or not isinstance(self.file[dataset], h5py.Dataset):
            raise SourceError(f"{path}: has no dataset {dataset!r}.")
        return self.file[dataset], dataset

    def _read(self, coords: Tensor) -> Tensor:
        try:
            return self._read_chunks(coords.numpy())
        except Exception as err:  # a damaged file fails inside h5py in many ways
            reason = f"{type(err).__name__}: {err}"
            raise SourceError(
                f"{self.name}: reading voxels failed, the file is truncated or corrupt ({reason})."
            ) from None

    def _read_chunks(self, coords: np.ndarray) -> Tensor:
        ids = _chunk_index(coords, self._chunks, self._grid)
        order = np.argsort(ids, kind="stable")
        bounds = np.flatnonzero(np.diff(ids[order])) + 1
        out = np.empty((len(coords),) + ((self.channels,) if self.channels else ()), dtype=self.data.dtype)
        for group in np.split(order, bounds):  # one hyperslab per touched chunk
            pts = coords[group]
            low, high = pts.min(0), pts.max(0) + 1
            block = self.data[tuple(slice(a, b) for a, b in zip(low, high))]
            out[group] = block[tuple((pts - low).T)]
        return torch.from_numpy(out)

    def _chunk_ids(self, coords: Tensor) -> np.ndarray:
        return _chunk_index(coords.numpy(), self._chunks, self._grid)


def _check_links(h5py, file, path: Path, dataset: str, limits: LoadLimits, depth: int = 0) -> None:
    """Refuse an external link on the path to ``dataset`` (soft links are followed, in the
    file) unless external files are allowed, before anything follows it."""
    if depth > 16:
        raise SourceError(f"{path}: soft links to {dataset!r} form a loop (more than 16 in a row).")
    at = ""
    for part in [p for p in dataset.split("/") if p]:
        at += "/" + part
        link = file.get(at, getlink=True)
        if isinstance(link, h5py.SoftLink):
            target = link.path if link.path.startswith("/") else at.rsplit("/", 1)[0] + "/" + link.path
            _check_links(h5py, file, path, target, limits, depth + 1)
        elif isinstance(link, h5py.ExternalLink):
            target = Path(link.filename)
            near = path.parent / target
            found = f"is an external link to {link.path!r} in"
            limits.require_external(f"{path}:{at}", found, [near if near.exists() else target])
        elif link is None:
            return  # missing: the caller says so


def _check_storage(h5py, data, name: str, path: Path, limits: LoadLimits) -> None:
    """Refuse a dataset whose values live in other files (external raw storage, a virtual
    dataset mapping other files) unless external files are allowed."""
    plist = data.id.get_create_plist()
    files = [plist.get_external(i)[0].decode("utf-8", "replace") for i in range(plist.get_external_count())]
    if files:  # HDF5 resolves these names against the working directory
        limits.require_external(name, "reads external raw storage in", files)
    if data.is_virtual:
        sources = sorted({m.file_name for m in data.virtual_sources()} - {"."})
        if sources:
            near = [path.parent / f if (path.parent / f).exists() else Path(f) for f in sources]
            limits.require_external(name, "is a virtual dataset mapping", near)


def _blocks_within(shape: tuple[int, ...], itemsize: int, budget: int | None) -> tuple[int, ...]:
    """Block shape for a contiguous dataset: the whole dataset when it fits ``budget``, else
    its largest axes halved until a block does.

    Example:
        >>> _blocks_within((64, 64, 64), 4, None), _blocks_within((64, 64, 64), 4, 2**16)
        ((64, 64, 64), (16, 32, 32))
    """
    block = list(shape)
    while budget is not None and math.prod(block) * itemsize > budget and max(block) > 1:
        axis = block.index(max(block))
        block[axis] = -(-block[axis] // 2)
    return tuple(block)


def _check_store(root: Path, limits: LoadLimits) -> None:
    """Refuse a local Zarr store holding a FIFO, device or socket, or (unless external files
    are allowed) a symlink whose target lies outside the store; no chunk is read."""
    base = root.resolve()
    outside, pending = [], [root]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_symlink():
                    target = Path(entry.path).resolve()
                    if not target.is_relative_to(base):
                        outside.append(entry.path)
                        continue
                    if target.exists() and not target.is_dir():  # a folder inside is scanned where it is
                        check_path(entry.path, f"chunk of the Zarr store {root}", error=SourceError)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif not entry.is_file(follow_symlinks=False):
                    check_path(entry.path, f"chunk of the Zarr store {root}", error=SourceError)
    if outside:
        first = Path(sorted(outside)[0]).relative_to(root)
        found = f"has {len(outside)} symlink(s) out of the store ({first}, ...) to"
        limits.require_external(str(root), found, [Path(p).resolve() for p in sorted(outside)])


class TiffSource(VolumeSource):
    """A multi-page TIFF (a stack of 2-D slices) or a single 2-D image, read with tifffile.

    Memory-mapped when the file stores uncompressed contiguous data; otherwise only the
    pages (slices) holding requested voxels are decoded.
    """

    def __init__(self, path: Path, nonfinite: str = "raise", limits: LoadLimits | None = None):
        limits = limits or LoadLimits.resolve()
        try:
            import tifffile
        except ImportError:
            raise SourceError(f"{path}: reading TIFF needs tifffile: pip install 'cpic[io]'.") from None
        self.tif = None
        try:
            # an OME-TIFF series may name other files: those are read only when allowed
            self.tif = tifffile.TiffFile(path, _multifile=limits.allow_external)
            series = self.tif.series[0]
            shape = tuple(int(n) for n in series.shape)
            self._check_complete(path, series, shape)
        except SourceError:
            raise
        except Exception as err:  # tifffile's parser raises many kinds of error on a damaged file
            self.close()
            reason = "it holds no image" if isinstance(err, IndexError) else str(err)
            raise SourceError(f"{path}: not a readable TIFF ({reason}).") from None
        super().__init__(str(path), shape, series.dtype, nonfinite=nonfinite)
        self.pages = series.pages
        try:
            self.mapped = tifffile.memmap(path, mode="r")
        except ValueError:
            self.mapped = None
        page_shape = shape[-2:]
        self.chunk_bytes = int(np.prod(page_shape)) * np.dtype(series.dtype).itemsize
        if self.mapped is None:  # each slice read is decoded whole
            limits.require_memory(str(path), self.chunk_bytes, f"one slice of shape {page_shape}")
        self._pages_shape = shape[:-2]

    def _read(self, coords: Tensor) -> Tensor:
        try:
            with quiet("tifffile"):
                return self._read_pages(coords.numpy())
        except Exception as err:  # a damaged file fails in tifffile's decoders in many ways
            reason = f"{type(err).__name__}: {err}"
            raise SourceError(
                f"{self.name}: reading voxels failed, the file is truncated or corrupt ({reason})."
            ) from None

    def _read_pages(self, coords: np.ndarray) -> Tensor:
        if self.mapped is not None:
            return torch.from_numpy(np.ascontiguousarray(self.mapped[tuple(coords.T)]))
        if self.ndim == 2:
            return torch.from_numpy(self.pages[0].asarray()[tuple(coords.T)])
        page = np.ravel_multi_index(tuple(coords[:, :-2].T), self._pages_shape)
        out = np.empty(len(coords), dtype=self.dtype)
        for p in np.unique(page):  # one decode per touched slice
            sel = page == p
            out[sel] = self.pages[int(p)].asarray()[tuple(coords[sel, -2:].T)]
        return torch.from_numpy(out)

    def _check_complete(self, path: Path, series, shape: tuple[int, ...]) -> None:
        """Refuse a truncated file whose pages cannot hold the series' shape, or whose data lies
        beyond the end of the file (found now, not at the first read of a missing page)."""
        size, held = path.stat().st_size, 0
        for page in series.pages:
            if page is None:
                continue
            held += math.prod(page.shape)
            if any(o + n > size for o, n in zip(page.dataoffsets, page.databytecounts)):
                self.close()
                raise SourceError(
                    f"{path}: truncated: image data lies beyond the end of the file ({size} bytes)."
                )
        if held < math.prod(shape):
            self.close()
            raise SourceError(
                f"{path}: truncated: its pages hold {held} of the {math.prod(shape)} values of shape {shape}."
            )

    def close(self) -> None:
        """Close the file (also done when the source is garbage-collected)."""
        if getattr(self, "tif", None) is not None:
            self.tif.close()
            self.tif = None

    def __del__(self) -> None:
        self.close()

    def _chunk_ids(self, coords: Tensor) -> np.ndarray:
        if self.ndim == 2:
            return np.zeros(1, np.int64)
        return np.ravel_multi_index(tuple(coords.numpy()[:, :-2].T), self._pages_shape)


def split_dataset(location: str) -> tuple[str, str | None]:
    """``'file.h5:/group/data'`` -> ``('file.h5', '/group/data')``."""
    match = re.match(r"^(.*\.(?:h5|hdf5|hdf|he5))(?::(/?.*))?$", location, re.IGNORECASE)
    if not match:
        return location, None
    return match.group(1), match.group(2) or None
