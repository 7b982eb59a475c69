"""What a source has read: request, voxel, storage-unit and byte counts, kept per source."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ReadStats:
    """What a source has read since it was opened or last ``reset()``."""

    #: ``gather`` calls
    requests: int = 0
    #: voxels delivered, counting repeats (``K * patch**D`` per call)
    voxels_read: int = 0
    #: distinct voxels delivered over all calls
    unique_voxels: int = 0
    #: distinct storage units touched: chunks (Zarr, HDF5), 4 KiB pages (memory-mapped files),
    #: slices (TIFF); 0 for in-memory and procedural sources
    chunks_touched: int = 0
    #: bytes fetched from storage (whole chunks or pages where the format reads those)
    bytes_read: int = 0
    #: non-finite voxels met (replaced by 0 under ``nonfinite="zero"``)
    nonfinite: int = 0
    #: distinct voxels of a request served by the voxel cache (not read from storage)
    cache_hits: int = 0
    #: seconds spent in ``gather``
    seconds: float = 0.0
    #: distinct voxels read of the source's coarser :attr:`~VolumeSource.levels` (their reads
    #: count in ``requests``, ``voxels_read`` and ``bytes_read`` too)
    level_voxels: int = 0
    #: voxels of the grid (set by the source): past ``grid_voxels / 8`` distinct ids read, a
    #: flag per voxel takes less memory than the ids and costs no merge per request
    grid_voxels: int = field(default=0, repr=False)
    _voxels: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    _chunks: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)
    _levels: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    _read_flags: np.ndarray | None = field(default=None, repr=False)

    def reset(self) -> None:
        """Zero every counter."""
        self.__init__(grid_voxels=self.grid_voxels)

    def voxel_ids(self) -> np.ndarray:
        """Sorted linear (C-order) ids of the distinct voxels read so far (read-only)."""
        view = self._voxels.view() if self._read_flags is None else np.flatnonzero(self._read_flags)
        view.flags.writeable = False
        return view

    def fraction(self, total_voxels: int) -> float:
        """Voxels read so far (of the grid and of its levels) over the grid's ``total_voxels``."""
        return (self.unique_voxels + self.level_voxels) / max(total_voxels, 1)

    def add_voxels(self, linear: np.ndarray) -> None:
        """Count the voxel ids ``linear`` (sorted and distinct) as read."""
        if self._read_flags is None and 8 * (self.unique_voxels + len(linear)) > self.grid_voxels > 0:
            self._read_flags = np.zeros(self.grid_voxels, bool)
            self._read_flags[self._voxels] = True
            self._voxels = np.empty(0, np.int64)
        if self._read_flags is None:
            self._voxels, _ = _insert_sorted(self._voxels, linear, distinct=True)
            self.unique_voxels = len(self._voxels)
        else:
            self.unique_voxels += len(linear) - int(np.count_nonzero(self._read_flags[linear]))
            self._read_flags[linear] = True

    def add_level_read(self, level: int, linear: np.ndarray, delivered: int, fetched: int) -> None:
        """Count a request to the source's level ``level``: ``delivered`` voxels, the distinct
        ones of ids ``linear`` (sorted, on the level's grid), ``fetched`` bytes."""
        known = self._levels.get(level, np.empty(0, np.int64))
        self._levels[level], new = _insert_sorted(known, linear, distinct=True)
        self.level_voxels += new
        self.requests += 1
        self.voxels_read += delivered
        self.bytes_read += fetched

    def add_chunks(self, chunk_ids: np.ndarray, chunk_bytes: int) -> None:
        self._chunks, new = _insert_sorted(self._chunks, chunk_ids)
        self.bytes_read += new * chunk_bytes
        self.chunks_touched = len(self._chunks)


def _insert_sorted(known: np.ndarray, items: np.ndarray, distinct: bool = False) -> tuple[np.ndarray, int]:
    """``known`` (sorted, distinct) with ``items`` (sorted and distinct if ``distinct``) merged
    in, and how many were new.

    Costs one pass over ``known`` plus a sort of ``items``: requests are small next to the
    voxels read so far, so this beats re-sorting the union on every request.
    """
    if not distinct:
        items = np.unique(items)
    pos = np.searchsorted(known, items)
    present = known[np.minimum(pos, len(known) - 1)] == items if len(known) else np.zeros(len(items), bool)
    new = items[~present]
    return np.insert(known, pos[~present], new), len(new)
