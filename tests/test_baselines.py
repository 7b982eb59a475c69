"""The baselines C-PIC is measured against: what they read, that gradients reach them, that they learn."""

import pytest
import torch

import cpic
from cpic.nn import AttentionPatches, Classification, DenseCNN, RandomPatches, RandomPatchModel, ReadPolicy
from cpic.nn.baselines import downsample, subsample


def test_the_baselines_are_models_exported_by_cpic_nn():
    import cpic.nn

    assert {"AttentionPatches", "DenseCNN", "RandomPatchModel"} <= set(cpic.nn.__all__)
    assert issubclass(RandomPatchModel, torch.nn.Module) and not issubclass(RandomPatchModel, ReadPolicy)
    assert issubclass(RandomPatches, ReadPolicy)  # the read policy of the same idea keeps its name


def _bright_or_dark(count: int, side: int = 16, seed: int = 0):
    """Volumes whose class is whether a bright cube sits in them: a task every baseline can learn."""
    gen = torch.Generator().manual_seed(seed)
    sources, labels = [], []
    for i in range(count):
        volume = 0.1 * torch.rand(side, side, side, generator=gen)
        if i % 2:
            corner = torch.randint(side - 8, (3,), generator=gen).tolist()
            volume[corner[0] : corner[0] + 8, corner[1] : corner[1] + 8, corner[2] : corner[2] + 8] += 1
        source = cpic.open_volume(volume)
        source.name = f"v{i}"
        sources.append(source)
        labels.append(i % 2)
    return sources, torch.tensor(labels)


def _train(model, sources, labels, steps: int = 30, lr: float = 1e-2) -> float:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss, _ = model.loss(sources, labels)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(sources).argmax(1) == labels).float().mean())
    model.train()
    return accuracy


def test_downsample_is_the_area_average_and_reads_every_voxel():
    volume = torch.rand(12, 8, 16)
    src = cpic.open_volume(volume)
    expected = torch.nn.functional.adaptive_avg_pool3d(volume[None, None], 4)[0]
    assert torch.allclose(downsample(src, 4), expected, atol=1e-6)
    assert src.stats.unique_voxels == volume.numel()


@pytest.mark.parametrize("pool", ["mean", "mean+max"])
def test_dense_cnn_learns_and_reads_each_volume_once(pool):
    sources, labels = _bright_or_dark(8)
    model = DenseCNN(Classification(2), side=8, width=4, pool=pool)
    assert _train(model, sources, labels) == 1.0
    assert all(s.stats.unique_voxels == 16**3 for s in sources)
    assert all(s.stats.requests == 8 for s in sources)  # one slab per output plane, read once


def test_subsample_reads_exactly_the_voxels_of_its_lattice():
    volume = torch.rand(12, 8, 16)
    src = cpic.open_volume(volume)
    view = subsample(src, 4)
    assert torch.equal(view[0], volume[1::3, 1::2, 2::4])  # cell centres, not averages
    assert src.stats.unique_voxels == src.stats.voxels_read == 4**3
    with pytest.raises(ValueError, match="strided view of side 9"):
        subsample(src, 9)


def test_dense_cnn_on_a_strided_view_learns_and_reads_only_the_view():
    sources, labels = _bright_or_dark(8)
    model = DenseCNN(Classification(2), side=8, width=4, pool="mean+max", view="strided")
    assert _train(model, sources, labels) == 1.0  # the 8^3 cubes cover every other voxel
    assert all(s.stats.unique_voxels == 8**3 for s in sources)


def test_dense_cnn_refuses_an_unknown_pooling_or_view():
    with pytest.raises(ValueError, match="pool"):
        DenseCNN(Classification(2), pool="max")
    with pytest.raises(ValueError, match="view must be one of 'average', 'strided'"):
        DenseCNN(Classification(2), view="pyramid")
    with pytest.raises(ValueError, match="side"):
        DenseCNN(Classification(2), side=4)


def test_random_patches_read_only_their_patches_and_keep_them_until_refresh():
    sources, labels = _bright_or_dark(8)
    model = RandomPatchModel((16, 16, 16), Classification(2), samples=30, features=4, patch=3)
    model(sources[:1])
    first = sources[0].stats.unique_voxels
    assert 0 < first <= 30 * 27
    model(sources[:1])
    assert sources[0].stats.unique_voxels == first  # same positions
    model.refresh()
    model(sources[:1])
    assert sources[0].stats.unique_voxels > first
    loss, _ = model.loss(sources, labels)
    loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert _train(model, sources, labels) >= 0.75


def test_attention_sampling_trains_its_scores_and_reads_a_fraction():
    sources, labels = _bright_or_dark(8)
    model = AttentionPatches((16, 16, 16), Classification(2), samples=30, features=4, patch=3, view=4)
    loss, _ = model.loss(sources, labels)
    loss.backward()
    score_grads = [p.grad for p in model.attention.parameters()]
    assert all(g is not None for g in score_grads) and sum(g.abs().sum() for g in score_grads) > 0
    assert all(s.stats.unique_voxels <= 4**3 + 30 * 27 for s in sources)
    assert _train(model, sources, labels) >= 0.75


def test_attention_estimator_is_the_attention_weighted_mean_in_expectation():
    """mean(a_i / a_i * f_i) over draws i ~ a estimates E_a[f]; its gradient w.r.t. the scores is
    that of the weighted mean (checked against the exact sum over all cells)."""
    torch.manual_seed(0)
    logits = torch.randn(6, requires_grad=True)
    values = torch.randn(6)
    a = logits.softmax(0)
    exact = (a * values).sum()
    (exact_grad,) = torch.autograd.grad(exact, logits, retain_graph=True)
    draws = torch.multinomial(a.detach(), 200_000, replacement=True)
    weights = a[draws] / a[draws].detach()
    estimate = (weights * values[draws]).mean()
    (estimate_grad,) = torch.autograd.grad(estimate, logits)
    assert abs(float(estimate.detach()) - float(exact.detach())) < 0.02
    assert torch.allclose(estimate_grad, exact_grad, atol=0.02)


def test_baselines_run_on_a_tiny_lesion_cohort():
    from cpic.data import DataUnavailable, lesion_cohort

    try:
        sources, labels = lesion_cohort(4, side=32, seed=0)
    except DataUnavailable:  # pragma: no cover - CI installs mricron-data
        return
    presence = labels["presence"]
    for model in (
        DenseCNN(Classification(2), side=16, width=4),
        RandomPatchModel((32,) * 3, Classification(2), samples=20, features=4, patch=3, positions=True),
        AttentionPatches((32,) * 3, Classification(2), samples=20, features=4, patch=3, view=8),
    ):
        loss, pred = model.loss(sources, presence)
        loss.backward()
        assert torch.isfinite(loss) and pred.shape == (4, 2)
