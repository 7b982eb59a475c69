"""The model layer: validity masks, projections, the latent feature function and cpic.CPIC."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cpic
from cpic.layout import PlainLayout, QTTLayout
from cpic.nn import (
    CPIC,
    Classification,
    ImplicitVolume,
    PatchFeatures,
    PatchMLP,
    QuantileRegression,
    RandomPatches,
    Reconstruction,
    Regression,
    coarse_feature_grid,
    feature_mean,
    feature_moments,
)
from cpic.sources.array import ArraySource
from cpic.sources.base import reflect
from cpic.tt import TT


def _mask(layout) -> torch.Tensor:
    out = layout.validity_cores()[0]
    for core in layout.validity_cores()[1:]:
        out = torch.einsum("...r,rns->...ns", out, core)
    return out.reshape(-1)


def _all_indices(shape) -> torch.Tensor:
    return torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1).reshape(
        -1, len(shape)
    )


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=3), st.booleans())
def test_validity_tt_is_exactly_the_mask(grid, group):
    layout = QTTLayout(grid, group=group)
    expected = layout.valid(_all_indices(layout.spatial_shape)).double()
    assert torch.equal(_mask(layout), expected)
    assert max(c.shape[2] for c in layout.validity_cores()) <= 2 ** len(grid)


def _voxel_features(latent: TT, layout) -> torch.Tensor:
    """Dense ``[B, voxels, F]`` of a latent TT over the valid grid, in C order of the grid."""
    full = latent.full()
    coords = _all_indices(layout.grid_shape)
    idx = layout.to_index(coords, feature=0)[:, :-1]
    return full[(slice(None),) + tuple(idx.T)]


@pytest.mark.parametrize("group", [False, True])
@pytest.mark.parametrize("grid", [(5, 6, 7), (8, 8, 8), (3, 8, 5)])
def test_projections_match_dense_references_and_ignore_padding(grid, group):
    layout = QTTLayout(grid, features=3, group=group)
    latent = TT.from_dense(torch.randn(2, *layout.tensor_shape, dtype=torch.float64))
    e = _voxel_features(latent, layout)  # [2, N, 3]
    torch.testing.assert_close(feature_mean(latent, layout), e.mean(1))
    torch.testing.assert_close(feature_moments(latent, layout), e.mT @ e / e.shape[1])


def test_coarse_grid_averages_valid_voxels_of_each_block():
    grid = (6, 8, 5)  # padded to 8 x 8 x 8; level 1 -> 2 x 2 x 2 blocks of 4^3
    layout = QTTLayout(grid, features=2, group=True)
    latent = TT.from_dense(torch.randn(1, *layout.tensor_shape, dtype=torch.float64))
    out = coarse_feature_grid(latent, layout, level=1)
    e = _voxel_features(latent, layout)[0].reshape(*grid, 2)
    assert out.shape == (1, 2, 2, 2, 2)
    for cx in range(2):
        for cy in range(2):
            for cz in range(2):
                block = e[4 * cx : 4 * cx + 4, 4 * cy : 4 * cy + 4, 4 * cz : 4 * cz + 4]
                torch.testing.assert_close(out[0, :, cx, cy, cz], block.reshape(-1, 2).mean(0))


def test_coarse_grid_of_a_bit_layout_equals_the_grouped_one():
    dense = torch.randn(1, *QTTLayout((8, 8, 8), features=2, group=True).tensor_shape, dtype=torch.float64)
    grouped = QTTLayout((8, 8, 8), features=2, group=True)
    bits = QTTLayout((8, 8, 8), features=2)
    latent = TT.from_dense(dense)
    # the same tensor in the bit layout: mode (x,y,z) bits of a level split into three modes of 2
    bit_latent = TT.from_dense(dense.reshape(1, *bits.tensor_shape))
    torch.testing.assert_close(
        coarse_feature_grid(latent, grouped, 2), coarse_feature_grid(bit_latent, bits, 2)
    )


def test_plain_layouts_have_an_all_ones_mask_and_project():
    layout = PlainLayout((3, 4), features=2)
    latent = TT.from_dense(torch.randn(1, 3, 4, 2, dtype=torch.float64))
    torch.testing.assert_close(feature_mean(latent, layout), latent.full().mean((1, 2)))


def _volumes(n=2, side=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [cpic.open_volume(torch.rand(side, side, side, generator=gen)) for _ in range(n)]


def test_patch_features_encode_each_distinct_voxel_once_and_match_the_encoder():
    torch.manual_seed(0)
    srcs = _volumes(2, side=8)
    layout = QTTLayout((8, 8, 8), features=4, group=True)
    enc = PatchMLP(patch=3, features=4)
    f = PatchFeatures(srcs, layout, enc, patch=3)
    coords = torch.tensor([[[1, 2, 3], [1, 2, 3], [7, 0, 4]], [[0, 0, 0], [5, 5, 5], [0, 0, 0]]])
    feature = torch.tensor([[0, 3, 1], [2, 2, 1]])
    idx = layout.to_index(coords, feature=feature)
    values = f(idx)
    assert f.encoded == 4  # (1,2,3), (7,0,4), (0,0,0), (5,5,5)
    for b in range(2):
        patches = srcs[b].gather(coords[b], 3).reshape(3, 1, 3, 3, 3)
        expected = enc(patches).gather(1, feature[b, :, None])[:, 0]
        torch.testing.assert_close(values[b], expected)


def test_patch_features_read_the_edge_voxel_on_padding():
    src = cpic.open_volume(torch.arange(125.0).reshape(5, 5, 5))
    layout = QTTLayout((5, 5, 5), features=1, group=True)
    identity = torch.nn.Sequential(torch.nn.Flatten())  # patch 1 -> its value
    f = PatchFeatures([src], layout, identity, patch=1)
    padded = torch.tensor([[[7, 6, 4]]])  # outside the 5^3 grid -> clamped to (4, 4, 4)
    idx = layout.to_index(padded, feature=0)
    assert f(idx).item() == 124.0


def test_a_strided_latent_grid_encodes_the_patch_at_each_lattice_voxel():
    """stride 4 on a 10 x 12 x 7 grid: a 3 x 3 x 2 lattice of centres at 4 c + 2, the last one
    clamped to the grid; positions are scaled by the volume, not the lattice."""
    torch.manual_seed(0)
    volume = torch.rand(10, 12, 7)
    src = cpic.open_volume(volume)
    layout = QTTLayout((3, 3, 2), features=4, group=True)
    enc = PatchMLP(patch=3, features=4, positions=3)
    f = PatchFeatures([src], layout, enc, patch=3, stride=4, positions=True)
    cells = _all_indices((3, 3, 2))
    values = f(layout.to_index(cells[None], feature=torch.full((1, len(cells)), 2)))
    centres = torch.minimum(4 * cells + 2, torch.tensor([9, 11, 6]))
    patches = src.gather(centres, 3).reshape(-1, 1, 3, 3, 3)
    scaled = (2 * centres + 1) / torch.tensor([10.0, 12.0, 7.0]) - 1
    torch.testing.assert_close(values[0], enc(patches, scaled)[:, 2])
    patch_voxels = reflect(centres[:, None] + _all_indices((3, 3, 3)) - 1, torch.tensor([10, 12, 7]))
    expected = set(map(tuple, patch_voxels.reshape(-1, 3).tolist()))  # and nothing else is read
    assert set(map(tuple, src.voxels_read().tolist())) == expected
    with pytest.raises(ValueError, match="stride 4 gives"):
        PatchFeatures([src], QTTLayout((10, 12, 7), features=4), enc, patch=3, stride=4)


def test_a_strided_model_predicts_explains_and_round_trips_through_its_config():
    from cpic.train.model_file import model_from_config

    torch.manual_seed(0)
    model = CPIC((32, 32, 20), Classification(2), features=4, patch=3, rank=3, stride=4, sampled_max=True)
    assert model.layout.grid_shape == (8, 8, 5)
    sources = [ArraySource(torch.rand(32, 32, 20)) for _ in range(2)]
    pred, found = model.evidence(sources)
    assert pred.shape == (2, 2)
    for centres, _ in found:  # patch centres sit on the lattice
        assert ((centres[:, :2] % 4 == 2) | (centres[:, :2] == 31)).all()
        assert ((centres[:, 2] % 4 == 2) | (centres[:, 2] == 19)).all()
    copy = model_from_config(model.config)
    assert copy.stride == 4 and copy.layout.grid_shape == (8, 8, 5)
    with pytest.raises(ValueError, match="stride"):
        CPIC((32, 32, 32), Classification(2), stride=0)
    with pytest.raises(ValueError, match="ImplicitVolume"):
        CPIC((32, 32, 32), Reconstruction())
    with pytest.raises(TypeError, match="stride"):  # an implicit volume decodes every voxel
        ImplicitVolume((32, 32, 32), stride=2)
    with pytest.raises(ValueError, match=r"grid \(32, 32, 17\) differs from the model's \(32, 32, 20\)"):
        model([ArraySource(torch.rand(32, 32, 17))])  # the same lattice of centres, another grid


@pytest.mark.parametrize("projection", ["mean", "moments", "grid"])
@pytest.mark.parametrize("encoder", ["mlp", "conv"])
def test_model_predicts_a_batch_and_backpropagates_to_the_encoder(projection, encoder):
    torch.manual_seed(0)
    model = CPIC(
        (16, 16, 16), Classification(3), features=4, patch=3, rank=3, encoder=encoder, projection=projection
    )
    logits = model(_volumes(3), keys=[0, 1, 2])
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in model.encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_model_gradients_match_finite_differences():
    torch.manual_seed(0)
    model = CPIC(
        (8, 8, 8), Regression(hidden=None), features=2, patch=3, rank=2, projection="moments"
    ).double()
    srcs = _volumes(2, side=8)
    model(srcs, keys=[0, 1])  # select and keep the pivots: the loss is then smooth in the weights
    weight = model.encoder.net[0].weight

    def loss():
        return model(srcs, keys=[0, 1]).square().sum()

    weight.grad = None
    loss().backward()
    analytic = weight.grad.flatten()[:6].clone()
    numeric = []
    with torch.no_grad():
        for i in range(6):
            w = weight.view(-1)
            w[i] += 1e-6
            up = loss()
            w[i] -= 2e-6
            down = loss()
            w[i] += 1e-6
            numeric.append((up - down) / 2e-6)
    torch.testing.assert_close(analytic, torch.stack(numeric), rtol=1e-5, atol=1e-8)


def test_batched_latent_equals_per_item_latents_with_kept_pivots():
    torch.manual_seed(0)
    model = CPIC((16, 16, 16), Classification(2), features=3, patch=3, rank=3).double()
    srcs = _volumes(2)
    both = model.latent(srcs, keys=["a", "b"])
    one = model.latent([srcs[1]], keys=["b"])
    idx = torch.randint(0, 8, (1, 50, 5))
    idx[..., -1] = idx[..., -1] % 3
    torch.testing.assert_close(both[1].eval(idx), one.eval(idx))


def test_pivots_are_reused_refreshed_warm_and_on_drift():
    torch.manual_seed(0)
    model = CPIC((16, 16, 16), Classification(2), features=3, patch=3, rank=3, refresh_every=2)
    srcs = _volumes(2)
    for _ in range(2):
        model(srcs, keys=[0, 1])
    assert (model.pivots.counts.selected, model.pivots.counts.refreshed) == (2, 0)
    cold = model.pivots.counts.evaluations
    model(srcs, keys=[0, 1])  # third use: warm refresh, one sweep
    assert model.pivots.counts.refreshed == 2
    assert model.pivots.counts.evaluations - cold < cold
    model.refresh_pivots([0])
    model(srcs, keys=[0, 1])
    assert model.pivots.counts.refreshed == 3

    drifting = CPIC((16, 16, 16), Classification(2), features=3, patch=3, rank=3, refresh_tol=1e-12)
    drifting(srcs, keys=[0, 1])  # a rank-3 TT of noise misses held-out entries by far more
    assert drifting.numerics["drift"] == 2
    drifting(srcs, keys=[0, 1])
    assert drifting.pivots.counts.refreshed == 2


class _FlakyEncoder(torch.nn.Module):
    """An MLP whose output is infinite on chosen calls."""

    def __init__(self, bad_calls):
        super().__init__()
        self.mlp = PatchMLP(patch=3, features=3)
        self.calls, self.bad_calls = 0, set(bad_calls)

    def forward(self, x):
        self.calls += 1
        out = self.mlp(x)
        return out * float("inf") if self.calls in self.bad_calls else out


def test_a_non_finite_step_is_repaired_by_fresh_pivots_and_counted():
    torch.manual_seed(0)
    encoder = _FlakyEncoder(bad_calls=[])
    model = CPIC((16, 16, 16), Classification(2), features=3, patch=3, rank=3, encoder=encoder)
    srcs = _volumes(2)
    model(srcs, keys=[0, 1])
    encoder.bad_calls = {encoder.calls + 1}  # the next interpolation's one encoder call
    logits = model(srcs, keys=[0, 1])
    assert torch.isfinite(logits).all()
    assert model.numerics["refreshed"] == 1 and model.numerics["lowered_rank"] == 0


def test_blank_and_constant_volumes_give_finite_predictions_and_gradients():
    model = CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=3)
    srcs = [cpic.open_volume(torch.zeros(8, 8, 8)), cpic.open_volume(torch.full((8, 8, 8), 3.0))]
    loss, _ = model.loss(srcs, [0, 1], keys=[0, 1])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_heads_and_extra_features():
    srcs = _volumes(2)
    quant = CPIC((16, 16, 16), QuantileRegression((0.1, 0.9)), features=2, patch=3, rank=2, extra_features=2)
    pred = quant(srcs, extra=torch.tensor([[60.0, 1.0], [70.0, 0.0]]))
    assert pred.shape == (2, 2)
    with pytest.raises(ValueError, match="extra"):
        quant(srcs)
    with pytest.raises(ValueError, match=r"extra must be \[2, 2\]"):
        quant(srcs, extra=torch.ones(2, 3))
    loss, _ = quant.loss(srcs, [1.0, 2.0], extra=torch.ones(2, 2))
    assert loss.item() > 0


def test_reconstruction_queries_any_voxel_from_the_latent_tt():
    torch.manual_seed(0)
    model = ImplicitVolume((16, 16, 16), features=4, patch=3, rank=3)
    srcs = _volumes(1)
    latent = model.latent(srcs, keys=[0])
    coords = torch.tensor([[0, 0, 0], [15, 3, 9]])
    out = model.query(latent, coords)
    idx = model.layout.to_index(coords, feature=0)[None, :, :-1]
    torch.testing.assert_close(out, model.decoder(latent.fibers(idx)))
    loss, pred = model.loss(srcs, keys=[0])
    assert pred.shape == (1, 4096) and torch.isfinite(loss)
    assert not model.supervised and not hasattr(model, "head")


def test_bad_model_arguments_are_refused_with_a_clear_error():
    head = Classification(2)
    with pytest.raises(ValueError, match="odd"):
        CPIC((16, 16, 16), head, patch=4)
    with pytest.raises(ValueError, match="larger than the volume"):
        CPIC((4, 16, 16), head, patch=5)
    with pytest.raises(ValueError, match="classes"):
        Classification(1)
    with pytest.raises(ValueError, match="encoder"):
        CPIC((16, 16, 16), head, encoder="resnet")
    with pytest.raises(ValueError, match="projection"):
        CPIC((16, 16, 16), head, projection="max")
    with pytest.raises(ValueError, match="quantiles"):
        QuantileRegression((0.5, 1.5))
    model = CPIC((16, 16, 16), head, features=2, patch=3, rank=2)
    with pytest.raises(ValueError, match="class id 5"):
        model.loss(_volumes(2), [0, 5])
    with pytest.raises(ValueError, match="numbers"):
        Regression().check_targets(["old", "young"])
    with pytest.raises(ValueError, match="grid"):
        model(_volumes(1, side=8))
    huge = CPIC((2**12,) * 3, head, features=512, patch=9, rank=4000)
    with pytest.raises(MemoryError, match="GiB"):
        huge.latent([cpic.open_volume(torch.zeros(2**12, 1, 1).expand(2**12, 2**12, 2**12))])


def test_reconstruction_trains_only_on_voxels_already_read():
    torch.manual_seed(0)
    model = ImplicitVolume((16, 16, 16), features=4, patch=3, rank=3)
    srcs = _volumes(2)
    model.latent(srcs, keys=srcs)
    read = [s.stats.unique_voxels for s in srcs]
    assert all(0 < r < 16**3 for r in read)
    loss, pred = model.loss(srcs, keys=srcs)
    assert pred.shape == (2, 4096) and torch.isfinite(loss)
    assert [s.stats.unique_voxels for s in srcs] == read  # the targets came from read patches


def test_positional_background_centred_features_vanish_on_empty_space():
    model = CPIC((8, 8, 8), Regression(), features=3, patch=3, rank=2, positions=True, background=0.0)
    volume = torch.zeros(8, 8, 8)
    volume[2:5, 2:5, 2:5] = 1.0
    f = model.feature_function([cpic.open_volume(volume)])
    idx = model.layout.to_index(torch.tensor([[[7, 7, 7], [3, 3, 3]]]), feature=torch.tensor([[0, 0]]))
    values = f(idx)
    assert values[0, 0].abs() < 1e-6 and values[0, 1].abs() > 0


def test_a_volume_gets_the_same_prediction_in_any_batch():
    torch.manual_seed(0)
    model = CPIC((16, 16, 16), Classification(3), features=4, patch=3, rank=3).eval()
    gen = torch.Generator().manual_seed(1)
    srcs = [ArraySource(torch.rand(16, 16, 16, generator=gen), name=f"v{i}") for i in range(3)]
    with torch.no_grad():
        alone = model([srcs[0]])
        together = model([srcs[2], srcs[1], srcs[0]])
        keyed = model([srcs[1], srcs[0]], keys=[srcs[1], srcs[0]])
    torch.testing.assert_close(alone[0], together[2])
    torch.testing.assert_close(alone[0], keyed[1])


def test_a_volume_gets_the_same_prediction_wherever_it_is_stored(tmp_path, monkeypatch):
    """Pivots are seeded by the file name, not its folder: a relative path, an absolute one and
    a copy elsewhere predict alike; another file name is another draw."""
    torch.manual_seed(0)
    model = CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=3).eval()
    volume = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(2)).numpy()
    (tmp_path / "moved").mkdir()
    for path in ("scan.npy", "moved/scan.npy", "other.npy"):
        np.save(tmp_path / path, volume)
    monkeypatch.chdir(tmp_path)
    with torch.no_grad():
        got = [model([cpic.open_volume(p)]) for p in ("scan.npy", tmp_path / "scan.npy", "moved/scan.npy")]
        other = model([cpic.open_volume("other.npy")])
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])
    assert not torch.equal(got[0], other)


def test_sampled_max_is_the_largest_feature_over_the_interpolated_patches():
    torch.manual_seed(0)
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=1, rank=3, sampled_max=True)
    src = ArraySource(torch.rand(16, 16, 16))
    model.embed([src], keys=[0])  # selects and keeps the pivots
    src.stats.reset()
    z = model.embed([src], keys=[0])  # reads exactly the interpolation's patches
    read = src.voxels_read()
    features = model.encoder(src.read(read)[:, None, None, None, None])
    assert z.shape == (1, model.projection.out_features(4) + 4)
    assert torch.allclose(z[0, -4:], features.max(0).values, atol=1e-6)
    # a bright voxel where the cross samples raises the maximum of some feature
    volume = src.array.copy()
    volume[tuple(read[0].tolist())] = 50.0
    bright = model.embed([ArraySource(volume)], keys=[1])
    assert not torch.allclose(bright[0, -4:], z[0, -4:])


class _CentreValue(torch.nn.Module):
    """Feature 0: the patch's centre voxel; the others: zero."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, patches, positions=None):
        centre = self.scale * patches.flatten(2)[:, 0, patches[0, 0].numel() // 2]
        return torch.stack([centre] + [torch.zeros_like(centre)] * 3, 1)


def test_evidence_points_at_the_patch_the_prediction_depends_on():
    """A regression on the sampled maximum of the centre voxel alone: its evidence is the one
    brightest patch the prediction encoded, in each volume of a batch, and nothing else."""
    torch.manual_seed(0)
    model = cpic.CPIC((16, 16, 16), Regression(), features=4, patch=3, rank=3, sampled_max=True)
    model.encoder = _CentreValue()
    linear = torch.nn.Linear(model.projection.out_features(4) + 4, 1)
    with torch.no_grad():  # the head reads only the maximum of feature 0
        linear.weight.zero_()
        linear.weight[0, -4] = 2.0
    model.head.net = linear
    volumes = [torch.rand(16, 16, 16), torch.rand(16, 16, 16)]
    sources = [ArraySource(v) for v in volumes]
    pred, found = model.evidence(sources)
    assert torch.allclose(pred, model(sources), atol=1e-6)  # the same pivots as a prediction
    for volume, source, (centres, weight) in zip(volumes, sources, found):
        values = volume[tuple(centres.T)]
        assert len(centres) == len(weight) and len(centres) > 10
        assert weight.argmax() == values.argmax()
        assert weight.max() == pytest.approx(2 * float(values.max()), rel=1e-5)
        assert int((weight > 0).sum()) == 1
        assert set(map(tuple, centres.tolist())) <= set(map(tuple, source.voxels_read().tolist()))


def test_peaks_record_each_features_best_patch_of_a_selection_and_join_the_maximum():
    torch.manual_seed(0)
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=3, sampled_max=True)
    sources = [ArraySource(torch.rand(16, 16, 16)) for _ in range(2)]
    f = model.feature_function(sources)
    idx = torch.stack([torch.randint(0, n, (2, 50)) for n in f.shape], -1)
    with f.log(peaks=True) as log:
        with torch.no_grad():
            f(idx)  # no gradients: recorded
            ids, features = log.last
            n = 16**3
            for b, src in enumerate(sources):
                mine = ids // n == b
                values, where = log.peaks[id(src)]
                assert torch.equal(values, features[mine].max(0).values)
                assert torch.equal(where, (ids[mine] % n)[features[mine].argmax(0)])
        f(idx)  # with gradients (a training step's interpolation): not recorded
    assert set(log.peaks) == {id(s) for s in sources}
    # the model keeps each volume's peaks with its pivots, and they travel in the store's state
    model.embed(sources, keys=["a", "b"])
    kept = model.pivots.attached("a")
    assert kept is not None and kept.shape == (4,)
    copy = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=3, sampled_max=True)
    copy.pivots.load_state(model.pivots.state(str), str)
    assert torch.equal(copy.pivots.attached("a"), kept)
    # a re-selection replaces them with the best of the old peaks and the new selection's
    model.refresh_pivots(["a"])
    z = model.embed(sources, keys=["a", "b"])
    assert model.pivots.attached("a") is not None and torch.isfinite(z).all()


