"""A device-resident evaluation cache: every entry of the tensor is computed at most once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: ``f(idx: LongTensor[B, P, d]) -> Tensor[B, P]``
BatchedFunction = Callable[[Tensor], Tensor]

_KEY_BITS = 62
_MIX = (0x9E3779B97F4A7C15 - 2**64, 0xBF58476D1CE4E5B9 - 2**64, 0x94D049BB133111EB - 2**64)


class BudgetExhausted(Exception):
    """Raised inside a sweep when the next evaluation would exceed the budget."""


class EvaluationCache:
    """Keys and values of every entry evaluated so far, for ``batch`` tensors of one shape.

    Keys pack ``(batch item, multi-index)`` into one int64: the exact linear index when the
    batched tensor has fewer than ``2**62`` entries, otherwise a 64-bit mix of the indices
    (collisions then have probability about ``M**2 / 2**(62 - log2 B)`` for ``M`` entries).
    Keys are kept sorted so a lookup is one ``searchsorted``.

    ``evaluate`` calls ``f`` once per request on the missing entries only; batch items
    missing fewer entries than others are padded with repeats of their own entries, and
    those padded calls are counted in ``evaluations`` (``unique_evaluations`` counts
    distinct entries).

    Example:
        >>> import torch
        >>> calls = []
        >>> def f(idx):
        ...     calls.append(idx.shape[1])
        ...     return idx.sum(-1).double()
        >>> cache = EvaluationCache((4, 4), batch=1, dtype=torch.float64)
        >>> idx = torch.tensor([[[0, 1], [2, 3], [0, 1]]])
        >>> cache.evaluate(f, idx).tolist()
        [[1.0, 5.0, 1.0]]
        >>> cache.evaluate(f, idx).tolist(), calls, cache.unique_evaluations
        ([[1.0, 5.0, 1.0]], [2], 2)
    """

    def __init__(
        self,
        shape: Sequence[int],
        batch: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        budget: int | None = None,
        enabled: bool = True,
    ):
        self.shape = tuple(int(n) for n in shape)
        self.batch = int(batch)
        self.dtype = dtype
        self.device = torch.device(device)
        self.budget = budget
        self.enabled = enabled
        batch_bits = max(self.batch - 1, 0).bit_length()
        self._item_bits = _KEY_BITS - batch_bits
        total = math.prod(self.shape)
        self.exact = total <= 2**self._item_bits
        strides = [math.prod(self.shape[k + 1 :]) for k in range(len(self.shape))] if self.exact else [0]
        self._strides = torch.tensor(strides, dtype=torch.long, device=self.device)
        self._keys = torch.empty(0, dtype=torch.long, device=self.device)
        self._values = torch.empty(0, dtype=dtype, device=self.device)
        self.evaluations = 0
        self.unique_evaluations = 0
        self.hits = 0

    def __len__(self) -> int:
        return self._keys.numel()

    def keys(self, idx: Tensor) -> Tensor:
        """Packed keys ``[B, P]`` of multi-indices ``[B, P, d]``."""
        if self.exact:
            item = (idx * self._strides).sum(-1)
        else:
            item = torch.zeros(idx.shape[:-1], dtype=torch.long, device=idx.device)
            for k in range(idx.shape[-1]):  # loop over modes, vectorised over entries
                item = (item ^ idx[..., k]) * _MIX[k % 3]
                item = item ^ (item >> 29)
            item = item & (2**self._item_bits - 1)
        batch = torch.arange(idx.shape[0], device=idx.device)[:, None]
        return (batch << self._item_bits) | item

    def _lookup(self, keys: Tensor) -> tuple[Tensor, Tensor]:
        if not len(self):
            return torch.zeros_like(keys, dtype=torch.bool), torch.zeros(
                keys.shape, dtype=self.dtype, device=keys.device
            )
        pos = torch.searchsorted(self._keys, keys).clamp(max=len(self) - 1)
        return self._keys[pos] == keys, self._values[pos]

    def _insert(self, keys: Tensor, values: Tensor) -> None:
        """Merge sorted, new ``keys`` into the sorted store (linear time, no re-sort)."""
        if not len(self):
            self._keys, self._values = keys, values
            return
        at = torch.searchsorted(self._keys, keys) + torch.arange(len(keys), device=keys.device)
        is_new = torch.zeros(len(self) + len(keys), dtype=torch.bool, device=keys.device)
        is_new[at] = True
        merged_keys = torch.empty(len(is_new), dtype=torch.long, device=keys.device)
        merged_values = torch.empty(len(is_new), dtype=self.dtype, device=keys.device)
        merged_keys[at], merged_values[at] = keys, values
        merged_keys[~is_new], merged_values[~is_new] = self._keys, self._values
        self._keys, self._values = merged_keys, merged_values

    def evaluate(self, f: BatchedFunction, idx: Tensor) -> Tensor:
        """Values ``[B, P]`` of the tensor at ``idx: [B, P, d]``, calling ``f`` on new entries only."""
        B, P, _ = idx.shape
        if not self.enabled:
            self._charge(B * P)
            values = call_checked(f, idx, self.dtype, self.device)
            self.evaluations += B * P
            self.unique_evaluations += B * P
            return values
        keys = self.keys(idx)
        hit, values = self._lookup(keys)
        miss_pos = (~hit).flatten().nonzero().flatten()
        miss_keys, inverse = torch.unique(keys.flatten()[miss_pos], return_inverse=True)
        counts = torch.bincount(miss_keys >> self._item_bits, minlength=B)
        width = int(counts.max().item()) if len(miss_keys) else 0
        self.hits += B * P - len(miss_pos)
        if width == 0:
            return values
        self._charge(B * width)
        # first request position of each distinct missing key, to read its multi-index
        first = torch.full((len(miss_keys),), B * P, dtype=torch.long, device=idx.device)
        first = first.scatter_reduce(0, inverse, miss_pos, reduce="amin")
        owner = miss_keys >> self._item_bits
        slot = torch.arange(len(miss_keys), device=idx.device) - (counts.cumsum(0) - counts)[owner]
        flat_idx = idx.reshape(B * P, -1)
        # pad each item with its own first requested entry
        request = idx[:, :1, :].expand(B, width, idx.shape[2]).clone()
        request[owner, slot] = flat_idx[first]
        fresh = call_checked(f, request, self.dtype, self.device)[owner, slot]
        self.evaluations += B * width
        self.unique_evaluations += len(miss_keys)
        self._insert(miss_keys, fresh)
        values = values.flatten().clone()
        values[miss_pos] = fresh[inverse]
        return values.reshape(B, P)

    def _charge(self, count: int) -> None:
        if self.budget is not None and self.evaluations + count > self.budget:
            raise BudgetExhausted


def call_checked(f: BatchedFunction, idx: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``f(idx)`` checked for shape and finiteness, detached and cast to ``dtype`` on ``device``."""
    B, P, _ = idx.shape
    out = f(idx)
    if not isinstance(out, Tensor):
        out = torch.as_tensor(out)
    if tuple(out.shape) != (B, P):
        raise ValueError(
            f"f must return a tensor of shape [batch={B}, P={P}] for idx of shape {tuple(idx.shape)}, "
            f"got shape {tuple(out.shape)}."
        )
    out = out.detach().to(device=device, dtype=dtype)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        b, p = bad.nonzero()[0].tolist()
        raise ValueError(
            f"f returned {int(bad.sum())} non-finite values (NaN/Inf); e.g. at batch item {b}, "
            f"multi-index {idx[b, p].tolist()}: f must return finite values."
        )
    return out
