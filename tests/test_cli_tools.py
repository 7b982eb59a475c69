"""cpic compress / reconstruct / demo / bench, driven as a user would, in subprocesses (tiny settings)."""

import contextlib
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cpic.cli.main import main
from cpic.data import blob_field, lesion_cohort
from tests.helpers import OBLIQUE, oblique_nifti


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "cpic.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def cli(*args):
    """The command in this process (fast, for bad inputs): returncode, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:  # argparse refuses a flag's value
            code = exit_.code
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def usage_error(out, *words):
    """Exit 2, one line on stderr naming ``words``, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def _blob_volume(path, side=16, scale=200):
    coords = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    np.save(path, (scale * blob_field(coords, (side,) * 3)).reshape(side, side, side).numpy())
    return path


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A 24^3 volume compressed by refinement at 3%; the source is kept (the figure compares with it)."""
    folder = tmp_path_factory.mktemp("compress")
    volume = _blob_volume(folder / "vol.npy", side=24)
    out = run("compress", volume, "-o", folder / "vol.cpic", "--read-budget", "3%", "--json")
    assert out.returncode == 0, out.stderr
    return folder, json.loads(out.stdout)


def test_compress_reports_held_out_figures_beside_the_lattice_baseline(compressed):
    folder, s = compressed
    assert s["grid"] == [24, 24, 24] and s["method"] == "refine"
    assert s["normalization"]["method"] == "percentile"
    assert s["voxels_read"] == round(0.03 * 24**3) and s["fraction_read"] == s["voxels_read"] / 24**3
    e, b = s["held_out"], s["baseline"]
    assert e["voxels"] > 0 and e["psnr_db"] > 10 and 0 < e["relative_error"] < 1
    assert 0 < e["foreground_voxels"] < e["voxels"] and e["foreground_psnr_db"] is not None
    assert 0 < b["voxels_read"] <= s["voxels_read"] and b["voxels"] == e["voxels"] and b["peak"] == e["peak"]
    assert sorted(p.name for p in folder.iterdir()) == ["vol.cpic", "vol.npy"]  # one file
    assert s["file_bytes"] == (folder / "vol.cpic").stat().st_size and s["volume_bytes"] == 24**3 * 4


def test_compress_peak_comes_from_the_data_not_the_dtype(tmp_path):
    """An int16 volume spanning 0..1000: the PSNR's peak is that spread, not 65535."""
    values = np.zeros((24, 24, 24), np.int16)
    values[6:18, 6:18, 6:18] = 1000
    np.save(tmp_path / "v.npy", values)
    done = cli("compress", tmp_path / "v.npy", "-o", tmp_path / "c", "--json", "--method", "lattice")
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["held_out"]["peak"] == pytest.approx(1000) and s["held_out"]["psnr_db"] < 40
    assert s["baseline"]["psnr_db"] == s["held_out"]["psnr_db"]  # the lattice is its own baseline


