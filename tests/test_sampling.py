"""Cross over real and procedural volumes through layouts: reads are few and exact."""

import math

import numpy as np
import pytest
import torch

import cpic
from cpic.data import band_limited_noise
from cpic.layout import QTTLayout
from cpic.sampling import IntensityFunction
from cpic.sources import open_volume


def test_cross_of_a_volume_reads_few_voxels_and_matches_them():
    src = band_limited_noise((128, 128, 128), cutoff=3, waves=4, seed=0)  # 4 plane waves: QTT rank 8
    f = IntensityFunction([src], QTTLayout(src.shape, group=True))
    tt, info = cpic.cross(f, f.shape, rank=10, sweeps=3, seed=0, dtype=torch.float64)
    assert src.stats.unique_voxels == info.unique_evaluations  # one voxel per tensor entry
    assert src.stats.unique_voxels / src.size < 0.01
    assert float(info.error.max()) < 1e-4


def test_padding_and_channels():
    rng = np.random.default_rng(0)
    four = rng.random((10, 12, 9, 3)).astype(np.float32)
    src = open_volume(four, channel_axis=-1)
    layout = QTTLayout(src.shape, features=3)
    f = IntensityFunction([src], layout)
    idx = layout.to_index(torch.tensor([[9, 11, 8], [0, 0, 0]]), torch.tensor([2, 1]))[None]
    assert f(idx).tolist() == [[four[9, 11, 8, 2], four[0, 0, 0, 1]]]
    padded = layout.to_index(torch.tensor([[15, 15, 15]]), torch.tensor([0]))[None]  # beyond the grid
    assert f(padded).item() == four[9, 11, 8, 0]  # the nearest edge voxel
    assert math.prod(layout.padded_shape) > src.size
    with pytest.raises(ValueError, match="channels"):
        IntensityFunction([src], QTTLayout(src.shape, features=4))
