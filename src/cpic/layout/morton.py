"""Quantized TT layout with Morton (z-order) interleaving of the coordinate bits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.layout.base import Layout


class QTTLayout(Layout):
    """Morton-ordered quantized layout, coarse to fine.

    Each axis of size ``n_a`` is padded to ``2**L_a`` (``L_a = ceil(log2 n_a)``). Bit ``j`` of
    every axis with ``L_a > j`` belongs to level ``j``; levels run from the coarsest to the
    finest, and within a level the axes run in order. Levels are aligned at the fine end, so
    summing out the last ``m`` levels averages ``2**m`` blocks along every axis.

    ``group=False`` gives one mode of size 2 per bit; ``group=True`` one mode per level of size
    ``2**(number of axes at that level)`` (8 for a cube), the first axis as the highest bit.

    Example:
        >>> import torch
        >>> from cpic.layout import QTTLayout
        >>> layout = QTTLayout((4, 4))
        >>> layout.tensor_shape
        (2, 2, 2, 2)
        >>> layout.to_index(torch.tensor([3, 1])).tolist()   # x=0b11, y=0b01 -> (1,0),(1,1)
        [1, 0, 1, 1]
        >>> QTTLayout((64, 64, 64), group=True, features=16).tensor_shape
        (8, 8, 8, 8, 8, 8, 16)
    """

    def __init__(self, grid_shape: Sequence[int], features: int | None = None, group: bool = False):
        super().__init__(grid_shape, features)
        self.group = bool(group)
        self.bits = tuple(max(int(n - 1).bit_length(), 0) for n in self.grid_shape)
        levels = max(self.bits) if max(self.bits) > 0 else 0
        self.levels = levels
        # one entry per bit, coarse to fine: (axis, bit position, level counted from the coarsest)
        bit_axis, bit_pos, bit_level = [], [], []
        for level, j in enumerate(range(levels - 1, -1, -1)):
            for axis, la in enumerate(self.bits):
                if la > j:
                    bit_axis.append(axis)
                    bit_pos.append(j)
                    bit_level.append(level)
        if not bit_axis:  # a single voxel: keep one mode of size 1 so the tensor has a mode
            self._spatial_shape: tuple[int, ...] = (1,)
        elif self.group:
            counts = torch.bincount(torch.tensor(bit_level), minlength=levels).tolist()
            self._spatial_shape = tuple(2**c for c in counts)
        else:
            self._spatial_shape = (2,) * len(bit_axis)
        self._bit_axis = torch.tensor(bit_axis, dtype=torch.long)
        self._bit_pos = torch.tensor(bit_pos, dtype=torch.long)
        self._bit_level = torch.tensor(bit_level, dtype=torch.long)
        if self.group and bit_axis:
            # place of each bit inside its level's mode: the level's first axis is the highest bit
            level_t = torch.tensor(bit_level)
            within = torch.zeros(len(bit_axis), dtype=torch.long)
            for level in range(levels):
                members = (level_t == level).nonzero().flatten()
                within[members] = torch.arange(len(members) - 1, -1, -1)
            self._bit_mode = level_t
            self._bit_shift = within
        else:
            self._bit_mode = torch.arange(len(bit_axis))
            self._bit_shift = torch.zeros(len(bit_axis), dtype=torch.long)
        self._decode_table = self._single_mode_coords()
        self._table_cache: dict[torch.device, tuple[Tensor, Tensor]] = {}

    def _single_mode_coords(self) -> Tensor | None:
        """``[sum(spatial_shape), D]``: the coordinates each value of each mode contributes.

        Coordinates are the sum of these rows over the modes, which one ``embedding_bag``
        computes fast; float32 holds them exactly below 2**24 voxels per side.
        """
        if max(self.bits) > 24 or not len(self._bit_axis):
            return None
        rows = []
        for m, n in enumerate(self._spatial_shape):
            idx = torch.zeros(n, len(self._spatial_shape), dtype=torch.long)
            idx[:, m] = torch.arange(n)
            rows.append(self._decode_bits(idx))
        return torch.cat(rows).to(torch.float32)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self._spatial_shape

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return tuple(2**b for b in self.bits)

    def coarse_modes(self, level: int) -> int:
        """How many leading spatial modes hold the ``level`` coarsest levels of the bits.

        Fixing those modes picks one block of ``2**(levels - level)`` voxels along every axis
        of the finest levels' extent.

        Example:
            >>> QTTLayout((64, 64, 64), group=True).coarse_modes(2), QTTLayout((64, 64, 64)).coarse_modes(2)
            (2, 6)
        """
        if not 0 <= level <= self.levels:
            raise ValueError(f"level must be in [0, {self.levels}] for grid {self.grid_shape}, got {level}.")
        if self.group:
            return level
        return int((self._bit_level < level).sum())

    def validity_cores(self) -> list[Tensor]:
        """Cores of the exact TT of :meth:`valid`: a comparison automaton per padded axis.

        Reading the bits coarse to fine, each padded axis is either still equal to the largest
        valid coordinate or already below it; a bit above the limit's bit while equal is
        padding. The rank is ``2**(number of padded axes)`` at most.

        Example:
            >>> import torch
            >>> layout = QTTLayout((3, 5))
            >>> cores = layout.validity_cores()
            >>> mask = cores[0]
            >>> for core in cores[1:]:
            ...     mask = torch.einsum("...r,rns->...ns", mask, core)
            >>> int(mask.sum()), max(c.shape[2] for c in cores)
            (15, 4)
        """
        if not len(self._bit_axis):
            return [torch.ones(1, n, 1, dtype=torch.float64) for n in self.spatial_shape]
        padded = [a for a, n in enumerate(self.grid_shape) if n != 2 ** self.bits[a]]
        states = 2 ** len(padded)
        state_in = torch.arange(states)[:, None]
        cores = []
        for m, n in enumerate(self.spatial_shape):
            value = torch.arange(n)[None, :]
            state_out = state_in.expand(states, n).clone()
            alive = torch.ones(states, n, dtype=torch.bool)
            for i in (self._bit_mode == m).nonzero().flatten().tolist():
                axis, pos, shift = int(self._bit_axis[i]), int(self._bit_pos[i]), int(self._bit_shift[i])
                if axis not in padded:
                    continue
                flag = 1 << padded.index(axis)
                equal = (state_in & flag) == 0
                bit = (value >> shift) & 1
                limit = ((self.grid_shape[axis] - 1) >> pos) & 1
                alive &= ~(equal & (bit > limit))
                state_out = torch.where(equal & (bit < limit), state_out | flag, state_out)
            core = torch.zeros(states, n, states, dtype=torch.float64)
            rows, cols = alive.nonzero(as_tuple=True)
            core[rows, cols, state_out[rows, cols]] = 1.0
            cores.append(core)
        cores[0] = cores[0][:1]  # start equal to the limit on every axis
        cores[-1] = cores[-1].sum(-1, keepdim=True)  # accept every live state
        return cores

    def _tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (
            self._bit_axis.to(device),
            self._bit_pos.to(device),
            self._bit_mode.to(device),
            self._bit_shift.to(device),
        )

    def _spatial_index(self, coords: Tensor) -> Tensor:
        out_shape = coords.shape[:-1] + (len(self._spatial_shape),)
        if not len(self._bit_axis):
            return coords.new_zeros(out_shape)
        axis, pos, mode, shift = self._tables(coords.device)
        bits = (coords[..., axis] >> pos) & 1  # [..., n_bits]
        if not self.group:
            return bits
        return coords.new_zeros(out_shape).index_add_(-1, mode, bits << shift)

    def _spatial_coords(self, idx: Tensor) -> Tensor:
        if not len(self._bit_axis):
            return idx.new_zeros(idx.shape[:-1] + (self.ndim,))
        if self._decode_table is None:
            return self._decode_bits(idx)
        if idx.device not in self._table_cache:
            offsets = torch.tensor((0,) + self._spatial_shape[:-1]).cumsum(0)
            self._table_cache[idx.device] = (self._decode_table.to(idx.device), offsets.to(idx.device))
        table, offsets = self._table_cache[idx.device]
        flat = idx.reshape(-1, idx.shape[-1]) + offsets
        coords = torch.nn.functional.embedding_bag(flat, table, mode="sum")
        return coords.long().reshape(idx.shape[:-1] + (self.ndim,))

    def _decode_bits(self, idx: Tensor) -> Tensor:
        out_shape = idx.shape[:-1] + (self.ndim,)
        axis, pos, mode, shift = self._tables(idx.device)
        bits = (idx[..., mode] >> shift) & 1
        return idx.new_zeros(out_shape).index_add_(-1, axis, bits << pos)
