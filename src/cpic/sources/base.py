"""What every volume source provides: shape, normalisation, one batched ``gather``, accounting."""

from __future__ import annotations

import math
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
import torch
from torch import Tensor

from cpic.sources.spatial import SpatialInfo
from cpic.sources.stats import ReadStats
from cpic.util import KeyStore
from cpic.util.checks import check_int
from cpic.util.indexing import c_strides

BORDERS = ("reflect", "edge", "zero")
NONFINITE_POLICIES = ("raise", "zero")
#: the most voxels a grid may declare: linear voxel ids must fit an int64
MAX_VOXELS = 2**62
#: what a backend may raise on a truncated or corrupt file while reading voxels
READ_FAILURES = (OSError, EOFError, ValueError, RuntimeError, IndexError, KeyError)


class SourceError(ValueError):
    """A volume cannot be opened or read as asked; the message names the input."""


def check_dtype(name: str, dtype) -> None:
    """Refuse values that are not real numbers (strings, records, objects, complex numbers).

    Example:
        >>> check_dtype("v.npy", "float32")
        >>> try:
        ...     check_dtype("v.npy", "complex64")
        ... except SourceError as err:
        ...     print(err)
        v.npy: holds complex64 values; expected real numbers (integers, floats or booleans).
    """
    if isinstance(dtype, torch.dtype):
        ok = not dtype.is_complex
    else:
        try:
            ok = np.dtype(dtype).kind in "biuf"
        except TypeError:
            ok = False
    if not ok:
        raise SourceError(
            f"{name}: holds {dtype} values; expected real numbers (integers, floats or booleans)."
        )


@dataclass(frozen=True)
class Normalization:
    """Intensities are mapped by ``(v - low) / (high - low)``; ``method`` says where they came from."""

    low: float = 0.0
    high: float = 1.0
    method: str = "none"

    def apply(self, values: Tensor) -> Tensor:
        scale = self.high - self.low
        return (values - self.low) / (scale if scale != 0 else 1.0)


@dataclass(frozen=True)
class Level:
    """A coarser copy of a source's grid (a pyramid level), read by ``source``: its voxel ``k``
    stands for the base voxels ``k * factors`` to ``(k + 1) * factors - 1`` (the last one per
    axis also for any base voxels beyond). ``index`` is its place in the pyramid (the base is 0).
    Its reads count in the base source's ``stats`` (``ReadStats.level_voxels``).

    Example:
        >>> import numpy as np
        >>> from cpic.sources import ArraySource
        >>> base = ArraySource(np.zeros((8, 8)))
        >>> base.add_levels([ArraySource(np.zeros((4, 4)))])
        >>> base.levels[0].factors, base.levels[0].source.shape
        ((2, 2), (4, 4))
    """

    index: int
    factors: tuple[int, ...]
    source: VolumeSource

    @property
    def shape(self) -> tuple[int, ...]:
        return self.source.shape


def check_same_grid(sources, shape: tuple[int, ...], whose: str) -> None:
    """A ``ValueError`` naming the first of ``sources`` whose grid is not ``shape`` (``whose``'s).

    Example:
        >>> import numpy as np
        >>> from cpic import open_volume
        >>> check_same_grid([open_volume(np.zeros((2, 3)))], (2, 3), "the model")
    """
    for src in sources:
        if src.shape != tuple(shape):
            raise ValueError(f"{src.name}: grid {src.shape} differs from {whose} {tuple(shape)}.")


def reflect(coords: Tensor, size: Tensor) -> Tensor:
    """Mirror out-of-range coordinates without repeating the edge (numpy's ``reflect``).

    Example:
        >>> import torch
        >>> reflect(torch.tensor([-2, -1, 0, 3, 4, 5]), torch.tensor(4)).tolist()
        [2, 1, 0, 3, 2, 1]
    """
    period = (2 * (size - 1)).clamp_min(1)
    c = coords.abs() % period
    c = torch.where(c >= size, period - c, c)
    return torch.where(size > 1, c, torch.zeros_like(c))


