"""Layouts: round trips (hypothesis), Morton order, padding and the feature mode."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cpic.layout import PlainLayout, QTTLayout

grid_shapes = st.lists(st.integers(1, 70), min_size=1, max_size=4)


def all_coords(shape):
    return torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"), -1).reshape(
        -1, len(shape)
    )


@settings(max_examples=60, deadline=None)
@given(grid_shapes, st.booleans(), st.one_of(st.none(), st.integers(1, 5)), st.integers(0, 2**31))
def test_qtt_round_trip(shape, group, features, seed):
    layout = QTTLayout(shape, features=features, group=group)
    gen = torch.Generator().manual_seed(seed)
    coords = torch.stack([torch.randint(0, n, (200,), generator=gen) for n in shape], -1)
    feat = None if features is None else torch.randint(0, features, (200,), generator=gen)
    idx = layout.to_index(coords, feat)
    assert idx.shape == (200, len(layout.tensor_shape))
    assert ((idx >= 0) & (idx < torch.tensor(layout.tensor_shape))).all()
    assert torch.equal(layout.to_coords(idx), coords)
    assert layout.valid(idx).all()
    if features is not None:
        assert torch.equal(layout.feature_of(idx), feat)


@settings(max_examples=40, deadline=None)
@given(grid_shapes, st.booleans())
def test_qtt_is_a_bijection_onto_the_padded_grid(shape, group):
    layout = QTTLayout(shape, group=group)
    if math.prod(layout.padded_shape) > 5000:
        return
    assert math.prod(layout.tensor_shape) == math.prod(layout.padded_shape)
    # every tensor multi-index maps to a distinct padded coordinate and back
    idx = all_coords(layout.tensor_shape)
    coords = layout.to_coords(idx)
    assert len(torch.unique(coords, dim=0)) == len(idx)
    assert torch.equal(layout.to_index(coords), idx)
    valid = layout.valid(idx)
    assert int(valid.sum()) == math.prod(shape)
    inside = (coords < torch.tensor(shape)).all(-1)
    assert torch.equal(valid, inside)


def test_morton_order_coarse_to_fine():
    layout = QTTLayout((8, 8))
    # x = 0b101, y = 0b011 -> levels (x2, y2), (x1, y1), (x0, y0)
    assert layout.to_index(torch.tensor([5, 3])).tolist() == [1, 0, 0, 1, 1, 1]
    grouped = QTTLayout((8, 8), group=True)
    assert grouped.tensor_shape == (4, 4, 4)
    assert grouped.to_index(torch.tensor([5, 3])).tolist() == [2, 1, 3]
    # summing out the finest level pools 2x2 blocks: neighbours in a block differ only there
    a = grouped.to_index(torch.tensor([4, 2]))
    b = grouped.to_index(torch.tensor([5, 3]))
    assert torch.equal(a[:2], b[:2])


def test_non_cubic_levels_align_at_the_fine_end():
    layout = QTTLayout((4, 16), group=True)
    assert layout.tensor_shape == (2, 2, 4, 4)
    assert layout.padded_shape == (4, 16)
    padded = QTTLayout((5, 3, 1))
    assert padded.padded_shape == (8, 4, 1)
    assert abs(padded.padding_fraction - (1 - 15 / 32)) < 1e-12


def test_plain_layout():
    layout = PlainLayout((3, 4), features=2)
    coords = all_coords((3, 4))
    idx = layout.to_index(coords, torch.ones(12, dtype=torch.long))
    assert torch.equal(idx[:, :2], coords) and (idx[:, 2] == 1).all()
    assert torch.equal(layout.to_coords(idx), coords)
    assert layout.valid(idx).all() and layout.padding_fraction == 0


def test_single_voxel_and_bad_shapes():
    layout = QTTLayout((1, 1, 1))
    assert layout.tensor_shape == (1,)
    assert layout.to_coords(layout.to_index(torch.zeros(1, 3, dtype=torch.long))).tolist() == [[0, 0, 0]]
    for bad in ((), (0, 4), (-1,)):
        try:
            QTTLayout(bad)
        except ValueError as err:
            assert "grid_shape" in str(err)
        else:
            raise AssertionError(f"{bad} accepted")