def test_random_patches_read_exactly_their_budget_and_train():
    from cpic.train import VolumeDataset, fit

    torch.manual_seed(0)
    patch_voxels = 3**3
    reads = RandomPatches(10 * patch_voxels + 5)
    model = CPIC((16, 16, 16), Classification(2), features=3, patch=3, reads=reads)
    sources = _volumes(3)
    reads = model.read(sources)
    assert reads.voxels.tolist() == [10 * patch_voxels] * 3  # whole patches, never more than the budget
    assert [s.stats.voxels_read for s in sources] == [10 * patch_voxels] * 3
    torch.testing.assert_close(model(sources), model(sources))  # a prediction draws from each volume's seed
    # the sparse TT holds the read patches' features: its mean projection is their mean
    cells = reads.patches.ids // 16**3
    means = torch.stack([reads.patches.features[cells == b].mean(0) for b in range(3)])
    torch.testing.assert_close(feature_mean(reads.tt, model.layout), means, rtol=1e-4, atol=1e-5)
    volumes = [cpic.open_volume(torch.full((16, 16, 16), float(i % 2))) for i in range(4)]
    history = fit(model, VolumeDataset(volumes, [0, 1, 0, 1]), epochs=2, batch_size=2, progress=False)
    assert len(history.rows) == 2 and all(np.isfinite(r["train_loss"]) for r in history.rows)
    assert all(v.stats.voxels_read == 2 * 10 * patch_voxels for v in volumes)  # fresh draws, same budget
    with pytest.raises(ValueError, match="budget"):
        CPIC((16, 16, 16), Classification(2), patch=3, reads=RandomPatches(26)).read(sources)
    with pytest.raises(ValueError, match="budget"):
        RandomPatches(0)


