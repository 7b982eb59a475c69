"""The batched TT container against dense computation and peers' TT-SVD."""

import itertools

import numpy as np
import pytest
import torch

from cpic import TT
from tests.helpers import random_tt


def dense(t: TT) -> torch.Tensor:
    return t.full()


def test_eval_matches_full():
    t = random_tt(3, (3, 4, 2, 5), 3)
    full = t.full()
    idx = torch.stack([torch.randint(0, n, (3, 50)) for n in t.shape], -1)
    expected = torch.stack([full[b][tuple(idx[b].T)] for b in range(3)])
    torch.testing.assert_close(t.eval(idx), expected)


def test_full_by_explicit_products():
    t = random_tt(1, (2, 3, 2), 2)
    full = t.full()
    for i, j, k in itertools.product(range(2), range(3), range(2)):
        prod = t.cores[0][0, :, i] @ t.cores[1][0, :, j] @ t.cores[2][0, :, k]
        assert torch.allclose(full[0, i, j, k], prod[0, 0])


@pytest.mark.parametrize("modes", [None, 0, [1], [0, 2], [1, 3], [0, 1, 2, 3]])
def test_sum_and_mean_over_modes(modes):
    t = random_tt(2, (3, 4, 2, 5), 3)
    full = t.full()
    axes = tuple(range(1, 5)) if modes is None else tuple(m + 1 for m in np.atleast_1d(modes))
    for got, want in ((t.sum(modes), full.sum(axes)), (t.mean(modes), full.mean(axes))):
        got = got if isinstance(got, torch.Tensor) else got.full()
        torch.testing.assert_close(got, want)


def test_dot_norm_second_moments():
    a, b = random_tt(2, (3, 4, 5), 2, seed=1), random_tt(2, (3, 4, 5), 3, seed=2)
    fa, fb = a.full(), b.full()
    torch.testing.assert_close(a.dot(b), (fa * fb).sum((1, 2, 3)))
    torch.testing.assert_close(a.norm(), fa.flatten(1).norm(dim=1))
    e = fa.reshape(2, 12, 5)
    torch.testing.assert_close(a.second_moments(mean=False), e.mT @ e)
    torch.testing.assert_close(a.second_moments(), e.mT @ e / 12)


def test_add_sub_scale():
    a, b = random_tt(2, (3, 4, 5), 2, seed=1), random_tt(2, (3, 4, 5), 3, seed=2)
    torch.testing.assert_close((a + b).full(), a.full() + b.full())
    torch.testing.assert_close((a - b).full(), a.full() - b.full())
    s = torch.tensor([2.0, -3.0], dtype=torch.float64)
    torch.testing.assert_close((a * s).full(), a.full() * s[:, None, None, None])
    one = random_tt(1, (6,), 1)
    torch.testing.assert_close((one + one).full(), 2 * one.full())


def test_norm_is_stable_for_tiny_differences():
    a = random_tt(1, (4,) * 6, 3)
    b = a + a * 1e-9
    rel = (b - a).norm() / a.norm()
    assert abs(rel.item() - 1e-9) < 1e-12


