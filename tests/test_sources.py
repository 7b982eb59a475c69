"""Every reader against NumPy indexing on the same data; accounting; bad input."""

import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cpic.sources import SourceError, open_volume
from tests.helpers import OBLIQUE, oblique_nifti

SHAPE = (13, 17, 11)  # non-cubic, odd sizes


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(0)
    return rng.integers(-500, 3000, SHAPE).astype(np.int16)


def reference(array, centres, patch, border, channel_last=False):
    half = patch // 2
    mode = {"reflect": "reflect", "edge": "edge", "zero": "constant"}[border]
    pad = [(half, half)] * 3 + ([(0, 0)] if channel_last else [])
    padded = np.pad(array.astype(np.float32), pad, mode=mode)
    out = []
    for x, y, z in centres:
        block = padded[x : x + patch, y : y + patch, z : z + patch]
        out.append(np.moveaxis(block, -1, 0).reshape(block.shape[-1], -1) if channel_last else block.ravel())
    return np.stack(out)


def centres_with_borders():
    rng = np.random.default_rng(1)
    corners = [[0, 0, 0], [12, 16, 10], [0, 16, 5], [6, 8, 5]]
    return np.concatenate([corners, np.stack([rng.integers(0, n, 40) for n in SHAPE], 1)])


def write_all(tmp_path, array):
    """The same volume in every format; returns {format: location}."""
    import h5py
    import nibabel as nib
    import tensorstore as ts
    import tifffile

    out = {}
    np.save(tmp_path / "v.npy", array)
    out["npy"] = (str(tmp_path / "v.npy"), {})
    array.tofile(tmp_path / "c.raw")
    out["raw C"] = (str(tmp_path / "c.raw"), dict(shape=SHAPE, dtype="int16"))
    np.asfortranarray(array).T.tofile(tmp_path / "f.raw")  # column-major bytes
    out["raw F"] = (str(tmp_path / "f.raw"), dict(shape=SHAPE, dtype="int16", order="F"))
    img = nib.Nifti1Image(array, np.eye(4))
    nib.save(img, tmp_path / "v.nii")
    nib.save(img, tmp_path / "v.nii.gz")
    out["nii"] = (str(tmp_path / "v.nii"), {})
    out["nii.gz"] = (str(tmp_path / "v.nii.gz"), {})
    for driver in ("zarr", "zarr3"):
        path = tmp_path / f"{driver}.zarr"
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}}
        chunks = [5, 6, 4]
        if driver == "zarr":
            spec["metadata"] = {"shape": list(SHAPE), "chunks": chunks, "dtype": "<i2"}
        else:
            spec["metadata"] = {
                "shape": list(SHAPE),
                "data_type": "int16",
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
            }
        store = ts.open(spec, create=True, delete_existing=True).result()
        store.write(array).result()
        out[driver] = (str(path), {})
    with h5py.File(tmp_path / "v.h5", "w") as h5:
        h5.create_dataset("group/data", data=array, chunks=(5, 6, 4), compression="gzip")
    out["hdf5"] = (str(tmp_path / "v.h5") + ":/group/data", {})
    tifffile.imwrite(tmp_path / "v.tif", array)
    tifffile.imwrite(tmp_path / "z.tif", array, compression="zlib")
    out["tiff"] = (str(tmp_path / "v.tif"), {})
    out["tiff zlib"] = (str(tmp_path / "z.tif"), {})
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory, volume):
    pytest.importorskip("nibabel")
    pytest.importorskip("tensorstore")
    pytest.importorskip("h5py")
    pytest.importorskip("tifffile")
    return write_all(tmp_path_factory.mktemp("formats"), volume)


FORMATS = [
    "array",
    "tensor",
    "npy",
    "raw C",
    "raw F",
    "nii",
    "nii.gz",
    "zarr",
    "zarr3",
    "hdf5",
    "tiff",
    "tiff zlib",
]