def test_a_policy_that_reads_past_its_budget_is_refused():
    from cpic.nn import CrossPivots

    class Greedy(CrossPivots):
        budget = 10

    model = CPIC((16, 16, 16), Classification(2), features=3, patch=3, reads=Greedy(rank=2))
    with pytest.raises(RuntimeError, match="over its budget of 10"):
        model(_volumes(1))


def test_no_layer_branches_on_the_reconstruction_head():
    """The implicit volume is its own class: nn and train dispatch on the model, not on the head."""
    from pathlib import Path

    root = Path(cpic.__file__).parent
    allowed = {"nn/heads.py", "nn/implicit.py", "nn/__init__.py"}
    for path in sorted([*root.glob("nn/*.py"), *root.glob("train/*.py")]):
        text, name = path.read_text(), path.relative_to(root).as_posix()
        assert '"reconstruction"' not in text or name in allowed, name
        assert "Reconstruction" not in text or name in allowed, name


class _MeanIntensity(torch.nn.Module):
    """An encoder whose every feature is the patch's mean intensity (plus a learnable 0)."""

    def __init__(self, features: int):
        super().__init__()
        self.features = features
        self.zero = torch.nn.Parameter(torch.zeros(()))

    def forward(self, patches):
        return patches.mean(dim=(1, 2, 3, 4))[:, None].repeat(1, self.features) + self.zero