def test_reconstruct_volume_and_slice(compressed):
    folder, s = compressed
    out = run("reconstruct", folder / "vol.cpic", "-o", folder / "all.npy", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    decoded = np.load(folder / "all.npy")
    assert decoded.shape == (24, 24, 24) and np.isfinite(decoded).all() and r["voxels_decoded"] == 24**3
    assert r["scale"] == "original" and decoded.max() > 50  # back in the volume's units (0..~200)
    truth = np.load(folder / "vol.npy")
    read = np.abs(decoded - truth) < 1e-4
    assert read.sum() >= s["voxels_read"]  # every voxel read is decoded exactly
    out = run(
        "reconstruct", folder / "vol.cpic", "--slice", "z:5", "-o", folder / "s.npy",
        "--figure", folder / "s.png", "--normalized", "--quiet",
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert np.load(folder / "s.npy").shape == (24, 24) and (folder / "s.png").stat().st_size > 1000
    low, high = s["normalization"]["low"], s["normalization"]["high"]
    assert np.allclose(np.load(folder / "s.npy") * (high - low) + low, decoded[:, :, 5], atol=1e-3)
    nib = pytest.importorskip("nibabel")
    out = run("reconstruct", folder / "vol.cpic", "--region", "0:4,:,8:16", "-o", folder / "r.nii.gz")
    assert out.returncode == 0 and "voxels decoded" in out.stdout
    image = nib.load(folder / "r.nii.gz")
    assert np.allclose(image.get_fdata(), decoded[0:4, :, 8:16], atol=1e-3)
    assert image.affine[2, 3] == 8  # the region's origin in the volume's (here unit) voxel frame


def test_reconstruct_writes_zarr_slab_by_slab(compressed, tmp_path):
    ts = pytest.importorskip("tensorstore")
    folder, _ = compressed
    done = cli("reconstruct", folder / "vol.cpic", "-o", tmp_path / "d.zarr", "--chunk", 100, "--quiet")
    assert done.returncode == 0, done.stderr
    store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp_path / "d.zarr")}})
    from cpic import implicit

    expected = implicit.reconstruct(folder / "vol.cpic").numpy()
    assert np.allclose(store.result().read().result(), expected, atol=1e-5)
    again = cli("reconstruct", folder / "vol.cpic", "-o", tmp_path / "d.zarr", "--quiet")
    assert again.returncode == 0, again.stderr  # an earlier Zarr output is replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.zarr"]


def test_compress_and_reconstruct_in_python_give_what_the_commands_give(compressed, tmp_path):
    from cpic import implicit, open_volume

    folder, summary = compressed
    cut = ["--region", "0:8,:,3:9", "-o", folder / "cmd.npy", "--quiet"]
    assert run("reconstruct", folder / "vol.cpic", *cut).returncode == 0
    volume = implicit.load_compressed(folder / "vol.cpic")
    assert volume.grid == (24, 24, 24) and volume.normalization == summary["normalization"]
    block = implicit.reconstruct(volume, [(0, 8), (0, 24), (3, 9)])
    assert np.array_equal(np.load(folder / "cmd.npy"), block.numpy())
    result = implicit.compress(open_volume(str(folder / "vol.npy")), budget=0.03)
    assert result.voxels_read == summary["voxels_read"]
    assert result.error["psnr_db"] == pytest.approx(summary["held_out"]["psnr_db"], rel=1e-6)


def test_compress_implicit_keeps_its_model_in_the_one_file(tmp_path):
    volume = _blob_volume(tmp_path / "v.npy")
    done = cli("compress", volume, "-o", tmp_path / "c", "--method", "implicit", "--steps", 3, "--rank", 4,
               "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["method"] == "implicit" and s["baseline"]["voxels_read"] <= s["voxels_read"]
    assert cli("reconstruct", tmp_path / "c", "-o", tmp_path / "d.npy", "--quiet").returncode == 0
    assert np.load(tmp_path / "d.npy").shape == (16, 16, 16)


def test_reconstruct_bad_inputs(compressed, tmp_path):
    folder, _ = compressed
    model = folder / "vol.cpic"
    usage_error(run("reconstruct", tmp_path / "missing", "-o", tmp_path / "x.npy"), "missing")
    usage_error(cli("reconstruct", model, "--slice", "q5", "-o", tmp_path / "x.npy"), "--slice")
    usage_error(cli("reconstruct", model, "--slice", "2:99", "-o", tmp_path / "x.npy"), "outside")
    usage_error(cli("reconstruct", model, "--region", "0:4,:", "-o", tmp_path / "x.npy"), "--region")
    usage_error(cli("reconstruct", model, "-o", tmp_path / "x.png"), ".npy")
    usage_error(cli("reconstruct", model), "nothing to do")
    (tmp_path / "junk").write_text("{}")
    usage_error(cli("reconstruct", tmp_path / "junk", "-o", tmp_path / "x.npy"), "junk")
    # an altered value is refused: the file's sha256 no longer matches
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "altered").write_bytes(bytes(data))
    usage_error(cli("reconstruct", tmp_path / "altered", "-o", tmp_path / "x.npy"), "sha256")
    (tmp_path / "old.json").write_text("{}")  # the four files of an older compress
    usage_error(cli("reconstruct", tmp_path / "old", "-o", tmp_path / "x.npy"), "older")
    assert not (tmp_path / "x.npy").exists()


