"""The C-PIC module: sources -> patch features -> TT by cross -> projection -> head."""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn

from cpic.cross import PivotStore, cross, interpolate
from cpic.cross.info import CrossInfo
from cpic.layout import Layout, QTTLayout
from cpic.nn.encoders import make_encoder
from cpic.nn.heads import Head, Reconstruction
from cpic.nn.latent import PatchFeatures, lattice
from cpic.nn.projections import make_projection
from cpic.sources import VolumeSource
from cpic.tt import TT

#: what a singular block or a non-finite core raises
_NUMERICAL = (torch.linalg.LinAlgError, FloatingPointError)
#: bytes per sampled entry besides its patch: encoder activations, cache and fiber storage
_BYTES_PER_ENTRY = 4 * 64 * 4


class CPIC(nn.Module):
    """Predictions for a batch of volumes from a TT of patch features built by cross.

    Each step reads and encodes only the patches at the cross pivots of every volume (one
    batched cross and one differentiable :func:`cpic.interpolate` for all ``B`` volumes),
    projects the latent TT to a vector without expanding it, and applies the head.

    With ``keys`` (one hashable per volume, e.g. its index in a dataset) the pivots of each
    volume are kept and reused: re-selected every ``refresh_every`` uses, on
    :meth:`refresh_pivots` (e.g. every epoch), or when the held-out error of the current TT
    exceeds ``refresh_tol``; refreshes are warm-started (one sweep). Without keys, each call
    selects afresh.

    ``sampled_max=True`` appends to the projection the largest value of each feature over the
    patches the cross picked (the interpolation's fibers) and over the patch where each feature
    peaked among all those the pivot selection examined (kept with the pivots, re-encoded
    differentiably at every step, so at no extra read): whole-grid averages dilute a small
    anomaly (a lesion) to nothing, a maximum over the cherry-picked samples keeps it.

    ``stride=s`` centres patches on every ``s``-th voxel only: the latent tensor is the
    ``ceil(n / s)``-per-axis lattice of them (:class:`PatchFeatures`), ``s^D`` times smaller.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> model = cpic.CPIC((16, 16, 16), Classification(classes=2), features=4, patch=3, rank=3)
        >>> volumes = [cpic.open_volume(torch.rand(16, 16, 16)) for _ in range(2)]
        >>> logits = model(volumes, keys=[0, 1])
        >>> logits.shape
        torch.Size([2, 2])
        >>> logits.sum().backward()       # gradients reach the encoder through the sampled patches
        >>> model.encoder.net[0].weight.grad.abs().sum() > 0
        tensor(True)
    """

    def __init__(
        self,
        grid_shape: Sequence[int],
        head: Head,
        *,
        features: int = 16,
        patch: int = 5,
        channels: int = 1,
        encoder: str | nn.Module = "mlp",
        positions: bool = False,
        background: float | None = None,
        projection: str | nn.Module = "mean",
        sampled_max: bool = False,
        rank: int = 10,
        sweeps: int = 3,
        refresh_every: int | None = None,
        refresh_tol: float | None = None,
        extra_features: int = 0,
        border: str = "reflect",
        stride: int = 1,
        layout: Layout | None = None,
        seed: int = 0,
    ):
        super().__init__()
        grid_shape = tuple(int(n) for n in grid_shape)
        _check_sizes(grid_shape, features, patch, rank, extra_features, stride)
        if not isinstance(head, Head):
            raise ValueError(f"head must be a cpic.nn head (Classification, Regression, ...), got {head!r}.")
        if stride != 1 and isinstance(head, Reconstruction):
            raise ValueError(f"a reconstruction model decodes every voxel: it needs stride=1, got {stride}.")
        centres = lattice(grid_shape, stride)
        self.layout = layout or QTTLayout(centres, features=features, group=True)
        if self.layout.grid_shape != centres or self.layout.features != features:
            raise ValueError(
                f"layout {self.layout} does not match the grid of patch centres {centres} "
                f"(grid {grid_shape}, stride {stride}) with {features} features."
            )
        ndim = len(grid_shape)
        self.grid_shape, self.features, self.patch, self.channels = grid_shape, features, patch, channels
        self.border, self.extra_features, self.refresh_tol = border, extra_features, refresh_tol
        self.stride = stride
        self.positions, self.background = positions, background
        self.encoder = make_encoder(encoder, patch, features, channels, ndim, positions)
        self.projection = make_projection(projection, features, ndim)
        self.head = head
        self.sampled_max = sampled_max and not isinstance(head, Reconstruction)
        in_features = features if isinstance(head, Reconstruction) else self.projection.out_features(features)
        in_features += features if self.sampled_max else 0
        head.build(in_features + extra_features)
        self.pivots = PivotStore(rank, sweeps=sweeps, refresh_every=refresh_every, seed=seed)
        #: numerical failures met and how they were handled ("refreshed", "lowered_rank"), and
        #: drift-triggered refreshes ("drift")
        self.numerics: Counter[str] = Counter()
        self.seed = seed
        self._memory_checked: set[int] = set()
        self._memory_budget: int | None = None
        self._generator = torch.Generator().manual_seed(seed)
        self.config = {
            "grid_shape": list(grid_shape),
            "features": features,
            "patch": patch,
            "channels": channels,
            "encoder": encoder if isinstance(encoder, str) else type(encoder).__name__,
            "positions": positions,
            "background": background,
            "projection": projection if isinstance(projection, str) else type(projection).__name__,
            "sampled_max": self.sampled_max,
            "rank": rank,
            "sweeps": sweeps,
            "refresh_every": refresh_every,
            "refresh_tol": refresh_tol,
            "extra_features": extra_features,
            "border": border,
            "stride": stride,
            "seed": seed,
            "layout": _layout_config(self.layout),
            "head": head.config(),
        }

    @property
    def rank(self) -> int:
        return self.pivots.rank

    # ------------------------------------------------------------------ the latent TT
    def feature_function(self, sources: Sequence[VolumeSource]) -> PatchFeatures:
        """The batched function of the latent tensor of ``sources`` (what cross samples)."""
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

    def latent(
        self, sources: VolumeSource | Sequence[VolumeSource], keys: Sequence[Hashable] | None = None
    ) -> TT:
        """The TT ``[B, *layout.tensor_shape]`` of the encoder features of ``sources``.

        Differentiable with respect to the encoder when gradients are enabled.
        """
        return self._latent(sources, keys)[0]

    def _latent(self, sources, keys, sampled: bool = False) -> tuple[TT, Tensor | None, PatchFeatures]:
        """The latent TT, with ``sampled`` each feature's largest value over the patches of the
        interpolation ``[B, F]`` (the interpolation then runs even without gradients), and the
        feature function (its ``last`` call holds the interpolation's patches)."""
        sources = _as_list(sources)
        if keys is not None and len(keys) != len(sources):
            raise ValueError(
                f"keys must have one entry per source: {len(keys)} keys for {len(sources)} sources."
            )
        self._check_memory(len(sources))
        f = self.feature_function(sources)
        if sampled:  # the maximum also covers the best patches the selection met
            f.peaks = {}
        if keys is None:
            tt, info = self._select(f, self.rank, self._item_seeds(sources))
            if not (torch.is_grad_enabled() or sampled):
                return tt, None, f
            tt = self._interpolate(f, info, keys)
            return tt, f.sampled_max(_peak_ids(f, sources)) if sampled else None, f
        selecting = self.pivots.pending(keys) if sampled else []
        if selecting:  # earlier selections' peaks compete with those of a re-selection
            with torch.no_grad():
                f.encode_at([self.pivots.attached(k) if i in selecting else None for i, k in enumerate(keys)])
        info = self.pivots.pivots(
            f.subset, f.shape, list(keys), dtype=f.dtype, device=f.device, seeds=self._item_seeds(sources)
        )
        found = _peak_ids(f, sources) if selecting else []
        for i in selecting:
            if found[i] is not None:
                self.pivots.attach(keys[i], found[i])
        tt = self._interpolate(f, info, keys)
        # before the drift check calls f again
        peaks = f.sampled_max([self.pivots.attached(k) for k in keys]) if sampled else None
        if self.refresh_tol is not None:
            self._check_drift(f, tt, keys)
        return tt, peaks, f

    @torch.no_grad()
    def _select(self, f: PatchFeatures, rank: int, seed) -> tuple[TT, CrossInfo]:
        """A cold cross of ``f`` (no memory of pivots): the TT and its index sets."""
        return cross(
            f,
            f.shape,
            batch=f.batch,
            rank=rank,
            sweeps=self.pivots.sweeps,
            dtype=f.dtype,
            device=f.device,
            seed=seed,
            n_test=0,
        )

    def _interpolate(self, f: PatchFeatures, info: CrossInfo, keys) -> TT:
        """:func:`interpolate`, recovering from a singular block or non-finite cores by
        re-selecting the pivots, then by halving the rank for this step; each counted."""
        try:
            return _finite(interpolate(f, info))
        except _NUMERICAL as err:
            first_error = err
        self.numerics["refreshed"] += 1
        _, info = self._select(f, self.rank, self._next_seed())
        if keys is not None:
            self.pivots.forget(list(keys))
        try:
            return _finite(interpolate(f, info))
        except _NUMERICAL:
            pass
        self.numerics["lowered_rank"] += 1
        _, info = self._select(f, max(1, self.rank // 2), self._next_seed())
        try:
            return _finite(interpolate(f, info))
        except _NUMERICAL as err:
            raise FloatingPointError(
                f"the latent TT stayed singular or non-finite after re-selecting pivots and halving the rank "
                f"(first error: {first_error}); check the volumes for constant or non-finite values."
            ) from err

    @torch.no_grad()
    def _check_drift(self, f: PatchFeatures, tt: TT, keys, n_check: int = 64) -> None:
        """Mark for refresh the items whose TT misses held-out entries by more than ``refresh_tol``."""
        high = torch.tensor(f.shape)
        idx = (torch.rand(f.batch, n_check, len(high), generator=self._generator) * high).long()
        exact = f(idx.to(f.device))
        approx = tt.detach().eval(idx)
        error = (approx - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12)
        drifted = [keys[b] for b in (error > self.refresh_tol).nonzero().flatten().tolist()]
        self.numerics["drift"] += len(drifted)
        self.pivots.mark_stale(drifted)

    def refresh_pivots(self, keys: Sequence[Hashable] | None = None) -> None:
        """Re-select these volumes' pivots (all when ``None``) at their next use, warm-started."""
        self.pivots.mark_stale(keys)

    # ------------------------------------------------------------------ predictions
    def embed(self, sources, keys: Sequence[Hashable] | None = None, extra: Tensor | None = None) -> Tensor:
        """The head's input ``[B, in_features]``: the projection plus any extra features."""
        return self._embed(sources, keys, extra)[0]

    def _embed(self, sources, keys, extra) -> tuple[Tensor, PatchFeatures]:
        sources = _as_list(sources)
        tt, peaks, f = self._latent(sources, keys, sampled=self.sampled_max)
        z = self.projection(tt, self.layout)
        if peaks is not None:
            z = torch.cat([z, peaks], 1)
        if self.extra_features:
            if extra is None:
                raise ValueError(
                    f"this model takes {self.extra_features} extra features per volume: pass extra=."
                )
            extra = torch.as_tensor(extra, dtype=z.dtype, device=z.device)
            if tuple(extra.shape) != (len(sources), self.extra_features):
                raise ValueError(
                    f"extra must be [{len(sources)}, {self.extra_features}], got {tuple(extra.shape)}."
                )
            z = torch.cat([z, extra], 1)
        elif extra is not None:
            raise ValueError("this model takes no extra features (extra_features=0), but extra= was given.")
        return z, f

    def forward(self, sources, keys: Sequence[Hashable] | None = None, extra: Tensor | None = None) -> Tensor:
        if isinstance(self.head, Reconstruction):
            raise ValueError("a reconstruction model predicts voxels: use model.query(latent, coords).")
        return self.head(self.embed(sources, keys, extra))

    def evidence(self, sources, extra: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Predictions ``[B, ...]`` and, per volume, where they come from: the centres ``[K, D]``
        of the patches the prediction encoded and the weight of each ``[K]``: the magnitude of
        the patch's first-order contribution to the prediction (the top class's logit, or the sum
        of the outputs), ``|gradient . features|`` over its features. Pivots are selected afresh,
        as in ``model(sources)``. On the lesion cohort, the strongest patch of a lesion-positive
        prediction lies in a lesion.

        Example:
            >>> import torch, cpic
            >>> from cpic.nn import Classification
            >>> model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=3)
            >>> pred, found = model.evidence([cpic.open_volume(torch.rand(16, 16, 16))])
            >>> centres, weight = found[0]
            >>> pred.shape, centres.shape[1], bool((weight >= 0).all()), len(centres) == len(weight)
            (torch.Size([1, 2]), 3, True, True)
        """
        if isinstance(self.head, Reconstruction):
            raise ValueError("a reconstruction model has no per-volume prediction to explain.")
        sources = _as_list(sources)
        with torch.enable_grad():
            z, f = self._embed(sources, None, extra)
            pred = self.head(z)
            score = pred.max(dim=1).values.sum() if self.head.task == "classification" else pred.sum()
            ids, features = f.last
            if not features.requires_grad:
                raise ValueError("evidence() needs an encoder with parameters that require gradients.")
            (grad,) = torch.autograd.grad(score, features)
        weight = (grad * features).sum(dim=1).abs().detach().cpu()
        n = math.prod(self.layout.grid_shape)
        volume = ids // n
        found = [(f.centres(ids[volume == b] % n), weight[volume == b]) for b in range(len(sources))]
        return pred.detach(), found

    def loss(
        self, sources, targets=None, keys: Sequence[Hashable] | None = None, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(loss, predictions)`` for one batch; reconstruction models sample voxels themselves."""
        sources = _as_list(sources)
        if isinstance(self.head, Reconstruction):
            return self.reconstruction_loss(sources, keys)
        if targets is None:
            raise ValueError(f"a {self.head.task} model needs targets for its loss.")
        pred = self(sources, keys, extra)
        target = self.head.check_targets(targets).to(pred.device)
        return self.head.loss(pred, target), pred

    # ------------------------------------------------------------------ reconstruction
    def query(self, latent: TT, coords: Tensor) -> Tensor:
        """Decoded intensities ``[B, K]`` at voxel ``coords [B, K, D]`` (or ``[K, D]`` for all)
        from a latent TT: an implicit representation, no voxel is read."""
        if not isinstance(self.head, Reconstruction):
            raise ValueError("query() needs a model built with the Reconstruction head.")
        coords = torch.as_tensor(coords).long()
        if coords.dim() == 2:
            coords = coords.expand(latent.batch, -1, -1)
        idx = self.layout.to_index(coords.cpu(), feature=0)[..., :-1]
        return self.head(latent.fibers(idx))

    def reconstruction_loss(
        self, sources, keys: Sequence[Hashable] | None = None, voxels: int = 4096
    ) -> tuple[Tensor, Tensor]:
        """Mean squared error of :meth:`query` at ``voxels`` voxels per volume drawn from those
        read so far (the pivots' patches and pivot selection): training reads nothing more."""
        sources = _as_list(sources)
        latent = self.latent(sources, keys)
        coords = torch.stack([self._sample_read(src, voxels) for src in sources])
        target = torch.stack([src.read(c) for src, c in zip(sources, coords)]).to(latent.device, latent.dtype)
        pred = self.query(latent, coords)
        return self.head.loss(pred, target), pred

    def _sample_read(self, src: VolumeSource, count: int) -> Tensor:
        """Coordinates ``[count, D]`` of voxels of ``src`` read so far, drawn with replacement."""
        ids = src.stats.voxel_ids()
        pick = torch.randint(0, len(ids), (count,), generator=self._generator).numpy()
        return src.coords_of(torch.from_numpy(ids[pick]))

    # ------------------------------------------------------------------ checks
    def memory_estimate(self, batch: int) -> int:
        """Bytes one training step over ``batch`` volumes needs for its samples (an upper estimate)."""
        shape = self.layout.tensor_shape
        ranks = (
            [1]
            + [min(self.rank, math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape))]
            + [1]
        )
        entries = sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(shape))
        per_entry = 4 * self.channels * self.patch ** len(self.grid_shape) + _BYTES_PER_ENTRY
        return batch * entries * per_entry

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
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"memory_budget must be a positive number of bytes or None, got {value!r}.")
        self._memory_budget = value
        self._memory_checked.clear()

    def check_memory(self, batch: int) -> None:
        """Raise :class:`MemoryError` with the estimate when a step over ``batch`` volumes needs more
        than :attr:`memory_budget` or the device's free memory."""
        if batch in self._memory_checked:
            return
        need, have = self.memory_estimate(batch), _available_memory(next(self.parameters()).device)
        what = "is available"
        if self._memory_budget is not None and (have is None or self._memory_budget < have):
            have, what = self._memory_budget, "is the memory budget"
        if have is not None and need > have:
            raise MemoryError(
                f"rank={self.rank}, features={self.features}, patch={self.patch}, {batch} volumes per step "
                f"needs about {_size(need)} for its samples, but {_size(have)} {what}: lower the rank, the "
                "features, the patch or the batch size."
            )
        self._memory_checked.add(batch)

    _check_memory = check_memory  # the name fit() and older callers use

    def _item_seeds(self, sources: Sequence[VolumeSource]) -> list[int]:
        """One seed per volume from the model's seed and the volume's file name: a volume gets
        the same pivots, and so the same prediction, whatever batch it comes in and wherever it
        is stored (:attr:`VolumeSource.identity`)."""
        return [zlib.crc32(f"{self.seed}:{src.identity}".encode()) for src in sources]

    def _next_seed(self) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator))


