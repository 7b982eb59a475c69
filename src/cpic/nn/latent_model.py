"""The latent TT of a batch of volumes: encoder, layout, read policy, memory check.

:class:`LatentModel` is what :class:`cpic.CPIC` (a prediction per volume) and
:class:`cpic.nn.ImplicitVolume` (a decoder of voxels) share: it reads the patches its
:class:`~cpic.nn.reads.ReadPolicy` chooses, encodes them and returns the latent TT with the
voxels each volume read.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Hashable, Sequence

import torch
from torch import nn

from cpic.layout import Layout, QTTLayout
from cpic.nn.cross_reads import CrossPivots
from cpic.nn.encoders import make_encoder
from cpic.nn.latent import PatchFeatures, lattice
from cpic.nn.reads import ReadPolicy, Reads
from cpic.sources import VolumeSource
from cpic.tci import PivotStore
from cpic.tt import TT
from cpic.util.checks import check_int
from cpic.util.memory import format_bytes, memory_shortfall

#: bytes per sampled entry besides its patch: encoder activations, cache and fiber storage
_BYTES_PER_ENTRY = 4 * 64 * 4


class LatentModel(nn.Module):
    """Encoder features of the patches a read policy chooses, as a TT per volume.

    ``reads`` (default :class:`~cpic.nn.cross_reads.CrossPivots` with ``rank``, ``sweeps``,
    ``refresh_every``, ``refresh_tol`` and ``seed``) decides which patches are read. With
    ``keys`` (one hashable per volume) a policy may keep state per volume between calls.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn.latent_model import LatentModel
        >>> model = LatentModel((16, 16, 16), features=3, patch=3, rank=2)
        >>> reads = model.read([cpic.open_volume(torch.rand(16, 16, 16))])
        >>> reads.tt.batch, int(reads.voxels[0]) > 0
        (1, True)
    """

    def __init__(
        self,
        grid_shape: Sequence[int],
        *,
        features: int = 16,
        patch: int = 5,
        channels: int = 1,
        encoder: str | nn.Module = "mlp",
        positions: bool = False,
        background: float | None = None,
        rank: int = 10,
        sweeps: int = 3,
        refresh_every: int | None = None,
        refresh_tol: float | None = None,
        border: str = "reflect",
        stride: int = 1,
        layout: Layout | None = None,
        reads: ReadPolicy | None = None,
        seed: int = 0,
    ):
        super().__init__()
        grid_shape = tuple(int(n) for n in grid_shape)
        _check_sizes(grid_shape, features, patch, stride)
        centres = lattice(grid_shape, stride)
        self.layout = layout or QTTLayout(centres, features=features, group=True)
        if self.layout.grid_shape != centres or self.layout.features != features:
            raise ValueError(
                f"layout {self.layout} does not match the grid of patch centres {centres} "
                f"(grid {grid_shape}, stride {stride}) with {features} features."
            )
        if reads is None:
            reads = CrossPivots(
                rank, sweeps=sweeps, refresh_every=refresh_every, refresh_tol=refresh_tol, seed=seed
            )
        elif not isinstance(reads, ReadPolicy):
            raise ValueError(
                f"reads must be a cpic.nn.reads.ReadPolicy (CrossPivots, RandomPatches), got {reads!r}."
            )
        self.grid_shape, self.features, self.patch, self.channels = grid_shape, features, patch, channels
        self.border, self.stride, self.positions, self.background = border, stride, positions, background
        self.encoder = make_encoder(encoder, patch, features, channels, len(grid_shape), positions)
        self.reads = reads
        self.seed = seed
        self._memory_checked: set[int] = set()
        self._memory_budget: int | None = None
        self._generator = torch.Generator().manual_seed(seed)
        cross = dict(rank=rank, sweeps=sweeps, refresh_every=refresh_every, refresh_tol=refresh_tol)
        if isinstance(reads, CrossPivots):  # the settings in force (one place in the configuration)
            cross = reads.settings()
        self.config = {
            "grid_shape": list(grid_shape),
            "features": features,
            "patch": patch,
            "channels": channels,
            "encoder": encoder if isinstance(encoder, str) else type(encoder).__name__,
            "positions": positions,
            "background": background,
            **cross,
            "border": border,
            "stride": stride,
            "seed": seed,
            "layout": _layout_config(self.layout),
            "reads": reads.config(),
        }

    @property
    def rank(self) -> int | None:
        """The TT rank of the cross pivots (``None`` for a policy without one)."""
        return getattr(self.reads, "rank", None)

    @property
    def pivots(self) -> PivotStore:
        """What the read policy keeps per volume (the cross pivots)."""
        return self.reads.pivots

    @property
    def numerics(self) -> Counter[str]:
        """Numerical failures the read policy met and how they were handled, and drift refreshes."""
        return self.reads.numerics

    def feature_function(self, sources: Sequence[VolumeSource]) -> PatchFeatures:
        """The batched function of the latent tensor of ``sources`` (what the policy samples)."""
        return PatchFeatures(
            sources,
            self.layout,
            self.encoder,
            self.patch,
            self.border,
            positions=self.positions,
            background=self.background,
            stride=self.stride,
            volume_shape=self.grid_shape,
        )

    def read(
        self,
        sources: VolumeSource | Sequence[VolumeSource],
        keys: Sequence[Hashable] | None = None,
        peaks: bool = False,
    ) -> Reads:
        """The :class:`~cpic.nn.reads.Reads` of ``sources``: the latent TT (differentiable with
        respect to the encoder when gradients are enabled), the patches behind it, with
        ``peaks`` each feature's largest value over them, and the voxels read per volume."""
        sources = as_sources(sources)
        if keys is not None and len(keys) != len(sources):
            raise ValueError(
                f"keys must have one entry per source: {len(keys)} keys for {len(sources)} sources."
            )
        self.check_memory(len(sources))
        before = torch.tensor([s.stats.voxels_read for s in sources])
        f = self.feature_function(sources)
        out = self.reads.select(f, keys, self._item_seeds(sources), self._generator, peaks=peaks)
        out.voxels = torch.tensor([s.stats.voxels_read for s in sources]) - before
        budget = self.reads.budget
        if budget is not None and int(out.voxels.max()) > budget:
            raise RuntimeError(
                f"{type(self.reads).__name__} read {int(out.voxels.max())} voxels of a volume, over its "
                f"budget of {budget}."
            )
        return out

    def latent(
        self, sources: VolumeSource | Sequence[VolumeSource], keys: Sequence[Hashable] | None = None
    ) -> TT:
        """The TT ``[B, *layout.tensor_shape]`` of the encoder features of ``sources``."""
        return self.read(sources, keys).tt

    def refresh_pivots(self, keys: Sequence[Hashable] | None = None) -> None:
        """Re-select these volumes' pivots (all when ``None``) at their next use, warm-started."""
        self.pivots.mark_stale(keys)

    # ------------------------------------------------------------------ memory
    def memory_estimate(self, batch: int) -> int:
        """Bytes one training step over ``batch`` volumes needs for its samples (an upper estimate)."""
        patch_voxels = self.patch ** len(self.grid_shape)
        entries = self.reads.entries(self.layout.tensor_shape, patch_voxels)
        return batch * entries * (4 * self.channels * patch_voxels + _BYTES_PER_ENTRY)

    @property
    def memory_budget(self) -> int | None:
        """Bytes a step may use for its samples (``None``: what the device has free). A step whose
        :meth:`memory_estimate` exceeds it is refused before anything is read.

        Example:
            >>> import cpic
            >>> from cpic.nn import Regression
            >>> model = cpic.CPIC((64, 64, 64), Regression(), features=8, patch=5, rank=8)
            >>> model.memory_budget = 2**20
            >>> try:
            ...     model.check_memory(batch=16)
            ... except MemoryError as err:
            ...     print(str(err)[:60])
            rank=8, features=8, patch=5, 16 volumes per step needs about
        """
        return self._memory_budget

    @memory_budget.setter
    def memory_budget(self, value: int | None) -> None:
        if value is not None:
            check_int("memory_budget", value)
        self._memory_budget = value
        self._memory_checked.clear()

    def check_memory(self, batch: int) -> None:
        """Raise :class:`MemoryError` with the estimate when a step over ``batch`` volumes needs more
        than :attr:`memory_budget` or the device's free memory."""
        if batch in self._memory_checked:
            return
        need = self.memory_estimate(batch)
        short = memory_shortfall(need, self._memory_budget, next(self.parameters()).device)
        if short is not None:
            raise MemoryError(
                f"rank={self.rank}, features={self.features}, patch={self.patch}, {batch} volumes per step "
                f"needs about {format_bytes(need)} for its samples, but {format_bytes(short[0])} {short[1]}: "
                "lower the rank, the features, the patch or the batch size."
            )
        self._memory_checked.add(batch)

    def _item_seeds(self, sources: Sequence[VolumeSource]) -> list[int]:
        """One seed per volume from the model's seed and the volume's file name: a volume gets
        the same reads, and so the same prediction, whatever batch it comes in and wherever it
        is stored (:attr:`VolumeSource.identity`)."""
        return [zlib.crc32(f"{self.seed}:{src.identity}".encode()) for src in sources]


def as_sources(sources) -> list[VolumeSource]:
    """``sources`` as a non-empty list of :class:`VolumeSource` (one source is a list of one).

    Example:
        >>> import torch, cpic
        >>> len(as_sources(cpic.open_volume(torch.zeros(4, 4, 4))))
        1
    """
    if isinstance(sources, VolumeSource):
        return [sources]
    sources = list(sources)
    if not sources or not all(isinstance(s, VolumeSource) for s in sources):
        raise ValueError("sources must be a VolumeSource or a non-empty list of them (see cpic.open_volume).")
    return sources


def _layout_config(layout: Layout) -> dict:
    if isinstance(layout, QTTLayout):
        return {"type": "qtt", "group": layout.group}
    return {"type": type(layout).__name__}


def _check_sizes(grid_shape, features, patch, stride) -> None:
    if not grid_shape or any(n < 1 for n in grid_shape):
        raise ValueError(f"grid_shape must be positive sizes, got {grid_shape}.")
    check_int("features", features)
    check_int("stride", stride)
    check_int("patch", patch, odd=True)  # the patch is centred on a voxel
    if patch > min(grid_shape):
        raise ValueError(f"patch={patch} is larger than the volume's smallest side ({min(grid_shape)}).")
