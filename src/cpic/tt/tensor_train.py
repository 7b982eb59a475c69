"""The batched tensor train: a container of cores and the operations done in TT format."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.tt import algebra, indexing, svd


class TT:
    """A batch of ``B`` tensor trains over the same mode sizes.

    Core ``k`` has shape ``[B, r_k, n_k, r_{k+1}]`` with ``r_0 = r_d = 1``. Every operation
    is batched over ``B`` and differentiable with autograd.

    Example:
        >>> import torch
        >>> from cpic import TT
        >>> x = torch.arange(24.0).reshape(2, 3, 4)
        >>> t = TT.from_dense(x)
        >>> t.shape, t.batch
        ((3, 4), 2)
        >>> bool(torch.allclose(t.full(), x, atol=1e-4))
        True
    """

    def __init__(self, cores: Sequence[Tensor]):
        cores = list(cores)
        if not cores:
            raise ValueError("TT needs at least one core, got an empty list.")
        batch = cores[0].shape[0]
        for k, core in enumerate(cores):
            if core.dim() != 4 or core.shape[0] != batch:
                raise ValueError(
                    f"core {k} must have shape [B={batch}, r_left, n, r_right], got {tuple(core.shape)}."
                )
            if k and core.shape[1] != cores[k - 1].shape[3]:
                raise ValueError(
                    f"core {k} has left rank {core.shape[1]} but core {k - 1} has right rank "
                    f"{cores[k - 1].shape[3]}."
                )
        if cores[0].shape[1] != 1 or cores[-1].shape[3] != 1:
            raise ValueError("the first core's left rank and the last core's right rank must be 1.")
        self.cores = cores

    # ---------------------------------------------------------------- properties
    @property
    def batch(self) -> int:
        return self.cores[0].shape[0]

    @property
    def d(self) -> int:
        return len(self.cores)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(c.shape[2] for c in self.cores)

    @property
    def ranks(self) -> tuple[int, ...]:
        """Bond ranks ``(1, r_1, ..., r_{d-1}, 1)``."""
        return (1,) + tuple(c.shape[3] for c in self.cores)

    @property
    def dtype(self) -> torch.dtype:
        return self.cores[0].dtype

    @property
    def device(self) -> torch.device:
        return self.cores[0].device

    def numel(self) -> int:
        """Number of parameters stored in the cores (per batch item)."""
        return sum(c[0].numel() for c in self.cores)

    def __repr__(self) -> str:
        return f"TT(batch={self.batch}, shape={self.shape}, ranks={self.ranks}, dtype={self.dtype})"

    def to(self, *args, **kwargs) -> TT:
        return TT([c.to(*args, **kwargs) for c in self.cores])

    def detach(self) -> TT:
        return TT([c.detach() for c in self.cores])

    def __getitem__(self, key) -> TT | Tensor:
        """Index like the dense ``[B, n_1, ..., n_d]`` tensor: ``t[batch, i_1, ..., i_d]``.

        The batch key selects items and always keeps the batch axis (``t[0]`` is a batch of
        one). A mode indexed by an integer is fixed and removed; by a slice, a sequence of
        integers or a 1-D integer tensor it is kept, restricted to those positions. The
        result is a TT of the remaining modes, or ``Tensor[B]`` when every mode is fixed.
        Per-item indices: :meth:`fix`.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(2, 4, 5, 6, dtype=torch.float64)
            >>> t = TT.from_dense(x)
            >>> t[1].batch, t[:, 2].shape, t[:, 1:3, ..., [0, 5]].shape
            (1, (5, 6), (2, 5, 2))
            >>> torch.allclose(t[:, -1, 1:4, 2].full(), x[:, -1, 1:4, 2])
            True
        """
        batch_key, mode_keys = indexing.split_key(key, self.d)
        if isinstance(batch_key, int):
            batch_key = slice(batch_key, batch_key + 1 if batch_key != -1 else None)
        cores = [c[batch_key] for c in self.cores]
        if cores[0].shape[0] == 0:
            raise ValueError(f"batch index {batch_key!r} selects no item of a batch of {self.batch}.")
        fixed, positions = [], []
        for k, key_k in enumerate(mode_keys):
            scalar = isinstance(key_k, Tensor) and key_k.dim() == 0 and not key_k.is_floating_point()
            if isinstance(key_k, numbers.Integral) or scalar:
                fixed.append(k)
                positions.append(int(key_k))
            elif key_k != slice(None):
                cores[k] = indexing.select(cores[k], key_k, k)
        return TT(cores).fix(fixed, positions) if fixed else TT(cores)

    def fix(self, modes: int | Sequence[int], indices) -> TT | Tensor:
        """The tensors with ``modes`` fixed at ``indices``: one integer per mode for the whole
        batch, or ``LongTensor[B, len(modes)]`` per item -> a TT of the remaining modes, or
        ``Tensor[B]`` when all are fixed.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
            >>> t = TT.from_dense(x)
            >>> torch.allclose(t.fix([0, 2], [1, 4]).full(), x[:, 1, :, 4])
            True
            >>> per_item = t.fix(1, torch.tensor([[0], [3]])).full()
            >>> torch.allclose(per_item, torch.stack([x[0, :, 0], x[1, :, 3]]))
            True
        """
        modes = indexing.mode_list(modes, self.d)
        idx = indexing.fixed_indices(indices, self.batch, [self.shape[k] for k in modes], self.device)
        kept = indexing.absorb(self.cores, indexing.slice_matrices(self.cores, modes, idx))
        return kept if isinstance(kept, Tensor) else TT(kept)

    # ---------------------------------------------------------------- evaluation
    def eval(self, idx: Tensor) -> Tensor:
        """Entries at multi-indices ``idx: LongTensor[B, P, d]`` -> ``Tensor[B, P]``.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(1, 4, 5, 6, dtype=torch.float64)
            >>> t = TT.from_dense(x)
            >>> idx = torch.tensor([[[0, 1, 2], [3, 4, 5]]])
            >>> torch.allclose(t.eval(idx), x[0, idx[0, :, 0], idx[0, :, 1], idx[0, :, 2]][None])
            True
        """
        if idx.dim() != 3 or idx.shape[0] != self.batch or idx.shape[2] != self.d:
            raise ValueError(f"idx must have shape [B={self.batch}, P, d={self.d}], got {tuple(idx.shape)}.")
        return self._rows(idx.to(self.device), self.cores)[:, 0].reshape(idx.shape[:2])

    def fibers(self, idx: Tensor) -> Tensor:
        """Whole last-mode fibers at the leading indices ``idx: LongTensor[B, P, d - 1]`` ->
        ``Tensor[B, P, n_d]``: with features in the last mode, the feature vector of each voxel.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(1, 4, 5, 3, dtype=torch.float64)
            >>> t = TT.from_dense(x)
            >>> torch.allclose(t.fibers(torch.tensor([[[2, 1]]]))[0, 0], x[0, 2, 1])
            True
        """
        if idx.dim() != 3 or idx.shape[0] != self.batch or idx.shape[2] != self.d - 1:
            raise ValueError(
                f"idx must have shape [B={self.batch}, P, d - 1={self.d - 1}], got {tuple(idx.shape)}."
            )
        B, P = idx.shape[:2]
        last = self.cores[-1][..., 0]  # [B, r, n_d]
        if self.d == 1:
            return last.expand(B, P, -1)
        rows = self._rows(idx.to(self.device), self.cores[:-1]).reshape(B, P, -1)
        return rows @ last

    def _rows(self, idx: Tensor, cores: Sequence[Tensor]) -> Tensor:
        """Row vectors ``[B * P, r]`` of the products of ``cores`` at ``idx`` ``[B, P, len(cores)]``."""
        B = idx.shape[0]
        row_start = torch.arange(B, device=self.device)[:, None]
        out = None  # [B * P, r]: the row vector of the product so far
        for k, core in enumerate(cores):
            _, r0, n, r1 = core.shape
            # slices [B * n, r0, r1] gathered at item b, index i -> row b * n + i
            slices = core.permute(0, 2, 1, 3).reshape(B * n, r0, r1)
            slices = slices.index_select(0, (idx[:, :, k] + row_start * n).flatten())
            # many tiny vector-matrix products: broadcasting beats batched matmul here
            out = slices[:, 0] if out is None else (out[..., None] * slices).sum(-2)
        return out

    def full(self) -> Tensor:
        """The dense tensor ``[B, n_1, ..., n_d]`` (only for small tensors)."""
        if math.prod(self.shape) > 2**27:
            raise ValueError(f"full() of a tensor of shape {self.shape} would need too much memory.")
        out = self.cores[0][:, 0]  # [B, n, r]
        for core in self.cores[1:]:
            out = torch.einsum("bxr,brns->bxns", out, core).reshape(self.batch, -1, core.shape[3])
        return out.reshape(self.batch, *self.shape)

    # ---------------------------------------------------------------- contractions
    def sum(self, modes: int | Sequence[int] | None = None) -> Tensor | TT:
        """Sum over all modes (``Tensor[B]``) or over the given modes (a TT over the rest).

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
            >>> t = TT.from_dense(x)
            >>> torch.allclose(t.sum(), x.sum((1, 2, 3)))
            True
            >>> torch.allclose(t.sum([0, 2]).full(), x.sum((1, 3)))
            True
        """
        weights = [torch.ones(n, dtype=self.dtype, device=self.device) for n in self.shape]
        return self._contract_modes(modes, weights)

    def mean(self, modes: int | Sequence[int] | None = None) -> Tensor | TT:
        """Mean over all modes (``Tensor[B]``) or over the given modes (a TT over the rest).

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(1, 4, 4, dtype=torch.float64)
            >>> torch.allclose(TT.from_dense(x).mean(), x.mean((1, 2)))
            True
        """
        weights = [torch.full((n,), 1.0 / n, dtype=self.dtype, device=self.device) for n in self.shape]
        return self._contract_modes(modes, weights)

    def _contract_modes(self, modes, weights: list[Tensor]) -> Tensor | TT:
        chosen = indexing.mode_list(modes, self.d)
        mats = {k: torch.einsum("brns,n->brs", self.cores[k], weights[k]) for k in chosen}
        kept = indexing.absorb(self.cores, mats)
        return kept if isinstance(kept, Tensor) else TT(kept)

    def dot(self, other: TT) -> Tensor:
        """Inner product ``<self, other>`` per batch item -> ``Tensor[B]``.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x, y = torch.rand(2, 2, 3, 4, dtype=torch.float64)
            >>> torch.allclose(TT.from_dense(x).dot(TT.from_dense(y)), (x * y).sum((1, 2)))
            True
        """
        mine, theirs = self._paired(other)
        acc = None  # [B, r_self, r_other]
        for a, b in zip(mine, theirs):
            if acc is None:
                acc = torch.einsum("brns,bqnt->bst", a, b)
            else:
                acc = torch.einsum("brq,brns,bqnt->bst", acc, a, b)
        return acc[:, 0, 0]

    def norm(self) -> Tensor:
        """Frobenius norm per batch item, computed stably by orthogonalisation.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(3, 4, 5, dtype=torch.float64)
            >>> torch.allclose(TT.from_dense(x).norm(), x.flatten(1).norm(dim=1))
            True
        """
        cores = svd.left_orthogonalize(self.cores)
        return cores[-1].flatten(1).norm(dim=1)

    def second_moments(self, mean: bool = True) -> Tensor:
        """Second moments of the last mode over all the others -> ``Tensor[B, n_d, n_d]``.

        ``M[b, p, q] = sum_i X[b, i, p] X[b, i, q]``, divided by the number of such ``i`` when
        ``mean`` is true. With the features in the last mode this is ``E^T E / N``.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(1, 4, 5, 3, dtype=torch.float64)
            >>> e = x.reshape(1, 20, 3)
            >>> torch.allclose(TT.from_dense(x).second_moments(), e.mT @ e / 20)
            True
        """
        gram = torch.ones(self.batch, 1, 1, dtype=self.dtype, device=self.device)
        for core in self.cores[:-1]:
            gram = torch.einsum("brq,brns,bqnt->bst", gram, core, core)
        last = self.cores[-1][..., 0]  # [B, r, n_d]
        out = torch.einsum("brp,brq,bqs->bps", last, gram, last)
        if mean:
            out = out / math.prod(self.shape[:-1])
        return out

    # ---------------------------------------------------------------- algebra
    def _paired(self, other: TT) -> tuple[list[Tensor], list[Tensor]]:
        """The cores of ``self`` and ``other``, a batch of one broadcast to the other's batch."""
        if not isinstance(other, TT):
            raise TypeError(f"expected a TT, got {type(other).__name__}.")
        if other.shape != self.shape or (other.batch != self.batch and 1 not in (self.batch, other.batch)):
            raise ValueError(
                f"TTs differ: batch {self.batch} shape {self.shape} "
                f"vs batch {other.batch} shape {other.shape}."
            )
        batch = max(self.batch, other.batch)
        return [c.expand(batch, -1, -1, -1) for c in self.cores], [
            c.expand(batch, -1, -1, -1) for c in other.cores
        ]

    def _per_item(self, value: float | Tensor) -> Tensor:
        """A number, a 0-d or a per-item ``Tensor[B]`` as ``Tensor[B]`` of the TT's dtype."""
        v = torch.as_tensor(value, dtype=self.dtype, device=self.device)
        if v.dim() == 0:
            return v.expand(self.batch)
        if v.shape != (self.batch,):
            raise ValueError(
                f"a scalar must be a number or a tensor [B={self.batch}], got shape {tuple(v.shape)}."
            )
        return v

    def __add__(self, other: TT | float | Tensor) -> TT:
        """Sum with a TT (ranks add; a batch of one broadcasts) or with a number or per-item
        ``Tensor[B]`` added to every entry (one more rank).

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x, y = torch.rand(2, 1, 3, 4, dtype=torch.float64)
            >>> a, b = TT.from_dense(x), TT.from_dense(y)
            >>> torch.allclose((a + b).full(), x + y), torch.allclose((1.5 - a).full(), 1.5 - x)
            (True, True)
        """
        if isinstance(other, TT):
            return TT(algebra.direct_sum(self._paired(other)))
        if not isinstance(other, (int, float, Tensor)):
            return NotImplemented
        return TT(algebra.direct_sum([self.cores, algebra.constant(self._per_item(other), self.shape)]))

    __radd__ = __add__

    def __mul__(self, other: TT | float | Tensor) -> TT:
        """Element-wise (Hadamard) product with a TT (ranks multiply; a batch of one
        broadcasts), or scaling by a number or a per-item ``Tensor[B]``.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x, y = torch.rand(2, 1, 3, 4, dtype=torch.float64)
            >>> a, b = TT.from_dense(x), TT.from_dense(y)
            >>> torch.allclose((a * b).full(), x * y), torch.allclose((2 * a / 4).full(), x / 2)
            (True, True)
        """
        if isinstance(other, TT):
            return TT(algebra.hadamard(*self._paired(other)))
        if not isinstance(other, (int, float, Tensor)):
            return NotImplemented
        return TT([self.cores[0] * self._per_item(other)[:, None, None, None]] + self.cores[1:])

    __rmul__ = __mul__

    def __truediv__(self, other: float | Tensor) -> TT:
        if not isinstance(other, (int, float, Tensor)):
            return NotImplemented
        return self * (1.0 / self._per_item(other))

    def __neg__(self) -> TT:
        return self * -1.0

    def __sub__(self, other: TT | float | Tensor) -> TT:
        return self + (-other)

    def __rsub__(self, other: float | Tensor) -> TT:
        return (-self) + other

    @classmethod
    def cat(cls, trains: Sequence[TT], mode: int) -> TT:
        """The TTs joined along ``mode`` (same batch, dtype and other mode sizes); the ranks add.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
            >>> y = torch.rand(2, 3, 2, 5, dtype=torch.float64)
            >>> joined = TT.cat([TT.from_dense(x), TT.from_dense(y)], mode=1)
            >>> joined.shape, torch.allclose(joined.full(), torch.cat([x, y], dim=2))
            ((3, 6, 5), True)
        """
        trains = list(trains)
        if not trains or not all(isinstance(t, TT) for t in trains):
            raise ValueError("cat needs a non-empty sequence of TTs.")
        first = trains[0]
        (mode,) = indexing.mode_list(mode, first.d)
        for t in trains[1:]:
            others = [n for k, n in enumerate(t.shape) if k != mode]
            if (
                t.d != first.d
                or others != [n for k, n in enumerate(first.shape) if k != mode]
                or t.batch != first.batch
                or t.dtype != first.dtype
            ):
                raise ValueError(
                    f"cat along mode {mode} needs TTs that agree elsewhere: {first!r} vs {t!r}."
                )
        return cls(algebra.concatenate([t.cores for t in trains], mode))

    def orthogonalize(self, core: int) -> TT:
        """The same tensors with the cores before ``core`` left-orthogonal and those after it
        right-orthogonal (QR sweeps from both ends; ranks may shrink where they exceed what a
        core can hold): ``core`` then carries the norm.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
            >>> t = TT.from_dense(x).orthogonalize(1)
            >>> q = t.cores[0].reshape(2, 3, -1)                     # left-orthogonal
            >>> torch.allclose(q.mT @ q, torch.eye(q.shape[2], dtype=q.dtype))
            True
            >>> torch.allclose(t.cores[1].flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))
            True
        """
        (core,) = indexing.mode_list(core, self.d)
        left = svd.left_orthogonalize(self.cores[: core + 1])
        return TT(left[:-1] + svd.right_orthogonalize([left[-1]] + self.cores[core + 1 :]))

    # ---------------------------------------------------------------- compression
    def round(self, tol: float | None = None, max_rank: int | None = None) -> TT:
        """Recompress by TT-SVD to relative Frobenius error ``tol`` and/or ``max_rank``.

        The bond ranks are shared by the batch: each is the largest any item needs.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x = TT.from_dense(torch.rand(1, 4, 4, 4, dtype=torch.float64))
            >>> y = (x + x).round(tol=1e-10)
            >>> y.ranks, bool(torch.allclose(y.full(), 2 * x.full()))
            ((1, 4, 4, 1), True)
        """
        return TT(svd.round_cores(self.cores, tol=tol, max_rank=max_rank))

    @classmethod
    def from_dense(
        cls, x: Tensor, tol: float | None = None, max_rank: int | None = None, batched: bool = True
    ) -> TT:
        """TT-SVD of a dense tensor ``[B, n_1, ..., n_d]`` (or ``[n_1, ..., n_d]`` with ``batched=False``).

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> TT.from_dense(torch.ones(5, 6), batched=False).ranks
            (1, 1, 1)
        """
        if not batched:
            x = x[None]
        if x.dim() < 2:
            raise ValueError(f"from_dense needs a tensor [B, n_1, ..., n_d], got shape {tuple(x.shape)}.")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return cls(svd.tt_svd(x, tol=tol, max_rank=max_rank))
