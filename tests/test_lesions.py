"""Lesion cohorts on real anatomy: labels agree with what was inserted; determinism."""

import math

import pytest
import torch

from cpic.data import DataUnavailable, lesion_cohort, lesion_source

try:
    from cpic.data.lesions import _aal_names, _anatomy

    _anatomy("colin27")
except DataUnavailable as err:  # pragma: no cover - CI installs mricron-data (make data)
    pytest.skip(f"Colin27 not installed: {err}", allow_module_level=True)


def _grid(side: int) -> torch.Tensor:
    axes = torch.meshgrid(*(torch.arange(side),) * 3, indexing="ij")
    return torch.stack(axes, -1).reshape(-1, 3)


def test_labels_balanced_and_consistent():
    sources, labels = lesion_cohort(8, side=32, seed=3, max_lesions=3)
    assert labels["presence"].tolist() == [0, 1] * 4
    for src, present, count, volume, region in zip(
        sources, labels["presence"], labels["count"], labels["volume"], labels["region"]
    ):
        lesions = src.function.lesions
        assert len(lesions) == int(count) and bool(lesions) == bool(present)
        assert (region == "none") == (not lesions)
        assert math.isclose(float(volume), src.function.lesion_voxels, rel_tol=1e-5)
        if lesions:
            assert 1 <= len(lesions) <= 3
            assert region in _aal_names().values()  # Colin27 lesions sit in an AAL region


def test_inserted_lesions_are_where_and_as_large_as_the_labels_say():
    sources, labels = lesion_cohort(4, side=64, seed=1, max_lesions=2)
    coords = _grid(64)
    for src, volume in zip(sources, labels["volume"].tolist()):
        f = src.function
        difference = f(coords) - f(coords, with_lesions=False)
        if not f.lesions:
            assert difference.abs().max() == 0
            continue
        # voxels where the lesion adds more than half its contrast (bias field within +-50%)
        inside = difference > 0.5 * min(lesion.contrast for lesion in f.lesions) * 0.9
        assert 0.6 * volume < int(inside.sum()) < 1.6 * volume
        for lesion in f.lesions:  # each lesion's centre, mapped to the grid, is bright
            p = f.to_anatomy(coords)
            nearest = ((p - torch.tensor(lesion.centre)) ** 2).sum(1).argmin()
            assert difference[nearest] > 0.6 * lesion.contrast


def test_oedema_darkens_a_halo_around_each_lesion_and_nothing_else():
    from cpic.data.lesions import OEDEMA_CONTRAST, OEDEMA_SCALE

    plain, labels = lesion_cohort(4, side=48, seed=2)
    swollen, same_labels = lesion_cohort(4, side=48, seed=2, oedema=True)
    assert labels["volume"].tolist() == same_labels["volume"].tolist()
    assert labels["region"] == same_labels["region"]
    coords = _grid(48)
    for a, b in zip(plain, swollen):
        assert a.function.lesions == b.function.lesions
        difference = b.read(coords) - a.read(coords)
        if not a.function.lesions:
            assert difference.abs().max() == 0
            continue
        p = a.function.to_anatomy(coords)
        # each voxel's distance from its nearest lesion, in units of that lesion's radii
        centres = torch.tensor([lesion.centre for lesion in a.function.lesions])
        radii = torch.tensor([lesion.radii for lesion in a.function.lesions])
        r = ((p[:, None] - centres) / radii).norm(dim=2).min(1).values
        gain = 1.5  # the bias field scales the halo by up to about +-50%
        assert difference[r > 2 * OEDEMA_SCALE].abs().max() < 1e-3  # nothing far away
        shell = (r > 1.4) & (r < OEDEMA_SCALE - 0.6)
        assert shell.any()
        assert (difference[shell] < OEDEMA_CONTRAST / (2 * gain)).all()  # darker around the lesion
        assert (difference[shell] > OEDEMA_CONTRAST * gain).all()
        assert difference[r < 0.5].abs().max() < 0.02  # the lesion keeps its contrast


def test_same_seed_same_volume_in_any_read_order_and_count():
    a, _ = lesion_cohort(4, side=48, seed=5)
    b, _ = lesion_cohort(6, side=48, seed=5)
    coords = torch.randint(48, (5000, 3))
    whole = a[3].read(coords)
    in_parts = torch.cat([b[3].read(part) for part in coords.split(777)])
    assert torch.equal(whole, in_parts)
    assert not torch.equal(whole, a[1].read(coords))
    c, _ = lesion_cohort(4, side=48, seed=6)
    assert not torch.equal(whole, c[3].read(coords))