def test_lattice_patches_read_one_patch_per_stratum_within_the_budget():
    from cpic.nn import LatticePatches
    from cpic.nn.lattice_reads import strata_counts

    patch_voxels = 3**3
    policy = LatticePatches(64 * patch_voxels + 7)
    model = CPIC((16, 16, 16), Classification(2), features=3, patch=3, reads=policy)
    sources = _volumes(2)
    reads = model.read(sources)
    assert reads.voxels.tolist() == [64 * patch_voxels] * 2
    counts = strata_counts((16, 16, 16), 64)
    assert counts == (4, 4, 4)
    for b in range(2):
        cells = reads.patches.ids[reads.patches.ids // 16**3 == b] % 16**3
        coords = torch.stack([cells // 256, cells // 16 % 16, cells % 16], -1)
        strata = coords // 4
        assert len(torch.unique(strata[:, 0] * 16 + strata[:, 1] * 4 + strata[:, 2])) == 64  # each once
    torch.testing.assert_close(model(sources), model(sources))  # predictions draw from each volume's seed
    training = model.read(sources, keys=[0, 1]).patches.ids
    assert not torch.equal(training, reads.patches.ids)  # training draws afresh
    # a budget between two lattices: the strata (4^3) and 6 more patches, in 6 strata
    fuller = CPIC((16,) * 3, Classification(2), features=3, patch=3, reads=LatticePatches(70 * patch_voxels))
    assert fuller.read(_volumes(1)).voxels.tolist() == [70 * patch_voxels]
    flat = cpic.open_volume(torch.full((16, 16, 16), 0.25))
    policy = LatticePatches(70 * patch_voxels)
    ones = CPIC((16,) * 3, Regression(), features=2, patch=3, encoder=_MeanIntensity(2), reads=policy)
    with torch.no_grad():  # the weights share each stratum: they sum to the grid's cells
        torch.testing.assert_close(feature_mean(ones.read([flat]).tt, ones.layout), torch.full((1, 2), 0.25))


def test_a_lattice_estimates_a_smooth_volume_better_than_random_patches_at_equal_reads():
    """Stratified coverage: the latent mean of a smooth volume from a jittered lattice errs less
    than from as many uniformly random patches (16 draws each)."""
    from cpic.nn import LatticePatches

    x = torch.linspace(0, 1, 16)
    values = x[:, None, None] + x[None, :, None] ** 2 + torch.sin(3 * x)[None, None, :]
    volume, truth = cpic.open_volume(values.contiguous()), float(values.mean())
    errors = {}
    for policy in (LatticePatches, RandomPatches):
        encoder = _MeanIntensity(2)
        model = CPIC((16,) * 3, Regression(), features=2, patch=1, encoder=encoder, reads=policy(64))
        with torch.no_grad():
            tts = [model.read([volume], keys=[0]).tt for _ in range(16)]
        estimates = [float(feature_mean(tt, model.layout)[0, 0]) for tt in tts]
        errors[policy.__name__] = float(np.mean([(e - truth) ** 2 for e in estimates]))
    assert errors["LatticePatches"] < 0.25 * errors["RandomPatches"]


def test_explore_exploit_refines_the_strata_its_scorer_ranks_highest():
    from cpic.nn import ExploreExploit
    from cpic.nn.lattice_reads import strata_bounds, strata_counts

    volume = torch.zeros(32, 32, 32)
    volume[:8, :8, :8] = 1.0  # one bright corner: 1/64 of the volume
    source = cpic.open_volume(volume)
    policy = ExploreExploit(27 * 160, features=2)

    def score_by_intensity(sign: float) -> None:  # the view CNN passes the voxel through, times sign
        with torch.no_grad():
            for conv in (policy.view_net.body[0], policy.view_net.body[2], policy.view_net.score):
                conv.weight.zero_()
                conv.bias.zero_()
                conv.weight[(0, 0) + (conv.weight.shape[-1] // 2,) * 3] = 1.0
            policy.view_net.score.weight.mul_(sign)

    score_by_intensity(5.0)
    model = CPIC((32, 32, 32), Regression(), features=2, patch=3, encoder=_MeanIntensity(2), reads=policy)
    reads = model.read([source])
    assert int(reads.voxels[0]) <= policy.budget and source.stats.voxels_read == int(reads.voxels[0])
    def in_corner(ids):
        return int((torch.stack([ids // 1024, ids // 32 % 32, ids % 32], -1) < 8).all(-1).sum())

    refined = len(reads.patches.ids) // 8
    assert in_corner(reads.patches.ids) >= min(refined, 8) * 8  # the view cells in the corner, first
    score_by_intensity(-5.0)  # now the corner scores lowest: it is not refined
    assert in_corner(model.read([cpic.open_volume(volume)]).patches.ids) == 0
    # each patch weighted by its share of its cell: the latent sum is the refined cells' volume
    ones = CPIC((32, 32, 32), Regression(), features=2, patch=3, encoder=_MeanIntensity(2), reads=policy)
    flat = cpic.open_volume(torch.full((32, 32, 32), 0.5))
    flat_reads = ones.read([flat])
    view = strata_counts((32,) * 3, 2160)  # the view: half the budget
    lo, hi = strata_bounds(torch.zeros(3, dtype=torch.long), torch.full((3,), 32), view)
    sizes, refined = (hi - lo).prod(-1).double(), len(flat_reads.patches.ids) // 8
    covered = float(feature_mean(flat_reads.tt, ones.layout)[0, 0].detach()) / 0.5 * 32**3  # the weights' sum
    assert refined * float(sizes.min()) - 1e-6 <= covered <= refined * float(sizes.max()) + 1e-6


def _corner_policy(**settings):
    """An explore-exploit policy whose view CNN scores a cell by its intensity (times 5), and a
    32^3 volume whose bright corner is 1/64 of it."""
    from cpic.nn import ExploreExploit

    policy = ExploreExploit(27 * 160, features=2, **settings)
    with torch.no_grad():
        for conv in (policy.view_net.body[0], policy.view_net.body[2], policy.view_net.score):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[(0, 0) + (conv.weight.shape[-1] // 2,) * 3] = 5.0
    volume = torch.zeros(32, 32, 32)
    volume[:8, :8, :8] = 1.0
    return policy, volume


def _in_corner(ids) -> int:
    return int((torch.stack([ids // 1024, ids // 32 % 32, ids % 32], -1) < 8).all(-1).sum())


def test_explore_exploit_training_draws_cells_beyond_the_top_k_and_predictions_do_not():
    greedy, volume = _corner_policy(exploration=0.0)
    noisy, _ = _corner_policy(exploration=100.0)
    corner = []
    for policy in (greedy, noisy):
        model = CPIC((32, 32, 32), Regression(), features=2, patch=3, encoder=_MeanIntensity(2), reads=policy)
        source = cpic.open_volume(volume)
        trained = model.read([source], keys=["a"]).patches.ids  # a training read: keys, gradients on
        predicted = model.read([cpic.open_volume(volume)]).patches.ids
        corner.append((_in_corner(trained), _in_corner(predicted), len(trained)))
    (greedy_train, greedy_pred, n), (noisy_train, noisy_pred, _) = corner
    assert greedy_train == greedy_pred == n  # every refined cell in the corner
    assert noisy_pred == n  # predictions take the top cells whatever the training noise
    assert noisy_train < n / 2  # near-uniform draws: the corner is 1/64 of the cells


def test_explore_exploit_cross_stage_reads_only_inside_the_chosen_cells():
    policy, volume = _corner_policy(exploration=0.0, stage2="cross")
    model = CPIC((32, 32, 32), Regression(), features=2, patch=3, encoder=_MeanIntensity(2), reads=policy)
    source = cpic.open_volume(volume)
    reads = model.read([source])
    ids = reads.patches.ids
    assert int(reads.voxels[0]) <= policy.budget and source.stats.voxels_read == int(reads.voxels[0])
    assert _in_corner(ids) == len(ids) > 0  # the top cells are the corner's
    from cpic.nn import ExploreExploit

    learning = ExploreExploit(27 * 160, features=2, stage2="cross")  # an untrained, unsaturated scorer
    model = CPIC((32, 32, 32), Regression(), features=2, patch=3, reads=learning)
    model.loss([cpic.open_volume(torch.rand(32, 32, 32))], torch.tensor([1.0]))[0].backward()
    assert float(learning.view_net.score.weight.grad.abs().sum()) > 0  # through the gate


def test_box_features_read_each_patch_once_up_to_the_cap_and_answer_its_features():
    from cpic.nn import PatchMLP
    from cpic.nn.box_cross import BoxFeatures, cross_in_boxes
    from cpic.nn.latent import PatchFeatures

    source = cpic.open_volume(torch.rand(16, 16, 16))
    f = PatchFeatures([source], PlainLayout(source.shape, features=3), PatchMLP(patch=3, features=3), patch=3)
    low = torch.tensor([[0, 0, 0], [8, 4, 4]])
    box = BoxFeatures(f, low, torch.tensor([0, 0]), cap=5)
    idx = torch.tensor(
        [[[0, 0, 0, 1], [1, 2, 3, 2], [0, 0, 0, 0]], [[3, 3, 3, 0], [0, 1, 0, 2], [2, 2, 2, 1]]]
    )
    with torch.no_grad():
        values = box(idx)
        read = source.stats.voxels_read
        coords = low[:, None] + idx[..., :3]
        expected = f.encode(torch.unique(coords[..., 0] * 256 + coords[..., 1] * 16 + coords[..., 2]))
    ids = (coords[..., 0] * 256 + coords[..., 1] * 16 + coords[..., 2]).flatten()
    rows = torch.searchsorted(box.ids, ids)
    assert torch.allclose(values.flatten(), expected[rows, idx[..., 3].flatten()])
    assert box.read.tolist() == [2, 3] and read == 5 * 27
    before = source.stats.voxels_read
    box(idx)  # nothing new: no read
    assert source.stats.voxels_read == before
    read = cross_in_boxes(f, low, low + 4, torch.tensor([0, 0]), cap=7, seeds=[0, 1])
    assert read.read.tolist() == [7, 7] and bool((read.ids[read.box == 1] // 256 >= 8).all())
def _with_levels(volume: torch.Tensor) -> cpic.sources.VolumeSource:
    """``volume`` opened with two levels of block means (factors 2 and 4)."""
    source = cpic.open_volume(volume)
    n = volume.shape[0]
    half = volume.reshape(n // 2, 2, n // 2, 2, n // 2, 2).mean((1, 3, 5))
    quarter = half.reshape(n // 4, 2, n // 4, 2, n // 4, 2).mean((1, 3, 5))
    source.add_levels([ArraySource(half), ArraySource(quarter)])
    return source


def test_explore_exploit_views_the_finest_pyramid_level_that_fits_and_counts_it():
    from cpic.nn import ExploreExploit

    volume = torch.zeros(32, 32, 32)
    volume[4:6, 4:6, 4:6] = 1.0  # between the voxels a strided view of 11^3 reads (1, 3, 6, 9, ...)
    policy = ExploreExploit(27 * 160, features=2)  # explore share 2160: level 2 (8^3) fits, 16^3 not
    with torch.no_grad():  # the view CNN passes the voxel through, times 5: the bright cell scores highest
        for conv in (policy.view_net.body[0], policy.view_net.body[2], policy.view_net.score):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[(0, 0) + (conv.weight.shape[-1] // 2,) * 3] = 1.0
        policy.view_net.score.weight.mul_(5.0)
    model = CPIC((32, 32, 32), Regression(), features=2, patch=3, encoder=_MeanIntensity(2), reads=policy)
    source = _with_levels(volume)
    reads = model.read([source])
    patches = len(reads.patches.ids)
    assert source.stats.level_voxels == 8**3 and source.stats.voxels_read == 8**3 + patches * 27
    assert int(reads.voxels[0]) == 8**3 + patches * 27 <= policy.budget
    assert patches == (policy.budget - 8**3) // 27 // 8 * 8  # 17 cells of the 8^3 view, 8 patches each

    def over_cube(ids):  # patches in the box of the level voxel over the cube, [4, 8)^3
        coords = torch.stack([ids // 1024, ids // 32 % 32, ids % 32], -1)
        return int(((coords >= 4) & (coords < 8)).all(-1).sum())

    assert over_cube(reads.patches.ids) == 8  # that level voxel is refined, 8 patches
    # the strided view of the same volume never sees the cube: it is not refined
    assert over_cube(model.read([cpic.open_volume(volume)]).patches.ids) < 8
    assert bool(torch.isfinite(model([_with_levels(volume)])).all())


def test_explore_exploit_reads_a_volume_alike_alone_or_beside_one_without_levels():
    from cpic.nn import ExploreExploit

    model = CPIC((16, 16, 16), Regression(), features=2, patch=3, reads=ExploreExploit(1200, features=2))
    volume = torch.rand(16, 16, 16, generator=torch.Generator().manual_seed(0))
    alone = [model.read([_with_levels(volume)]), model.read([cpic.open_volume(volume)])]
    mixed = model.read([_with_levels(volume), cpic.open_volume(volume)])
    assert mixed.voxels.tolist() == [int(r.voxels[0]) for r in alone]
    cells = 16**3
    for b, reads in enumerate(alone):
        own = mixed.patches.ids[mixed.patches.ids // cells == b] % cells
        assert torch.equal(own, reads.patches.ids)
        torch.testing.assert_close(mixed.summary[b], reads.summary[0])
    with torch.no_grad():
        together = model([_with_levels(volume), cpic.open_volume(volume)])
        apart = torch.cat([model([_with_levels(volume)]), model([cpic.open_volume(volume)])])
    torch.testing.assert_close(together, apart)


def test_sampler_budgets_below_their_minimum_are_refused_naming_it():
    from cpic.nn import ExploreExploit, LatticePatches

    with pytest.raises(ValueError, match="below the 27 that the lattice sampler needs"):
        CPIC((16, 16, 16), Regression(), features=2, patch=3, reads=LatticePatches(20))
    need = ExploreExploit(1, features=2).minimum(3, 3)
    assert need == 431  # a view of 215 voxels (half, rounded down), then 8 patches of 27 in one cell
    with pytest.raises(ValueError, match=f"below the {need} that the explore-exploit sampler needs"):
        CPIC((16, 16, 16), Regression(), features=2, patch=3, reads=ExploreExploit(need - 1, features=2))
    with pytest.raises(ValueError, match="scores 3 features, but the model has 2"):
        CPIC((16, 16, 16), Regression(), features=2, patch=3, reads=ExploreExploit(need, features=3))
    with pytest.raises(ValueError, match="explore must be a share"):
        ExploreExploit(need, features=2, explore=1.0)


@pytest.mark.parametrize("group", [True, False])
def test_projections_of_a_sparse_latent_equal_those_of_its_tt(group):
    from cpic.nn.sparse_latent import SparseLatent

    gen = torch.Generator().manual_seed(0)
    layout = QTTLayout((13, 10, 7), features=3, group=group)  # padded: the validity mask counts
    cells = torch.randperm(2 * 13 * 10 * 7, generator=gen)[:50]  # distinct cells of 2 volumes, unsorted
    volume, within = cells // 910, cells % 910
    coords = torch.stack([within // 70, within // 7 % 10, within % 7], 1)
    values = torch.randn(50, 3, generator=gen, dtype=torch.float64)
    sparse = SparseLatent(layout, 2, coords, volume, values)
    tt = sparse.to_tt()
    dense = tt.full()  # the TT holds each value at its cell
    assert torch.allclose(dense[(volume, *layout.to_index(coords, feature=0)[:, :-1].T)], values)
    assert torch.allclose(dense.abs().sum(), values.abs().sum())
    assert torch.allclose(feature_mean(sparse, layout), feature_mean(tt, layout))
    assert torch.allclose(feature_moments(sparse, layout), feature_moments(tt, layout))
    for level in range(1, layout.levels):
        expected = coarse_feature_grid(tt, layout, level)
        assert torch.allclose(coarse_feature_grid(sparse, layout, level), expected)
