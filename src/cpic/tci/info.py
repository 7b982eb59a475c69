"""What a cross run reports."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class CrossInfo:
    """Statistics and index sets of one :func:`cpic.cross` run.

    ``left[k]`` (``[B, r_k, k]``, ``k = 0..d-1``) and ``right[k]`` (``[B, r_k, d - k]``,
    ``k = 1..d``) are the nested index sets on bond ``k`` that produced the returned TT
    (``left[d]`` and ``right[0]`` are unused ``[B, 1, 0]`` placeholders). Pass the info as
    ``init=`` to a later call to warm-start from them.
    """

    shape: tuple[int, ...]
    batch: int
    #: entries passed to ``f``, including held-out points and batch padding
    evaluations: int = 0
    #: distinct entries evaluated (the cache never evaluates an entry twice)
    unique_evaluations: int = 0
    #: requested entries served by the cache
    cache_hits: int = 0
    #: entries evaluated for the held-out error estimate (part of ``evaluations``)
    test_evaluations: int = 0
    #: completed sweeps (one sweep = left-to-right then right-to-left)
    sweeps: int = 0
    #: why the run stopped: "sweeps", "tol", "budget", "converged" or "stalled"
    stop: str = ""
    #: wall time in seconds
    time: float = 0.0
    ranks: tuple[int, ...] = ()
    #: direction of the last pass, whose index sets built the TT: "ltr" (left sets) or "rtl"
    direction: str = "rtl"
    #: held-out relative error ``[measurements, B]``: after every pass (half sweep) when
    #: ``tol`` is set, else after every sweep; the last row is the returned TT's
    errors: Tensor = field(default_factory=lambda: torch.empty(0, 0), repr=False)
    #: with ``n_test=0``: relative change of the TT between measurements, ``[measurements - 1, B]``
    changes: Tensor = field(default_factory=lambda: torch.empty(0, 0), repr=False)
    left: list[Tensor] = field(default_factory=list, repr=False)
    right: list[Tensor] = field(default_factory=list, repr=False)
    #: the held-out multi-indices ``[B, n_test, d]`` and their values ``[B, n_test]``
    test_idx: Tensor | None = field(default=None, repr=False)
    test_values: Tensor | None = field(default=None, repr=False)

    @property
    def error(self) -> Tensor:
        """Final held-out relative error per batch item ``[B]`` (NaN without a held-out set)."""
        if self.errors.numel() == 0:
            return torch.full((self.batch,), float("nan"))
        return self.errors[-1]

    def summary(self) -> str:
        err = self.error
        return (
            f"{self.sweeps} sweeps ({self.stop}), ranks {max(self.ranks)}, "
            f"{self.evaluations} evaluations ({self.unique_evaluations} unique, {self.cache_hits} cached), "
            f"held-out error {float(err.max()):.3g}, {self.time:.3f} s"
        )