def open_format(name, volume, files):
    if name == "array":
        return open_volume(volume)
    if name == "tensor":
        return open_volume(torch.from_numpy(volume))
    location, options = files[name]
    return open_volume(location, **options)


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize(("patch", "border"), [(1, "reflect"), (3, "reflect"), (5, "edge"), (3, "zero")])
def test_every_reader_matches_numpy(name, patch, border, volume, files):
    src = open_format(name, volume, files)
    assert src.shape == SHAPE
    centres = centres_with_borders()
    got = src.gather(torch.from_numpy(centres), patch=patch, border=border)
    assert got.dtype == torch.float32 and got.shape == (len(centres), patch**3)
    np.testing.assert_array_equal(got.numpy(), reference(volume, centres, patch, border))


@pytest.mark.parametrize("name", ["npy", "zarr3", "hdf5"])
def test_accounting_is_exact(name, volume, files):
    src = open_format(name, volume, files)
    centres = centres_with_borders()
    src.gather(torch.from_numpy(centres), patch=3, border="edge")
    src.gather(torch.from_numpy(centres[:5]), patch=3, border="edge")
    expected = set()
    for x, y, z in centres:
        for dx, dy, dz in np.ndindex(3, 3, 3):
            c = np.minimum(np.maximum([x + dx - 1, y + dy - 1, z + dz - 1], 0), np.array(SHAPE) - 1)
            expected.add(tuple(c))
    stats = src.stats
    assert stats.requests == 2
    assert stats.voxels_read == (len(centres) + 5) * 27
    assert stats.unique_voxels == len(expected)
    if name != "npy":  # chunks of 5 x 6 x 4
        chunks = {(x // 5, y // 6, z // 4) for x, y, z in expected}
        assert stats.chunks_touched == len(chunks)
        assert stats.bytes_read == len(chunks) * 5 * 6 * 4 * 2
    else:  # 4 KiB pages of the memory map, header included
        assert 0 < stats.chunks_touched <= len(expected)
    assert stats.seconds > 0
    stats.reset()
    assert stats.unique_voxels == 0 and stats.voxels_read == 0 and stats.chunks_touched == 0


@pytest.mark.parametrize("name", ["npy", "zarr3", "hdf5"])
@pytest.mark.parametrize("cache", [False, True])
def test_dense_reads_count_as_scattered_ones(name, cache, volume, files):
    """Planes read in one request, and past an eighth of the grid (where stats keep a flag per
    voxel instead of sorted ids), give the values and counts of the same voxels read as points."""
    dense, points = open_format(name, volume, files), open_format(name, volume, files)
    points.stats.grid_voxels = 0  # never switches to flags: the reference accounting
    if cache:
        dense.enable_cache(1 << 20)
        points.enable_cache(1 << 20)
        dense.gather(torch.tensor([[3, 4, 2]]), patch=3)  # some of the planes' voxels cached
        points.gather(torch.tensor([[3, 4, 2]]), patch=3)
    centres = torch.from_numpy(centres_with_borders())
    for start, stop in [(2, 5), (0, 1), (4, 8)]:  # overlapping slabs; the first passes 1/8 of the grid
        planes = dense.read_planes(start, stop)
        np.testing.assert_array_equal(planes.numpy(), volume[start:stop].astype(np.float32))
        grid = torch.cartesian_prod(torch.arange(start, stop), *[torch.arange(n) for n in SHAPE[1:]])
        points.read(grid)
        dense.gather(centres, patch=3, border="edge")
        points.gather(centres, patch=3, border="edge")
        assert dense.stats.unique_voxels == points.stats.unique_voxels
        np.testing.assert_array_equal(dense.stats.voxel_ids(), points.stats.voxel_ids())
    assert dense.stats._read_flags is not None and points.stats._read_flags is None
    for counter in ("voxels_read", "cache_hits", "chunks_touched", "bytes_read"):
        assert getattr(dense.stats, counter) == getattr(points.stats, counter), counter
    dense.stats.reset()
    assert dense.stats.unique_voxels == 0 and len(dense.stats.voxel_ids()) == 0
    assert dense.stats.grid_voxels == math.prod(SHAPE)


def test_multichannel_and_two_dimensional(tmp_path):
    rng = np.random.default_rng(3)
    four = rng.random((4, 9, 10, 7)).astype(np.float32)  # four MRI sequences, channel first
    src = open_volume(four, channel_axis=0)
    assert src.shape == (9, 10, 7) and src.channels == 4
    centres = np.array([[0, 0, 0], [4, 5, 3], [8, 9, 6]])
    got = src.gather(torch.from_numpy(centres), patch=3, border="edge")
    assert got.shape == (3, 4, 27)
    expected = reference(np.moveaxis(four, 0, -1), centres, 3, "edge", channel_last=True)
    np.testing.assert_allclose(got.numpy(), expected)
    last = open_volume(np.moveaxis(four, 0, -1).copy(), channel_axis=-1)
    np.testing.assert_allclose(last.gather(torch.from_numpy(centres), 3, "edge").numpy(), expected)
    np.save(tmp_path / "four.npy", four)  # memory-mapped, read in slices smaller than a request
    mapped = open_volume(tmp_path / "four.npy", channel_axis=0)
    mapped.MAP_BATCH = 7
    np.testing.assert_allclose(mapped.gather(torch.from_numpy(centres), 3, "edge").numpy(), expected)
    image = rng.random((30, 20)).astype(np.float32)
    np.save(tmp_path / "img.npy", image)
    src2 = open_volume(tmp_path / "img.npy")
    assert src2.ndim == 2
    got = src2.gather(torch.tensor([[0, 0], [29, 19]]), patch=3, border="reflect")
    padded = np.pad(image, 1, mode="reflect")
    np.testing.assert_allclose(
        got.numpy(), np.stack([padded[0:3, 0:3].ravel(), padded[29:32, 19:22].ravel()])
    )


def test_nifti_scaling_spacing_and_procedural(tmp_path):
    nib = pytest.importorskip("nibabel")
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.7, 2.0, 1.0])), tmp_path / "s.nii")
    raw = bytearray((tmp_path / "s.nii").read_bytes())
    raw[112:120] = np.array([2.0, -1.0], "<f4").tobytes()  # scl_slope, scl_inter of the NIfTI-1 header
    (tmp_path / "s.nii").write_bytes(bytes(raw))
    src = open_volume(tmp_path / "s.nii")
    assert src.spacing == pytest.approx((0.5, 0.7, 2.0))
    assert src.read(torch.tensor([[1, 2, 3]])).item() == 2.0 * 23 - 1.0
    huge = open_volume(lambda c: c.sum(1).float(), shape=(2**15,) * 3)
    assert huge.read(torch.tensor([[2**15 - 1, 0, 1]])).item() == 2**15
    assert huge.stats.unique_voxels == 1


