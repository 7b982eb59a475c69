"""Cross pivots as the read policy: the default of :class:`cpic.CPIC`.

The pivots of each volume come from TT-cross over its latent tensor and are kept in a
:class:`PivotStore` (re-selected on a schedule, on request or when held-out entries drift);
the latent TT is :func:`cpic.interpolate` from them, recovered from a singular block or
non-finite cores by re-selecting the pivots, then by halving the rank for the step.
"""

from __future__ import annotations

import math

import torch

from cpic.nn.latent import PatchFeatures
from cpic.nn.reads import ReadPolicy, Reads
from cpic.tci import PivotStore, cross, interpolate
from cpic.tci.info import CrossInfo
from cpic.tt import TT

#: what a singular block or a non-finite core raises
_NUMERICAL = (torch.linalg.LinAlgError, FloatingPointError)


class CrossPivots(ReadPolicy):
    """The patches at the TT-cross pivots of each volume (``rank``, ``sweeps``), kept per key
    and re-selected every ``refresh_every`` uses, on request, or when the TT misses held-out
    entries by more than ``refresh_tol`` (relative); refreshes are warm-started.

    ``numerics`` counts the failures met and how they were handled (``"refreshed"``,
    ``"lowered_rank"``) and the drift-triggered refreshes (``"drift"``).

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Regression
        >>> model = cpic.CPIC((16, 16, 16), Regression(), features=3, patch=3, reads=CrossPivots(rank=2))
        >>> model.read([cpic.open_volume(torch.rand(16, 16, 16))]).tt.ranks[1] <= 2, model.rank
        (True, 2)
    """

    def __init__(
        self,
        rank: int = 10,
        *,
        sweeps: int = 3,
        refresh_every: int | None = None,
        refresh_tol: float | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.pivots = PivotStore(rank, sweeps=sweeps, refresh_every=refresh_every, seed=seed)
        self.refresh_tol = refresh_tol

    @property
    def rank(self) -> int:
        return self.pivots.rank

    def select(self, f, keys, seeds, generator, peaks=False) -> Reads:
        with f.log(peaks=peaks) as log:
            if keys is None:
                tt, info = self._cold(f, self.rank, seeds)
                if not (torch.is_grad_enabled() or peaks):
                    return Reads(tt)
                tt = self._interpolate(f, info, keys, generator)
                if not peaks:
                    return Reads(tt, log.last)
                top, used = f.sampled_max(log.last, _peak_ids(log.peaks, f))
                return Reads(tt, used, top)
            selecting = self.pivots.pending(keys) if peaks else []
            if selecting:  # earlier selections' peaks compete with those of a re-selection
                with torch.no_grad():
                    f.encode_at(
                        [self.pivots.attached(k) if i in selecting else None for i, k in enumerate(keys)]
                    )
            info = self.pivots.pivots(
                f.subset, f.shape, list(keys), dtype=f.dtype, device=f.device, seeds=seeds
            )
            found = _peak_ids(log.peaks, f) if selecting else []
            for i in selecting:
                if found[i] is not None:
                    self.pivots.attach(keys[i], found[i])
            tt = self._interpolate(f, info, keys, generator)
            used, top = log.last, None
        if peaks:  # before the drift check calls f again
            top, used = f.sampled_max(used, [self.pivots.attached(k) for k in keys])
        if self.refresh_tol is not None:
            self._check_drift(f, tt, keys, generator)
        return Reads(tt, used, top)

    def entries(self, shape, patch_voxels) -> int:
        ranks = (
            [1]
            + [min(self.rank, math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, len(shape))]
            + [1]
        )
        return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(shape))

    def settings(self) -> dict:
        """Rank, sweeps and refresh settings (a model's configuration lists them)."""
        store = self.pivots
        return {
            "rank": store.rank,
            "sweeps": store.sweeps,
            "refresh_every": store.refresh_every,
            "refresh_tol": self.refresh_tol,
        }

    def config(self) -> dict:
        return {"type": "cross", "seed": self.pivots.seed}  # the rest: :meth:`settings`

    @torch.no_grad()
    def _cold(self, f: PatchFeatures, rank: int, seed) -> tuple[TT, CrossInfo]:
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

    def _interpolate(self, f: PatchFeatures, info: CrossInfo, keys, generator: torch.Generator) -> TT:
        """:func:`interpolate`, recovering from a singular block or non-finite cores by
        re-selecting the pivots, then by halving the rank for this step; each counted."""
        try:
            return _finite(interpolate(f, info))
        except _NUMERICAL as err:
            first_error = err
        self.numerics["refreshed"] += 1
        _, info = self._cold(f, self.rank, _next_seed(generator))
        if keys is not None:
            self.pivots.forget(list(keys))
        try:
            return _finite(interpolate(f, info))
        except _NUMERICAL:
            pass
        self.numerics["lowered_rank"] += 1
        _, info = self._cold(f, max(1, self.rank // 2), _next_seed(generator))
        try:
            return _finite(interpolate(f, info))
        except _NUMERICAL as err:
            raise FloatingPointError(
                f"the latent TT stayed singular or non-finite after re-selecting pivots and halving the rank "
                f"(first error: {first_error}); check the volumes for constant or non-finite values."
            ) from err

    @torch.no_grad()
    def _check_drift(
        self, f: PatchFeatures, tt: TT, keys, generator: torch.Generator, n_check: int = 64
    ) -> None:
        """Mark for refresh the items whose TT misses held-out entries by more than ``refresh_tol``."""
        high = torch.tensor(f.shape)
        idx = (torch.rand(f.batch, n_check, len(high), generator=generator) * high).long()
        exact = f(idx.to(f.device))
        approx = tt.detach().eval(idx)
        error = (approx - exact).norm(dim=1) / exact.norm(dim=1).clamp_min(1e-12)
        drifted = [keys[b] for b in (error > self.refresh_tol).nonzero().flatten().tolist()]
        self.numerics["drift"] += len(drifted)
        self.pivots.mark_stale(drifted)


def _next_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def _peak_ids(peaks: dict, f: PatchFeatures) -> list[torch.Tensor | None]:
    """Per source of ``f``, the cell ids of the patches holding each feature's peak."""
    return [peaks[id(s)][1] if id(s) in peaks else None for s in f.sources]


def _finite(tt: TT) -> TT:
    if not all(bool(torch.isfinite(c).all()) for c in tt.cores):
        raise FloatingPointError("the latent TT has non-finite entries.")
    return tt
