"""Real-volume loaders give the documented shapes; phantoms are deterministic and of any size."""

import os

import numpy as np
import pytest
import torch

from cpic.data import (
    DataUnavailable,
    band_limited_noise,
    blobs,
    colin27,
    head_ct,
    mean_head,
    mni152,
    shepp_logan,
)


def load_or_skip(loader, *args):
    try:
        return loader(*args)
    except DataUnavailable as err:
        if os.environ.get("CI"):  # CI installs the data packages (make data): absence is a failure
            raise
        pytest.skip(str(err))


@pytest.mark.parametrize(
    ("loader", "args", "shape"),
    [
        (colin27, ("t1",), (301, 370, 316)),
        (colin27, ("t1_1mm",), (181, 217, 181)),
        (colin27, ("brain",), (181, 217, 181)),
        (colin27, ("aal",), (181, 217, 181)),
        (colin27, ("brodmann",), (181, 217, 181)),
        (head_ct, (), (108, 256, 256)),
        (mni152, ("t1",), (197, 233, 189)),
        (mni152, ("gm",), (197, 233, 189)),
        (mean_head, (), (176, 256, 256)),
    ],
)
def test_real_volumes_have_documented_shapes(loader, args, shape):
    src = load_or_skip(loader, *args)
    assert src.shape == shape
    centre = torch.tensor([[n // 2 for n in shape]])
    value = src.gather(centre, patch=3)
    assert value.shape == (1, 27) and torch.isfinite(value).all()


def test_head_ct_is_hounsfield_and_atlas_has_regions():
    ct = load_or_skip(head_ct)
    assert ct.spacing == pytest.approx((1.5, 0.9570312, 0.9570312))
    coords = torch.stack([torch.randint(0, n, (4000,)) for n in ct.shape], 1)
    hu = ct.read(coords, normalize=False)
    assert float(hu.min()) <= -900 and float(hu.max()) >= 1000  # air and bone
    aal = load_or_skip(colin27, "aal")
    labels = aal.read(torch.stack([torch.randint(0, n, (20000,)) for n in aal.shape], 1))
    assert 80 <= len(torch.unique(labels)) <= 117


def test_phantoms_any_size_and_deterministic():
    big = shepp_logan((2**15,) * 3)
    small = shepp_logan((64, 64, 64))
    # the same point of the unit cube has the same value at every resolution
    assert (
        big.read(torch.tensor([[16383, 16383, 16383]])).item()
        == small.read(torch.tensor([[31, 31, 31]])).item()
    )
    assert small.read(torch.tensor([[0, 0, 0]])).item() == 0.0  # outside the skull
    for make in (band_limited_noise, blobs):
        a = make((32, 48, 16), seed=3) if make is band_limited_noise else make((32, 48, 16), seed=3)
        b = make((32, 48, 16), seed=3)
        coords = torch.stack([torch.randint(0, n, (500,)) for n in (32, 48, 16)], 1)
        assert torch.equal(a.read(coords), b.read(coords))
        assert float(a.read(coords).std()) > 0
    noise = band_limited_noise((256, 256), cutoff=4, seed=0)
    line = noise.read(torch.stack([torch.full((256,), 100), torch.arange(256)], 1)).numpy()
    assert np.abs(np.diff(line)).max() < 0.2 * (line.max() - line.min())  # band-limited: smooth