def test_nifti_sources_carry_their_frame(tmp_path):
    nib = pytest.importorskip("nibabel")
    from cpic.sources import SpatialInfo

    src = open_volume(oblique_nifti(tmp_path / "o.nii.gz", np.zeros((4, 5, 6), np.float32)))
    info = src.spatial
    assert np.allclose(info.affine, OBLIQUE) and np.allclose(info.qform, np.diag([2.0, 2.0, 2.0, 1.0]))
    assert (info.sform_code, info.qform_code, info.xyz_units, info.t_units) == (4, 1, "mm", "msec")
    assert src.spacing == pytest.approx(np.linalg.norm(OBLIQUE[:3, :3], axis=0))
    assert SpatialInfo.from_dict(info.to_dict()) == info
    # a crop keeps the world position of every voxel
    crop = info.resampled((1, 1, 1), (1, 2, 3))
    assert np.allclose(crop.world((0, 0, 0)), info.world((1, 2, 3)))
    # voxel sizes asked for replace the file's, the origin and directions stay
    resized = open_volume(tmp_path / "o.nii.gz", spacing=(2.0, 2.0, 2.0)).spatial
    assert resized.spacing == pytest.approx((2.0, 2.0, 2.0))
    assert resized.world((0, 0, 0)) == info.world((0, 0, 0))
    # without a file's frame: the spacing from the origin; none beyond three axes
    assert open_volume(np.zeros((2, 2, 2)), spacing=(1.0, 2.0, 3.0)).spatial.affine[2] == (0, 0, 3, 0)
    assert open_volume(np.zeros((2, 2, 2, 2))).spatial is None
    with pytest.raises(ValueError, match="sform_code must be a NIfTI transform code 0..4, got 7"):
        SpatialInfo(np.eye(4), sform_code=7)
    with pytest.raises(ValueError, match="4x4 matrix, got shape"):
        SpatialInfo(np.eye(3))
    broken = np.eye(4)
    broken[0, 0] = np.nan
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), None)
    image.header.set_sform(broken, code=4)
    nib.save(image, tmp_path / "nan.nii")
    with pytest.raises(SourceError, match="nan.nii: the header's voxel-to-world frame is unusable"):
        open_volume(tmp_path / "nan.nii")
    with pytest.raises(ValueError, match="xyz_units must be one of"):
        SpatialInfo(np.eye(4), xyz_units="furlong")