def _layout_config(layout: Layout) -> dict:
    if isinstance(layout, QTTLayout):
        return {"type": "qtt", "group": layout.group}
    return {"type": type(layout).__name__}


def _as_list(sources) -> list[VolumeSource]:
    if isinstance(sources, VolumeSource):
        return [sources]
    sources = list(sources)
    if not sources or not all(isinstance(s, VolumeSource) for s in sources):
        raise ValueError("sources must be a VolumeSource or a non-empty list of them (see cpic.open_volume).")
    return sources


def _peak_ids(f: PatchFeatures, sources: Sequence[VolumeSource]) -> list[Tensor | None]:
    """Per source, the voxel ids of the patches holding each feature's peak (``f.peaks``)."""
    return [f.peaks[id(s)][1] if id(s) in f.peaks else None for s in sources]


def _finite(tt: TT) -> TT:
    if not all(bool(torch.isfinite(c).all()) for c in tt.cores):
        raise FloatingPointError("the latent TT has non-finite entries.")
    return tt


def _check_sizes(grid_shape, features, patch, rank, extra_features, stride) -> None:
    if not grid_shape or any(n < 1 for n in grid_shape):
        raise ValueError(f"grid_shape must be positive sizes, got {grid_shape}.")
    for name, value, low in (
        ("features", features, 1),
        ("rank", rank, 1),
        ("extra_features", extra_features, 0),
        ("stride", stride, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or patch % 2 == 0:
        raise ValueError(
            f"patch must be an odd positive integer (the patch is centred on a voxel), got {patch!r}."
        )
    if patch > min(grid_shape):
        raise ValueError(f"patch={patch} is larger than the volume's smallest side ({min(grid_shape)}).")


def _size(n: float) -> str:
    """``3 * 2**30`` -> ``'3.0 GiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _available_memory(device: torch.device) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, else the system's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
