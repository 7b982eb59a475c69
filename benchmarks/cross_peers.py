"""cpic.cross against tntorch and teneva, side by side in one process.

Sections (``--sections a,b,c``):
  a  the C-PIC case: a 64^3 volume in QTT layout (6 modes of 8) plus a feature mode of 16,
     an MLP encoder on 3x3x3 patches, rank 10, 3 sweeps; cpic vs tntorch ``cross``.
  b  Ackley, Hilbert and Schaffer (d=10, n=32) and the Morton QTT of a 256^3 smooth field:
     each library stops at the same held-out tolerance; cpic vs teneva (with and without its
     cache) and tntorch.
  b2 the same targets, median unique evaluations over four random starts, for each growth
     setting of cpic (kick 1, 2) and teneva (+1, +2 rows per pass); counts only.
  c  batch scaling: B = 1, 4, 16 volumes in one cpic call, against B runs of tntorch.
  d  an MLP encoder on 5x5x5 patches, B = 1 at 64^3, 128^3 and 256^3 (``--sides``), cpic vs
     tntorch and teneva, and cpic at B = 16 at the smallest side.
  tau  cpic alone, on six functions outside section b: unique evaluations to reach a target
     with maxvol's tau at 1.05 and at its default where ranks grow (1.5).

Every error is measured afterwards on the same 10,000 random entries, outside the timings.
Times are medians over ``--repeats`` runs. Every case also shows its floor: ``f`` alone, called
once on all the entries cpic's run evaluated (with held-out points), and each library's time
over it. Run: ``python benchmarks/cross_peers.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

import cpic
from cpic import TT
from cpic.layout import QTTLayout

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)  # tntorch warns when it does not reach its own eps


# ----------------------------------------------------------------------------- helpers
def median_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


class Recorder:
    """A batched function that keeps every request it serves: cpic's cache asks only for entries
    it has not evaluated, so the requests of one run are that run's unique entries."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]):
        self.f, self.calls = f, []

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.append(idx)
        return self.f(idx)

    def entries(self) -> torch.Tensor:
        return torch.cat(self.calls, dim=1)


def floor_time(f: Callable[[torch.Tensor], torch.Tensor], entries: torch.Tensor, repeats: int) -> float:
    """Median time of ``f`` alone on ``entries`` ``[B, P, d]`` in one call: the floor of any
    cross that evaluates them."""
    with torch.no_grad():
        return median_time(lambda: f(entries), repeats)[0]


def held_out(shape, count: int = 10_000, batch: int = 1, seed: int = 123) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n, (batch, count), generator=gen) for n in shape], -1)