def test_noise_and_bias_vary_between_volumes_but_anatomy_stays():
    x = lesion_source(side=32, seed=1, lesions=0)
    y = lesion_source(side=32, seed=2, lesions=0)
    coords = _grid(32)
    vx, vy = x.read(coords), y.read(coords)
    assert (vx - vy).abs().mean() > 0.01  # deformation, bias and noise differ
    assert torch.corrcoef(torch.stack([vx, vy]))[0, 1] > 0.8  # the same head


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="anatomy"):
        lesion_source("liver", side=32)
    with pytest.raises(ValueError, match="side"):
        lesion_cohort(2, side=4)
    with pytest.raises(ValueError, match="lesions"):
        lesion_source(side=32, lesions=-1)
    for radius in ((3.0, 1.0), (0.0, 2.0), 2.0, ("a", "b"), (1.0, math.inf)):
        with pytest.raises(ValueError, match="radius"):
            lesion_cohort(2, side=32, radius=radius)


def test_radius_sets_the_lesion_sizes():
    """Needle lesions: radii in the range asked for, the same counts and first centres (the
    default range gives the default cohort)."""
    default, labels = lesion_cohort(6, side=32, seed=2)
    same, same_labels = lesion_cohort(6, side=32, seed=2, radius=(6.0, 12.0))
    small, small_labels = lesion_cohort(6, side=32, seed=2, radius=(1.0, 2.0))
    assert torch.equal(labels["volume"], same_labels["volume"])
    assert torch.equal(labels["count"], small_labels["count"])
    for big, needle in zip(default, small):  # later centres may differ: the overlap test needs the radii
        first = [le.centre for le in big.function.lesions[:1]]
        assert first == [le.centre for le in needle.function.lesions[:1]]
        assert all(1.0 <= r <= 2.0 for le in needle.function.lesions for r in le.radii)
    present = labels["presence"].bool()
    assert (small_labels["volume"][present] < labels["volume"][present] / 20).all()


def test_write_cohort_round_trips_through_a_manifest(tmp_path):
    import numpy as np

    from cpic.data import write_cohort
    from cpic.train import VolumeDataset

    sources, labels = lesion_cohort(2, side=16, seed=2)
    manifest = write_cohort(sources, {"presence": labels["presence"], "region": labels["region"]}, tmp_path)
    data = VolumeDataset.from_csv(manifest, target="presence")
    assert data.targets.tolist() == labels["presence"].tolist()
    coords = torch.randint(16, (300, 3))
    assert torch.allclose(data.source(1).read(coords), sources[1].read(coords))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["colin27-0000.npy", "colin27-0001.npy", "manifest.csv"]
    assert np.load(tmp_path / "colin27-0001.npy").shape == (16, 16, 16)
    with pytest.raises(ValueError, match="values for 2 sources"):
        write_cohort(sources, {"presence": [1]}, tmp_path / "bad")


def test_nifti_cohort_volumes_sit_where_the_anatomy_does(tmp_path, monkeypatch):
    """A 16^3 resampling of the 181 x 217 x 181 mm Colin27 head written as NIfTI: voxels of
    217 / 16 mm, the anatomy's MNI frame, the grid centred on the head and its outer faces on
    the head's along the longest axis (as nibabel reads the Colin27 file)."""
    nib = pytest.importorskip("nibabel")
    import numpy as np

    from cpic.data import lesions, write_cohort
    from cpic.data.real import MRICRON

    colin = nib.load(MRICRON / "ch2.nii.gz")
    sources, labels = lesion_cohort(2, side=16)
    write_cohort(sources, {"presence": labels["presence"]}, tmp_path, format="nii.gz")
    image = nib.load(tmp_path / "colin27-0001.nii.gz")
    assert image.header.get_zooms() == pytest.approx((217 / 16,) * 3)
    assert int(image.header["sform_code"]) == int(colin.header["sform_code"]) == 4
    assert np.allclose(image.affine[:3, :3], np.diag([217 / 16] * 3))

    def world(img, voxels):
        return nib.affines.apply_affine(img.affine, np.asarray(voxels, dtype=float))

    # outer corners of the voxel grids (half a voxel beyond the first and last centres)
    low, high = world(image, [-0.5] * 3), world(image, [15.5] * 3)
    head_low, head_high = world(colin, [-0.5] * 3), world(colin, np.array(colin.shape) - 0.5)
    assert np.allclose((low + high) / 2, (head_low + head_high) / 2)  # centred on the head
    assert np.allclose([low[1], high[1]], [head_low[1], head_high[1]])  # y: 217 mm, the longest axis
    assert np.allclose(high - low, [217.0] * 3)
    # where the volume's function samples the anatomy at each corner voxel (deformation off)
    monkeypatch.setattr(lesions, "DEFORM_VOXELS", 0.0)
    corners = torch.tensor([[0, 0, 0], [15, 15, 15], [0, 15, 0], [15, 0, 7]])
    sampled = sources[1].function.to_anatomy(corners).double().numpy()
    assert np.allclose(world(image, corners.numpy()), world(colin, sampled), atol=1e-4)