def test_normalization(volume):
    src = open_volume(volume.astype(np.uint16) % 1000, normalize="range")
    assert (src.normalization.low, src.normalization.high) == (0.0, 65535.0)
    src = open_volume(volume.astype(np.float32), normalize="percentile")
    values = src.read(torch.from_numpy(np.argwhere(np.ones(SHAPE, bool))))
    assert -0.1 < float(values.min()) < 0.05 and 0.95 < float(values.max()) < 1.1
    src = open_volume(volume, normalize=(-500, 1500))
    assert src.read(torch.tensor([[0, 0, 0]])).item() == pytest.approx((volume[0, 0, 0] + 500) / 2000)
    assert src.stats.unique_voxels == 1  # sampling for the normalisation is not counted


def test_nonfinite_voxels():
    a = np.ones((4, 4, 4), np.float32)
    a[1, 1, 1] = np.nan
    a[2, 2, 2] = np.inf
    src = open_volume(a)
    with pytest.raises(SourceError, match="2 of the voxels read are NaN or Inf"):
        src.gather(torch.tensor([[1, 1, 1], [2, 2, 2]]))
    zero = open_volume(a, nonfinite="zero")
    assert zero.gather(torch.tensor([[1, 1, 1], [0, 0, 0]])).flatten().tolist() == [0.0, 1.0]
    assert zero.stats.nonfinite == 1


