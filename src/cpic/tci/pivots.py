"""Index sets kept per item across calls, re-selected on a schedule or on demand.

Training reuses each volume's pivots for many steps (the differentiable step needs only
:func:`cpic.interpolate`) and refreshes them every ``refresh_every`` uses, when marked stale
(an epoch boundary, a drift check, a numerical failure), or when first seen. A refresh is
warm-started from the item's previous sets, so one sweep does what a cold start needs several
for.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cpic.tci.cache import BatchedFunction
from cpic.tci.engine import cross
from cpic.tci.info import CrossInfo
from cpic.util.checks import check_int


@dataclass
class _ItemPivots:
    left: list[Tensor]  # [1, r_k, k] per bond
    right: list[Tensor]
    direction: str
    uses: int = 0
    stale: bool = False
    attached: Tensor | None = None  # whatever the caller keeps with this selection


@dataclass
class PivotCounts:
    """What a :class:`PivotStore` did: cold selections, warm refreshes (items, not calls), and
    the entries those runs evaluated."""

    selected: int = 0
    refreshed: int = 0
    evaluations: int = 0


def stack_infos(shape: Sequence[int], items: Sequence[_ItemPivots]) -> CrossInfo:
    """One batched :class:`CrossInfo` from per-item index sets of equal ranks."""
    directions = {p.direction for p in items}
    if len(directions) != 1:
        raise ValueError("items were selected in different directions; refresh them together.")
    info = CrossInfo(shape=tuple(shape), batch=len(items), direction=directions.pop())
    info.left = [torch.cat([p.left[k] for p in items]) for k in range(len(items[0].left))]
    info.right = [torch.cat([p.right[k] for p in items]) for k in range(len(items[0].right))]
    info.ranks = (1,) + tuple(int(r.shape[1]) for r in info.right[1:-1]) + (1,)
    return info


class PivotStore:
    """Per-item pivots (cross index sets) keyed by any hashable, for a fixed ``rank``.

    ``pivots(function_for, shape, keys)`` returns a batched :class:`CrossInfo` for ``keys`` (in
    order) ready for :func:`cpic.interpolate`: items never seen get a cold cross of ``sweeps``
    sweeps; items used ``refresh_every`` times or marked stale get ``refresh_sweeps`` sweeps
    warm-started from their sets; all others are reused as they are. ``function_for(positions)``
    must return the batched function of the items at those positions of ``keys``.

    Example:
        >>> import torch
        >>> from cpic.tci import PivotStore, interpolate
        >>> scale = torch.tensor([1.0, 2.0])
        >>> def function_for(items):
        ...     s = scale[items]
        ...     return lambda idx: s[:, None] * torch.cos(idx.float().sum(-1) / 9)
        >>> store = PivotStore(rank=2, refresh_every=2, seed=0)
        >>> info = store.pivots(function_for, (4,) * 4, ["a", "b"])
        >>> tt = interpolate(function_for([0, 1]), info)
        >>> store.counts.selected, tt.batch
        (2, 2)
        >>> _ = store.pivots(function_for, (4,) * 4, ["a", "b"])    # second use: reused
        >>> _ = store.pivots(function_for, (4,) * 4, ["a", "b"])    # third: refreshed, warm
        >>> store.counts.refreshed
        2
    """

    def __init__(
        self,
        rank: int,
        sweeps: int = 3,
        refresh_sweeps: int = 1,
        refresh_every: int | None = None,
        seed: int = 0,
        n_test: int = 0,
    ):
        for name, value in (("rank", rank), ("sweeps", sweeps), ("refresh_sweeps", refresh_sweeps)):
            check_int(name, value)
        check_int("refresh_every", refresh_every, optional=True)
        self.rank, self.sweeps, self.refresh_sweeps = rank, sweeps, refresh_sweeps
        self.refresh_every, self.seed, self.n_test = refresh_every, seed, n_test
        self.counts = PivotCounts()
        self._items: dict[Hashable, _ItemPivots] = {}
        self._runs = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def mark_stale(self, keys: Sequence[Hashable] | None = None) -> None:
        """Refresh these items (all when ``None``) the next time they are used."""
        for key in self._items if keys is None else keys:
            if key in self._items:
                self._items[key].stale = True

    def forget(self, keys: Sequence[Hashable] | None = None) -> None:
        """Drop these items' sets (all when ``None``): their next use selects from scratch."""
        if keys is None:
            self._items.clear()
        for key in keys or ():
            self._items.pop(key, None)

    def _due(self, item: _ItemPivots) -> bool:
        return item.stale or (self.refresh_every is not None and item.uses >= self.refresh_every)

    def pending(self, keys: Sequence[Hashable]) -> list[int]:
        """Positions in ``keys`` of the items that :meth:`pivots` would select now: never seen,
        stale or used ``refresh_every`` times."""
        return [i for i, k in enumerate(keys) if k not in self._items or self._due(self._items[k])]

    def pivots(
        self,
        function_for: Callable[[list[int]], BatchedFunction],
        shape: Sequence[int],
        keys: Sequence[Hashable],
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        seeds: Sequence[int] | None = None,
    ) -> CrossInfo:
        """Index sets for ``keys``; ``seeds`` (one per key) make each item's cold selection
        independent of the batch it comes in."""
        if len(set(keys)) != len(keys):
            raise ValueError("keys must be distinct within one call.")
        new = [i for i, k in enumerate(keys) if k not in self._items]
        due = [i for i, k in enumerate(keys) if k in self._items and self._due(self._items[k])]
        common = dict(rank=self.rank, dtype=dtype, device=device, n_test=self.n_test)
        if new:
            _, info = cross(
                function_for(new),
                shape,
                batch=len(new),
                sweeps=self.sweeps,
                seed=self._seeds(seeds, new),
                **common,
            )
            self._keep(info, [keys[i] for i in new])
            self.counts.selected += len(new)
        if due:
            start = stack_infos(shape, [self._items[keys[i]] for i in due])
            _, info = cross(
                function_for(due),
                shape,
                batch=len(due),
                sweeps=self.refresh_sweeps,
                seed=self._next_seed(),
                init=start,
                **common,
            )
            self._keep(info, [keys[i] for i in due])
            self.counts.refreshed += len(due)
        items = [self._items[k] for k in keys]
        for item in items:
            item.uses += 1
        return stack_infos(shape, items)

    def attach(self, key: Hashable, value: Tensor) -> None:
        """Keep ``value`` with ``key``'s current selection (saved by :meth:`state`; dropped when
        the item is selected again)."""
        self._items[key].attached = value

    def attached(self, key: Hashable) -> Tensor | None:
        """What :meth:`attach` kept with ``key``'s current selection, or ``None``."""
        item = self._items.get(key)
        return None if item is None else item.attached

    def state(self, label: Callable[[Hashable], str | None]) -> dict:
        """Everything the store holds, as plain values and index tensors, for a checkpoint:
        each item under ``label(key)`` (items whose label is ``None`` are left out), their use
        counters and stale flags, the counts and the seed counter of refreshes.

        Example:
            >>> import torch
            >>> from cpic.tci import PivotStore
            >>> def function_for(items):
            ...     return lambda idx: torch.cos(idx.float().sum(-1) / 5).expand(len(items), -1)
            >>> store = PivotStore(rank=2, seed=0)
            >>> _ = store.pivots(function_for, (4, 4, 4), ["a", "b"])
            >>> state = store.state(str)
            >>> copy = PivotStore(rank=2, seed=0)
            >>> copy.load_state(state, str)
            >>> torch.equal(copy.pivots(function_for, (4, 4, 4), ["a"]).left[1],
            ...             store.pivots(function_for, (4, 4, 4), ["a"]).left[1])
            True
        """
        items = {}
        for key, item in self._items.items():
            name = label(key)
            if name is not None:
                items[name] = {
                    "left": list(item.left),
                    "right": list(item.right),
                    "direction": item.direction,
                    "uses": item.uses,
                    "stale": item.stale,
                    "attached": item.attached,
                }
        counts = self.counts
        return {
            "rank": self.rank,
            "runs": self._runs,
            "counts": [counts.selected, counts.refreshed, counts.evaluations],
            "items": items,
        }

    def load_state(self, state: dict, key: Callable[[str], Hashable]) -> None:
        """Replace the store's contents with a :meth:`state`; ``key(label)`` gives each item's key."""
        if state.get("rank") != self.rank:
            raise ValueError(
                f"the saved pivots are of rank {state.get('rank')}, this store's rank is {self.rank}."
            )
        self._items = {
            key(name): _ItemPivots(
                left=list(item["left"]),
                right=list(item["right"]),
                direction=item["direction"],
                uses=int(item["uses"]),
                stale=bool(item["stale"]),
                attached=item.get("attached"),
            )
            for name, item in state["items"].items()
        }
        self._runs = int(state["runs"])
        self.counts = PivotCounts(*(int(c) for c in state["counts"]))

    def _seeds(self, seeds: Sequence[int] | None, items: list[int]) -> int | list[int]:
        return self._next_seed() if seeds is None else [int(seeds[i]) for i in items]

    def _next_seed(self) -> int:
        self._runs += 1
        return self.seed * 1_000_003 + self._runs

    def _keep(self, info: CrossInfo, keys: list[Hashable]) -> None:
        self.counts.evaluations += info.unique_evaluations
        for b, key in enumerate(keys):
            self._items[key] = _ItemPivots(
                left=[s[b : b + 1] for s in info.left],
                right=[s[b : b + 1] for s in info.right],
                direction=info.direction,
            )