def test_from_dense_reproduces_and_rounds():
    x = torch.rand(2, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(TT.from_dense(x).full(), x)
    low = random_tt(2, (4, 5, 6, 3), 2).full()
    t = TT.from_dense(low, tol=1e-10)
    assert t.ranks == (1, 2, 2, 2, 1)
    torch.testing.assert_close(t.full(), low)
    t = TT.from_dense(x, max_rank=2)
    assert max(t.ranks) == 2


def test_from_dense_agrees_with_teneva_svd():
    teneva = pytest.importorskip("teneva")
    x = random_tt(1, (4, 5, 6, 3), 3).full()[0] + 1e-3 * torch.rand(4, 5, 6, 3, dtype=torch.float64)
    for r in (1, 2, 3):
        ours = TT.from_dense(x, max_rank=r, batched=False).full()[0].numpy()
        ref = teneva.full(teneva.svd(x.numpy(), r=r))
        # both are quasi-optimal rank-r approximations: errors within a few percent of each other
        e_ours = np.linalg.norm(ours - x.numpy())
        e_ref = np.linalg.norm(ref - x.numpy())
        assert e_ours <= 1.05 * e_ref + 1e-12


def test_round_tolerance_and_rank():
    a = random_tt(2, (4,) * 5, 3)
    doubled = a + a
    r = doubled.round(tol=1e-10)
    assert max(r.ranks) == 3
    torch.testing.assert_close(r.full(), 2 * a.full())
    noisy = a + random_tt(2, (4,) * 5, 2, seed=5) * 1e-4
    r = noisy.round(tol=1e-2)
    err = (r.full() - noisy.full()).flatten(1).norm(dim=1) / noisy.full().flatten(1).norm(dim=1)
    assert (err <= 1e-2).all() and max(r.ranks) <= 3
    assert max(noisy.round(max_rank=2).ranks) == 2


def test_autograd_through_operations():
    cores = [c.clone().requires_grad_(True) for c in random_tt(2, (3, 4, 3), 2).cores]
    t = TT(cores)
    idx = torch.stack([torch.randint(0, n, (2, 7)) for n in t.shape], -1)
    loss = (
        t.eval(idx).sum()
        + t.sum().sum()
        + t.mean([0]).full().square().sum()
        + t.norm().sum()
        + t.second_moments().sum()
        + t.round(max_rank=2).full().sum()
        + t.dot(t).sum()
    )
    loss.backward()
    assert all(c.grad is not None and torch.isfinite(c.grad).all() for c in cores)

    def fn(c0):
        tt = TT([c0] + cores[1:])
        return (tt.norm() + tt.second_moments().sum((1, 2)) + tt.mean()).sum()

    assert torch.autograd.gradcheck(fn, (cores[0].detach().clone().requires_grad_(True),))


def test_hadamard_product_and_scalars_against_dense():
    a, b = random_tt(3, (3, 4, 2, 5), 2, seed=1), random_tt(3, (3, 4, 2, 5), 3, seed=2)
    fa, fb = a.full(), b.full()
    assert (a * b).ranks == (1, 6, 6, 6, 1)
    torch.testing.assert_close((a * b).full(), fa * fb)
    s = torch.tensor([2.0, -3.0, 0.5], dtype=torch.float64)
    per_item = s[:, None, None, None, None]
    torch.testing.assert_close((a + 1.5).full(), fa + 1.5)
    torch.testing.assert_close((1.5 + a).full(), fa + 1.5)
    torch.testing.assert_close((a - s).full(), fa - per_item)
    torch.testing.assert_close((s - a).full(), per_item - fa)
    torch.testing.assert_close((s * a / 4).full(), per_item * fa / 4)
    torch.testing.assert_close((a * b + 2 * a - 1).full(), fa * fb + 2 * fa - 1)
    one = random_tt(1, (3, 4, 2, 5), 2, seed=3)  # a batch of one broadcasts
    torch.testing.assert_close((a * one).full(), fa * one.full())
    torch.testing.assert_close((one + a).full(), one.full() + fa)
    torch.testing.assert_close(a.dot(one), (fa * one.full()).flatten(1).sum(1))
    single = random_tt(2, (6,), 1)
    torch.testing.assert_close((single * single + 1).full(), single.full() ** 2 + 1)
    with pytest.raises(ValueError, match="scalar must be"):
        a + torch.ones(2)
    with pytest.raises(ValueError, match="TTs differ"):
        a * random_tt(2, (3, 4, 2, 5), 2)
    with pytest.raises(TypeError):
        a * "x"


@pytest.mark.parametrize("core", [0, 1, 2, -1])
def test_orthogonalize_to_a_core(core):
    t = random_tt(2, (3, 4, 2, 5), 3, seed=4)
    o = t.orthogonalize(core)
    torch.testing.assert_close(o.full(), t.full())
    k = core % t.d
    for j, c in enumerate(o.cores):
        B, r, n, s = c.shape
        if j < k:
            m = c.reshape(B, r * n, s)
            torch.testing.assert_close(m.mT @ m, torch.eye(s, dtype=c.dtype).expand(B, s, s))
        elif j > k:
            m = c.reshape(B, r, n * s)
            torch.testing.assert_close(m @ m.mT, torch.eye(r, dtype=c.dtype).expand(B, r, r))
    torch.testing.assert_close(o.cores[k].flatten(1).norm(dim=1), t.norm())
    for b in range(2):  # batched equals item by item
        for mine, alone in zip(o[b].cores, t[b].orthogonalize(core).cores):
            torch.testing.assert_close(mine, alone)
    assert o.ranks == (1, 3, 3, 3, 1)
    with pytest.raises(ValueError, match="out of range"):
        t.orthogonalize(4)


@pytest.mark.parametrize(
    "key",
    [
        (slice(None), 2),
        (slice(None), -1, slice(1, 3)),
        (0, ..., 4),
        (slice(None), [2, 0], 1, slice(None, None, 2)),
        (slice(None), torch.tensor(1), torch.tensor([3, 1]), slice(None), slice(2, 4)),
        ([1, 0], 0, 1, 1, 0),
        (slice(None), np.int64(2), ..., np.int64(-1)),
        (slice(None), slice(None), 1, ..., slice(-2, None)),
    ],
)
def test_indexing_modes_against_dense(key):
    t = random_tt(2, (3, 4, 2, 5), 3, seed=5)
    got, want = t[key], t.full()[key]
    if isinstance(key[0], int):
        want = want[None]  # an integer batch key keeps the batch axis
    got = got if isinstance(got, torch.Tensor) else got.full()
    torch.testing.assert_close(got, want)


def test_fixing_modes_per_item_equals_looping():
    t = random_tt(3, (3, 4, 2, 5), 2, seed=6)
    idx = torch.tensor([[0, 1], [2, 0], [1, 4]])
    fixed = t.fix([0, 3], idx)
    assert fixed.shape == (4, 2)
    for b in range(3):
        torch.testing.assert_close(fixed[b].full()[0], t.full()[b, idx[b, 0], :, :, idx[b, 1]])
        torch.testing.assert_close(fixed[b].full(), t[b].fix([0, 3], idx[b].tolist()).full())
    every = t.fix([3, 1, 0, 2], torch.tensor([[4, 3, 2, 1]] * 3))
    torch.testing.assert_close(every, t.full()[:, 2, 3, 1, 4])
    for bad, match in (
        (lambda: t.fix([0, 0], [1, 1]), "twice"),
        (lambda: t.fix([1], [4]), "out of range"),
        (lambda: t.fix([1], torch.zeros(2, 1, dtype=torch.long)), "indices must be"),
        (lambda: t[:, 1:1], "empty"),
        (lambda: t[:, 0, 0, 0, 0, 0], "too many"),
        (lambda: t[:, 0.5], "takes an integer"),
        (lambda: t[:, torch.tensor(1.0)], "takes an integer"),
    ):
        with pytest.raises(ValueError, match=match):
            bad()


@pytest.mark.parametrize("mode", [0, 1, 3])
def test_cat_along_a_mode(mode):
    parts = [random_tt(2, (3, 4, 2, 5), 2, seed=7)]
    for seed, n in ((8, 2), (9, 3)):
        shape = [3, 4, 2, 5]
        shape[mode] = n
        parts.append(random_tt(2, tuple(shape), 1 + seed % 3, seed=seed))
    joined = TT.cat(parts, mode)
    torch.testing.assert_close(joined.full(), torch.cat([p.full() for p in parts], dim=mode + 1))
    line = [random_tt(2, (n,), 1, seed=n) for n in (3, 1)]
    torch.testing.assert_close(TT.cat(line, 0).full(), torch.cat([p.full() for p in line], dim=1))
    with pytest.raises(ValueError, match="agree elsewhere"):
        TT.cat([parts[0], random_tt(2, (3, 9, 9, 5), 2)], mode)


def test_new_operations_are_differentiable():
    shape = (3, 2, 3)
    a, b = random_tt(2, shape, 2, seed=10), random_tt(2, shape, 2, seed=11)
    c0 = a.cores[1].clone().requires_grad_(True)
    s = torch.tensor([0.5, -2.0], dtype=torch.float64, requires_grad=True)

    def fn(core, scale):
        x = TT([a.cores[0], core, a.cores[2]])
        out = (x * b + scale).full().sum((1, 2, 3))
        out = out + (scale * x - 1.0).orthogonalize(1).full().square().sum((1, 2, 3))
        out = out + x[:, 1:, 0].full().sum((1, 2)) + x.fix([2], torch.tensor([[0], [2]])).full().sum((1, 2))
        return out + TT.cat([x, b], mode=1).orthogonalize(2).norm()

    assert torch.autograd.gradcheck(fn, (c0, s))


def test_bad_cores_are_refused():
    with pytest.raises(ValueError, match="left rank"):
        TT([torch.rand(1, 1, 3, 2), torch.rand(1, 3, 3, 1)])
    with pytest.raises(ValueError, match="must be 1"):
        TT([torch.rand(1, 2, 3, 1)])
    with pytest.raises(ValueError, match="idx must have shape"):
        random_tt(2, (3, 3), 2).eval(torch.zeros(1, 4, 2, dtype=torch.long))