def test_bad_input(tmp_path, volume, files):
    with pytest.raises(SourceError, match="no such file"):
        open_volume(tmp_path / "missing.npy")
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(SourceError, match="unknown volume format"):
        open_volume(tmp_path / "notes.xyz")
    with pytest.raises(SourceError, match="is a directory"):
        open_volume(tmp_path, format="npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        open_volume(tmp_path / "empty.npy")
    good = tmp_path / "t.npy"
    np.save(good, volume)
    (tmp_path / "trunc.npy").write_bytes(good.read_bytes()[:-100])
    with pytest.raises(SourceError, match="holds only"):
        open_volume(tmp_path / "trunc.npy")
    (tmp_path / "magic.npy").write_bytes(b"NOTNUMPY" + good.read_bytes()[8:])
    with pytest.raises(SourceError, match="not a .npy file"):
        open_volume(tmp_path / "magic.npy")
    raw, options = files["raw C"]
    with pytest.raises(SourceError, match="needs"):
        open_volume(raw, shape=(13, 17, 12), dtype="int16")
    with pytest.raises(SourceError, match="needs"):
        open_volume(raw, shape=SHAPE, dtype="float32")
    with pytest.raises(SourceError, match="shape= and dtype="):
        open_volume(raw, format="raw")
    nii = tmp_path / "v.nii"
    nii_bytes = Path(files["nii"][0]).read_bytes()
    nii.write_bytes(nii_bytes[:-500])
    with pytest.raises(SourceError, match="only"):
        open_volume(nii)
    gz = tmp_path / "bad.nii.gz"
    gz.write_bytes(gzip.compress(nii_bytes)[:-2000])
    with pytest.raises(SourceError, match="truncated|not a readable"):
        open_volume(gz).read(torch.tensor([[0, 0, 0]]))
    with pytest.raises(SourceError, match="expected 3"):
        open_volume(np.zeros((5, 6), np.float32), ndim=3)
    with pytest.raises(SourceError, match="expected 2"):
        open_volume(volume, ndim=2)
    src = open_volume(volume)
    with pytest.raises(SourceError, match="outside the grid"):
        src.gather(torch.tensor([[13, 0, 0]]))
    with pytest.raises(SourceError, match="shape \\[K, 3\\]"):
        src.gather(torch.tensor([[1, 2]]))
    with pytest.raises(SourceError, match="patch must be an odd integer >= 1"):
        src.gather(torch.tensor([[1, 2, 3]]), patch=4)
    with pytest.raises(SourceError, match="border"):
        src.gather(torch.tensor([[1, 2, 3]]), patch=3, border="wrap")
    with pytest.raises(SourceError, match="no voxels"):
        open_volume(np.zeros((0, 4)))
    with pytest.raises(SourceError, match="numeric"):
        open_volume(np.array([["a"]], dtype=object))
    with pytest.raises(SourceError, match="has no dataset"):
        open_volume(files["hdf5"][0].split(":")[0] + ":/nothing")


def test_no_read_permission(tmp_path, volume):
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    path = tmp_path / "locked.npy"
    np.save(path, volume)
    path.chmod(0)
    with pytest.raises(SourceError, match="not readable"):
        open_volume(path)


def test_voxel_cache_serves_repeated_patches(volume, files):
    src = open_volume(files["zarr3"][0], cache_bytes=1 << 20)
    centres = torch.from_numpy(centres_with_borders())
    first = src.gather(centres, patch=3, border="edge")
    chunks, fetched = src.stats.chunks_touched, src.stats.bytes_read
    again = src.gather(centres, patch=3, border="edge")
    assert torch.equal(first, again)
    assert src.stats.cache_hits == src.stats.unique_voxels  # the second read hit the cache only
    assert (src.stats.chunks_touched, src.stats.bytes_read) == (chunks, fetched)
    np.testing.assert_array_equal(again.numpy(), reference(volume, centres.numpy(), 3, "edge"))
    tiny = open_volume(volume, cache_bytes=64)  # over budget: the oldest entries are dropped
    tiny.gather(centres, patch=3)
    assert tiny.cache.nbytes <= 64 or len(tiny.cache) == 0


def downsample(array, factor):
    """Means of ``factor^3`` blocks, the last block per axis padded by its edge (ceil shapes)."""
    pad = [(0, -n % factor) for n in array.shape]
    padded = np.pad(array.astype(np.float64), pad, mode="edge")
    m = [n // factor for n in padded.shape]
    return padded.reshape(m[0], factor, m[1], factor, m[2], factor).mean((1, 3, 5)).astype(np.float32)


def write_pyramids(root, levels):
    """The arrays ``levels`` (base first) as an OME-Zarr 0.4 and 0.5 image, a Zarr group of
    levels and an HDF5 group of levels; returns {kind: location}."""
    import json

    import h5py
    import tensorstore as ts

    def array(path, values, driver):
        meta = {"shape": list(values.shape)}
        meta.update({"dtype": "<f4"} if driver == "zarr" else {"data_type": "float32"})
        spec = {"driver": driver, "kvstore": {"driver": "file", "path": str(path)}, "metadata": meta}
        ts.open(spec, create=True, delete_existing=True).result().write(values).result()

    names = [f"s{k}" for k in range(len(levels))]
    multiscales = [{"version": "0.4", "axes": [], "datasets": [{"path": n} for n in names]}]
    ome = root / "ome.zarr"
    ome.mkdir()
    (ome / ".zgroup").write_text('{"zarr_format": 2}')
    (ome / ".zattrs").write_text(json.dumps({"multiscales": multiscales}))
    ome3 = root / "ome3.zarr"
    ome3.mkdir()
    attributes = {"ome": {"version": "0.5", "multiscales": multiscales}}
    group_v3 = {"zarr_format": 3, "node_type": "group", "attributes": attributes}
    (ome3 / "zarr.json").write_text(json.dumps(group_v3))
    group = root / "levels.zarr"
    group.mkdir()
    (group / ".zgroup").write_text('{"zarr_format": 2}')
    with h5py.File(root / "p.h5", "w") as h5:
        for k, (name, values) in enumerate(zip(names, levels)):
            array(ome / name, values, "zarr")
            array(ome3 / name, values, "zarr3")
            array(group / str(k), values, "zarr")
            h5.create_dataset(f"image/{k}", data=values)
    hdf5 = f"{root / 'p.h5'}:/image"
    return {"ome-zarr": str(ome), "ome-zarr 0.5": str(ome3), "zarr group": str(group), "hdf5 group": hdf5}


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, volume):
    pytest.importorskip("tensorstore")
    pytest.importorskip("h5py")
    levels = [volume.astype(np.float32), downsample(volume, 2), downsample(volume, 4)]
    return levels, write_pyramids(tmp_path_factory.mktemp("pyramids"), levels)


@pytest.mark.parametrize("kind", ["ome-zarr", "ome-zarr 0.5", "zarr group", "hdf5 group"])
def test_a_multi_level_volume_opens_as_its_base_with_its_levels(kind, pyramid, volume):
    levels, locations = pyramid
    src = open_volume(locations[kind])
    assert src.shape == SHAPE and src.name == locations[kind]
    centres = centres_with_borders()
    got = src.gather(torch.from_numpy(centres)).numpy()[:, 0]
    np.testing.assert_array_equal(got, volume[tuple(centres.T)])
    assert [lv.factors for lv in src.levels] == [(2, 2, 2), (4, 4, 4)]
    assert [lv.shape for lv in src.levels] == [(7, 9, 6), (4, 5, 3)]  # 13 x 17 x 11 / 2 and / 4, rounded up
    before = src.stats.voxels_read
    for level, expected in zip(src.levels, levels[1:]):
        np.testing.assert_array_equal(level.source.read_planes(0, level.shape[0]).numpy(), expected)
    # every voxel of a level counts in the base's statistics, not as a base voxel
    level_voxels = 7 * 9 * 6 + 4 * 5 * 3
    assert src.stats.level_voxels == level_voxels and src.stats.voxels_read - before == level_voxels
    assert src.stats.unique_voxels == len(centres) and src.stats.requests == 3
    assert src.stats.fraction(src.size) == pytest.approx((len(centres) + level_voxels) / src.size)
    assert src.describe()["levels"][1] == {"shape": [4, 5, 3], "factors": [4, 4, 4]}


def test_inspect_lists_a_volume_s_levels(pyramid):
    from cpic.cli.inspect import _volume_lines
    from cpic.train import describe

    lines = _volume_lines(describe(pyramid[1]["ome-zarr"]))
    assert "  levels         (7, 9, 6) (/2x2x2), (4, 5, 3) (/4x4x4)" in lines


@pytest.mark.parametrize("kind", ["zarr group", "hdf5 group"])
def test_a_level_that_does_not_divide_the_base_is_refused_naming_it(kind, tmp_path, volume):
    pytest.importorskip("tensorstore")
    pytest.importorskip("h5py")
    bad = np.zeros((8, 9, 6), np.float32)  # no integer divides 13 into 8, rounding either way
    location = write_pyramids(tmp_path, [volume.astype(np.float32), bad])[kind]
    with pytest.raises(SourceError) as err:
        open_volume(location)
    message = str(err.value)
    assert message.startswith(f"{location}/1: a level of shape (8, 9, 6)") and "(13, 17, 11)" in message
    assert "\n" not in message


def test_a_zarr_group_with_no_levels_is_refused(tmp_path):
    (tmp_path / "g.zarr").mkdir()
    (tmp_path / "g.zarr" / ".zgroup").write_text('{"zarr_format": 2}')
    with pytest.raises(SourceError, match="a Zarr group with no 'multiscales' attribute and no array nam"):
        open_volume(str(tmp_path / "g.zarr"))


def test_zarr_by_url(volume, files):
    location = "file://" + files["zarr3"][0]  # the same code path as gs://, s3:// and http(s)://
    src = open_volume(location)
    centres = torch.from_numpy(centres_with_borders())
    np.testing.assert_array_equal(
        src.gather(centres, patch=3).numpy(), reference(volume, centres.numpy(), 3, "reflect")
    )


# ---------------------------------------------------------------------- memory budget on load
def test_nii_gz_is_inflated_only_to_its_declared_size(tmp_path, volume):
    """Whatever follows the voxels the header declares is never decompressed; a stream that ends
    before them is refused as truncated; a declared size above the budget is refused first."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    raw = gzip.decompress((tmp_path / "v.nii.gz").read_bytes())
    (tmp_path / "tail.nii.gz").write_bytes(gzip.compress(raw + bytes(64 << 20), compresslevel=1))
    tail = open_volume(tmp_path / "tail.nii.gz")
    np.testing.assert_array_equal(tail.read_planes(0, SHAPE[0]).numpy(), volume)
    (tmp_path / "short.nii.gz").write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(SourceError, match=r"short.nii.gz: the compressed data is truncated"):
        open_volume(tmp_path / "short.nii.gz")
    needed = volume.nbytes
    over = rf"v.nii.gz: loading it needs {needed} B .*int16.*budget \({needed - 1} B"
    with pytest.raises(SourceError, match=over):
        open_volume(tmp_path / "v.nii.gz", memory_budget=needed - 1)
    assert open_volume(tmp_path / "v.nii.gz", memory_budget=needed).shape == SHAPE


def test_big_endian_nii_gz_is_read_in_native_order(tmp_path, volume):
    import nibabel as nib

    header = nib.Nifti1Image(volume, np.eye(4)).header.as_byteswapped(">")
    nib.save(nib.Nifti1Image(volume.astype(">i2"), np.eye(4), header=header), tmp_path / "be.nii.gz")
    assert gzip.decompress((tmp_path / "be.nii.gz").read_bytes())[:4] == (348).to_bytes(4, "big")
    values = open_volume(tmp_path / "be.nii.gz").read_planes(0, SHAPE[0]).numpy()
    np.testing.assert_array_equal(values, volume)


def test_contiguous_hdf5_is_read_in_blocks_within_the_budget(tmp_path, volume):
    import h5py

    with h5py.File(tmp_path / "c.h5", "w") as h5:
        h5.create_dataset("v", data=volume)  # contiguous: no chunks of its own
    whole = open_volume(tmp_path / "c.h5")
    small = open_volume(tmp_path / "c.h5", memory_budget=512)
    assert whole._chunks == SHAPE and np.prod(small._chunks) * 2 <= 512
    coords = torch.cartesian_prod(*[torch.arange(n) for n in SHAPE])
    np.testing.assert_array_equal(small.read(coords, normalize=False).numpy(), volume.reshape(-1))


def test_decoded_chunks_and_pages_must_fit_the_budget(tmp_path, volume):
    import h5py
    import tifffile

    with h5py.File(tmp_path / "z.h5", "w") as h5:
        h5.create_dataset("v", data=volume, chunks=(13, 17, 1), compression="gzip")
    with pytest.raises(SourceError, match=r"z.h5:v: loading it needs 442 B in memory \(one chunk"):
        open_volume(tmp_path / "z.h5", memory_budget=441)
    tifffile.imwrite(tmp_path / "z.tif", volume, compression="zlib")
    with pytest.raises(SourceError, match=r"z.tif: loading it needs 374 B in memory \(one slice"):
        open_volume(tmp_path / "z.tif", memory_budget=100)
    assert open_volume(tmp_path / "z.tif", memory_budget=374).shape == SHAPE


def test_load_limits_come_from_the_call_then_open_defaults_then_memory():
    from cpic.sources import LoadLimits, open_defaults
    from cpic.util.memory import available_memory

    have = available_memory()
    default = LoadLimits.resolve()
    assert not default.allow_external
    assert default.budget == (None if have is None else have // 2) or abs(default.budget - have / 2) < 2**26
    with open_defaults(allow_external=True, memory_budget=2**20):
        assert LoadLimits.resolve() == LoadLimits(True, 2**20)
        assert LoadLimits.resolve(allow_external=False, budget=5) == LoadLimits(False, 5)
    assert LoadLimits.resolve() == default
    with pytest.raises(SourceError, match=r"memory_budget \(bytes\) must be an integer >= 1"):
        LoadLimits.resolve(budget=0)
