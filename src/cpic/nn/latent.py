"""The latent tensor: encoder features of the patch around every voxel, as a batched function."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn

from cpic.layout import Layout
from cpic.sources import VolumeSource, check_same_grid
from cpic.util.indexing import c_strides


class Patches(NamedTuple):
    """Patches a result used: their ids ``[U]`` (as :meth:`PatchFeatures.voxels`: item ``b``'s
    offset by ``b`` times the cells of a volume) and their features ``[U, F]``."""

    ids: Tensor
    features: Tensor


@dataclass
class PatchLog:
    """What a :class:`PatchFeatures` did inside one :meth:`PatchFeatures.log` block: the patches
    of its latest call (``last``) and, when asked for, per source (``id(source)``) the largest
    value of each feature over the patches encoded without gradients and where it was
    (``peaks``: ``(values [F], cell ids within the volume [F])``)."""

    last: Patches | None = None
    peaks: dict[int, tuple[Tensor, Tensor]] | None = field(default=None)


class PatchFeatures:
    """``f(idx: LongTensor[B, P, d]) -> Tensor[B, P]``: feature ``idx[..., -1]`` of the encoded
    patch around the voxel that the layout maps ``idx`` to, for ``B`` sources at once.

    Each call reads every distinct voxel's patch once (one ``gather`` per source) and encodes
    all of them in one encoder call: the feature mode and repeated pivots share patches.
    Padding of non-power-of-two grids reads the nearest edge voxel. ``encoded`` counts the
    patches encoded so far. Gradients flow into the encoder's parameters. What a block of calls
    read is returned by :meth:`log`.

    ``stride=s`` puts patch centres on every ``s``-th voxel: the layout's grid is then the
    lattice of centres, ``ceil(n / s)`` per axis, and cell ``c`` is the patch centred at voxel
    ``min(s c + s // 2, n - 1)``. With ``s`` about the patch side, patches barely overlap, so a
    cross fiber through neighbouring cells reads new voxels instead of re-reading its
    neighbours' and the latent grid (its TT, its cross) is ``s^D`` times smaller. The "voxel
    ids" below are then ids of lattice cells; :meth:`centres` maps them to voxels.

    ``volume_shape`` is the voxel grid every source must have (default: the first source's).

    ``positions=True`` passes the patch centres, scaled to ``[-1, 1]``, as the encoder's second
    argument. ``background=v`` subtracts the features of a constant patch of value ``v`` (at
    the same position), so empty space has zero features and the TT's rank is spent on the
    structures in the volume.

    Example:
        >>> import torch, cpic
        >>> from cpic.layout import QTTLayout
        >>> from cpic.nn import PatchMLP
        >>> src = cpic.open_volume(torch.rand(16, 16, 16))
        >>> f = PatchFeatures([src], QTTLayout(src.shape, features=4, group=True), PatchMLP(3, 4), patch=3)
        >>> f(torch.zeros(1, 5, 5, dtype=torch.long)).shape, f.encoded
        (torch.Size([1, 5]), 1)
    """

    def __init__(
        self,
        sources: Sequence[VolumeSource],
        layout: Layout,
        encoder: nn.Module,
        patch: int,
        border: str = "reflect",
        device: torch.device | str | None = None,
        positions: bool = False,
        background: float | None = None,
        stride: int = 1,
        volume_shape: Sequence[int] | None = None,
    ):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("PatchFeatures needs at least one source.")
        if layout.features is None:
            raise ValueError("the layout needs a feature mode (features=F) for encoder features.")
        self.stride = stride
        self.volume_shape = tuple(volume_shape or self.sources[0].shape)
        centres = lattice(self.volume_shape, stride)
        if centres != tuple(layout.grid_shape):
            raise ValueError(
                f"grid {self.volume_shape} with stride {stride} gives {centres} patch centres, "
                f"not the layout's {layout.grid_shape}."
            )
        check_same_grid(self.sources, self.volume_shape, "the model's")
        self.layout, self.encoder, self.patch, self.border = layout, encoder, patch, border
        self.positions, self.background = positions, background
        self.device = torch.device(device) if device is not None else module_device(encoder)
        self.dtype = _module_dtype(encoder)
        self.encoded = 0
        self._logs: list[PatchLog] = []  # the open :meth:`log` blocks, shared with subset copies
        self._grid = torch.tensor(layout.grid_shape)
        self._strides = c_strides(layout.grid_shape)
        self._volume = torch.tensor(self.volume_shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.tensor_shape

    @property
    def batch(self) -> int:
        return len(self.sources)

    @contextmanager
    def log(self, peaks: bool = False) -> Iterator[PatchLog]:
        """A :class:`PatchLog` of the calls made inside the block (also through :meth:`subset`
        copies); with ``peaks``, where each feature peaked among the patches encoded without
        gradients (a cross selection).

        Example:
            >>> import torch, cpic
            >>> from cpic.layout import QTTLayout
            >>> from cpic.nn import PatchMLP
            >>> src = cpic.open_volume(torch.rand(8, 8, 8))
            >>> f = PatchFeatures([src], QTTLayout(src.shape, features=2), PatchMLP(1, 2), patch=1)
            >>> with f.log() as log:
            ...     _ = f(torch.zeros(1, 3, len(f.shape), dtype=torch.long))
            >>> log.last.ids.tolist(), log.last.features.shape
            ([0], torch.Size([1, 2]))
        """
        record = PatchLog(peaks={} if peaks else None)
        self._logs.append(record)
        try:
            yield record
        finally:
            self._logs.remove(record)

    def subset(self, items: Sequence[int]) -> PatchFeatures:
        """The same function over the sources at positions ``items``."""
        part = PatchFeatures.__new__(PatchFeatures)
        part.__dict__.update(self.__dict__)
        part.sources = [self.sources[i] for i in items]
        return part

    def voxels(self, idx: Tensor) -> Tensor:
        """Linear voxel ids ``[B, P]`` (item ``b``'s ids offset by ``b * voxels``) of ``idx``."""
        coords = self.layout.grid_coords(idx.cpu())
        offsets = torch.arange(idx.shape[0])[:, None] * int(self._grid.prod())
        return (coords * self._strides).sum(-1) + offsets

    def cell_coords(self, cells: Tensor) -> Tensor:
        """Coordinates ``[K, D]`` on the grid of patch centres of the cell ids ``cells [K]``."""
        return cells[:, None] // self._strides % self._grid

    def centres(self, cells: Tensor) -> Tensor:
        """Voxel coordinates ``[K, D]`` of the patch centres of the cell ids ``cells [K]`` (ids
        within one volume's grid of centres, as :meth:`voxels` without the offset)."""
        cells = self.cell_coords(cells)
        if self.stride == 1:
            return cells
        return torch.minimum(cells * self.stride + self.stride // 2, self._volume - 1)

    def encode(self, voxel_ids: Tensor) -> Tensor:
        """Features ``[U, F]`` of the patches around sorted, distinct ``voxel_ids``."""
        n = int(self._grid.prod())
        counts = torch.bincount(voxel_ids // n, minlength=self.batch).tolist()
        parts = []
        centres = self.centres(voxel_ids % n)
        for src, part in zip(self.sources, centres.split(counts)):  # one read per volume
            parts.append(src.gather(part, self.patch, self.border, device=self.device))
        patches = torch.cat(parts).to(self.dtype)
        patches = patches.reshape((len(patches), -1) + (self.patch,) * self.layout.ndim)
        args = ()
        if self.positions:
            scaled = (2 * centres.to(self.dtype) + 1) / self._volume.to(self.dtype) - 1
            args = (scaled.to(self.device),)
        features = self.encoder(patches, *args)
        if self.background is not None:
            blank = torch.full_like(patches[:1], self.background)
            features = features - self.encoder(blank.expand_as(patches) if args else blank, *args)
        self.encoded += len(patches)
        if features.dim() != 2 or features.shape[1] != self.layout.features:
            raise ValueError(
                f"the encoder must map patches to [K, {self.layout.features}] features, "
                f"got {tuple(features.shape)}."
            )
        if not features.requires_grad:
            for record in self._logs:
                if record.peaks is not None:
                    self._track(record.peaks, voxel_ids, features)
        return features

    def _track(self, peaks: dict, voxel_ids: Tensor, features: Tensor) -> None:
        """Fold the largest value of each feature among these patches into ``peaks``."""
        n = int(self._grid.prod())
        volume = (voxel_ids // n).to(features.device)
        index = volume[:, None].expand_as(features)
        values = features.new_full((self.batch, features.shape[1]), float("-inf"))
        values = values.scatter_reduce(0, index, features, "amax")
        # where each maximum sits: the smallest id among the patches that reach it
        local = (voxel_ids % n).to(features.device)[:, None].expand_as(features)
        candidates = torch.where(features == values[volume], local, torch.full_like(local, n))
        ids = torch.full_like(values, n, dtype=torch.long).scatter_reduce(0, index, candidates, "amin").cpu()
        for b in volume.unique().tolist():
            key = id(self.sources[b])
            new_values, new_ids = values[b], ids[b]
            if key in peaks:
                old_values, old_ids = peaks[key]
                better = new_values > old_values
                new_values = torch.where(better, new_values, old_values)
                new_ids = torch.where(better.cpu(), new_ids, old_ids)
            peaks[key] = (new_values, new_ids)

    def encode_at(
        self, centres: Sequence[Tensor | None], skip: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Ids (as :meth:`voxels`) and features ``[U, F]`` of the patches centred at the voxel ids
        ``centres[b]`` within volume ``b`` (``None``: none), leaving out the ids in ``skip``."""
        n = int(self._grid.prod())
        parts = [c.cpu() + b * n for b, c in enumerate(centres) if c is not None and len(c)]
        ids = torch.cat(parts).unique() if parts else torch.empty(0, dtype=torch.long)
        if skip is not None:
            ids = ids[~torch.isin(ids, skip)]
        if not len(ids):
            return ids, torch.empty(0, self.layout.features, device=self.device)
        return ids, self.encode(ids)

    def sampled_max(
        self, patches: Patches, also: Sequence[Tensor | None] | None = None
    ) -> tuple[Tensor, Patches]:
        """Per volume, the largest value of each feature over ``patches`` (e.g. those cross
        picked: the :class:`PatchLog` of :func:`cpic.interpolate`'s call) and over the patches
        centred at ``also[b]`` (cell ids within volume ``b``, e.g. the peaks of a selection),
        encoded now, differentiably: ``([B, F], the patches used: both sets)``.

        Example:
            >>> import torch, cpic
            >>> from cpic.layout import QTTLayout
            >>> from cpic.nn import PatchMLP
            >>> src = cpic.open_volume(torch.rand(8, 8, 8))
            >>> f = PatchFeatures([src] * 2, QTTLayout(src.shape, features=3), PatchMLP(1, 3), patch=1)
            >>> with f.log() as log:
            ...     _ = f(torch.zeros(2, 4, len(f.shape), dtype=torch.long))
            >>> f.sampled_max(log.last)[0].shape
            torch.Size([2, 3])
        """
        ids, features = patches
        more, extra = self.encode_at(also or [], skip=ids)
        if len(more):
            ids, features = torch.cat([ids, more]), torch.cat([features, extra.to(features.dtype)])
        volume = (ids // int(self._grid.prod())).to(features.device)
        out = features.new_full((self.batch, features.shape[1]), float("-inf"))
        out = out.scatter_reduce(0, volume[:, None].expand_as(features), features, "amax")
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out)), Patches(ids, features)

    def __call__(self, idx: Tensor) -> Tensor:
        B, P, _ = idx.shape
        unique, inverse = torch.unique(self.voxels(idx).flatten(), return_inverse=True)
        features = self.encode(unique)
        for record in self._logs:
            record.last = Patches(unique, features)
        rows = inverse.to(self.device) * features.shape[1] + idx[..., -1].flatten().to(self.device)
        return features.flatten().index_select(0, rows).reshape(B, P)


def lattice(shape: Sequence[int], stride: int) -> tuple[int, ...]:
    """The grid of patch centres on every ``stride``-th voxel of a grid of ``shape``.

    Example:
        >>> lattice((256, 250, 3), 4)
        (64, 63, 1)
    """
    return tuple(-(-int(n) // stride) for n in shape)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s parameters (the CPU for a module without any)."""
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _module_dtype(module: nn.Module) -> torch.dtype:
    param = next(module.parameters(), None)
    return param.dtype if param is not None else torch.float32
