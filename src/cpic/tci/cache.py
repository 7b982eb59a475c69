"""A device-resident evaluation cache: every entry of the tensor is computed at most once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cpic.util import KeyStore
from cpic.util.indexing import c_strides

#: ``f(idx: LongTensor[B, P, d]) -> Tensor[B, P]``
BatchedFunction = Callable[[Tensor], Tensor]

_KEY_BITS = 62
_MIX = (0x9E3779B97F4A7C15 - 2**64, 0xBF58476D1CE4E5B9 - 2**64, 0x94D049BB133111EB - 2**64)


class NonFiniteValues(ValueError, FloatingPointError):
    """``f`` returned NaN or Inf: bad input to cross, and a numerical failure to a training loop."""


class BudgetExhausted(Exception):
    """Raised inside a sweep when the next evaluation would exceed the budget."""


class EvaluationCache:
    """Keys and values of every entry evaluated so far, for ``batch`` tensors of one shape.

    Keys pack ``(batch item, multi-index)`` into one int64: the exact linear index when the
    batched tensor has fewer than ``2**62`` entries, otherwise a 64-bit mix of the indices
    (collisions then have probability about ``M**2 / 2**(62 - log2 B)`` for ``M`` entries).
    Keys live in a few sorted segments, so a lookup is one ``searchsorted`` per segment.

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
        self._strides = c_strides(self.shape if self.exact else (), self.device)
        self._store = KeyStore(dtype, self.device)
        self._item_keys = (torch.arange(self.batch, device=self.device) << self._item_bits)[:, None]
        self.evaluations = 0
        self.unique_evaluations = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._store)

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
        return item | self._item_keys

    def evaluate(self, f: BatchedFunction, idx: Tensor, distinct: bool = False) -> Tensor:
        """Values ``[B, P]`` of the tensor at ``idx: [B, P, d]``, calling ``f`` on new entries only.

        ``distinct=True`` promises that no multi-index repeats within an item (true of fibers),
        which saves deduplicating the request.
        """
        B, P, _ = idx.shape
        if not self.enabled:
            self._charge(B * P)
            values = call_checked(f, idx, self.dtype, self.device)
            self.evaluations += B * P
            self.unique_evaluations += B * P
            return values
        keys = self.keys(idx).flatten()
        hit, values = self._store.lookup(keys)
        miss_pos = (~hit).nonzero().flatten()
        if distinct:
            miss_keys, order = torch.sort(keys.index_select(0, miss_pos))
            first = miss_pos.index_select(0, order)  # request position of each sorted missing key
        else:
            miss_keys, inverse = torch.unique(keys.index_select(0, miss_pos), return_inverse=True)
        self.hits += B * P - len(miss_pos)
        if not len(miss_keys):
            return values.reshape(B, P)
        if not distinct:  # first request position of each distinct missing key
            first = torch.full((len(miss_keys),), B * P, dtype=torch.long, device=idx.device)
            first = first.scatter_reduce(0, inverse, miss_pos, reduce="amin")
        request, slot = self._requests(idx, miss_keys, first)
        self._charge(request.shape[0] * request.shape[1])
        out = call_checked(f, request, self.dtype, self.device).flatten()
        fresh = out if slot is None else out.index_select(0, slot)
        self.evaluations += out.numel()
        self.unique_evaluations += len(miss_keys)
        self._store.insert(miss_keys, fresh)
        if distinct:
            values.index_copy_(0, first, fresh)
        else:
            values.index_copy_(0, miss_pos, fresh.index_select(0, inverse))
        return values.reshape(B, P)

    def _requests(self, idx: Tensor, miss_keys: Tensor, first: Tensor) -> tuple[Tensor, Tensor | None]:
        """The call for the missing entries, ``[B, width, d]``, and the slot of each sorted missing
        key in it (``None``: slots in order). Item ``b``'s misses go to slots ``b * width + 0, 1,
        ...``; an item missing fewer than ``width`` is padded with repeats of its first request."""
        B, P, d = idx.shape
        flat_idx = idx.reshape(B * P, d)
        if B == 1:
            return flat_idx.index_select(0, first)[None], None
        owner = miss_keys >> self._item_bits
        counts = torch.bincount(owner, minlength=B)
        width = int(counts.max())
        start = counts.cumsum(0) - counts
        slot = owner * width + torch.arange(len(miss_keys), device=idx.device) - start.index_select(0, owner)
        request = idx[:, :1, :].expand(B, width, d).reshape(B * width, d).clone()
        request.index_copy_(0, slot, flat_idx.index_select(0, first))
        return request.reshape(B, width, d), slot

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
    if not bool(torch.isfinite(out).all()):
        bad = ~torch.isfinite(out)
        b, p = bad.nonzero()[0].tolist()
        raise NonFiniteValues(
            f"f returned {int(bad.sum())} non-finite values (NaN/Inf); e.g. at batch item {b}, "
            f"multi-index {idx[b, p].tolist()}: f must return finite values."
        )
    return out
