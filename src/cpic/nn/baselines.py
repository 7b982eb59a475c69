"""Baselines that C-PIC is measured against, with C-PIC's ``loss(sources, targets)`` interface.

- :class:`DenseCNN`: a small 3-D ResNet on the whole volume downsampled to ``side^3`` (it has to
  read every voxel to downsample), or on a strided ``side^3`` subsample (it reads those voxels);
- :class:`RandomPatchModel`: C-PIC's encoder and head on ``samples`` patches drawn uniformly at
  random, mean-pooled (the ablation of the cross-approximation's choice of samples);
- :class:`AttentionPatches`: attention sampling (Katharopoulos & Fleuret, ICML 2019): a small
  network on a strided low-resolution view scores cells, ``samples`` patches are drawn from that
  distribution and their features averaged with the estimator whose gradient reaches the scores.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cpic.layout import PlainLayout
from cpic.nn.encoders import make_encoder
from cpic.nn.heads import Head
from cpic.nn.latent import PatchFeatures
from cpic.sources import VolumeSource
from cpic.util.checks import check_int
from cpic.util.indexing import c_strides


def downsample(source: VolumeSource, side: int) -> Tensor:
    """The whole volume area-averaged to ``[C, side, side, side]``, read one slab at a time.

    Every voxel is read once (what a dense method pays); memory holds one slab, not the volume.

    Example:
        >>> import torch, cpic
        >>> src = cpic.open_volume(torch.arange(64.0).reshape(4, 4, 4))
        >>> downsample(src, 2)[0, 0, 0].tolist()
        [10.5, 12.5]
    """
    if source.ndim != 3:
        raise ValueError(f"{source.name}: a dense 3-D CNN needs a 3-D volume, got shape {source.shape}.")
    n0, n1, n2 = source.shape
    planes = []
    for i in range(side):
        start, stop = (i * n0) // side, max(((i + 1) * n0 + side - 1) // side, (i * n0) // side + 1)
        values = source.read_planes(start, stop)
        slab = values.reshape(stop - start, n1, n2, -1).permute(3, 0, 1, 2)  # [C, s, n1, n2]
        planes.append(F.adaptive_avg_pool3d(slab[None], (1, side, side))[0])
    return torch.cat(planes, 1)


def subsample(source: VolumeSource, side: int) -> Tensor:
    """The voxels at the centres of a ``side^3`` lattice of equal cells, ``[C, side, side, side]``:
    every ``n / side``-th voxel along each axis, exactly ``side^3`` voxels read (no averaging).

    Example:
        >>> import torch, cpic
        >>> src = cpic.open_volume(torch.arange(64.0).reshape(4, 4, 4))
        >>> subsample(src, 2)[0, 0, 0].tolist(), src.stats.unique_voxels
        ([21.0, 23.0], 8)
    """
    if source.ndim != 3:
        raise ValueError(f"{source.name}: a dense 3-D CNN needs a 3-D volume, got shape {source.shape}.")
    if side > min(source.shape):
        raise ValueError(
            f"{source.name}: a strided view of side {side} needs that many voxels per axis, "
            f"got shape {source.shape}."
        )
    axes = [((2 * torch.arange(side) + 1) * n) // (2 * side) for n in source.shape]
    values = source.read(torch.cartesian_prod(*axes))
    return values.reshape(side, side, side, -1).permute(3, 0, 1, 2)


#: how :class:`DenseCNN` makes its ``side^3`` view of a volume
VIEWS = {"average": downsample, "strided": subsample}


class _Residual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, cout), cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, cout), cout)
        self.skip = (
            nn.Conv3d(cin, cout, 1, stride, bias=False) if (stride, cin) != (1, cout) else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(y)) + self.skip(x))


class _LossMixin:
    """``loss(sources, targets, keys=None, extra=None) -> (loss, predictions)`` as :class:`cpic.CPIC`."""

    head: Head

    def loss(self, sources, targets, keys: Sequence[Hashable] | None = None, extra=None):
        pred = self(sources)
        target = self.head.check_targets(targets).to(pred.device)
        return self.head.loss(pred, target), pred


def _pooled_width(features: int, pool: str) -> int:
    """Width of ``features`` channels pooled by ``pool`` (``"mean"`` or ``"mean+max"``)."""
    if pool not in ("mean", "mean+max"):
        raise ValueError(f"pool must be 'mean' or 'mean+max', got {pool!r}.")
    return features * (2 if pool == "mean+max" else 1)


def _pool(x: Tensor, pool: str) -> Tensor:
    """``x [B, C, N]`` pooled over its last axis: the mean ``[B, C]``, or mean and max ``[B, 2C]``."""
    return x.mean(2) if pool == "mean" else torch.cat([x.mean(2), x.amax(2)], 1)


class DenseCNN(_LossMixin, nn.Module):
    """A small 3-D ResNet (a stem and three residual stages) on a ``side^3`` view of each volume,
    globally average-pooled (``pool="mean"``) or average- and max-pooled (``"mean+max"``, for
    small findings that an average dilutes).

    ``view="average"``: the volume area-averaged (:func:`downsample`, every voxel read);
    ``view="strided"``: the voxels at the centres of a ``side^3`` lattice (:func:`subsample`,
    ``side^3`` voxels read: the dense CNN at a read budget). Views are kept per source name in
    ``views`` (fill it to reuse views computed elsewhere), so each volume is read once.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> model = DenseCNN(Classification(2), side=8, width=4)
        >>> model([cpic.open_volume(torch.rand(16, 16, 16))]).shape
        torch.Size([1, 2])
        >>> src = cpic.open_volume(torch.rand(16, 16, 16))
        >>> _ = DenseCNN(Classification(2), side=6, width=4, view="strided")([src])
        >>> src.stats.unique_voxels
        216
    """

    def __init__(
        self,
        head: Head,
        side: int = 64,
        width: int = 8,
        channels: int = 1,
        pool: str = "mean",
        view: str = "average",
    ):
        super().__init__()
        pooled_width = _pooled_width(4 * width, pool)
        check_int("side", side, low=5)  # below 5 a stage's norm sees one value per group
        if view not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(map(repr, VIEWS))}, got {view!r}.")
        self.side, self.head, self.pool, self.view_kind = side, head, pool, view
        self.stem = nn.Sequential(
            nn.Conv3d(channels, width, 3, 2, 1), nn.GroupNorm(min(8, width), width), nn.ReLU()
        )
        self.stages = nn.Sequential(
            _Residual(width, width, 1), _Residual(width, 2 * width, 2), _Residual(2 * width, 4 * width, 2)
        )
        head.build(pooled_width)
        #: downsampled volumes ``[C, side, side, side]`` by source name
        self.views: dict[str, Tensor] = {}

    def view(self, source: VolumeSource) -> Tensor:
        if source.name not in self.views:
            self.views[source.name] = VIEWS[self.view_kind](source, self.side)
        return self.views[source.name]

    def forward(self, sources: Sequence[VolumeSource]) -> Tensor:
        device = next(self.parameters()).device
        x = torch.stack([self.view(s) for s in sources]).to(device)
        return self.head(_pool(self.stages(self.stem(x)).flatten(2), self.pool))


class _PatchSampler(_LossMixin, nn.Module):
    """Encoder + mean (``pool="mean"``; or mean and max, ``"mean+max"``) of the features of
    ``samples`` patches per volume + head."""

    def __init__(
        self,
        grid_shape: Sequence[int],
        head: Head,
        samples: int,
        features: int = 16,
        patch: int = 5,
        encoder: str | nn.Module = "mlp",
        positions: bool = False,
        pool: str = "mean",
        seed: int = 0,
    ):
        super().__init__()
        pooled_width = _pooled_width(features, pool)
        check_int("samples", samples)
        self.grid_shape, self.samples, self.patch, self.positions = (
            tuple(grid_shape),
            samples,
            patch,
            positions,
        )
        self.layout = PlainLayout(self.grid_shape, features=features)
        self.encoder = make_encoder(encoder, patch, features, 1, len(self.grid_shape), positions)
        self.head, self.pool = head, pool
        head.build(pooled_width)
        self.seed, self.draw = seed, 0

    def _generators(self, sources: Sequence[VolumeSource]) -> list[torch.Generator]:
        """One generator per volume, seeded by its name and the draw: a volume's patches stay the
        same until :meth:`refresh` (as C-PIC's pivots), so the voxels read are bounded."""
        return [
            torch.Generator().manual_seed(zlib.crc32(f"{s.identity}/{self.seed}/{self.draw}".encode()))
            for s in sources
        ]

    def refresh(self) -> None:
        """Draw new patch positions from the next call on (e.g. every few epochs)."""
        self.draw += 1

    def pooled(
        self, sources: Sequence[VolumeSource], voxels: Tensor, weights: Tensor | None = None
    ) -> Tensor:
        """Mean features ``[B, F]`` of the patches at linear voxel ids ``voxels [B, S]``,
        each multiplied by ``weights [B, S]`` when given (with ``pool="mean+max"`` also their
        maximum: ``[B, 2F]``)."""
        f = PatchFeatures(sources, self.layout, self.encoder, self.patch, positions=self.positions)
        n = int(torch.tensor(self.grid_shape).prod())
        ids = voxels + torch.arange(len(sources))[:, None] * n
        unique, inverse = torch.unique(ids.flatten(), return_inverse=True)
        features = f.encode(unique)[inverse].reshape(*voxels.shape, -1)
        if weights is not None:
            features = features * weights[..., None]
        return _pool(features.mT, self.pool)


class RandomPatchModel(_PatchSampler):
    """The random-sampling ablation: ``samples`` patch centres uniform over the grid, mean-pooled.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> model = RandomPatchModel((16, 16, 16), Classification(2), samples=20, features=4, patch=3)
        >>> model([cpic.open_volume(torch.rand(16, 16, 16))]).shape
        torch.Size([1, 2])
    """

    def forward(self, sources: Sequence[VolumeSource]) -> Tensor:
        n = int(torch.tensor(self.grid_shape).prod())
        voxels = torch.stack(
            [torch.randint(n, (self.samples,), generator=g) for g in self._generators(sources)]
        )
        return self.head(self.pooled(sources, voxels))


class AttentionPatches(_PatchSampler):
    """Attention sampling: a small CNN scores the cells of a strided ``view^3`` subsample of the
    volume; ``samples`` patches are drawn from the cells by those scores (a random voxel in each
    drawn cell) and their features averaged as ``mean(a_i / stop_grad(a_i) * f_i)``, an unbiased
    estimate of the attention-weighted mean whose gradient trains the scores.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> model = AttentionPatches((16, 16, 16), Classification(2), samples=20, features=4, patch=3, view=4)
        >>> model([cpic.open_volume(torch.rand(16, 16, 16))]).shape
        torch.Size([1, 2])
    """

    def __init__(self, grid_shape, head, samples, view: int = 32, width: int = 8, **kwargs):
        super().__init__(grid_shape, head, samples, **kwargs)
        self.view = view
        self.attention = nn.Sequential(
            nn.Conv3d(1, width, 3, 1, 1),
            nn.ReLU(),
            nn.Conv3d(width, width, 3, 1, 1),
            nn.ReLU(),
            nn.Conv3d(width, 1, 1),
        )
        self._cells = torch.stack(
            torch.meshgrid(*(torch.arange(view),) * len(self.grid_shape), indexing="ij"), -1
        ).reshape(-1, len(self.grid_shape))

    def low_resolution(self, source: VolumeSource) -> Tensor:
        """The strided view ``[view^3]``: one voxel at the centre of each cell (a fraction
        ``view^3 / voxels`` of the volume is read)."""
        size = torch.tensor(self.grid_shape)
        centres = ((2 * self._cells + 1) * size) // (2 * self.view)
        return source.read(centres)

    def forward(self, sources: Sequence[VolumeSource]) -> Tensor:
        device = next(self.parameters()).device
        low = torch.stack([self.low_resolution(s) for s in sources]).to(device)
        logits = self.attention(low.reshape(-1, 1, *(self.view,) * len(self.grid_shape))).flatten(1)
        attention = logits.softmax(1)  # [B, cells]
        size = torch.tensor(self.grid_shape)
        strides = c_strides(self.grid_shape)
        voxels, weights = [], []
        for b, gen in enumerate(self._generators(sources)):
            cells = torch.multinomial(
                attention[b].detach().cpu(), self.samples, replacement=True, generator=gen
            )
            low_corner = self._cells[cells] * size // self.view
            high_corner = (self._cells[cells] + 1) * size // self.view
            offset = (torch.rand(self.samples, len(size), generator=gen) * (high_corner - low_corner)).long()
            voxels.append(((low_corner + offset) * strides).sum(1))
            a = attention[b, cells.to(device)]
            weights.append(a / a.detach())
        return self.head(self.pooled(sources, torch.stack(voxels), torch.stack(weights)))
