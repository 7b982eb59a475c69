"""The ModelNet10-like shape cohort: soft occupancy, reproducible poses, balanced and learnable classes."""

import pytest
import torch
import torch.nn.functional as F

from cpic.data import SHAPE_CLASSES, shape_cohort, shape_source


def all_coords(side: int) -> torch.Tensor:
    axis = torch.arange(side)
    return torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)


def dense(source) -> torch.Tensor:
    return source.read(all_coords(source.shape[0])).reshape(source.shape)


def pooled_features(sources, pool: int) -> torch.Tensor:
    return torch.stack([F.avg_pool3d(dense(s)[None, None], pool).flatten() for s in sources])


def test_ten_distinct_classes():
    assert len(SHAPE_CLASSES) == 10 == len(set(SHAPE_CLASSES))


@pytest.mark.parametrize("kind", SHAPE_CLASSES)
def test_values_are_float32_occupancy_with_a_sensible_fraction(kind):
    for seed in range(3):
        volume = dense(shape_source(kind, side=32, seed=seed))
        assert volume.dtype == torch.float32
        assert float(volume.min()) >= 0 and float(volume.max()) <= 1
        assert 0.01 < float(volume.mean()) < 0.6
        assert float(volume.max()) > 0.7  # a core beyond the soft edge, even for thin walls


@pytest.mark.parametrize("kind", SHAPE_CLASSES)
def test_shapes_stay_inside_the_grid(kind):
    volume = dense(shape_source(kind, side=24, seed=5))
    faces = torch.cat(
        [volume[[0, -1]].flatten(), volume[:, [0, -1]].flatten(), volume[..., [0, -1]].flatten()]
    )
    assert float(faces.max()) < 0.5


def test_same_seed_same_values_other_seed_other_pose():
    coords = all_coords(24)
    first = shape_source("cube", side=24, seed=7).read(coords)
    again = shape_source("cube", side=24, seed=7).read(coords)
    other = shape_source("cube", side=24, seed=8).read(coords)
    assert torch.equal(first, again)
    assert float((first - other).abs().sum()) > 0.2 * float(first.sum())


def test_cohort_items_do_not_depend_on_count_and_seed_changes_them():
    small, _ = shape_cohort(3, side=16, seed=1)
    large, _ = shape_cohort(25, side=16, seed=1)
    reseeded, _ = shape_cohort(3, side=16, seed=2)
    coords = all_coords(16)
    for a, b, c in zip(small, large, reseeded):
        assert a.name == b.name == c.name
        assert torch.equal(a.read(coords), b.read(coords))
        assert not torch.equal(a.read(coords), c.read(coords))


def test_labels_are_balanced_and_names_say_the_class():
    sources, labels = shape_cohort(40, side=16)
    assert labels.dtype == torch.long and labels.shape == (40,)
    assert torch.bincount(labels, minlength=10).tolist() == [4] * 10
    assert sources[17].name == f"{SHAPE_CLASSES[int(labels[17])]}-0017"


def test_scattered_reads_match_the_dense_volume():
    source = shape_source("torus", side=20, seed=4)
    volume = dense(source)
    coords = torch.randint(0, 20, (500, 3), generator=torch.Generator().manual_seed(0))
    # not bit-equal: torch's vectorised and scalar sigmoid differ in the last bits
    expected = volume[coords[:, 0], coords[:, 1], coords[:, 2]]
    torch.testing.assert_close(source.read(coords), expected, rtol=0, atol=1e-6)


def test_the_same_seed_gives_the_same_shape_at_every_side():
    coarse = F.avg_pool3d(dense(shape_source("cone", side=16, seed=2))[None, None], 2)[0, 0]
    fine = F.avg_pool3d(dense(shape_source("cone", side=32, seed=2))[None, None], 4)[0, 0]
    assert float((coarse - fine).abs().mean()) < 0.05


def test_class_means_differ():
    sources, labels = shape_cohort(50, side=16)
    volumes = torch.stack([dense(s) for s in sources])
    means = torch.stack([volumes[labels == k].mean(0) for k in range(10)])
    gaps = torch.cdist(means.flatten(1), means.flatten(1))
    off_diagonal = gaps[~torch.eye(10, dtype=torch.bool)]
    assert float(off_diagonal.min()) > 0.1 * float(means.flatten(1).norm(dim=1).mean())


def test_a_centroid_classifier_beats_chance_clearly():
    sources, labels = shape_cohort(150, side=32, seed=0)
    features = pooled_features(sources, pool=4)  # 8^3 per item
    train, test = slice(0, 100), slice(100, 150)
    centroids = torch.stack([features[train][labels[train] == k].mean(0) for k in range(10)])
    predicted = torch.cdist(features[test], centroids).argmin(1)
    accuracy = float((predicted == labels[test]).float().mean())
    assert accuracy > 0.5


def test_unknown_kind_and_bad_side_are_refused():
    with pytest.raises(ValueError, match=r"'chair'.*sphere, cube"):
        shape_source("chair")
    with pytest.raises(ValueError, match="side must be an integer >= 8"):
        shape_source("cube", side=4)
    with pytest.raises(ValueError, match="count"):
        shape_cohort(-1)
