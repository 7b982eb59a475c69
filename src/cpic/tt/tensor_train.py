"""The batched tensor train: a container of cores and the operations done in TT format."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.tt import svd


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

    def __getitem__(self, items) -> TT:
        """Select batch items: ``t[0:2]`` or ``t[[0, 3]]`` keeps the batch axis."""
        if isinstance(items, int):
            items = slice(items, items + 1 if items != -1 else None)
        return TT([c[items] for c in self.cores])

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
        if modes is None:
            modes = range(self.d)
        elif isinstance(modes, int):
            modes = [modes]
        chosen = set()
        for m in modes:
            if not -self.d <= m < self.d:
                raise ValueError(f"mode {m} is out of range for a TT with {self.d} modes.")
            chosen.add(m % self.d)
        kept: list[Tensor] = []
        carry = None  # product of contracted cores since the last kept core: [B, r, r']
        for k, core in enumerate(self.cores):
            if k in chosen:
                mat = torch.einsum("brns,n->brs", core, weights[k])
                carry = mat if carry is None else carry @ mat
            else:
                if carry is not None:
                    core = torch.einsum("bqr,brns->bqns", carry, core)
                    carry = None
                kept.append(core)
        if not kept:
            return carry[:, 0, 0]
        if carry is not None:
            kept[-1] = torch.einsum("brns,bst->brnt", kept[-1], carry)
        return TT(kept)

    def dot(self, other: TT) -> Tensor:
        """Inner product ``<self, other>`` per batch item -> ``Tensor[B]``.

        Example:
            >>> import torch
            >>> from cpic import TT
            >>> x, y = torch.rand(2, 2, 3, 4, dtype=torch.float64)
            >>> torch.allclose(TT.from_dense(x).dot(TT.from_dense(y)), (x * y).sum((1, 2)))
            True
        """
        self._check_compatible(other)
        acc = None  # [B, r_self, r_other]
        for a, b in zip(self.cores, other.cores):
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
    def _check_compatible(self, other: TT) -> None:
        if not isinstance(other, TT):
            raise TypeError(f"expected a TT, got {type(other).__name__}.")
        if other.shape != self.shape or other.batch != self.batch:
            raise ValueError(
                f"TTs differ: batch {self.batch} shape {self.shape} "
                f"vs batch {other.batch} shape {other.shape}."
            )

    def __add__(self, other: TT) -> TT:
        self._check_compatible(other)
        if self.d == 1:
            return TT([self.cores[0] + other.cores[0]])
        cores = []
        for k, (a, b) in enumerate(zip(self.cores, other.cores)):
            if k == 0:
                cores.append(torch.cat([a, b], dim=3))
            elif k == self.d - 1:
                cores.append(torch.cat([a, b], dim=1))
            else:
                B, ra, n, sa = a.shape
                rb, sb = b.shape[1], b.shape[3]
                top = torch.cat([a, a.new_zeros(B, ra, n, sb)], dim=3)
                bottom = torch.cat([b.new_zeros(B, rb, n, sa), b], dim=3)
                cores.append(torch.cat([top, bottom], dim=1))
        return TT(cores)

    def __mul__(self, scalar: float | Tensor) -> TT:
        """Scale by a number or by a per-item ``Tensor[B]``."""
        s = torch.as_tensor(scalar, dtype=self.dtype, device=self.device)
        if s.dim() == 1:
            s = s[:, None, None, None]
        return TT([self.cores[0] * s] + self.cores[1:])

    __rmul__ = __mul__

    def __neg__(self) -> TT:
        return self * -1.0

    def __sub__(self, other: TT) -> TT:
        return self + (-other)

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
