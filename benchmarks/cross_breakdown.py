"""Where the time of one B = 1 ``cpic.cross`` goes, on section (d)'s case of cross_peers.py.

The 5^3-patch MLP encoder, rank 10, 3 sweeps, B = 1. Each part of the engine is wrapped in a
timer (self time: a part's time excludes the parts it calls, so ``f`` is counted once, not in
the cache); the breakdown printed is that of the fastest of ``--runs`` runs, the one least
disturbed by other jobs on a shared machine. Beside it: the floor (``f`` alone, once, on all
the entries the run evaluated) and ``f`` alone on the same requests as the cross makes them,
which is what the cross cannot go below while it calls ``f`` once per fiber block.

Run: ``python benchmarks/cross_breakdown.py --sides 64,128 --runs 20``.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

import cpic.tci.cache as cache_module
import cpic.tci.engine as engine
import cpic.tt.tensor_train as tensor_train
import cpic.util.keystore as keystore
from cross_peers import EncodedVolumes, Recorder, smooth_volumes

#: (module or class, attribute, label) of every part timed
PARTS = [
    (engine, "maxvol_rect", "maxvol (LU, solve, row swaps)"),
    (engine, "first_of_duplicates", "first of identical rows"),
    (engine, "fiber_indices", "index sets (fibers, extensions)"),
    (engine, "extend_left", "index sets (fibers, extensions)"),
    (engine, "extend_right", "index sets (fibers, extensions)"),
    (engine.torch.linalg, "qr", "QR"),
    (cache_module.EvaluationCache, "evaluate", "cache (keys, misses, requests)"),
    (cache_module, "call_checked", "cache (keys, misses, requests)"),
    (keystore.KeyStore, "lookup", "cache lookups (binary search)"),
    (keystore.KeyStore, "insert", "cache inserts (merges)"),
    (tensor_train.TT, "eval", "held-out error (TT.eval)"),
    (engine, "relative_error", "held-out error (TT.eval)"),
]


class Timers:
    """Self times of labelled callables; nested calls are charged to the innermost label."""

    def __init__(self):
        self.total: dict[str, float] = defaultdict(float)
        self._inner: list[float] = []

    def wrap(self, label: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.perf_counter() - start
                self.total[label] += spent - self._inner.pop()
                if self._inner:
                    self._inner[-1] += spent

        return timed


def best_of(runs: int, fn) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def breakdown(side: int, runs: int) -> None:
    volumes = EncodedVolumes(smooth_volumes(1, n=side), patch=5)
    shape = volumes.shape

    def cross(f):
        return engine.cross(f, shape, rank=10, sweeps=3, seed=0)

    recorder = Recorder(volumes)
    cross(recorder)
    with torch.no_grad():
        floor = best_of(runs, lambda: volumes(recorder.entries()))
        as_called = best_of(runs, lambda: [volumes(idx) for idx in recorder.calls])
    plain = best_of(runs, lambda: cross(volumes))

    timers = Timers()
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in PARTS]
    for owner, name, label in PARTS:
        setattr(owner, name, timers.wrap(label, getattr(owner, name)))
    f = timers.wrap("f (the encoder, inside the cross)", volumes)
    try:
        fastest = None
        for _ in range(runs):
            timers.total.clear()
            start = time.perf_counter()
            cross(f)
            spent = time.perf_counter() - start
            if fastest is None or spent < fastest[0]:
                fastest = (spent, dict(timers.total))
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)
    total, parts = fastest
    parts["the rest (Python loop, bookkeeping)"] = total - sum(parts.values())

    entries = recorder.entries().shape[1]
    print(f"\n### {side}^3, B = 1: {len(recorder.calls)} calls of f, {entries:,} entries\n")
    print(f"cross {plain * 1e3:.1f} ms ({plain / floor:.2f}x the floor); floor {floor * 1e3:.2f} ms; f alone")
    print(f"on the cross's requests {as_called * 1e3:.1f} ms ({as_called / floor:.2f}x the floor)\n")
    print(f"| part (fastest of {runs} timed runs: {total * 1e3:.1f} ms) | ms | share |")
    print("|---|---|---|")
    for label, spent in sorted(parts.items(), key=lambda item: -item[1]):
        print(f"| {label} | {spent * 1e3:.1f} | {spent / total:.0%} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", default="64,128", help="volume sides (default 64,128)")
    parser.add_argument("--runs", type=int, default=20, help="runs per timing, fastest kept (default 20)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for side in (int(s) for s in args.sides.split(",")):
        breakdown(side, args.runs)


if __name__ == "__main__":
    main()
