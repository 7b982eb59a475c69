"""The C-PIC predictor: the latent TT of a batch of volumes -> projection -> head, its evidence and loss."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
from torch import Tensor, nn

from cpic.layout import Layout
from cpic.nn.heads import Head
from cpic.nn.latent_model import LatentModel, as_sources
from cpic.nn.projections import make_projection
from cpic.nn.reads import ReadPolicy
from cpic.util.checks import check_int


class CPIC(LatentModel):
    """Predictions for a batch of volumes from a TT of patch features.

    Each step reads and encodes only the patches its read policy ``reads`` chooses (default:
    :class:`~cpic.nn.cross_reads.CrossPivots`, the patches at the cross pivots of every volume:
    one batched cross and one differentiable :func:`cpic.interpolate` for all ``B`` volumes),
    projects the latent TT to a vector without expanding it, and applies the head.

    With ``keys`` (one hashable per volume, e.g. its index in a dataset) the pivots of each
    volume are kept and reused: re-selected every ``refresh_every`` uses, on
    :meth:`refresh_pivots` (e.g. every epoch), or when the held-out error of the current TT
    exceeds ``refresh_tol``; refreshes are warm-started (one sweep). Without keys, each call
    selects afresh.

    ``sampled_max=True`` appends to the projection the largest value of each feature over the
    patches the policy read (the interpolation's fibers) and over the patch where each feature
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

    #: its loss compares predictions with targets (fit checks them and reports metrics)
    supervised = True

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
        reads: ReadPolicy | None = None,
        seed: int = 0,
    ):
        if not isinstance(head, Head) or not head.per_volume:
            raise ValueError(
                f"head must be a cpic.nn head of per-volume predictions (Classification, Regression, ...), "
                f"got {head!r} (a voxel decoder belongs to cpic.nn.ImplicitVolume)."
            )
        check_int("extra_features", extra_features, low=0)
        super().__init__(
            grid_shape,
            features=features,
            patch=patch,
            channels=channels,
            encoder=encoder,
            positions=positions,
            background=background,
            rank=rank,
            sweeps=sweeps,
            refresh_every=refresh_every,
            refresh_tol=refresh_tol,
            border=border,
            stride=stride,
            layout=layout,
            reads=reads,
            seed=seed,
        )
        self.extra_features = extra_features
        self.projection = make_projection(projection, features, len(self.grid_shape))
        self.head = head
        self.sampled_max = sampled_max
        widths = (self.projection.out_features(features), features if sampled_max else 0, extra_features)
        head.build(sum(widths) + self.reads.summary_features)
        self.config.update(
            projection=projection if isinstance(projection, str) else type(projection).__name__,
            sampled_max=sampled_max,
            extra_features=extra_features,
            head=head.config(),
        )

    @property
    def task(self) -> str:
        """What the model predicts: its head's task ("classification", "regression", "quantile")."""
        return self.head.task

    # ------------------------------------------------------------------ predictions
    def embed(self, sources, keys: Sequence[Hashable] | None = None, extra: Tensor | None = None) -> Tensor:
        """The head's input ``[B, in_features]``: the projection plus any extra features."""
        return self._embed(sources, keys, extra)[0]

    def _embed(self, sources, keys, extra):
        sources = as_sources(sources)
        reads = self.read(sources, keys, peaks=self.sampled_max)
        z = self.projection(reads.latent, self.layout)
        if reads.peaks is not None:
            z = torch.cat([z, reads.peaks], 1)
        if reads.summary is not None:
            z = torch.cat([z, reads.summary.to(z)], 1)
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
        return z, reads

    def forward(self, sources, keys: Sequence[Hashable] | None = None, extra: Tensor | None = None) -> Tensor:
        return self.head(self.embed(sources, keys, extra))

    def evidence(self, sources, extra: Tensor | None = None) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """Predictions ``[B, ...]`` and, per volume, where they come from: the centres ``[K, D]``
        of the patches the prediction encoded and the weight of each ``[K]``: the magnitude of
        the patch's first-order contribution to the prediction (the top class's logit, or the sum
        of the outputs), ``|gradient . features|`` over its features. Reads are made afresh,
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
        sources = as_sources(sources)
        with torch.enable_grad():
            z, reads = self._embed(sources, None, extra)
            pred = self.head(z)
            score = pred.max(dim=1).values.sum() if self.head.task == "classification" else pred.sum()
            ids, features = reads.patches
            if not features.requires_grad:
                raise ValueError("evidence() needs an encoder with parameters that require gradients.")
            (grad,) = torch.autograd.grad(score, features)
        weight = (grad * features).sum(dim=1).abs().detach().cpu()
        n = math.prod(self.layout.grid_shape)
        volume = ids // n
        f = self.feature_function(sources)
        found = [(f.centres(ids[volume == b] % n), weight[volume == b]) for b in range(len(sources))]
        return pred.detach(), found

    def loss(
        self, sources, targets=None, keys: Sequence[Hashable] | None = None, extra: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(loss, predictions)`` for one batch: the head's loss against ``targets``."""
        if targets is None:
            raise ValueError(f"a {self.head.task} model needs targets for its loss.")
        pred = self(sources, keys, extra)
        target = self.head.check_targets(targets).to(pred.device)
        return self.head.loss(pred, target), pred
