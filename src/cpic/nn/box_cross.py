"""TT-cross inside boxes of the grid of patch cells: the exploit stage of explore-exploit with
``stage2="cross"``.

Each box (a view cell the scorer chose) is one item of a batched :func:`cpic.cross` over the
tensor ``[*box_shape, F]`` of its patches' features; the fibers the cross asks for are the
patches it reads there, at most ``cap`` per box (an entry past the cap is answered 0 without
a read), so a box's reads go where its features vary most along the fibers of its index sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.nn.latent import PatchFeatures
from cpic.nn.lattice_reads import linear_ids
from cpic.tci import cross
from cpic.util.checks import check_int


class BoxFeatures:
    """The batched function of :func:`cpic.cross` over ``len(low)`` boxes: entry ``(*local,
    feature)`` of item ``i`` is that feature of the patch at ``low[i] + local`` of volume
    ``volumes[i]`` of ``f``. Every patch is encoded once (with gradients) and kept:
    :attr:`ids` (sorted global ids, as :meth:`PatchFeatures.encode` takes), :attr:`box` and
    :attr:`features`; at most ``cap`` patches are read per box."""

    def __init__(self, f: PatchFeatures, low: Tensor, volumes: Tensor, cap: int):
        self.f, self.low, self.volumes, self.cap = f, low, volumes, cap
        self.grid = tuple(f.layout.grid_shape)
        self.cells = int(torch.tensor(self.grid).prod())
        self.ids = torch.empty(0, dtype=torch.long)
        self.box = torch.empty(0, dtype=torch.long)
        self.features: Tensor | None = None
        self.read = torch.zeros(len(low), dtype=torch.long)

    def __call__(self, idx: Tensor) -> Tensor:
        n, p, _ = idx.shape
        idx = idx.cpu()
        ids = linear_ids(self.low[:, None] + idx[..., :-1], self.grid) + (self.volumes * self.cells)[:, None]
        self._encode_new(ids)
        flat = ids.flatten()
        pos = torch.searchsorted(self.ids, flat).clamp_max(max(len(self.ids) - 1, 0))
        if self.features is None:
            return torch.zeros(n, p, dtype=self.f.dtype, device=self.f.device)
        found = (self.ids[pos] == flat).to(self.f.device)
        values = self.features.detach()[pos.to(self.f.device), idx[..., -1].flatten().to(self.f.device)]
        return (values * found).reshape(n, p)

    def _encode_new(self, ids: Tensor) -> None:
        """Encode the patches of ``ids [N, P]`` not read before, up to the cap of each box."""
        unique, inverse = torch.unique(ids.flatten(), return_inverse=True)
        owner = torch.arange(len(ids)).repeat_interleave(ids.shape[1])
        box = torch.zeros(len(unique), dtype=torch.long).scatter_(0, inverse, owner)  # boxes are disjoint
        new = ~torch.isin(unique, self.ids)
        unique, box = unique[new], box[new]
        order = torch.argsort(box, stable=True)
        unique, box = unique[order], box[order]
        counts = torch.bincount(box, minlength=len(self.low))
        rank = torch.arange(len(box)) - (torch.cumsum(counts, 0) - counts)[box]
        keep = rank < (self.cap - self.read)[box]
        if not bool(keep.any()):
            return
        unique, box = unique[keep], box[keep]
        order = torch.argsort(unique)
        unique, box = unique[order], box[order]
        features = self.f.encode(unique)
        self.read += torch.bincount(box, minlength=len(self.low))
        ids = torch.cat([self.ids, unique])
        order = torch.argsort(ids)
        self.ids, self.box = ids[order], torch.cat([self.box, box])[order]
        stacked = features if self.features is None else torch.cat([self.features, features])
        self.features = stacked[order.to(stacked.device)]


def cross_in_boxes(
    f: PatchFeatures,
    low: Tensor,
    high: Tensor,
    volumes: Tensor,
    cap: int,
    *,
    rank: int = 2,
    sweeps: int = 2,
    seeds: Sequence[int] | None = None,
) -> BoxFeatures:
    """Run a batched cross over the boxes ``[low, high)`` (``[N, D]`` cell corners of volumes
    ``volumes [N]`` of ``f``; the box shape is their smallest extent per axis) at ``rank`` for
    ``sweeps``, reading at most ``cap`` patches per box; the :class:`BoxFeatures` holds what
    was read (``seeds``: one per box).

    Example:
        >>> import torch, cpic
        >>> from cpic.layout import PlainLayout
        >>> from cpic.nn import PatchMLP
        >>> src = cpic.open_volume(torch.rand(16, 16, 16))
        >>> encoder = PatchMLP(patch=3, features=2)
        >>> f = PatchFeatures([src], PlainLayout(src.shape, features=2), encoder, patch=3)
        >>> low = torch.tensor([[0, 0, 0], [8, 8, 8]])
        >>> read = cross_in_boxes(f, low, low + 4, torch.tensor([0, 0]), cap=6, seeds=[0, 1])
        >>> in_second = read.ids % 4096 // 256 >= 8
        >>> read.read.tolist(), bool((in_second == (read.box == 1)).all())
        ([6, 6], True)
    """
    check_int("cap", cap)
    shape = tuple(int(s) for s in (high - low).amin(0).tolist())
    reader = BoxFeatures(f, low, volumes, cap)
    cross(
        reader,
        (*shape, f.shape[-1]),
        batch=len(low),
        rank=rank,
        sweeps=sweeps,
        dtype=f.dtype,
        device=f.device,
        seed=list(seeds) if seeds is not None else None,
        n_test=0,
    )
    return reader