def test_compress_bad_inputs(tmp_path):
    usage_error(run("compress", tmp_path / "none.npy", "-o", tmp_path / "c"), "none.npy")
    np.save(tmp_path / "flat.npy", np.zeros((8, 8), np.float32))
    usage_error(cli("compress", tmp_path / "flat.npy", "-o", tmp_path / "c"), "grid axes")
    np.save(tmp_path / "v.npy", np.zeros((8, 8, 8), np.float32))
    bad = [(("--rank", 0), "--rank"), (("--read-budget", "0%"), "--read-budget"),
           (("--read-budget", "-3"), "--read-budget"), (("--method", "fft"), "--method")]  # fmt: skip
    for flags, word in bad:
        usage_error(cli("compress", tmp_path / "v.npy", "-o", tmp_path / "c", *flags), word)
    assert not (tmp_path / "c").exists()
    out = run("compress", "--help")
    assert out.returncode == 0 and "example:" in out.stdout and "--read-budget" in out.stdout


def test_demo_tiny_writes_figures_and_json(tmp_path):
    out = run(
        "demo", "--side", 16, "--count", 30, "--classes", 3, "--epochs", 2, "--scale-max", 64,
        "--out", tmp_path / "demo", "--json", "--threads", 1,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    assert s["threads"] == 1
    assert s["epochs"] == 2 and len(s["history"]) == 2 and 0 <= s["val_accuracy"] <= 1
    assert s["cohort"]["volumes"] == 30 and s["cohort"]["classes"][:2] == ["sphere", "cube"]
    assert 0 < s["fraction_read_mean"] <= s["fraction_read_max"] < 1
    assert [r["side"] for r in s["sampling_scale"]] == [32, 64]
    for name in ("slices", "learning_curve", "sampling_scale"):
        assert (tmp_path / "demo" / f"{name}.png").stat().st_size > 1000, name
    assert s["model_file"] == str(tmp_path / "demo" / "model.safetensors")
    assert s["model_epoch"] == s["best_epoch"]
    assert s["predict"].startswith("cpic predict ") and all(Path(v).is_file() for v in s["predict_volumes"])


def test_demo_keeps_its_model_and_the_printed_predict_line_works(tmp_path):
    out = run(
        "demo", "--count", 20, "--classes", 2, "--epochs", 1, "--no-scale", "--side", 16,
        "--output", "kept", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert any(line.startswith("epoch 1/1  train_loss ") for line in out.stderr.splitlines()), out.stderr
    assert "kept/model.safetensors (+ .json): epoch 1, best val_accuracy" in out.stdout
    (line,) = [line for line in out.stdout.splitlines() if line.strip().startswith("try it")]
    command = shlex.split(line.split("try it", 1)[1])
    assert command[:3] == ["cpic", "predict", "kept/model.safetensors"] and len(command) == 5
    predicted = run(*command[1:], "--json", cwd=tmp_path)  # "cpic" is python -m cpic.cli.main here
    assert predicted.returncode == 0, predicted.stderr
    document = json.loads(predicted.stdout)
    assert document["classes"] == ["sphere", "cube"]
    names = [Path(p["volume"]).stem for p in document["predictions"]]  # val_<i>_<class>: one per class
    assert sorted(name.split("_")[-1] for name in names) == ["cube", "sphere"]
    assert all(p["predicted"] in ("sphere", "cube") for p in document["predictions"])
    quiet = run(*["demo", "--count", 20, "--classes", 2, "--epochs", 1, "--no-scale", "--side", 16],
                "--output", "q", "--quiet", cwd=tmp_path)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stdout == "" and "train_loss" not in quiet.stderr


def test_reconstruct_writes_the_frame_of_the_source(tmp_path):
    """An oblique MNI-space NIfTI through compress and reconstruct: affine, qform, codes and
    units as in the source; a region's corner voxels at the source's world coordinates."""
    nib = pytest.importorskip("nibabel")
    coords = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    array = (100 * blob_field(coords, (8, 8, 8))).reshape(8, 8, 8).numpy()
    source = nib.load(oblique_nifti(tmp_path / "mni.nii.gz", array))
    done = cli("compress", tmp_path / "mni.nii.gz", "-o", tmp_path / "c", "--read-budget", "20%", "--quiet")
    assert done.returncode == 0, done.stderr
    for args, start in [((), (0, 0, 0)), (("--region", "2:6,1:8,3:5"), (2, 1, 3))]:
        done = cli("reconstruct", tmp_path / "c", *args, "-o", tmp_path / "d.nii.gz", "--quiet")
        assert done.returncode == 0, done.stderr
        out = nib.load(tmp_path / "d.nii.gz")
        header = out.header
        assert (int(header["sform_code"]), int(header["qform_code"])) == (4, 1)
        assert header.get_xyzt_units() == ("mm", "msec")
        last = np.array(out.shape) - 1
        for corner in [np.zeros(3), last, last * [1, 0, 1]]:
            world = nib.affines.apply_affine(out.affine, corner)
            assert np.allclose(world, nib.affines.apply_affine(source.affine, corner + start))
            in_q = nib.affines.apply_affine(header.get_qform(), corner)
            assert np.allclose(in_q, nib.affines.apply_affine(source.header.get_qform(), corner + start))
    assert np.allclose(out.affine[:3, :3], OBLIQUE[:3, :3])


def test_commands_that_draw_refuse_without_matplotlib_before_any_work(compressed, tmp_path, monkeypatch):
    folder, _ = compressed
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    needs = "figures need matplotlib: pip install 'cpic[plot]'"
    usage_error(cli("demo", "--out", tmp_path / "demo"), needs)
    out = tmp_path / "all.npy"
    usage_error(cli("reconstruct", folder / "vol.cpic", "-o", out, "--figure", tmp_path / "f.png"), needs)
    assert sorted(tmp_path.iterdir()) == []  # nothing trained, decoded or written
    assert cli("reconstruct", folder / "vol.cpic", "-o", out, "--quiet").returncode == 0  # no figure


def test_cohort_nifti_refused_without_nibabel_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)
    usage_error(
        cli("cohort", "shapes", tmp_path / "c", "--count", 2, "--side", 8, "--format", "nii.gz"),
        "NIfTI volumes need nibabel: pip install 'cpic[io]'",
    )
    assert not (tmp_path / "c").exists()


def test_threads_option_and_its_line(tmp_path, one_thread):
    usage_error(cli("cohort", "shapes", tmp_path / "c", "--threads", 0), "--threads")
    out = cli("cohort", "shapes", tmp_path / "c", "--count", 2, "--side", 8, "--threads", 1)
    assert out.returncode == 0 and out.stdout.splitlines()[-1].split() == ["threads", "1", "(--threads)"]


def test_bench_help_and_missing_scripts(tmp_path):
    out = run("bench", "--help")
    assert out.returncode == 0 and "--quick" in out.stdout and "example:" in out.stdout
    usage_error(cli("bench", "--quick", "--benchmarks", tmp_path), "source checkout")


def test_cohort_writes_volumes_and_a_manifest_that_train_reads(tmp_path):
    folder = tmp_path / "les"
    out = run("cohort", "lesion", folder, "--count", 4, "--side", 16, "--format", "nii.gz", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["volumes"] == 4 and summary["shape"] == [16, 16, 16]
    rows = (tmp_path / "les" / "manifest.csv").read_text().splitlines()
    assert rows[0] == "path,presence,count,volume,region"
    presence = [int(r.split(",")[1]) for r in rows[1:]]
    assert presence == [0, 1, 0, 1]  # every other volume has lesions
    with_lesions = rows[2].split(",")
    assert int(with_lesions[2]) >= 1 and float(with_lesions[3]) > 0 and with_lesions[4] != "none"
    import nibabel

    written = nibabel.load(tmp_path / "les" / with_lesions[0])
    assert written.shape == (16, 16, 16) and int(written.header["sform_code"]) == 4  # Colin27's MNI frame
    assert written.header.get_zooms() == pytest.approx((217 / 16,) * 3)  # the 217 mm head in 16 voxels
    cli("cohort", "lesion", tmp_path / "oed", "--count", 2, "--side", 16, "--oedema", "--quiet")
    swollen = np.load(tmp_path / "oed" / "colin27-0001.npy")
    expected, _ = lesion_cohort(2, side=16, oedema=True)
    assert np.array_equal(swollen, expected[1].read_planes(0, 16).numpy())
    assert not np.array_equal(swollen, lesion_cohort(2, side=16)[0][1].read_planes(0, 16).numpy())
    cli("cohort", "shapes", tmp_path / "sh", "--count", 3, "--side", 16, "--quiet")
    shapes = (tmp_path / "sh" / "manifest.csv").read_text().splitlines()
    assert shapes[0] == "path,label"
    assert shapes[1:] == ["sphere-0000.npy,sphere", "cube-0001.npy,cube", "cylinder-0002.npy,cylinder"]
    assert np.load(tmp_path / "sh" / "cube-0001.npy").max() > 0
    trained = run(
        "train", tmp_path / "les" / "manifest.csv", "-o", tmp_path / "m", "--target", "presence",
        "--epochs", 1, "--rank", 2, "--features", 4, "--patch", 3, "--sampled-max", "--val", 0, "--json",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    usage_error(cli("cohort", "lesion", tmp_path / "x", "--side", 4), "--side")
    usage_error(run("cohort", "blob", tmp_path / "x"), "blob")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_output_has_the_mode_the_umask_gives(compressed, tmp_path, umask, mode):
    """Models, checkpoints, CSV, figures, cohort volumes and decoded volumes: 0o666 & ~umask."""
    import cpic
    from cpic.cli import figures
    from cpic.data import shape_cohort, write_cohort
    from cpic.nn import Classification
    from cpic.train import save_checkpoint, save_model
    from cpic.util import write_text_atomic

    folder, _ = compressed
    old = os.umask(umask)
    try:
        save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(2)}, {"epoch": 1})
        save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(2)}, {"epoch": 2})  # replaces the pair
        save_model(cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=1, rank=2), tmp_path / "model")
        write_text_atomic(tmp_path / "table.csv", "a,b\n")
        sources, labels = shape_cohort(2, side=8)
        write_cohort(sources, {"label": labels}, tmp_path / "npy")
        outputs = ["npy/manifest.csv", "npy/sphere-0000.npy", "decoded.npy"]
        outputs += [f"ckpt.{e}" for e in ("safetensors", "json")] + ["model.safetensors", "model.json"]
        outputs += ["table.csv"]
        reconstruct = ["reconstruct", folder / "vol.cpic", "-o", tmp_path / "decoded.npy", "--quiet"]
        if importlib.util.find_spec("nibabel"):
            write_cohort(sources, {"label": labels}, tmp_path / "nii", format="nii.gz")
            assert cli("reconstruct", folder / "vol.cpic", "-o", tmp_path / "d.nii.gz").returncode == 0
            outputs += ["nii/manifest.csv", "nii/cube-0001.nii.gz", "d.nii.gz"]
        if importlib.util.find_spec("matplotlib"):
            figures.slice_figure(np.zeros((4, 4)), tmp_path / "slice.png", "zeros")
            reconstruct += ["--figure", tmp_path / "mid.png"]
            outputs += ["slice.png", "mid.png"]
        assert cli(*reconstruct).returncode == 0
    finally:
        os.umask(old)
    modes = {name: oct((tmp_path / name).stat().st_mode & 0o777) for name in outputs}
    assert modes == dict.fromkeys(outputs, oct(mode))
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind
