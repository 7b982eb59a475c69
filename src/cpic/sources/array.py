"""Sources backed by arrays: in memory, or memory-mapped files (``.npy``, raw, ``.nii``)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cpic.sources.base import SourceError, VolumeSource

PAGE = 4096


def split_channels(
    shape: Sequence[int], channel_axis: int | None, name: str
) -> tuple[tuple[int, ...], int | None]:
    """Spatial shape and channel count of an array shape with an optional channel axis."""
    shape = tuple(shape)
    if channel_axis is None:
        return shape, None
    if not -len(shape) <= channel_axis < len(shape):
        raise SourceError(f"{name}: channel_axis {channel_axis} is out of range for shape {shape}.")
    axis = channel_axis % len(shape)
    return shape[:axis] + shape[axis + 1 :], shape[axis]


class ArraySource(VolumeSource):
    """A NumPy array (in memory or a ``np.memmap``) or a torch tensor, read by fancy indexing.

    For a memory map, every ``gather`` is one vectorised fancy index that touches only the
    pages holding the requested voxels; the map is advised ``MADV_RANDOM`` (no read-ahead)
    and its pages are released after each read, so resident memory does not grow with the
    volume's size.
    """

    #: voxels per slice of a memory-mapped read (bounds the pages mapped at once)
    MAP_BATCH = 128

    def __init__(
        self,
        array: np.ndarray | Tensor,
        name: str = "array",
        channel_axis: int | None = None,
        spacing: Sequence[float] | None = None,
        nonfinite: str = "raise",
        scale: tuple[float, float] | None = None,
    ):
        if isinstance(array, Tensor):
            array = array.detach()
            if array.device.type == "cpu":
                array = array.numpy()
        shape, channels = split_channels(array.shape, channel_axis, name)
        super().__init__(name, shape, array.dtype, channels, spacing, nonfinite)
        self.array = array
        self.channel_axis = None if channel_axis is None else channel_axis % array.ndim
        self.scale = scale  # (slope, intercept) stored in a file header, applied to values read
        self._map = _underlying_mmap(array)
        self._map_offset = _offset_in_map(array) if self._map is not None else 0
        self._file = _mapped_file(array) if self._map is not None else None
        if self._map is not None:
            self.chunk_bytes = PAGE
            self._map.madvise(mmap.MADV_RANDOM)

    def _index(self, coords) -> tuple:
        axes = list(coords.T)
        if self.channel_axis is not None:
            axes.insert(self.channel_axis, slice(None))
        return tuple(axes)

    def _read(self, coords: Tensor) -> Tensor:
        if isinstance(self.array, Tensor):  # a tensor on an accelerator
            values = self.array[self._index(coords.to(self.array.device))].cpu()
        elif self._map is None:
            values = torch.from_numpy(np.ascontiguousarray(self.array[self._index(coords.numpy())]))
        else:
            values = torch.from_numpy(self._read_mapped(coords.numpy()))
        if self.channel_axis == 0:
            values = values.T  # indices right after a leading slice give [C, U]
        if self.scale is not None:
            slope, intercept = self.scale
            values = values.double() * slope + intercept
        return values

    def _read_mapped(self, coords: np.ndarray) -> np.ndarray:
        """Fancy-index the memory map in slices of ``MAP_BATCH`` voxels, releasing its pages after
        each: the page cache may hold a file in large folios, and touching one voxel then maps
        up to 2 MiB, so one unbounded read of scattered voxels would map much of the file."""
        parts = []
        try:
            for start in range(0, len(coords), self.MAP_BATCH):
                self._check_file()
                parts.append(
                    np.ascontiguousarray(self.array[self._index(coords[start : start + self.MAP_BATCH])])
                )
                self._map.madvise(mmap.MADV_DONTNEED)
        except OSError as err:
            raise SourceError(f"{self.name}: reading failed ({err}); is the file truncated?") from None
        if not parts:
            return np.empty((0,), self.array.dtype)
        return np.concatenate(parts, axis=1 if self.channel_axis == 0 else 0)  # [C, U] when channels lead

    def _check_file(self) -> None:
        """Refuse to touch the map once its file has shrunk below the mapped bytes: a page beyond
        the end of a file kills the process with SIGBUS, not an error. One ``stat`` per slice of
        ``MAP_BATCH`` voxels; a file replaced (renamed over) or deleted keeps its mapped data and
        is read on."""
        if self._file is None:
            return
        name, inode, needed = self._file
        try:
            found = os.stat(name)
        except OSError:
            return
        if found.st_ino == inode and found.st_size < needed:
            raise SourceError(
                f"{self.name}: the file was truncated while being read ({found.st_size} bytes, "
                f"{needed} expected); it must not change while cpic reads it."
            )

    def _chunk_ids(self, coords: Tensor) -> np.ndarray | None:
        if self._map is None:
            return None
        strides = np.array(self.array.strides)
        axes = [a for a in range(self.array.ndim) if a != self.channel_axis]
        offsets = (coords.numpy() * strides[axes]).sum(1) + self._map_offset
        return offsets // PAGE


def _underlying_mmap(array) -> mmap.mmap | None:
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) if isinstance(base, np.memmap) else getattr(base, "base", None)
    return base


def _mapped_file(array) -> tuple[str, int, int] | None:
    """``(file name, inode, bytes the map needs)`` of the ``np.memmap`` under ``array``."""
    base = array
    while base is not None and not (isinstance(base, np.memmap) and getattr(base, "filename", None)):
        base = getattr(base, "base", None)
    if base is None:
        return None
    try:
        inode = os.stat(base.filename).st_ino
    except OSError:
        return None
    start = base.offset - base.offset % mmap.ALLOCATIONGRANULARITY
    return base.filename, inode, start + len(base._mmap)


def _offset_in_map(array: np.ndarray) -> int:
    """Byte offset of ``array``'s first element inside its memory map."""
    m = _underlying_mmap(array)
    if m is None:
        return 0
    start = np.frombuffer(m, dtype=np.uint8).__array_interface__["data"][0]
    return array.__array_interface__["data"][0] - start
