"""A device-resident map from int64 keys to values: sorted segments, batched lookups."""

from __future__ import annotations

import torch
from torch import Tensor


def merge_sorted(k1: Tensor, v1: Tensor, k2: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two sorted, disjoint key arrays (and their values, first axis) in linear time.

    Example:
        >>> import torch
        >>> k1, v1 = torch.tensor([1, 5]), torch.tensor([1.0, 5.0])
        >>> k, v = merge_sorted(k1, v1, torch.tensor([3]), torch.tensor([3.0]))
        >>> k.tolist(), v.tolist()
        ([1, 3, 5], [1.0, 3.0, 5.0])
    """
    if len(k1) < len(k2):
        k1, v1, k2, v2 = k2, v2, k1, v1
    # places of the smaller array by binary search; the larger one fills the remaining places
    # in order (masked_scatter_ is one linear pass, no index list of the larger array)
    at2 = torch.arange(len(k2), device=k2.device) + torch.searchsorted(k1, k2)
    rest = torch.ones(len(k1) + len(k2), dtype=torch.bool, device=k1.device).index_fill_(0, at2, False)
    keys = k1.new_empty(len(rest)).masked_scatter_(rest, k1).index_copy_(0, at2, k2)
    values = v1.new_empty((len(rest),) + tuple(v1.shape[1:]))
    rest = rest.reshape((-1,) + (1,) * (v1.dim() - 1))
    values.masked_scatter_(rest, v1).index_copy_(0, at2, v2)
    return keys, values


def _nbytes(keys: Tensor, values: Tensor) -> int:
    return keys.element_size() * keys.numel() + values.element_size() * values.numel()


class KeyStore:
    """Keys and values in a few sorted, disjoint segments (a small log-structured store).

    A lookup is one ``searchsorted`` per segment; an insert adds a segment and merges
    segments of similar size, so each entry is copied O(log M) times. With ``max_bytes``
    the oldest segments are dropped once the store grows past it.

    Example:
        >>> import torch
        >>> store = KeyStore(torch.float32)
        >>> store.insert(torch.tensor([2, 7]), torch.tensor([0.5, 1.5]))
        >>> store.lookup(torch.tensor([7, 3, 2]))
        (tensor([ True, False,  True]), tensor([1.5000, 0.0000, 0.5000]))
    """

    #: segments whose merged size is below this are always merged: one segment searches fastest
    SMALL = 65536

    def __init__(self, dtype: torch.dtype, device: torch.device | str = "cpu", max_bytes: int | None = None):
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_bytes = max_bytes
        self._segments: list[tuple[Tensor, Tensor]] = []  # oldest (and largest) first

    def __len__(self) -> int:
        return sum(len(k) for k, _ in self._segments)

    @property
    def nbytes(self) -> int:
        return sum(_nbytes(k, v) for k, v in self._segments)

    def lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        """``keys: [K]`` -> (found ``[K]`` bool, values ``[K, ...]``, zero where not found)."""
        found_any = values = None
        for seg_keys, seg_values in self._segments:
            pos = torch.searchsorted(seg_keys, keys).clamp_(max=len(seg_keys) - 1)
            found = seg_keys.index_select(0, pos) == keys
            hit = seg_values.index_select(0, pos)
            mask = found.reshape((-1,) + (1,) * (hit.dim() - 1))
            if values is None:
                found_any, values = found, hit.masked_fill_(~mask, 0)
            else:
                found_any, values = found_any | found, torch.where(mask, hit, values)
        if values is None:
            found_any = torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
            values = torch.zeros(keys.shape, dtype=self.dtype, device=keys.device)
        return found_any, values

    def insert(self, keys: Tensor, values: Tensor) -> None:
        """Add sorted keys absent from the store, with their values."""
        if not len(keys):
            return
        self._segments.append((keys, values.to(self.dtype)))
        while len(self._segments) > 1:
            (k1, v1), (k2, v2) = self._segments[-2:]
            if len(k1) > 2 * len(k2) and len(k1) + len(k2) >= self.SMALL:
                break
            if self.max_bytes is not None and _nbytes(k1, v1) + _nbytes(k2, v2) > self.max_bytes // 2:
                break  # keep segments small enough to evict the oldest ones alone
            self._segments[-2:] = [merge_sorted(k1, v1, k2, v2)]
        if self.max_bytes is not None:
            while self._segments and self.nbytes > self.max_bytes:
                self._segments.pop(0)

    def clear(self) -> None:
        self._segments.clear()
