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


def test_bad_cores_are_refused():
    with pytest.raises(ValueError, match="left rank"):
        TT([torch.rand(1, 1, 3, 2), torch.rand(1, 3, 3, 1)])
    with pytest.raises(ValueError, match="must be 1"):
        TT([torch.rand(1, 2, 3, 1)])
    with pytest.raises(ValueError, match="idx must have shape"):
        random_tt(2, (3, 3), 2).eval(torch.zeros(1, 4, 2, dtype=torch.long))
