"""Batched TT-cross: alternating maxvol sweeps over fibers of a black-box tensor."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from cpic.tci.cache import BatchedFunction, BudgetExhausted, EvaluationCache
from cpic.tci.fibers import (
    empty_set,
    extend_left,
    extend_right,
    fiber_indices,
    left_row_keys,
    right_row_keys,
)
from cpic.tci.info import CrossInfo
from cpic.tci.submatrix import first_of_duplicates, maxvol_rect
from cpic.tt import TT
from cpic.util.checks import check_int
from cpic.util.indexing import c_strides
from cpic.util.norms import relative_error

_DEFAULT_RANK = 10
_DEFAULT_SWEEPS = 4
_SAFETY_SWEEPS = 100
#: maxvol's bound on its coefficients with fixed ranks, and when ranks grow (see ``cross``)
_FIXED_TAU = 1.05
_GROWING_TAU = 1.5
#: adaptive ranks grow every bond by at least this many rows per step, by up to ``kick`` where needed
_MIN_ROWS_ADDED = 1


@dataclass
class _Plan:
    """Validated arguments of one run."""

    shape: tuple[int, ...]
    batch: int
    start_ranks: list[int]  # initial bond ranks (1, r_1, ..., 1)
    limits: list[int]  # largest allowed bond ranks
    adaptive: bool
    kick: int
    tol: float | None
    sweeps: int
    budget: int | None
    n_test: int  # held-out entries that f evaluates
    validation: tuple[Tensor, Tensor | None] | None  # user-supplied held-out indices, values
    tau: float  # maxvol's bound on its coefficients
    dtype: torch.dtype
    device: torch.device


def _validation_set(
    validation, shape: tuple[int, ...], batch: int, dtype, device
) -> tuple[Tensor, Tensor | None]:
    """``validation`` (``(idx, values)``, ``values`` possibly ``None``) checked and moved to
    ``device``: ``idx`` ``LongTensor[batch, P, d]`` inside ``shape``, ``values`` ``[batch, P]``."""
    if not isinstance(validation, (tuple, list)) or len(validation) != 2:
        raise ValueError("validation must be a pair (idx [B, P, d], values [B, P] or None).")
    idx, values = validation
    d = len(shape)
    if not isinstance(idx, Tensor) or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError("validation's idx must be an integer tensor [B, P, d].")
    if idx.dim() != 3 or idx.shape[0] != batch or idx.shape[2] != d or idx.shape[1] == 0:
        raise ValueError(
            f"validation's idx must have shape [B={batch}, P > 0, d={d}], got {tuple(idx.shape)}."
        )
    high = torch.tensor(shape)
    idx = idx.long().cpu()
    if bool(((idx < 0) | (idx >= high)).any()):
        raise ValueError(f"validation's idx holds multi-indices outside the shape {shape}.")
    if values is not None:
        values = torch.as_tensor(values)
        if values.shape != idx.shape[:2]:
            raise ValueError(
                f"validation's values must have shape {tuple(idx.shape[:2])} (one per index), "
                f"got {tuple(values.shape)}."
            )
        if not bool(torch.isfinite(values).all()):
            raise ValueError("validation's values must be finite.")
        values = values.to(device=device, dtype=dtype)
    return idx.to(device), values


def _plan(
    shape, batch, rank, max_rank, tol, sweeps, budget, dtype, device, kick, n_test, init, tau, validation
) -> _Plan:
    try:
        shape = tuple(int(n) for n in shape)
    except TypeError:
        raise ValueError(f"shape must be a sequence of mode sizes, got {shape!r}.") from None
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"shape must be a non-empty sequence of sizes >= 1, got {shape}.")
    for name, value in (("rank", rank), ("max_rank", max_rank), ("sweeps", sweeps), ("budget", budget)):
        check_int(name, value, optional=True)
    check_int("batch", batch)
    check_int("kick", kick)
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}.")
    check_int("n_test", n_test, low=0)
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 1):
        raise ValueError(f"tau must be a number >= 1 (maxvol's bound on its coefficients), got {tau!r}.")
    if rank is not None and max_rank is not None and max_rank < rank:
        raise ValueError(f"max_rank ({max_rank}) must be >= rank ({rank}).")
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}.")
    try:
        device = torch.device(device or "cpu")
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a valid torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this torch build sees no CUDA device.")
    if validation is not None:
        validation = _validation_set(validation, shape, batch, dtype, device)
        n_test = validation[0].shape[1] if validation[1] is None else 0
    d = len(shape)
    caps = [1] + [min(math.prod(shape[:k]), math.prod(shape[k:])) for k in range(1, d)] + [1]
    adaptive = max_rank is not None and (rank is None or max_rank > rank)
    start = rank if rank is not None else (1 if adaptive else _DEFAULT_RANK)
    top = max_rank if adaptive else start
    if init is not None:
        if tuple(init.shape) != shape or init.batch != batch:
            raise ValueError(
                f"init was computed for batch {init.batch} and shape {init.shape}, not batch {batch} "
                f"and shape {shape}."
            )
        start_ranks = [int(r.shape[1]) for r in init.right]
        top = max(top, max(start_ranks))
    else:
        start_ranks = [min(start, c) for c in caps]
    if sweeps is None:
        sweeps = _SAFETY_SWEEPS if (tol is not None or budget is not None) else _DEFAULT_SWEEPS
    return _Plan(
        shape=shape,
        batch=batch,
        start_ranks=start_ranks,
        limits=[min(top, c) for c in caps],
        adaptive=adaptive,
        kick=kick,
        tol=None if tol is None else float(tol),
        sweeps=sweeps,
        budget=budget,
        n_test=n_test,
        validation=validation,
        tau=float(tau) if tau is not None else (_GROWING_TAU if adaptive else _FIXED_TAU),
        dtype=dtype,
        device=device,
    )


def _first_pass_cost(plan: _Plan) -> int:
    """Evaluations of the first left-to-right pass, which yields the first TT.

    Consecutive fibers share the ``r_k x r_k`` pivot entries, which the cache serves.
    """
    r, n = plan.start_ranks, plan.shape
    fibers = sum(r[k] * n[k] * r[k + 1] for k in range(len(n)))
    shared = sum(r[k] ** 2 for k in range(1, len(n)))
    return plan.batch * (fibers - shared + plan.n_test)


def _uniform(gen: torch.Generator | list[torch.Generator], batch: int, *shape: int, device) -> Tensor:
    """``[batch, *shape]`` uniform numbers: from one generator, or item ``b`` from ``gen[b]`` so
    that an item's draws do not depend on the others in its batch."""
    if isinstance(gen, torch.Generator):
        return torch.rand(batch, *shape, generator=gen, device=device)
    return torch.cat([torch.rand(1, *shape, generator=g, device=device) for g in gen])


