"""The differentiable interpolation: exactness, finite-difference gradients, cherry-picking."""

import torch

import cpic
from cpic.layout import QTTLayout
from tests.helpers import random_tt


def test_interpolation_is_exact_on_low_rank_tensors_and_batched():
    ref = random_tt(3, (5, 4, 6, 5), 2, seed=4)
    _, info = cpic.cross(ref.eval, ref.shape, batch=3, rank=2, dtype=torch.float64, seed=0)
    calls = []

    def f(idx):
        calls.append(idx.shape)
        return ref.eval(idx)

    tt = cpic.interpolate(f, info)
    assert len(calls) == 1  # every fiber of every core in one call
    torch.testing.assert_close(tt.full(), ref.full())
    # adaptive ranks leave left and right sets of different sizes: least squares, still exact
    _, grown = cpic.cross(ref.eval, ref.shape, batch=3, max_rank=5, tol=1e-12, dtype=torch.float64, seed=1)
    torch.testing.assert_close(cpic.interpolate(ref.eval, grown).full(), ref.full())


def test_gradients_match_finite_differences():
    shape = (4, 5, 3, 4)
    base = random_tt(1, shape, 2, seed=7)
    weights = torch.randn(2, 4, dtype=torch.float64)
    _, info = cpic.cross(base.eval, shape, rank=3, dtype=torch.float64, seed=0)

    def loss(w):
        def f(idx):  # a smooth, non-linear function of the parameters at every entry
            x = base.eval(idx)
            return torch.tanh(w[0, idx[..., 0]] * x) + w[1, idx[..., 3]] * x**2

        tt = cpic.interpolate(f, info)
        probe = torch.tensor([[[0, 1, 2, 3], [3, 4, 0, 1], [1, 0, 1, 2]]])
        return tt.mean() + tt.eval(probe).square().sum() + tt.second_moments().sum() * 0 + tt.norm()

    assert torch.autograd.gradcheck(loss, (weights.requires_grad_(True),))


def test_gradients_reach_only_the_cherry_picked_voxels():
    side = 16
    layout = QTTLayout((side,) * 3, group=True)
    volume = torch.rand(side, side, side, dtype=torch.float64, requires_grad=True)

    def f(idx):
        x, y, z = layout.to_coords(idx).unbind(-1)
        return volume[x, y, z]

    _, info = cpic.cross(
        lambda idx: f(idx).detach(), layout.tensor_shape, rank=4, dtype=torch.float64, seed=0
    )
    seen = []

    def recording(idx):
        seen.append(layout.to_coords(idx[0]))
        return f(idx)

    tt = cpic.interpolate(recording, info)
    tt.mean().sum().backward()
    touched = torch.zeros(side, side, side, dtype=torch.bool)
    touched[tuple(seen[0].T)] = True
    nonzero = volume.grad != 0
    assert nonzero.any()
    assert not (nonzero & ~touched).any()  # no gradient outside the sampled voxels
    assert touched.float().mean() < 0.5  # and those are a fraction of the volume


def test_interpolation_reproduces_the_cross_tt_in_either_direction():
    def f(idx):
        x = idx.double() / 7
        return torch.exp(-x.square().sum(-1)) + torch.sin(x.sum(-1))  # not exactly low rank

    shape = (8,) * 5
    for kwargs, direction in ((dict(tol=0.9), "ltr"), (dict(sweeps=2), "rtl")):
        tt, info = cpic.cross(f, shape, max_rank=6, dtype=torch.float64, seed=3, **kwargs)
        assert info.direction == direction
        torch.testing.assert_close(cpic.interpolate(f, info).full(), tt.full())
    # ranks still growing in the last pass: rectangular maxvol built its cores
    ref = random_tt(1, shape, 9)
    for sweeps in (1, 2):
        tt, info = cpic.cross(ref.eval, shape, max_rank=12, sweeps=sweeps, dtype=torch.float64, seed=0)
        assert 1 < max(info.ranks) < 12
        torch.testing.assert_close(cpic.interpolate(ref.eval, info).full(), tt.full())
