"""TT-cross against exact low-rank tensors, TT-SVD, per-item runs, and its own accounting."""

import math

import pytest
import torch

import cpic
from cpic import TT
from cpic.tci import CrossInfo
from cpic.tci.cache import EvaluationCache
from cpic.tci.submatrix import _swap_batched, _swap_on_host, first_of_duplicates, maxvol, maxvol_rect
from tests.helpers import random_tt


def rel_err(tt: TT, ref: torch.Tensor) -> torch.Tensor:
    approx, ref = tt.full().double(), ref.double()
    return (approx - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


def hilbert(idx: torch.Tensor) -> torch.Tensor:
    return 1.0 / (idx.sum(-1) + 1).double()


@pytest.mark.parametrize(("dtype", "limit"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize(("rank", "max_rank"), [(3, None), (5, None), (None, 8)])
def test_exact_recovery_of_random_low_rank_tt(dtype, limit, rank, max_rank):
    ref = random_tt(3, (6, 5, 6, 5, 6, 5), 3, dtype=dtype, seed=1)
    tol = 10 * limit if max_rank else None
    tt, info = cpic.cross(
        ref.eval, ref.shape, batch=3, rank=rank, max_rank=max_rank, tol=tol, dtype=dtype, seed=0
    )
    assert tt.dtype == dtype
    assert (rel_err(tt, ref.full()) < limit).all()
    assert (info.error < limit).all()
    assert info.unique_evaluations < 0.25 * 3 * math.prod(ref.shape)


def test_quasi_optimal_against_tt_svd():
    shape = (6, 6, 6, 6)
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1)
    full = hilbert(idx)[None]
    for r in (2, 3, 4):
        svd_err = rel_err(TT.from_dense(full, max_rank=r), full).item()
        tt, _ = cpic.cross(hilbert, shape, rank=r, sweeps=6, dtype=torch.float64, seed=0)
        assert rel_err(tt, full).item() < 10 * svd_err
    tt, _ = cpic.cross(hilbert, shape, rank=36, dtype=torch.float64, seed=0)
    assert rel_err(tt, full).item() < 1e-12  # full rank: exact, like TT-SVD


def test_batched_run_equals_per_item_runs():
    refs = [random_tt(1, (4, 5, 3, 6), 4, seed=s) for s in range(3)]
    # index sets to start from, one per item; the batch starts from all of them at once
    starts = [
        cpic.cross(r.eval, r.shape, rank=3, sweeps=1, dtype=torch.float64, seed=s, n_test=0)[1]
        for s, r in enumerate(refs)
    ]
    init = CrossInfo(shape=refs[0].shape, batch=3)
    init.right = [torch.cat([info.right[k] for info in starts]) for k in range(5)]
    stacked = TT([torch.cat(cores) for cores in zip(*[r.cores for r in refs])])
    tt, _ = cpic.cross(stacked.eval, stacked.shape, batch=3, rank=3, sweeps=2, dtype=torch.float64, init=init)
    for b, (ref, start) in enumerate(zip(refs, starts)):
        one, _ = cpic.cross(ref.eval, ref.shape, rank=3, sweeps=2, dtype=torch.float64, init=start)
        torch.testing.assert_close(tt[b].full(), one.full())


def test_cache_never_evaluates_an_entry_twice():
    seen = []

    def f(idx):
        seen.append(idx.clone())
        return hilbert(idx)

    _, info = cpic.cross(f, (5,) * 6, rank=4, sweeps=5, dtype=torch.float64, seed=0)
    entries = torch.cat([s[0] for s in seen])
    assert len(entries) == info.evaluations == info.unique_evaluations
    assert len(torch.unique(entries, dim=0)) == len(entries)
    assert info.cache_hits > 0

    seen.clear()
    ref = random_tt(2, (5,) * 6, 2)
    values = {}

    def g(idx):
        seen.append(idx.clone())
        out = ref.eval(idx)
        for b in range(idx.shape[0]):
            for key, v in zip(map(tuple, idx[b].tolist()), out[b].tolist()):
                values.setdefault((b, key), v)
        return out

    tt, info = cpic.cross(g, ref.shape, batch=2, rank=3, sweeps=4, dtype=torch.float64, seed=0)
    # batch items missing fewer entries are padded with their own entries; those are counted
    assert sum(s.shape[0] * s.shape[1] for s in seen) == info.evaluations
    assert len(values) == info.unique_evaluations
    torch.testing.assert_close(tt.full(), ref.full())
    _, nocache = cpic.cross(g, ref.shape, batch=2, rank=3, sweeps=4, dtype=torch.float64, seed=0, cache=False)
    assert nocache.evaluations > info.evaluations


def test_a_stalled_run_returns_its_best_pass():
    """Noise has no low rank: at the rank limit the error wanders instead of falling."""
    noise = torch.rand((6,) * 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def f(idx):
        return noise[tuple(idx[0].T)][None]

    tt, info = cpic.cross(f, noise.shape, max_rank=4, tol=1e-6, dtype=torch.float64, seed=3)
    assert info.stop == "stalled"
    measured = info.errors[:-1, 0]  # the last row is the returned TT's
    assert measured[-1] > measured.min()  # the last pass was not the best...
    assert info.error.item() == measured.min().item()  # ...and the best one is returned
    torch.testing.assert_close(cpic.interpolate(f, info).full(), tt.full())
    approx = tt.eval(info.test_idx)
    assert torch.allclose((approx - info.test_values).norm() / info.test_values.norm(), info.error)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_rows_resolve_to_the_one_of_smallest_key(dtype):
    a = torch.randn(2, 12, 3, dtype=dtype, generator=torch.Generator().manual_seed(0))
    a[:, 7], a[:, 9] = a[:, 2], a[:, 4]  # rows 7 and 9 repeat rows 2 and 4

    def keys():  # later rows come first in key order
        return torch.arange(12).flip(0).expand(2, 12)

    got = first_of_duplicates(a, torch.tensor([[2, 4, 5], [7, 9, 0]]), keys)
    assert got.tolist() == [[7, 9, 5], [7, 9, 0]]  # rows without a twin stay
    nearly = a.clone()  # rows equal but for one ulp are not identical
    nearly[:, 7, 0] = torch.nextafter(a[:, 2, 0], torch.tensor(math.inf, dtype=dtype))
    assert first_of_duplicates(nearly, torch.tensor([[2, 4, 0]] * 2), keys).tolist() == [[2, 9, 0]] * 2
    a[:, 5] = a[:, 2]  # a rank-deficient block: two identical rows chosen together
    assert first_of_duplicates(a, torch.tensor([[2, 5, 0]] * 2), keys).tolist() == [[2, 5, 0]] * 2


@pytest.mark.parametrize("adaptive", [False, True])
def test_rectangular_maxvol_agrees_with_teneva(adaptive):
    """Same rows and coefficients as teneva's ``maxvol_rect`` (the identity on the chosen
    rows, least squares elsewhere), item by item of a batch; with ``min_extra`` below
    ``extra``, rows stop being added where teneva stops (one item per call: batch items share
    their row count)."""
    teneva = pytest.importorskip("teneva")
    gen = torch.Generator().manual_seed(0)
    for n, r, extra in [(40, 4, 5), (17, 1, 6), (25, 5, 0), (9, 3, 6), (60, 2, 3)]:
        a = torch.randn(1 if adaptive else 3, n, r, dtype=torch.float64, generator=gen)
        low = 1 if adaptive else extra
        idx, coef = maxvol_rect(a, extra, tau=1.05, max_iters=100, min_extra=low, tau_rect=1.1)
        for b in range(a.shape[0]):
            want_idx, want_coef = teneva.maxvol_rect(
                a[b].numpy(), e=1.1, dr_min=min(low, extra), dr_max=extra, e0=1.05, k0=100
            )
            assert idx[b].tolist() == want_idx.tolist()
            torch.testing.assert_close(coef[b], torch.from_numpy(want_coef), rtol=0, atol=1e-12)
        m = idx.shape[1]
        chosen = coef.gather(1, idx[:, :, None].expand(-1, -1, m))
        assert torch.equal(chosen, torch.eye(m, dtype=a.dtype).expand_as(chosen))
        torch.testing.assert_close(coef @ a.gather(1, idx[:, :, None].expand(-1, -1, r)), a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_maxvol_swaps_on_the_host_equal_the_batched_swaps_bit_for_bit(dtype):
    """The CPU's item-by-item NumPy swaps and the batched torch swaps (accelerators) make the
    same choices and the same coefficients, ties (equal coefficients in a constant block)
    included, whatever the number of swaps each item needs."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 50, 5, dtype=dtype, generator=gen)
    a[4] = 1.0  # a constant block: every coefficient ties
    a[5, :, 0] = 0.0
    for tau in (1.0, 1.05, 1.5):
        start = torch.randperm(50, generator=gen)[:5].expand(6, 5).clone()
        coef = torch.linalg.lstsq(a.gather(1, start[..., None].expand(-1, -1, 5)).mT, a.mT).solution.mT
        for max_iters in (0, 1, 3, 100):
            want_idx, want_coef = _swap_batched(coef.clone(), start.clone(), tau, max_iters)
            idx, host = start.clone(), coef.clone().contiguous()
            _swap_on_host(host, idx, tau, max_iters)
            assert torch.equal(idx, want_idx) and torch.equal(host, want_coef)
    idx, coef = maxvol(torch.linalg.qr(a[:4]).Q)
    assert bool(coef.abs().max() <= 1.05)


def test_pivots_among_identical_rows_are_the_first_multi_indices():
    """Hilbert's rows are identical exactly when their indices have the same sum: of each such
    group, the cross's index sets hold the lexicographically first member, pass after pass,
    so later passes meet entries already in the cache."""
    shape = (6,) * 5
    _, info = cpic.cross(hilbert, shape, rank=3, sweeps=3, dtype=torch.float64, seed=0)
    d, n = len(shape), shape[0]
    for k in range(1, d):
        prev = info.left[k - 1][0]
        candidates = torch.cat([prev.repeat_interleave(n, 0), torch.arange(n).repeat(len(prev))[:, None]], 1)
        for row in info.left[k][0]:
            assert row.tolist() == min(candidates[candidates.sum(1) == row.sum()].tolist())
    for k in range(1, d):
        after = info.right[k + 1][0]
        digits = torch.arange(n).repeat_interleave(len(after))[:, None]
        candidates = torch.cat([digits, after.repeat(n, 1)], 1)
        for row in info.right[k][0]:
            assert row.tolist() == min(candidates[candidates.sum(1) == row.sum()].tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_edge_cases_give_finite_exact_results(dtype):
    for value in (0.0, 3.5):
        tt, info = cpic.cross(
            lambda idx, v=value: torch.full(idx.shape[:2], v),
            (4, 1, 7, 3),
            batch=2,
            rank=20,
            dtype=dtype,
            seed=0,
        )
        assert max(tt.ranks) <= 4  # capped by what the shape allows
        torch.testing.assert_close(tt.full(), torch.full((2, 4, 1, 7, 3), value, dtype=dtype))
        assert torch.isfinite(info.error).all()
    # modes of size 1 everywhere, and a single mode
    tt, _ = cpic.cross(lambda idx: idx.sum(-1).to(dtype) + 1, (1, 1, 1), rank=3, dtype=dtype)
    assert tt.full().flatten().tolist() == [1.0]
    tt, _ = cpic.cross(lambda idx: idx[..., 0].to(dtype), (5,), rank=3, dtype=dtype)
    assert tt.full().flatten().tolist() == [0, 1, 2, 3, 4]
    # batch items of very different scale
    ref = random_tt(3, (4,) * 5, 2, dtype=dtype)
    scale = torch.tensor([1e-30, 1.0, 1e30], dtype=dtype)
    tt, info = cpic.cross(
        lambda idx: ref.eval(idx) * scale[:, None], ref.shape, batch=3, rank=2, dtype=dtype, seed=0
    )
    limit = 1e-4 if dtype == torch.float32 else 1e-10
    assert (rel_err(tt, ref.full() * scale[:, None, None, None, None, None]) < limit).all()
    assert torch.isfinite(info.error).all() and (info.error < limit).all()


def test_rank_deficient_and_overestimated_rank():
    ref = random_tt(1, (6,) * 5, 1)
    tt, info = cpic.cross(ref.eval, ref.shape, rank=9, sweeps=3, dtype=torch.float32, seed=0)
    assert torch.isfinite(torch.stack([c.abs().max() for c in tt.cores])).all()
    assert rel_err(tt, ref.full()).item() < 1e-5


def test_adaptive_rank_stops_at_tolerance():
    tt, info = cpic.cross(hilbert, (8,) * 6, max_rank=12, tol=1e-6, dtype=torch.float64, seed=0)
    assert info.stop == "tol"
    assert (info.error <= 1e-6).all()
    assert info.errors.shape[0] in (2 * info.sweeps, 2 * info.sweeps + 1)  # one per pass with tol
    assert max(tt.ranks) <= 12 and max(tt.ranks) > 1
    assert info.errors[0].item() > info.errors[-1].item()


def test_budget_is_honoured():
    _, full_run = cpic.cross(hilbert, (8,) * 6, rank=5, sweeps=4, dtype=torch.float64, seed=0)
    for budget in (full_run.evaluations // 2, full_run.evaluations - 1):
        tt, info = cpic.cross(hilbert, (8,) * 6, rank=5, sweeps=4, budget=budget, dtype=torch.float64, seed=0)
        assert info.stop == "budget" and info.evaluations <= budget
        assert torch.isfinite(tt.full()).all() and info.error.item() < 0.1
    assert info.error.item() < 10 * full_run.error.item() + 1e-9


def test_same_seed_same_result_and_warm_start():
    f = hilbert
    a, ia = cpic.cross(f, (8,) * 5, rank=4, sweeps=2, seed=7)
    b, ib = cpic.cross(f, (8,) * 5, rank=4, sweeps=2, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a.cores, b.cores))
    assert all(torch.equal(x, y) for x, y in zip(ia.right, ib.right))
    c, ic = cpic.cross(f, (8,) * 5, rank=4, sweeps=1, init=ia, seed=1, dtype=torch.float32)
    assert ic.error.item() <= 2 * ia.error.item() + 1e-6
    assert ic.unique_evaluations < ia.unique_evaluations


def test_info_reports_what_happened():
    tt, info = cpic.cross(hilbert, (4,) * 5, rank=3, sweeps=2, seed=0)
    assert info.sweeps == 2 and info.stop in ("sweeps", "converged")
    assert info.ranks == tt.ranks and info.time > 0
    assert info.test_idx.shape == (1, 256, 5)
    assert 200 < info.test_evaluations <= 256  # repeated random points are evaluated once
    assert [s.shape[1] for s in info.left] == list(tt.ranks)
    assert [s.shape[2] for s in info.left[:5]] == list(range(5))
    assert [s.shape[2] for s in info.right[1:]] == list(range(4, -1, -1))
    assert info.errors.shape == (2, 1)  # one per sweep without tol
    assert "sweeps" in info.summary()


def test_callback_sees_every_sweep_and_can_stop_the_run():
    seen = []

    def watch(tt, info):
        seen.append((tt, info.sweeps, info.error.clone(), info.ranks, info.unique_evaluations))

    run = dict(max_rank=10, sweeps=4, dtype=torch.float64, seed=0)
    tt, info = cpic.cross(hilbert, (8,) * 6, callback=watch, **run)
    assert [s[1] for s in seen] == [1, 2, 3, 4] and info.stop == "sweeps"
    torch.testing.assert_close(seen[-1][0].full(), tt.full())  # the last call saw the returned TT
    for t, _, error, ranks, _ in seen:  # each call's info describes the TT it was given
        exact = info.test_values
        torch.testing.assert_close(error, ((t.eval(info.test_idx) - exact).norm() / exact.norm())[None])
        assert ranks == t.ranks
    assert [s[4] for s in seen] == sorted(s[4] for s in seen)

    stopped, sinfo = cpic.cross(hilbert, (8,) * 6, callback=lambda t, i: i.sweeps == 2, **run)
    assert sinfo.stop == "callback" and sinfo.sweeps == 2
    torch.testing.assert_close(stopped.full(), seen[1][0].full())
    assert sinfo.unique_evaluations == seen[1][4]
    with pytest.raises(ValueError, match="callback"):
        cpic.cross(hilbert, (4, 4), rank=2, callback=3)


def test_user_validation_set_replaces_the_random_one():
    ref = random_tt(2, (6, 5, 6, 5), 3, seed=2)
    gen = torch.Generator().manual_seed(1)
    idx = torch.stack([torch.randint(0, n, (2, 40), generator=gen) for n in ref.shape], -1)
    values = ref.eval(idx)
    calls = []

    def f(i):
        calls.append(i.shape[1])
        return ref.eval(i)

    tt, info = cpic.cross(f, ref.shape, batch=2, rank=2, sweeps=2, dtype=torch.float64, seed=0,
                          validation=(idx, values))
    assert info.test_evaluations == 0 and torch.equal(info.test_idx, idx)
    assert torch.equal(info.test_values, values)
    torch.testing.assert_close(info.error, (tt.eval(idx) - values).norm(dim=1) / values.norm(dim=1))
    # the given values are what the error is measured against, not f's
    _, doubled = cpic.cross(ref.eval, ref.shape, batch=2, rank=3, sweeps=2, dtype=torch.float64, seed=0,
                            validation=(idx, 2 * values))
    torch.testing.assert_close(doubled.error, torch.full((2,), 0.5, dtype=torch.float64))
    # without values, f evaluates the given entries; tol is judged on them
    _, own = cpic.cross(ref.eval, ref.shape, batch=2, max_rank=6, tol=1e-10, dtype=torch.float64, seed=0,
                        validation=(idx, None))
    assert 0 < own.test_evaluations <= 80 and own.stop == "tol" and (own.error <= 1e-10).all()
    for bad, match in (
        ((idx[:1], values[:1]), "shape"),
        ((idx.double(), values), "integer"),
        ((idx + 6, values), "outside"),
        ((idx, values[:, :3]), "values must have shape"),
        ((idx, torch.full_like(values, float("inf"))), "finite"),
        (idx, "pair"),
    ):
        with pytest.raises(ValueError, match=match):
            cpic.cross(ref.eval, ref.shape, batch=2, rank=2, validation=bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(shape=(4, 0, 3)), "shape"),
        (dict(shape=(4, -2)), "shape"),
        (dict(shape=()), "shape"),
        (dict(rank=0), "rank"),
        (dict(rank=-3), "rank"),
        (dict(max_rank=2, rank=4), "max_rank"),
        (dict(batch=0), "batch"),
        (dict(budget=10), "budget"),
        (dict(tol=-1.0), "tol"),
        (dict(dtype=torch.int64), "dtype"),
        (dict(device="tpu:7"), "device"),
        (dict(tau=0.9), "tau"),
        (dict(tau="loose"), "tau"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = dict(shape=(4, 4, 4), rank=2)
    args.update(kwargs)
    shape = args.pop("shape")
    with pytest.raises(ValueError, match=match):
        cpic.cross(hilbert, shape, **args)


def test_bad_function_output():
    with pytest.raises(ValueError, match="shape"):
        cpic.cross(lambda idx: torch.zeros(idx.shape[1]), (4, 4), rank=2)
    with pytest.raises(ValueError, match="non-finite"):
        cpic.cross(lambda idx: torch.full(idx.shape[:2], float("nan")), (4, 4), rank=2)
    with pytest.raises(ValueError, match="non-finite"):
        cpic.cross(lambda idx: 1.0 / idx.sum(-1).double(), (4, 4), rank=2, n_test=0)


def test_as_accurate_as_teneva_cross_at_equal_sweeps():
    teneva = pytest.importorskip("teneva")
    import numpy as np

    shape = (12,) * 6

    def f_np(i):
        return np.exp(-((i / 11.0) ** 2).sum(1)) * np.cos(i.sum(1) / 7.0)

    gen = np.random.default_rng(0)
    test = gen.integers(0, 12, (3000, 6))
    exact = f_np(test)
    ref = teneva.cross(f_np, teneva.rand(list(shape), 1, seed=0), nswp=3, dr_max=2, cache={})
    ref_err = np.linalg.norm(teneva.get_many(ref, test) - exact) / np.linalg.norm(exact)
    tt, info = cpic.cross(
        lambda idx: torch.from_numpy(f_np(idx[0].numpy()))[None],
        shape,
        max_rank=30,
        kick=2,
        sweeps=3,
        dtype=torch.float64,
        seed=0,
        n_test=0,
    )
    ours = tt.eval(torch.from_numpy(test)[None])[0].numpy()
    err = np.linalg.norm(ours - exact) / np.linalg.norm(exact)
    assert err <= 3 * ref_err + 1e-12


def test_tensors_beyond_int64_use_hashed_cache_keys():
    shape = (2,) * 70  # 2**70 entries: linear indices do not fit in int64

    def f(idx):
        weights = torch.linspace(0.01, 0.7, idx.shape[-1], dtype=torch.float64)
        return torch.cos((idx.double() * weights).sum(-1))  # TT rank 2

    tt, info = cpic.cross(f, shape, rank=2, sweeps=3, dtype=torch.float64, seed=0)
    assert not EvaluationCache(shape, 1, torch.float64).exact
    assert info.error.item() < 1e-10
    assert info.cache_hits > 0 and info.unique_evaluations == info.evaluations