def _generators(seed, batch: int, device: torch.device) -> torch.Generator | list[torch.Generator]:
    if seed is None or isinstance(seed, int):
        gen = torch.Generator(device=device)
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        return gen
    seeds = list(seed)
    if len(seeds) != batch or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seed must be an integer or one integer per batch item ({batch}), got {seed!r}.")
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def _random_right_sets(plan: _Plan, gen) -> list[Tensor]:
    """Nested right index sets of distinct, uniformly random rows."""
    d, B, dev = len(plan.shape), plan.batch, plan.device
    right: list[Tensor] = [empty_set(B, dev)] * (d + 1)
    for k in range(d - 1, 0, -1):
        candidates = plan.shape[k] * plan.start_ranks[k + 1]
        order = _uniform(gen, B, candidates, device=dev).argsort(dim=1)
        right[k] = extend_right(right[k + 1], plan.shape[k], order[:, : plan.start_ranks[k]])
    return right


class _Sweeper:
    """State of one run: index sets, ranks, cores, and the cache that evaluates fibers."""

    def __init__(self, f: BatchedFunction, plan: _Plan, cache: EvaluationCache, right):
        self.f, self.plan, self.cache = f, plan, cache
        d = len(plan.shape)
        self.d = d
        self.ranks = list(plan.start_ranks)
        self.left: list[Tensor] = [empty_set(plan.batch, plan.device)] * (d + 1)
        self.right = list(right)
        self.cores: list[Tensor | None] = [None] * d
        self.grow = plan.adaptive
        self.strides = c_strides(plan.shape, plan.device)  # keys of identical rows

    def fiber(self, k: int) -> Tensor:
        left, right = self.left[k], self.right[k + 1]
        idx = fiber_indices(left, self.plan.shape[k], right)
        values = self.cache.evaluate(self.f, idx, distinct=True)  # nested sets: no repeats
        return values.reshape(self.plan.batch, left.shape[1], self.plan.shape[k], right.shape[1])

    def _target(self, k: int, neighbour: int) -> int:
        """Rank of bond ``k`` after a step: grown by ``kick`` within the limits."""
        if not self.grow:
            return self.ranks[k]
        return min(self.ranks[k] + self.plan.kick, self.plan.limits[k], neighbour)

    def left_to_right(self, first: Tensor) -> Tensor:
        """Update the left sets; returns the last fiber (the TT's last core)."""
        n, B = self.plan.shape, self.plan.batch
        fiber = first
        for k in range(self.d - 1):
            if k:
                fiber = self.fiber(k)
            r0, r1 = fiber.shape[1], fiber.shape[3]
            unfolded = fiber.reshape(B, r0 * n[k], r1)
            q = torch.linalg.qr(unfolded).Q
            target = self._target(k + 1, n[k + 1] * self.ranks[k + 2])
            rows, coef = maxvol_rect(q, target - r1, self.plan.tau, min_extra=_MIN_ROWS_ADDED)
            keys = partial(left_row_keys, self.left[k], n[k], self.strides[: k + 1])
            rows = first_of_duplicates(unfolded, rows, keys)
            self.cores[k] = coef.reshape(B, r0, n[k], rows.shape[1])
            self.left[k + 1] = extend_left(self.left[k], n[k], rows)
            self.ranks[k + 1] = rows.shape[1]
        fiber = self.fiber(self.d - 1)
        self.cores[self.d - 1] = fiber
        return fiber

    def right_to_left(self, first: Tensor) -> Tensor:
        """Update the right sets; returns the first fiber (the TT's first core)."""
        n, B = self.plan.shape, self.plan.batch
        fiber = first
        for k in range(self.d - 1, 0, -1):
            if k < self.d - 1:
                fiber = self.fiber(k)
            r0, r1 = fiber.shape[1], fiber.shape[3]
            unfolded = fiber.reshape(B, r0, n[k] * r1).mT
            q = torch.linalg.qr(unfolded).Q
            target = self._target(k, n[k - 1] * self.ranks[k - 1])
            rows, coef = maxvol_rect(q, target - r0, self.plan.tau, min_extra=_MIN_ROWS_ADDED)
            keys = partial(right_row_keys, n[k], self.right[k + 1], self.strides[k:])
            rows = first_of_duplicates(unfolded, rows, keys)
            self.cores[k] = coef.mT.reshape(B, rows.shape[1], n[k], r1)
            self.right[k] = extend_right(self.right[k + 1], n[k], rows)
            self.ranks[k] = rows.shape[1]
        fiber = self.fiber(0)
        self.cores[0] = fiber
        return fiber

    def at_limits(self) -> bool:
        return all(r >= lim for r, lim in zip(self.ranks, self.plan.limits))


