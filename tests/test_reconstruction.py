"""cpic.implicit's lattice methods: splines, adaptive refinement, honest figures, the one file."""

import math

import numpy as np
import pytest
import torch

import cpic
from cpic.data import band_limited_noise, shepp_logan
from cpic.implicit import (
    choose_reads,
    compress,
    decode_lattice,
    difference_kurtosis,
    error_figures,
    held_out_coords,
    interpolation_matrix,
    lattice_nodes,
    load_compressed,
    read_lattice,
    reconstruct,
    refine,
    save_compressed,
    upsample,
)
from cpic.train import CheckpointError


def _grid(side):
    return torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).double()


def test_natural_spline_is_exact_on_linear_data_and_converges_at_fourth_order():
    nodes = lattice_nodes(41, 4)
    w = interpolation_matrix(nodes, torch.arange(41), "cubic")
    line = 3 * nodes.double() - 2
    assert torch.allclose(w @ line, 3 * torch.arange(41).double() - 2)
    errors = []
    for stride in (8, 4):
        x = lattice_nodes(257, stride)
        smooth = lambda t: torch.sin(2 * math.pi * t.double() / 256)  # noqa: E731
        q = torch.arange(32, 225)  # away from the natural ends
        errors.append(float((interpolation_matrix(x, q) @ smooth(x) - smooth(q)).abs().max()))
    assert errors[0] / errors[1] > 10  # about 2^4 when the stride halves


def test_separable_upsampling_matches_the_matrix_on_each_axis():
    values = torch.rand(4, 5, 3, dtype=torch.float64)
    nodes = [lattice_nodes(10, 3), lattice_nodes(13, 3), lattice_nodes(7, 3)]
    out = upsample(values, nodes, [torch.arange(n) for n in (10, 13, 7)])
    w = [interpolation_matrix(x, torch.arange(n)) for x, n in zip(nodes, (10, 13, 7))]
    assert torch.allclose(out, torch.einsum("ai,bj,ck,ijk->abc", *w, values))
    assert torch.allclose(out[nodes[0]][:, nodes[1]][:, :, nodes[2]], values)  # exact at the nodes


def _head_in_air(side=40):
    """A textured ball (a head) in a flat background (air)."""
    p = _grid(side)
    inside = (p - side / 2).norm(dim=-1) < side / 3
    texture = 500 + 200 * torch.sin(p[..., 0] / 1.5) * torch.cos(p[..., 1] / 2) * torch.sin(p[..., 2] / 2.5)
    return (inside * texture).float()


def test_refine_reads_its_budget_exactly_and_beats_the_lattice_at_equal_reads():
    volume = _head_in_air()
    lattice = read_lattice(cpic.open_volume(volume), 1500)
    src = cpic.open_volume(volume)
    reads = refine(src, lattice.count)
    assert reads.count == src.stats.unique_voxels == lattice.count
    unread = torch.ones(volume.shape, dtype=torch.bool)
    unread[tuple(reads.coords.T)] = False
    unread[tuple(lattice.coords.T)] = False

    def db(estimate):
        return error_figures(estimate[unread], volume[unread].double())["psnr_db"]

    assert db(decode_lattice(reads)) > db(decode_lattice(lattice)) + 0.5  # measured: +1.1 dB


def test_decoding_keeps_the_voxels_read_and_any_box_is_a_piece_of_the_whole():
    volume = _head_in_air(24)
    reads = refine(cpic.open_volume(volume), 600)
    whole = decode_lattice(reads)
    c = reads.coords
    assert torch.equal(whole[c[:, 0], c[:, 1], c[:, 2]], volume[c[:, 0], c[:, 1], c[:, 2]])
    assert torch.allclose(decode_lattice(reads, [(3, 9), (0, 24), (20, 24)]), whole[3:9, :, 20:24])


def test_figures_take_their_peak_from_the_data_and_measure_only_voxels_never_read():
    truth = torch.cat([torch.zeros(500), torch.full((500,), 1000.0)])
    f = error_figures(truth + 10, truth)
    assert f["peak"] == pytest.approx(1000) and f["psnr_db"] == pytest.approx(40, abs=1e-6)
    assert f["foreground_voxels"] == 500 and 0 < f["threshold"] < 1000
    read = torch.arange(0, 4096, 2)
    c = held_out_coords((16, 16, 16), read, 1000, seed=3)
    ids = c[:, 0] * 256 + c[:, 1] * 16 + c[:, 2]
    assert len(c) == 1000 and not torch.isin(ids, read).any() and len(ids.unique()) == 1000