def patch_offsets(patch: int, ndim: int) -> Tensor:
    """Offsets ``[patch**ndim, ndim]`` of a centred patch, C order."""
    half = patch // 2
    axes = [torch.arange(-half, half + 1)] * ndim
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, ndim)


class VolumeSource(ABC):
    """A D-dimensional grid of voxels (optionally with channels) read on demand.

    Subclasses implement ``_read(coords)`` for in-range, distinct, C-order-sorted voxel
    coordinates; this class handles patches, borders, normalisation, non-finite voxels,
    devices and accounting.
    """

    #: storage unit size in bytes for ``stats.bytes_read`` (0: count voxel bytes)
    chunk_bytes: int = 0

    def __init__(
        self,
        name: str,
        shape: Sequence[int],
        dtype: np.dtype | torch.dtype | str,
        channels: int | None = None,
        spacing: Sequence[float] | None = None,
        nonfinite: str = "raise",
    ):
        self.name = name
        self.shape = tuple(int(n) for n in shape)
        if not self.shape or any(n < 1 for n in self.shape):
            raise SourceError(f"{name}: the grid shape {self.shape} must have at least one axis, each >= 1.")
        if math.prod(self.shape) >= MAX_VOXELS:
            raise SourceError(
                f"{name}: the declared grid {self.shape} is absurdly large (2^62 voxels or more)."
            )
        check_dtype(name, dtype)
        self.dtype = dtype
        self.channels = channels
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)
        self._spatial: SpatialInfo | None = None
        if nonfinite not in NONFINITE_POLICIES:
            raise SourceError(f"{name}: nonfinite must be one of {NONFINITE_POLICIES}, got {nonfinite!r}.")
        self.nonfinite = nonfinite
        self.normalization = Normalization()
        self.stats = ReadStats(grid_voxels=math.prod(self.shape))
        self.cache: KeyStore | None = None
        self._strides = c_strides(self.shape)
        #: coarser copies of the grid, finest first (a pyramid's levels; empty for most sources)
        self.levels: tuple[Level, ...] = ()
        self._level_of: tuple[weakref.ref, int] | None = None  # (base, index) of a level

    # ------------------------------------------------------------------ description
    @property
    def ndim(self) -> int:
        """Number of grid axes ``D`` (channels excluded)."""
        return len(self.shape)

    @property
    def spatial(self) -> SpatialInfo | None:
        """Where the grid sits in the world (affine, NIfTI codes and units): what a NIfTI file
        or a resampled anatomy says, else axis-aligned voxels of ``spacing`` (1 when unknown)
        from the origin; None for grids of more than three axes. Setting it sets ``spacing``.

        Example:
            >>> import numpy as np
            >>> from cpic.sources import ArraySource
            >>> ArraySource(np.zeros((4, 4, 4)), spacing=(2.0, 2.0, 3.0)).spatial.affine[2]
            (0.0, 0.0, 3.0, 0.0)
        """
        if self._spatial is not None or self.ndim > 3:
            return self._spatial
        return SpatialInfo.from_spacing(self.spacing or (1.0,) * self.ndim)

    @spatial.setter
    def spatial(self, info: SpatialInfo | None) -> None:
        if info is not None and self.ndim > 3:
            raise SourceError(f"{self.name}: a {self.ndim}-D grid has no 3-D world frame.")
        self._spatial = info
        if info is not None:
            self.spacing = info.spacing[: self.ndim]

    @property
    def size(self) -> int:
        """Number of voxels in the grid."""
        return int(np.prod(self.shape))

    @property
    def identity(self) -> str:
        """The name without its folders: what seeds per-volume randomness (a model's first
        pivots), so a volume gets the same prediction wherever it is stored and however its
        path is written (relative, absolute, moved).

        Example:
            >>> import numpy as np
            >>> from cpic.sources import ArraySource
            >>> ArraySource(np.zeros((2, 2)), name="/data/run1/t1.nii.gz").identity
            't1.nii.gz'
        """
        return PurePath(self.name).name or self.name

    def __repr__(self) -> str:
        chan = f", channels={self.channels}" if self.channels else ""
        return f"{type(self).__name__}({self.name!r}, shape={self.shape}{chan}, dtype={self.dtype})"

    def describe(self) -> dict:
        """A JSON-ready summary of the source."""
        return {
            "name": self.name,
            "kind": type(self).__name__,
            "shape": list(self.shape),
            "channels": self.channels,
            "dtype": str(self.dtype),
            "spacing": None if self.spacing is None else list(self.spacing),
            "levels": [{"shape": list(lv.shape), "factors": list(lv.factors)} for lv in self.levels],
            "normalization": {
                "method": self.normalization.method,
                "low": self.normalization.low,
                "high": self.normalization.high,
            },
        }

    def add_levels(self, sources: Sequence[VolumeSource]) -> None:
        """Make ``sources`` (finest first) this grid's coarser :attr:`levels`, their reads
        counted in this source's ``stats``; each must be this grid divided, rounding down or
        up, by an integer factor per axis (:func:`~cpic.sources.pyramid.level_factors`), and
        have its channels; an error names the level (its ``name``).

        Example:
            >>> import numpy as np, torch
            >>> from cpic.sources import ArraySource
            >>> base = ArraySource(np.zeros((9, 8)))
            >>> base.add_levels([ArraySource(np.ones((5, 4))), ArraySource(np.ones((3, 2)))])
            >>> [level.factors for level in base.levels]
            [(2, 2), (4, 4)]
            >>> _ = base.levels[1].source.read_planes(0, 3)
            >>> base.stats.voxels_read, base.stats.level_voxels, base.stats.unique_voxels
            (6, 6, 0)
        """
        from cpic.sources.pyramid import level_factors

        factors = level_factors(self.name, self.shape, [s.shape for s in sources], [s.name for s in sources])
        for source in sources:
            if source.channels != self.channels:
                raise SourceError(
                    f"{source.name}: a level of {self.name} with {source.channels or 1} channel(s), "
                    f"the base has {self.channels or 1}."
                )
        levels = []
        for index, (source, f) in enumerate(zip(sources, factors), start=1):
            source._level_of = (weakref.ref(self), index)  # no cycle: files close with the base
            levels.append(Level(index, f, source))
        self.levels = tuple(levels)

    # ------------------------------------------------------------------ reading
    @abstractmethod
    def _read(self, coords: Tensor) -> Tensor:
        """Raw values at distinct in-range coordinates ``[U, D]`` (C-order sorted, CPU)
        -> ``[U]`` or ``[U, C]``."""

    def _chunk_ids(self, coords: Tensor) -> np.ndarray | None:
        """Storage units holding ``coords`` (for accounting), or None."""
        return None

    def gather(
        self,
        centres: Tensor,
        patch: int = 1,
        border: str = "reflect",
        device: torch.device | str | None = None,
        normalize: bool = True,
    ) -> Tensor:
        """Patches around ``centres: LongTensor[K, D]`` -> ``[K, patch**D]`` (``[K, C, patch**D]``
        with channels), float32 on ``device``, in one batched read.

        ``border`` decides what lies outside the grid: ``reflect`` (mirror), ``edge`` (repeat
        the edge voxel) or ``zero`` (zeros in the output).

        Example:
            >>> import numpy as np, torch
            >>> from cpic import open_volume
            >>> src = open_volume(np.arange(27, dtype=np.uint8).reshape(3, 3, 3))
            >>> src.gather(torch.tensor([[1, 1, 1]]), patch=3).shape
            torch.Size([1, 27])
            >>> src.gather(torch.tensor([[0, 0, 0]]), patch=1).tolist(), src.stats.unique_voxels
            ([[0.0]], 27)
        """
        started = time.perf_counter()
        centres = self._check_centres(centres)
        check_int(f"{self.name}: patch", patch, odd=True, error=SourceError)
        if border not in BORDERS:
            raise SourceError(f"{self.name}: border must be one of {BORDERS}, got {border!r}.")
        K, D = centres.shape
        size = torch.tensor(self.shape)
        coords = (centres[:, None, :] + patch_offsets(patch, D)).reshape(-1, D)
        inside = None
        if patch > 1:
            if border == "reflect":
                coords = reflect(coords, size)
            elif border == "edge":
                coords = torch.minimum(coords.clamp_min(0), size - 1)
            else:
                inside = ((coords >= 0) & (coords < size)).all(1)
                coords = torch.minimum(coords.clamp_min(0), size - 1)
        linear = (coords * self._strides).sum(1)
        unique, inverse = torch.unique(linear, return_inverse=True)
        values = self._read_cached(unique, K * patch**D)
        out = values.index_select(0, inverse)  # [K * p^D] or [K * p^D, C]
        if normalize:
            out = self.normalization.apply(out)
        if inside is not None:
            out = out * (inside[:, None] if out.dim() == 2 else inside)
        if out.dim() == 2:
            out = out.reshape(K, patch**D, -1).permute(0, 2, 1)
        else:
            out = out.reshape(K, patch**D)
        self.stats.seconds += time.perf_counter() - started
        return out.to(device) if device is not None else out

    def _read_cached(self, unique: Tensor, delivered: int, coords: Tensor | None = None) -> Tensor:
        """Raw values (float32) of distinct sorted linear voxel ids (at ``coords``, if known),
        through the voxel cache."""
        if self.cache is None:
            missing, hit = unique, None
        else:
            hit, cached = self.cache.lookup(unique)
            missing = unique[~hit]
            self.stats.cache_hits += int(hit.sum())
            coords = None if coords is None else coords[~hit]
        coords = self._unravel(missing) if coords is None else coords
        if hit is not None and bool(hit.all()):  # nothing to fetch (some readers reject no voxels)
            self._account(unique, coords, delivered)
            return cached
        try:
            raw = torch.as_tensor(self._read(coords))
        except SourceError:
            raise
        except READ_FAILURES as err:
            raise SourceError(
                f"{self.name}: reading voxels failed, the file is truncated or corrupt ({err})."
            ) from None
        fresh = self._handle_nonfinite(raw.to(torch.float32), raw)
        self._account(unique, coords, delivered)
        if self.cache is None:
            return fresh
        self.cache.insert(missing, fresh)
        values = cached.clone()
        values[~hit] = fresh
        return values

    def voxels_read(self) -> Tensor:
        """Coordinates ``[K, D]`` of the distinct voxels read so far (what ``stats`` counts).

        Example:
            >>> import numpy as np, torch
            >>> from cpic import open_volume
            >>> src = open_volume(np.zeros((4, 4, 4), np.float32))
            >>> _ = src.read(torch.tensor([[3, 2, 1], [0, 0, 1]]))
            >>> src.voxels_read().tolist()
            [[0, 0, 1], [3, 2, 1]]
        """
        return self.coords_of(torch.from_numpy(self.stats.voxel_ids().copy()))

    def coords_of(self, linear: Tensor) -> Tensor:
        """Coordinates ``[K, D]`` of C-order linear voxel ids ``[K]`` (as ``stats.voxel_ids()``)."""
        return self._unravel(linear)

    def enable_cache(self, max_bytes: int) -> VolumeSource:
        """Keep voxels read, up to ``max_bytes``, so repeated patches are not read again.

        Example:
            >>> import numpy as np, torch
            >>> from cpic import open_volume
            >>> src = open_volume(np.ones((8, 8, 8), np.float32)).enable_cache(1 << 20)
            >>> _ = src.gather(torch.tensor([[4, 4, 4]]), patch=3)
            >>> _ = src.gather(torch.tensor([[4, 4, 4]]), patch=3)
            >>> src.stats.cache_hits
            27
        """
        self.cache = KeyStore(torch.float32, max_bytes=int(max_bytes)) if max_bytes > 0 else None
        return self

    def read(
        self, coords: Tensor, device: torch.device | str | None = None, normalize: bool = True
    ) -> Tensor:
        """Voxel values at ``coords: LongTensor[K, D]`` -> ``[K]`` (``[K, C]``): ``gather``, patch 1.

        Example:
            >>> import numpy as np, torch
            >>> from cpic import open_volume
            >>> open_volume(np.arange(8.0).reshape(2, 2, 2)).read(torch.tensor([[1, 1, 1]])).tolist()
            [7.0]
        """
        out = self.gather(coords, patch=1, device=device, normalize=normalize)
        return out[:, 0] if out.dim() == 2 else out[:, :, 0]

    def read_planes(self, start: int, stop: int, normalize: bool = True) -> Tensor:
        """Every voxel of planes ``start:stop`` of the first axis, in one request ->
        ``[stop - start, *shape[1:]]`` (``[..., C]`` with channels). Read slab by slab, a
        volume need not fit in memory; the voxels count as read.

        Example:
            >>> import numpy as np
            >>> from cpic import open_volume
            >>> open_volume(np.arange(8.0).reshape(2, 2, 2)).read_planes(1, 2).tolist()
            [[[4.0, 5.0], [6.0, 7.0]]]
        """
        if not 0 <= start < stop <= self.shape[0]:
            raise SourceError(
                f"{self.name}: planes {start}:{stop} lie outside the first axis of the grid {self.shape}."
            )
        started = time.perf_counter()
        axes = [torch.arange(start, stop)] + [torch.arange(n) for n in self.shape[1:]]
        coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, self.ndim)
        plane = math.prod(self.shape[1:])
        linear = torch.arange(start * plane, stop * plane)  # C order: sorted and distinct already
        values = self._read_cached(linear, len(linear), coords)
        if normalize:
            values = self.normalization.apply(values)
        self.stats.seconds += time.perf_counter() - started
        return values.reshape(stop - start, *self.shape[1:], *values.shape[1:])

    def _check_centres(self, centres) -> Tensor:
        centres = torch.as_tensor(centres)
        if centres.dim() != 2 or centres.shape[1] != self.ndim:
            raise SourceError(
                f"{self.name}: centres must have shape [K, {self.ndim}] for a {self.ndim}-D volume, "
                f"got {tuple(centres.shape)}."
            )
        if centres.is_floating_point():
            raise SourceError(f"{self.name}: centres must be integer voxel coordinates, got {centres.dtype}.")
        centres = centres.long().cpu()
        outside = ((centres < 0) | (centres >= torch.tensor(self.shape))).any(1)
        if bool(outside.any()):
            first = centres[outside.nonzero()[0, 0]].tolist()
            raise SourceError(
                f"{self.name}: {int(outside.sum())} centres lie outside the grid {self.shape}, e.g. {first}."
            )
        return centres

    def _unravel(self, linear: Tensor) -> Tensor:
        out = []
        for stride, n in zip(self._strides.tolist(), self.shape):
            out.append((linear // stride) % n)
        return torch.stack(out, 1)

    def _handle_nonfinite(self, values: Tensor, raw: Tensor | None = None) -> Tensor:
        bad = ~torch.isfinite(values)
        count = int(bad.sum())
        if not count:
            return values
        if raw is not None and raw.is_floating_point() and bool(torch.isfinite(raw[bad]).any()):
            raise SourceError(
                f"{self.name}: holds values beyond the float32 range (|x| > 3.4e38, e.g. "
                f"{float(raw[bad & torch.isfinite(raw)][0]):.3g}); rescale the volume."
            )
        self.stats.nonfinite += count
        if self.nonfinite == "raise":
            raise SourceError(
                f"{self.name}: {count} of the voxels read are NaN or Inf; open the volume with "
                f"nonfinite='zero' to read them as 0."
            )
        return torch.where(bad, torch.zeros_like(values), values)

    def _account(self, unique: Tensor, read_coords: Tensor, delivered: int) -> None:
        """Count a request: ``unique`` voxels delivered, ``read_coords`` fetched from storage."""
        stats = self.stats
        fetched = stats.bytes_read
        stats.requests += 1
        stats.voxels_read += delivered
        stats.add_voxels(unique.numpy())
        chunks = self._chunk_ids(read_coords) if len(read_coords) else None
        if chunks is not None:
            stats.add_chunks(chunks, self.chunk_bytes)
        elif not self.chunk_bytes:
            stats.bytes_read += len(read_coords) * self.itemsize
        if self._level_of is not None:  # a pyramid level: its reads are the base's too
            base, index = self._level_of[0](), self._level_of[1]
            if base is not None:
                base.stats.add_level_read(index, unique.numpy(), delivered, stats.bytes_read - fetched)

    @property
    def itemsize(self) -> int:
        try:
            return np.dtype(self.dtype).itemsize * (self.channels or 1)
        except TypeError:
            return torch.empty(0, dtype=self.dtype).element_size() * (self.channels or 1)

    # ------------------------------------------------------------------ normalisation
    def set_normalization(self, method=None, sample: int = 65536, seed: int = 0) -> VolumeSource:
        """Choose the intensity normalisation; returns ``self``.

        ``None``: identity. ``"range"``: the dtype's range for integers (e.g. 0..255), the
        sampled min..max for floats. ``"percentile"``: the 0.5th..99.5th percentiles of
        ``sample`` random voxels. ``(low, high)``: fixed values.

        Example:
            >>> import numpy as np
            >>> from cpic import open_volume
            >>> open_volume(np.zeros((4, 4), np.uint8)).set_normalization("range").normalization
            Normalization(low=0.0, high=255.0, method='range')
        """
        if method is None or method == "none":
            self.normalization = Normalization()
        elif isinstance(method, (tuple, list)) and len(method) == 2:
            self.normalization = Normalization(float(method[0]), float(method[1]), "fixed")
        elif method == "range" and _is_integer(self.dtype):
            info = np.iinfo(np.dtype(str(self.dtype).replace("torch.", "")))
            self.normalization = Normalization(float(info.min), float(info.max), "range")
        elif method in ("range", "percentile"):
            values = self._sample(sample, seed)
            if method == "range":
                low, high = float(values.min()), float(values.max())
            else:
                low, high = (
                    float(v) for v in torch.quantile(values, torch.tensor([0.005, 0.995], dtype=values.dtype))
                )
            self.normalization = Normalization(low, high, method)
        else:
            raise SourceError(
                f"{self.name}: normalize must be None, 'range', 'percentile' or (low, high), got {method!r}."
            )
        return self

    def _sample(self, count: int, seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        count = min(count, self.size)
        coords = torch.stack([torch.randint(0, n, (count,), generator=gen) for n in self.shape], 1)
        with self.uncounted():  # sampling for the normalisation is not the caller's reading
            values = self.read(coords, normalize=False)
        return values.flatten().double()

    @contextmanager
    def uncounted(self) -> Iterator[VolumeSource]:
        """Reads inside this block do not count in :attr:`stats` (a figure's, not a model's).

        Example:
            >>> import torch, cpic
            >>> src = cpic.open_volume(torch.ones(4, 4, 4))
            >>> with src.uncounted():
            ...     _ = src.read_planes(0, 4)
            >>> src.stats.unique_voxels
            0
        """
        saved, self.stats = self.stats, ReadStats(grid_voxels=self.stats.grid_voxels)
        try:
            yield self
        finally:
            self.stats = saved


def _is_integer(dtype) -> bool:
    if isinstance(dtype, torch.dtype):
        return not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
    return np.issubdtype(np.dtype(dtype), np.integer)