def _stalled(history: list[Tensor], sweeper: _Sweeper, patience: int = 6) -> bool:
    """True when the ranks cannot grow and the error has not halved in ``patience`` passes."""
    if (sweeper.grow and not sweeper.at_limits()) or len(history) <= patience:
        return False
    best_before = torch.stack(history[:-patience]).min(dim=0).values
    recent = torch.stack(history[-patience:]).min(dim=0).values
    return bool((recent > 0.5 * best_before).any())


def _change(current: TT, previous: TT) -> Tensor:
    """Relative change ``||current - previous|| / ||current||`` per item, in float64."""
    current, previous = current.to(torch.float64), previous.to(torch.float64)
    norm = current.norm()
    diff = (current - previous).norm()
    return torch.where(norm > 0, diff / torch.where(norm > 0, norm, torch.ones_like(norm)), diff)


@torch.no_grad()
def cross(
    f: BatchedFunction,
    shape: Sequence[int],
    *,
    batch: int = 1,
    rank: int | None = None,
    max_rank: int | None = None,
    tol: float | None = None,
    sweeps: int | None = None,
    budget: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    seed: int | Sequence[int] | None = None,
    kick: int = 2,
    n_test: int = 256,
    cache: bool = True,
    init: CrossInfo | None = None,
    tau: float | None = None,
    validation: tuple[Tensor, Tensor | None] | None = None,
    callback: Callable[[TT, CrossInfo], bool | None] | None = None,
) -> tuple[TT, CrossInfo]:
    """Tensor-train cross approximation of ``batch`` black-box tensors at once.

    ``f(idx: LongTensor[batch, P, d]) -> Tensor[batch, P]`` gives the entries; it is called
    once per fiber block, on entries not evaluated before. With ``rank`` alone the bond ranks
    are fixed (default 10, capped by what the shape allows); with ``max_rank`` they grow by
    one to ``kick`` rows per step (rectangular maxvol) until the held-out relative error is
    below ``tol``.

    The run stops at ``tol`` (checked after every pass, i.e. half sweep), after ``sweeps``
    (default 4, or 100 when ``tol`` or ``budget`` is given), when the next call would exceed
    ``budget`` evaluations, when a whole sweep needs no new entries, or (with ``tol``) when
    the ranks are at their limit and the error has not halved in three sweeps ("stalled":
    the pass of least held-out error is returned then, not the last), whichever comes first;
    ``info.stop`` says which. ``n_test`` random entries per item estimate the
    error (``n_test=0``: the relative change between passes is used instead);
    ``validation=(idx, values)`` gives the held-out set instead (``idx: LongTensor[batch, P,
    d]``, ``values: Tensor[batch, P]``, or ``None`` for ``f`` to evaluate them). ``init``
    warm-starts from the index sets of an earlier run's info. ``seed`` may give one integer per
    item: with a fixed rank, each item's result is then the same whatever batch it runs in.

    ``tau`` bounds maxvol's coefficients (``|coef| <= tau``: rows are swapped until none is
    larger). The default is 1.05 with fixed ranks, where swaps are the only way pivots
    improve, and 1.5 when ranks grow: the added rows explore anyway, and fewer swaps keep the
    index sets steadier from pass to pass, so more fibers repeat and the cache serves them
    (docs/benchmarks.md, table b2 and its validation on functions outside it).

    ``callback(tt, info)`` is called after every sweep with that sweep's TT and the info so
    far (its index sets would warm-start another run); returning true stops the run
    (``info.stop == "callback"``), which returns that TT.

    Example:
        >>> import torch, cpic
        >>> def f(idx):                                     # a rank-2 function of 6 indices
        ...     x = idx.double() / 15
        ...     return torch.sin(x.sum(-1))
        >>> tt, info = cpic.cross(f, [16] * 6, rank=4, dtype=torch.float64, seed=0)
        >>> bool(info.error.max() < 1e-10), info.ranks
        (True, (1, 4, 4, 4, 4, 4, 1))
        >>> def enough(tt, info):                         # stop once the error is small
        ...     return bool(info.error.max() < 1e-3)
        >>> idx = torch.randint(0, 16, (1, 100, 6), generator=torch.Generator().manual_seed(0))
        >>> _, info = cpic.cross(f, [16] * 6, max_rank=8, sweeps=10, dtype=torch.float64, seed=0,
        ...                      validation=(idx, f(idx)), callback=enough)
        >>> info.stop, info.sweeps, info.test_evaluations
        ('callback', 2, 0)
    """
    started = time.perf_counter()
    if callback is not None and not callable(callback):
        raise ValueError(f"callback must be callable (tt, info) -> bool, got {callback!r}.")
    plan = _plan(
        shape, batch, rank, max_rank, tol, sweeps, budget, dtype, device, kick, n_test, init, tau, validation
    )
    if plan.budget is not None and plan.budget < _first_pass_cost(plan):
        raise ValueError(
            f"budget={plan.budget} is too small for one sweep: shape {plan.shape} at ranks "
            f"{plan.start_ranks} with batch {plan.batch} and n_test={plan.n_test} needs "
            f"{_first_pass_cost(plan)} evaluations for its first pass."
        )
    gen = _generators(seed, plan.batch, plan.device)
    store = EvaluationCache(plan.shape, plan.batch, plan.dtype, plan.device, plan.budget, enabled=cache)
    right = list(init.right) if init is not None else _random_right_sets(plan, gen)
    sweeper = _Sweeper(f, plan, store, right)
    info = CrossInfo(shape=plan.shape, batch=plan.batch)

    test_idx, test_values = plan.validation or (None, None)
    if test_idx is None and plan.n_test:
        high = torch.tensor(plan.shape, device=plan.device)
        test_idx = (_uniform(gen, plan.batch, plan.n_test, len(plan.shape), device=plan.device) * high).long()
    if test_idx is not None and test_values is None:
        test_values = store.evaluate(f, test_idx)
        info.test_evaluations = store.evaluations

    snapshot: tuple | None = None
    best: tuple | None = None  # (snapshot, errors) of the measured pass of least worst error
    errors: list[Tensor] = []
    changes: list[Tensor] = []
    previous: list[TT] = []

    def finish_pass(end_of_sweep: bool) -> bool:
        """Keep the TT of the pass just done; measure it (every pass with ``tol``, else every
        sweep); True when it meets ``tol``."""
        nonlocal snapshot, best
        direction = "rtl" if end_of_sweep else "ltr"
        snapshot = (
            list(sweeper.cores),
            list(sweeper.left),
            list(sweeper.right),
            tuple(sweeper.ranks),
            direction,
        )
        if plan.tol is None and not end_of_sweep:
            return False
        current = TT(sweeper.cores)
        if test_idx is not None:
            errors.append(relative_error(current.eval(test_idx), test_values, dim=1))
            if best is None or bool(errors[-1].max() < best[1].max()):
                best = (snapshot, errors[-1])
        else:  # without a held-out set, the change between passes measures convergence
            if previous:
                changes.append(_change(current, previous[0]))
            previous[:] = [current]
        measure = errors[-1] if errors else (changes[-1] if changes else None)
        return plan.tol is not None and measure is not None and bool((measure <= plan.tol).all())

    def record(stop: str) -> TT:
        """The snapshot's TT, with ``info`` filled in from the run so far."""
        cores, info.left, info.right, info.ranks, info.direction = snapshot
        B = plan.batch
        info.errors = torch.stack(errors).cpu() if errors else torch.empty(0, B)
        info.changes = torch.stack(changes).cpu() if changes else torch.empty(0, B)
        info.evaluations = store.evaluations
        info.unique_evaluations = store.unique_evaluations
        info.cache_hits = store.hits
        info.test_idx, info.test_values = test_idx, test_values
        info.stop = stop
        info.time = time.perf_counter() - started
        return TT(cores)

    stop = "sweeps"
    try:
        fiber = sweeper.fiber(0)
        if sweeper.d == 1:
            sweeper.cores[0] = fiber
            finish_pass(end_of_sweep=True)
        while sweeper.d > 1:
            unique_before = store.unique_evaluations
            fiber = sweeper.left_to_right(fiber)
            if finish_pass(end_of_sweep=False):
                stop = "tol"
                break
            fiber = sweeper.right_to_left(fiber)
            info.sweeps += 1
            met = finish_pass(end_of_sweep=True)
            if callback is not None and callback(record(""), info):
                stop = "callback"
                break
            if met:
                stop = "tol"
                break
            if plan.tol is not None and _stalled(errors or changes, sweeper):
                stop = "stalled"
                break
            if info.sweeps >= plan.sweeps:
                stop = "sweeps"
                break
            if store.unique_evaluations == unique_before and (not sweeper.grow or sweeper.at_limits()):
                stop = "converged"
                break
    except BudgetExhausted:
        stop = "budget"
        if snapshot is None:  # cannot happen: the budget was checked against the first pass
            raise ValueError(f"budget={plan.budget} is too small for one sweep.") from None

    if stop == "stalled" and best is not None and best[0] is not snapshot:
        snapshot = best[0]  # the error has stopped falling: return the best pass, not the last
        errors.append(best[1])
    if stop == "budget" and test_idx is not None:  # measure the TT actually returned
        errors.append(relative_error(TT(snapshot[0]).eval(test_idx), test_values, dim=1))
    return record(stop), info