def test_compress_never_counts_its_measurement_as_reads_and_its_file_decodes_the_same(tmp_path):
    values = np.zeros((24, 24, 24), np.int16)
    values[6:18, 6:18, 6:18] = 1000
    src = cpic.open_volume(values)
    result = compress(src, budget=0.02)
    assert result.voxels_read == round(0.02 * 24**3) and result.error["peak"] == pytest.approx(1000)
    assert result.baseline["voxels_read"] <= result.voxels_read
    assert result.error["voxels"] == result.baseline["voxels"] > 0
    save_compressed(tmp_path / "v.cpic", result.volume)
    loaded = load_compressed(tmp_path / "v.cpic")
    assert loaded.spatial == src.spatial and loaded.reads.strides == result.volume.reads.strides
    assert torch.equal(reconstruct(loaded), decode_lattice(result.volume.reads))
    data = bytearray((tmp_path / "v.cpic").read_bytes())
    data[-2] ^= 1
    (tmp_path / "bad.cpic").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_compressed(tmp_path / "bad.cpic")


def test_compress_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="corners"):
        compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=5)
    with pytest.raises(ValueError, match="method"):
        compress(cpic.open_volume(torch.rand(8, 8, 8)), method="fft")
    with pytest.raises(ValueError, match="corners"):
        compress(cpic.open_volume(torch.rand(8, 8, 8)), method="auto", budget=7)
    with pytest.raises(ValueError, match="fraction"):
        compress(cpic.open_volume(torch.rand(8, 8, 8)), budget=1.5)


def test_the_pilot_kurtosis_is_gaussian_on_a_smooth_field_and_heavy_on_a_phantom():
    smooth = band_limited_noise((48,) * 3, cutoff=2.0, waves=16, seed=3).read_planes(0, 48)
    phantom = shepp_logan((48,) * 3).read_planes(0, 48)
    assert 2 < difference_kurtosis(smooth[::8, ::8, ::8]) < 4
    assert difference_kurtosis(phantom[::8, ::8, ::8]) > 8


@pytest.mark.parametrize(
    ("make", "chosen"),
    [
        (lambda: band_limited_noise((48,) * 3, cutoff=2.0, waves=16, seed=0), "lattice"),
        (lambda: band_limited_noise((40, 48, 56), cutoff=3.0, waves=24, seed=1), "lattice"),
        (lambda: shepp_logan((48,) * 3), "refine"),
        (lambda: cpic.open_volume(_head_in_air()), "refine"),
    ],
)
@pytest.mark.parametrize("budget", [0.005, 0.02])
def test_the_default_chooses_by_the_pilot_and_never_loses_to_the_lattice(make, chosen, budget):
    result = compress(make(), budget=budget)
    assert result.volume.method == chosen == result.volume.meta["choice"]["chosen"]
    assert result.voxels_read <= round(budget * math.prod(result.volume.grid))
    assert result.error["psnr_db"] >= result.baseline["psnr_db"] - 1e-9
    if chosen == "lattice":  # the pilot is part of the lattice: nothing read twice or wasted
        assert result.voxels_read == result.baseline["voxels_read"]


def test_the_choice_keeps_every_voxel_it_read_and_refuses_a_bad_budget():
    src = cpic.open_volume(_head_in_air(32))
    choice = choose_reads(src, 900)
    ids = choice.reads.coords @ torch.tensor([32 * 32, 32, 1])
    assert choice.method == "refine" and len(ids.unique()) == len(ids) == src.stats.unique_voxels <= 900
    volume = _head_in_air(32)
    assert torch.equal(choice.reads.values, volume[tuple(choice.reads.coords.T)])
    for budget in (8, 30, 100, 400, 2000, 10_000):  # never past the budget, whichever it picks
        src = cpic.open_volume(_head_in_air(24))
        assert choose_reads(src, budget).reads.count == src.stats.unique_voxels <= budget
    with pytest.raises(ValueError, match="budget"):
        choose_reads(src, 0.5)