def rel_error(tt: TT, idx: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest per-item relative error of ``tt`` at ``idx`` (``[B, P, d]``)."""
    diff = (tt.eval(idx).double() - exact.double()).norm(dim=1) / exact.double().norm(dim=1)
    return float(diff.max())


def tntorch_tt(t) -> TT:
    return TT([c.detach()[None] for c in t.cores])


def teneva_tt(cores) -> TT:
    return TT([torch.from_numpy(np.asarray(c))[None] for c in cores])


def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        cells = [
            f"{c:.3g}" if isinstance(c, float) else f"{c:,}" if isinstance(c, int) else str(c) for c in row
        ]
        print("| " + " | ".join(cells) + " |")


# ----------------------------------------------------------------------------- the C-PIC case
class EncodedVolumes:
    """Latent tensor ``E[b, voxel, feature]`` of an MLP on ``patch``^3 patches of ``B`` volumes.

    ``__call__(idx [B, P, 7]) -> [B, P]`` encodes each distinct voxel of the request once
    (the feature mode shares voxels) and reads patches with one gather from edge-padded
    volumes. The same callable serves cpic (batched) and tntorch (one volume, ``B = 1``).
    """

    def __init__(self, volumes: torch.Tensor, features: int = 16, seed: int = 0, patch: int = 3):
        torch.manual_seed(seed)
        self.B, n = volumes.shape[0], volumes.shape[1]
        self.n, h = n, patch // 2
        self.halo = h
        self.layout = QTTLayout((n, n, n), group=True, features=features)
        self.padded = torch.nn.functional.pad(volumes[:, None], (h, h) * 3, mode="replicate")[:, 0]
        m = n + 2 * h
        off = torch.stack(torch.meshgrid(*[torch.arange(-h, h + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.offsets = (off[:, 0] * m + off[:, 1]) * m + off[:, 2]
        self.flat = self.padded.reshape(-1)
        self.encoder = torch.nn.Sequential(
            torch.nn.Linear(patch**3, 64), torch.nn.ReLU(), torch.nn.Linear(64, features)
        ).requires_grad_(False)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.layout.tensor_shape

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        B, P, _ = idx.shape
        m = self.n + 2 * self.halo
        c = self.layout.to_coords(idx) + self.halo
        voxel = torch.arange(B)[:, None] * m**3 + (c[..., 0] * m + c[..., 1]) * m + c[..., 2]
        unique, inverse = torch.unique(voxel.flatten(), return_inverse=True)
        patches = self.flat.index_select(0, (unique[:, None] + self.offsets).flatten())
        patches = patches.reshape(len(unique), -1)
        features = self.encoder(patches)
        rows = inverse * features.shape[1] + idx[..., -1].flatten()
        return features.flatten().index_select(0, rows).reshape(B, P)

    def items(self, selection: slice) -> EncodedVolumes:
        """The same encoder over a slice of the volumes."""
        part = EncodedVolumes.__new__(EncodedVolumes)
        part.__dict__.update(self.__dict__)
        part.padded = self.padded[selection]
        part.flat = part.padded.reshape(-1)
        part.B = part.padded.shape[0]
        return part

    def one(self, b: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """tntorch's view of volume ``b``: ``[P, d]`` float matrix -> ``[P]``."""
        single = self.items(slice(b, b + 1))
        return lambda x: single(x.long()[None])[0].double()


def smooth_volumes(count: int, n: int = 64) -> torch.Tensor:
    g = torch.linspace(0, 1, n)
    x, y, z = torch.meshgrid(g, g, g, indexing="ij")
    vols = []
    for k in range(count):
        v = torch.sin((6 + k % 3) * x) * torch.cos((5 + k % 4) * y) + z**2
        v = v + 0.5 * torch.exp(-((x - 0.5) ** 2 + (y - 0.4 + 0.02 * k) ** 2 + (z - 0.6) ** 2) * 20)
        vols.append(v)
    return torch.stack(vols).float()


def run_cpic_case(volumes: EncodedVolumes, repeats: int, seed: int = 0):
    """(median time, TT, info, floor): the floor is ``volumes`` alone on the run's entries."""
    shape = volumes.shape

    def run(f):
        return cpic.cross(f, shape, batch=volumes.B, rank=10, sweeps=3, seed=seed)

    t, (tt, info) = median_time(lambda: run(volumes), repeats)
    recorder = Recorder(volumes)
    run(recorder)
    return t, tt, info, floor_time(volumes, recorder.entries(), repeats)


def run_tntorch_case(volumes: EncodedVolumes, b: int, repeats: int, seed: int = 0):
    import tntorch as tn

    domain = [torch.arange(n) for n in volumes.shape]
    f = volumes.one(b)
    torch.manual_seed(seed)
    np.random.seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # tntorch prints a maxvolpy hint per call
        t, (tt, info) = median_time(
            lambda: tn.cross(
                function=f,
                domain=domain,
                function_arg="matrix",
                ranks_tt=10,
                max_iter=3,
                verbose=False,
                return_info=True,
            ),
            repeats,
        )
    return t, tntorch_tt(tt), info


def run_teneva_case(volumes: EncodedVolumes, b: int, repeats: int, seed: int = 0):
    """teneva.cross at fixed rank 10 (plain maxvol), 3 sweeps, with its cache: (time, TT, evaluations)."""
    import teneva

    f = volumes.one(b)
    info: dict = {}

    def run():
        y0 = teneva.rand(list(volumes.shape), 10, seed=seed)
        function = partial(_numpy_call, f)
        return teneva.cross(function, y0, nswp=3, dr_min=0, dr_max=0, info=info, cache={})

    t, cores = median_time(run, repeats)
    return t, teneva_tt(cores), int(info["m"])


def _numpy_call(f, i: np.ndarray) -> np.ndarray:
    return f(torch.from_numpy(i)).numpy()


def section_a(repeats: int, seeds: int = 5) -> None:
    """Median time and mean held-out error over ``seeds`` random starts of each library."""
    volumes = EncodedVolumes(smooth_volumes(1))
    idx = held_out(volumes.shape)
    exact = volumes(idx)
    results = {"cpic": [], "tntorch": [], "teneva": []}
    floors = []
    for seed in range(seeds):
        t, tt, info, floor = run_cpic_case(volumes, repeats, seed=seed)
        floors.append(floor)
        results["cpic"].append((t, info.evaluations, info.unique_evaluations, rel_error(tt, idx, exact)))
        t, tt, info = run_tntorch_case(volumes, 0, max(1, repeats // 2), seed=seed)
        results["tntorch"].append((t, int(info["nsamples"]), "-", rel_error(tt, idx, exact)))
        t, tt, evaluations = run_teneva_case(volumes, 0, max(1, repeats // 2), seed=seed)
        results["teneva"].append((t, evaluations, evaluations, rel_error(tt, idx, exact)))
    rows = []
    t_cpic = statistics.median(r[0] for r in results["cpic"])
    floor = statistics.median(floors)
    for name, runs in results.items():
        t = statistics.median(r[0] for r in runs)
        errors = [r[3] for r in runs]
        rows.append(
            [
                name,
                t,
                runs[0][1],
                runs[0][2],
                statistics.mean(errors),
                f"{min(errors):.3f}-{max(errors):.3f}",
                f"{t / t_cpic:.1f}",
                f"{t / floor:.2f}",
            ]
        )
    table(
        f"(a) C-PIC case: 64^3 volume, QTT 8^6 + 16 features, 3^3 MLP, rank 10, 3 sweeps ({seeds} seeds); "
        f"floor (f alone on cpic's entries, one call) {floor:.4f} s",
        ["library", "time (s)", "evaluations", "unique", "mean held-out error", "range", "time / cpic's"]
        + ["time / floor"],
        rows,
    )


# ----------------------------------------------------------------------------- functions
def _grid(a: float, b: float, n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda i: a + (b - a) * i / (n - 1)


def ackley(i: np.ndarray) -> np.ndarray:
    x = _grid(-32.768, 32.768, 32)(i.astype(float))
    return -20 * np.exp(-0.2 * np.sqrt((x**2).mean(1))) - np.exp(np.cos(2 * np.pi * x).mean(1)) + 20 + np.e


def hilbert(i: np.ndarray) -> np.ndarray:
    return 1.0 / (i.sum(1) + 1.0)


def schaffer(i: np.ndarray) -> np.ndarray:
    x = _grid(-100.0, 100.0, 32)(i.astype(float))
    s = x[:, :-1] ** 2 + x[:, 1:] ** 2
    return (0.5 + (np.sin(np.sqrt(s)) ** 2 - 0.5) / (1 + 0.001 * s) ** 2).sum(1)


def smooth_field_qtt(side: int = 256) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, ...]]:
    """A Gaussian blob plus a plane wave on a ``side^3`` grid, as a Morton QTT (modes of 8)."""
    layout = QTTLayout((side,) * 3, group=True)
    centre = torch.tensor([0.4, 0.5, 0.6], dtype=torch.float64)

    def f(i: np.ndarray) -> np.ndarray:
        x = (layout.to_coords(torch.from_numpy(np.asarray(i)).long()).double() + 0.5) / side
        blob = torch.exp(-((x - centre) ** 2).sum(-1) / 0.08)
        wave = 0.5 * torch.sin(3 * x[..., 0] + 2 * x[..., 1]) * torch.cos(2.5 * x[..., 2])
        return (blob + wave).numpy()

    return f, layout.tensor_shape


def _scorer(f, shape) -> Callable[[TT], float]:
    """Relative error of a TT on 10,000 held-out entries of ``f``."""
    idx = held_out(shape)
    exact = torch.from_numpy(f(idx[0].numpy()))[None]
    return lambda tt: rel_error(tt, idx, exact)


def _batched(f) -> Callable[[torch.Tensor], torch.Tensor]:
    """A numpy function of ``[P, d]`` multi-indices as cpic's batched function (``B = 1``)."""
    return lambda i: torch.from_numpy(f(i[0].numpy()))[None]


def _cpic_sweeps(
    f, shape, sweeps: int, kick: int = 2, seed: int = 0, tau: float | None = None, recorder=None
) -> tuple[TT, int]:
    """cpic with ranks grown from 1 for ``sweeps`` sweeps, no held-out set: (TT, unique
    evaluations); ``recorder``: a :class:`Recorder` of ``_batched(f)`` to evaluate through."""
    tt, info = cpic.cross(
        recorder or _batched(f),
        shape,
        max_rank=80,
        kick=kick,
        sweeps=sweeps,
        n_test=0,
        dtype=torch.float64,
        seed=seed,
        tau=tau,
    )
    return tt, info.unique_evaluations


def _teneva_sweeps(f, shape, sweeps: int, grow: int, seed: int = 0, cached: bool = True) -> tuple[TT, int]:
    """teneva.cross from a random rank-1 TT, adding up to ``grow`` rows per pass."""
    import teneva

    info: dict = {}
    y0 = teneva.rand(list(shape), 1, seed=seed)
    cores = teneva.cross(f, y0, nswp=sweeps, dr_max=grow, info=info, cache={} if cached else None)
    return teneva_tt(cores), int(info["m"])


def _first_reaching(target: float, runs: Callable[[int], tuple], steps: range, score: Callable[[TT], float]):
    """The cheapest run (``runs(step) -> (tt, unique evaluations)``) whose error reaches ``target``."""
    result = None
    for step in steps:
        tt, evaluations = runs(step)
        result = (step, tt, evaluations, score(tt))
        if result[3] <= target:
            break
    return result


def run_function(name: str, f, shape, target: float, repeats: int, max_steps: int = 12) -> list[list]:
    """Each library's cheapest number of sweeps whose held-out error is at most ``target``.

    All libraries grow ranks from 1 (cpic by 2 per pass; teneva by 1 or 2 per pass, whichever
    needs fewer evaluations; tntorch by its default kick of 3 per sweep); none uses a
    validation set, so the held-out set of 10,000 entries is only used to score them.
    """
    import tntorch as tn

    score = _scorer(f, shape)

    def cpic_run(sweeps):
        return _cpic_sweeps(f, shape, sweeps)

    def teneva_run(sweeps, grow, cached):
        return _teneva_sweeps(f, shape, sweeps, grow, cached=cached)

    domain = [torch.arange(n) for n in shape]

    def tntorch_run(sweeps):
        torch.manual_seed(0)
        np.random.seed(0)
        with contextlib.redirect_stdout(io.StringIO()):
            t, info = tn.cross(
                function=lambda x: torch.from_numpy(f(x.long().numpy())),
                domain=domain,
                function_arg="matrix",
                eps=0.0,
                max_iter=sweeps,
                rmax=80,
                verbose=False,
                return_info=True,
                suppress_warnings=True,
            )
        return tntorch_tt(t), int(info["nsamples"])

    steps = range(1, max_steps + 1)
    rows = []
    sweeps, tt, evals, err = _first_reaching(target, cpic_run, steps, score)
    t, _ = median_time(lambda: cpic_run(sweeps), repeats)
    recorder = Recorder(_batched(f))
    _cpic_sweeps(f, shape, sweeps, recorder=recorder)
    floor = floor_time(_batched(f), recorder.entries(), repeats)
    rows.append([name, "cpic", sweeps, t, evals, err, max(tt.ranks)])
    for cached in (True, False):
        best = None
        for grow in (1, 2):
            found = _first_reaching(target, lambda s, g=grow, c=cached: teneva_run(s, g, c), steps, score)
            if best is None or (found[3] <= target, -found[2]) > (best[1][3] <= target, -best[1][2]):
                best = (grow, found)
        grow, (sweeps, tt, evals, err) = best
        t, _ = median_time(lambda s=sweeps, g=grow, c=cached: teneva_run(s, g, c), repeats)
        label = f"teneva ({'cache' if cached else 'no cache'}, +{grow}/pass)"
        rows.append([name, label, sweeps, t, evals, err, max(tt.ranks)])
    sweeps, tt, evals, err = _first_reaching(target, tntorch_run, range(1, 9), score)
    t, _ = median_time(lambda: tntorch_run(sweeps), max(1, repeats // 2))
    rows.append([name, "tntorch", sweeps, t, evals, err, max(tt.ranks)])
    for row in rows:
        row += [floor, f"{row[3] / floor:.1f}"]
    return rows


def function_cases() -> list[tuple]:
    """(name, f, shape, target held-out error) of section b's test tensors."""
    field, field_shape = smooth_field_qtt()
    return [
        ("Ackley d=10 n=32", ackley, (32,) * 10, 1e-5),
        ("Hilbert d=10 n=32", hilbert, (32,) * 10, 1e-5),
        ("Schaffer d=10 n=32", schaffer, (32,) * 10, 1e-3),
        ("256^3 field, QTT 8^8", field, field_shape, 1e-2),
    ]


def section_b(repeats: int) -> None:
    rows = []
    for name, f, shape, target in function_cases():
        part = run_function(name, f, shape, target, repeats)
        ours = part[0]
        ours.append("1, 1")
        for row in part[1:]:
            reached = "" if row[5] <= target else " (target not reached)"
            row.append(f"{row[3] / ours[3]:.1f}x, {row[4] / ours[4]:.2f}x{reached}")
        rows += [[f"{r[0]} (target {target:g})", *r[1:]] for r in part]
    table(
        "(b) fewest sweeps reaching a target held-out error, ranks grown from 1",
        [
            "function",
            "library",
            "sweeps",
            "time (s)",
            "unique evaluations",
            "held-out error",
            "max rank",
            "floor (s)",
            "time / floor",
            "peer's time, evaluations vs cpic's",
        ],
        rows,
    )


def evaluation_medians(name: str, f, shape, target: float, seeds: int, max_steps: int = 12) -> list[list]:
    """Median over random starts of the unique evaluations each growth setting needs to reach
    ``target`` (the fewest whole sweeps that do); counts only, so no timing noise."""
    score = _scorer(f, shape)

    def cpic_run(sweeps, kick, seed):
        return _cpic_sweeps(f, shape, sweeps, kick, seed)

    def teneva_run(sweeps, grow, seed):
        return _teneva_sweeps(f, shape, sweeps, grow, seed)

    rows = []
    for label, run in (("cpic, kick", cpic_run), ("teneva (cache), +", teneva_run)):
        for grow in (1, 2):
            counts = []
            for seed in range(seeds):
                found = _first_reaching(
                    target, lambda s, g=grow, r=seed, fn=run: fn(s, g, r), range(1, max_steps + 1), score
                )
                counts.append(found[2] if found[3] <= target else float("inf"))
            reached = [c for c in counts if c != float("inf")]
            median = statistics.median(counts)
            rows.append(
                [
                    name,
                    f"{label}{grow}",
                    int(median) if median != float("inf") else "not reached",
                    f"{len(reached)}/{seeds}",
                    min(reached) if reached else "-",
                    max(reached) if reached else "-",
                ]
            )
    return rows


def section_b2(repeats: int, seeds: int = 4, only: str = "") -> None:
    rows = []
    for name, f, shape, target in function_cases():
        if name.lower().startswith(only.lower()):
            rows += evaluation_medians(f"{name} (target {target:g})", f, shape, target, seeds=seeds)
    table(
        f"(b2) unique evaluations to reach the target, over {seeds} random starts (no timing)",
        ["function", "library, rows added per pass", "median", "starts reaching it", "min", "max"],
        rows,
    )


# ----------------------------------------------------------------------------- maxvol's tau
def _norm(i: np.ndarray) -> np.ndarray:
    x = _grid(-1.0, 1.1, 32)(i.astype(float))
    return np.sqrt((x**2).sum(1))


def _cauchy(i: np.ndarray) -> np.ndarray:
    x = _grid(-2.0, 2.5, 32)(i.astype(float))
    return 1.0 / (1.0 + (x**2).sum(1))


def _rosenbrock(i: np.ndarray) -> np.ndarray:
    x = _grid(-2.048, 2.048, 32)(i.astype(float))
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(1)


def _laplace(i: np.ndarray) -> np.ndarray:
    x = _grid(-1.0, 1.3, 32)(i.astype(float))
    return np.exp(-np.sqrt(((x - 0.2) ** 2).sum(1)))


def _bumps() -> Callable[[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(7)
    centres, widths = rng.uniform(-1, 1, (3, 7)), rng.uniform(0.3, 0.8, 3)

    def f(i: np.ndarray) -> np.ndarray:
        x = _grid(-1.0, 1.0, 24)(i.astype(float))
        return sum(np.exp(-((x - c) ** 2).sum(1) / w) for c, w in zip(centres, widths))

    return f


def _random_tt() -> Callable[[np.ndarray], np.ndarray]:
    """A random rank-6 TT, 12^7: no symmetry, so no ties between rows."""
    ranks = [1, 6, 6, 6, 6, 6, 6, 1]
    gens = [torch.Generator().manual_seed(k) for k in range(7)]
    ref = TT(
        [
            torch.randn(1, a, 12, b, dtype=torch.float64, generator=g)
            for a, b, g in zip(ranks, ranks[1:], gens)
        ]
    )
    return lambda i: ref.eval(torch.from_numpy(i)[None])[0].numpy()


def tau_cases() -> list[tuple]:
    """Functions outside table (b), to check the default of maxvol's tau where ranks grow."""
    return [
        ("norm d=8 n=32", _norm, (32,) * 8, 1e-3),
        ("1/(1 + sum x^2) d=8 n=32", _cauchy, (32,) * 8, 1e-5),
        ("Rosenbrock d=8 n=32", _rosenbrock, (32,) * 8, 1e-9),
        ("three Gaussians d=7 n=24", _bumps(), (24,) * 7, 1e-5),
        ("random rank-6 TT d=7 n=12", _random_tt(), (12,) * 7, 1e-9),
        ("exp(-norm(x - c)) d=8 n=32", _laplace, (32,) * 8, 1e-3),
    ]


def _cpic_median(f, shape, target: float, kick: int, tau: float | None, seeds: int, score) -> float:
    """Median over ``seeds`` starts of cpic's unique evaluations to reach ``target``."""
    counts = []
    for seed in range(seeds):
        runs = partial(_cpic_sweeps, f, shape, kick=kick, seed=seed, tau=tau)
        found = _first_reaching(target, runs, range(1, 11), score)
        counts.append(found[2] if found[3] <= target else float("inf"))
    return statistics.median(counts)


def section_tau(repeats: int, seeds: int = 4) -> None:
    """Median unique evaluations to reach each target, cpic at tau 1.05 (the fixed-rank
    default) and at its default where ranks grow, each at its better kick."""
    rows = []
    for name, f, shape, target in tau_cases():
        score = _scorer(f, shape)
        old, new = (
            min(_cpic_median(f, shape, target, k, tau, seeds, score) for k in (1, 2)) for tau in (1.05, None)
        )
        rows.append([f"{name} (target {target:g})", int(old), int(new), f"{new / old:.2f}"])
    table(
        f"(tau) cpic's unique evaluations to reach the target, median of {seeds} starts, better kick",
        ["function", "tau 1.05", "default (1.5)", "ratio"],
        rows,
    )


# ----------------------------------------------------------------------------- batching
def section_c(repeats: int) -> None:
    volumes = EncodedVolumes(smooth_volumes(16))
    single = EncodedVolumes(smooth_volumes(1))  # tntorch's time varies with its random start
    t_t = statistics.median(run_tntorch_case(single, 0, 1, seed=seed)[0] for seed in range(5))
    rows = []
    base = None
    for B in (1, 4, 16):
        sub = volumes.items(slice(0, B))
        idx = held_out(sub.shape, batch=B, count=2000)
        exact = sub(idx)
        t, tt, info, floor = run_cpic_case(sub, repeats)
        per = t / B
        base = base or per
        rows.append(
            [
                B,
                t,
                per,
                base / per,
                t_t / per,
                info.unique_evaluations // B,
                rel_error(tt, idx, exact),
                floor,
                f"{t / floor:.2f}",
                f"{t_t / (floor / B):.1f}",
            ]
        )
    table(
        "(c) batch scaling: B volumes in one cpic call (tntorch: one volume per call)",
        [
            "B",
            "time (s)",
            "time per volume (s)",
            "throughput vs B=1",
            "per volume vs tntorch",
            "unique evals per volume",
            "worst held-out error",
            "floor (s)",
            "cpic / floor",
            "tntorch per volume / floor per volume",
        ],
        rows,
    )


def section_d(repeats: int, sides: tuple[int, ...] = (64, 128, 256), batch: int = 16) -> None:
    """The 5^3-patch encoder, B = 1 at each side, and B = ``batch`` at the smallest: each
    library's time beside the floor (f alone, in one call, on the entries cpic's run evaluated)."""
    rows = []
    for side in sides:
        volumes = EncodedVolumes(smooth_volumes(1, n=side), patch=5)
        idx = held_out(volumes.shape, count=2000)
        exact = volumes(idx)
        t, tt, info, floor = run_cpic_case(volumes, repeats)
        cases = [("cpic", t, info.unique_evaluations, rel_error(tt, idx, exact))]
        t, tt, tinfo = run_tntorch_case(volumes, 0, max(1, repeats // 2))
        cases.append(("tntorch", t, int(tinfo["nsamples"]), rel_error(tt, idx, exact)))
        t, tt, evaluations = run_teneva_case(volumes, 0, max(1, repeats // 2))
        cases.append(("teneva (cache)", t, evaluations, rel_error(tt, idx, exact)))
        for name, t, evaluations, error in cases:
            rows.append([f"{side}^3", 1, name, t, evaluations, error, floor, f"{t / floor:.2f}"])
    side = min(sides)
    many = EncodedVolumes(smooth_volumes(batch, n=side), patch=5)
    idx = held_out(many.shape, batch=batch, count=2000)
    t, tt, info, floor = run_cpic_case(many, repeats)
    error = rel_error(tt, idx, many(idx))
    rows.append([f"{side}^3", batch, "cpic", t, info.unique_evaluations, error, floor, f"{t / floor:.2f}"])
    table(
        "(d) 5^3-patch MLP encoder, 16 features, rank 10, 3 sweeps: time beside the floor "
        "(f alone on cpic's entries, one call)",
        ["volume", "B", "library", "time (s)", "evaluations", "worst held-out error", "floor (s)"]
        + ["time / floor"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sections", default="a,b,b2,c,d", help="which sections to run (default a,b,b2,c,d)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per timing, median reported (default 5)")
    parser.add_argument("--seeds", type=int, default=4, help="random starts per setting in b2 (default 4)")
    parser.add_argument("--function", default="", help="b2 only on the function whose name starts so")
    parser.add_argument("--sides", default="64,128,256", help="section d's volume sides (default 64,128,256)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpic {cpic.__version__}")
    sections = {
        "a": section_a,
        "b": section_b,
        "b2": lambda repeats: section_b2(repeats, args.seeds, args.function),
        "c": section_c,
        "d": lambda repeats: section_d(repeats, tuple(int(n) for n in args.sides.split(","))),
        "tau": section_tau,
    }
    for name in args.sections.split(","):
        sections[name.strip()](args.repeats)


if __name__ == "__main__":
    main()
