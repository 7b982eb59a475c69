"""cpic compress / reconstruct / demo / bench, driven as a user would, in subprocesses (tiny settings)."""

import contextlib
import io
import json
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
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def usage_error(out, *words):
    """Exit 2, one line on stderr naming ``words``, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    """A 16^3 volume compressed with 20 steps; the source is deleted afterwards."""
    folder = tmp_path_factory.mktemp("compress")
    coords = torch.stack(torch.meshgrid(*[torch.arange(16)] * 3, indexing="ij"), -1).reshape(-1, 3)
    volume = folder / "vol.npy"
    np.save(volume, (200 * blob_field(coords, (16, 16, 16))).reshape(16, 16, 16).numpy())
    out = run("compress", volume, "-o", folder / "vol.cpic", "--steps", 20, "--rank", 6, "--json")
    assert out.returncode == 0, out.stderr
    volume.unlink()  # reconstruct must not need it
    return folder, json.loads(out.stdout)


def test_compress_reports(compressed):
    folder, s = compressed
    assert s["grid"] == [16, 16, 16] and s["normalization"]["method"] == "range"
    assert 0 < s["fraction_read"] < 1 and s["voxels_read"] < s["voxels"]
    assert s["held_out_voxels"] > 0 and s["held_out_psnr_db"] > 5 and 0 < s["held_out_relative_error"] < 1
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"vol.cpic.{e}" for e in ("json", "latent.json", "latent.safetensors", "safetensors")]
    assert s["file_bytes"] == sum(s["files"].values()) and s["volume_bytes"] == 16**3 * 4


def test_reconstruct_volume_and_slice(compressed):
    folder, _ = compressed
    out = run("reconstruct", folder / "vol.cpic", "-o", folder / "all.npy", "--json")
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    decoded = np.load(folder / "all.npy")
    assert decoded.shape == (16, 16, 16) and np.isfinite(decoded).all() and s["voxels_decoded"] == 16**3
    assert s["scale"] == "original" and decoded.max() > 50  # back in the volume's units (0..~200)
    out = run(
        "reconstruct", folder / "vol.cpic.json", "--slice", "z:5", "-o", folder / "s.npy",
        "--figure", folder / "s.png", "--normalized", "--quiet",
    )  # fmt: skip
    assert out.returncode == 0 and out.stdout == "", out.stderr
    assert np.load(folder / "s.npy").shape == (16, 16) and (folder / "s.png").stat().st_size > 1000
    low, high = s["normalization"]["low"], s["normalization"]["high"]
    assert np.allclose(np.load(folder / "s.npy") * (high - low) + low, decoded[:, :, 5], atol=1e-3)
    nib = pytest.importorskip("nibabel")
    out = run("reconstruct", folder / "vol.cpic", "--region", "0:4,:,8:16", "-o", folder / "r.nii.gz")
    assert out.returncode == 0 and "voxels decoded" in out.stdout
    image = nib.load(folder / "r.nii.gz")
    assert np.allclose(image.get_fdata(), decoded[0:4, :, 8:16], atol=1e-3)
    assert image.affine[2, 3] == 8  # the region's origin in the volume's (here unit) voxel frame


def test_reconstruct_bad_inputs(compressed, tmp_path):
    folder, _ = compressed
    model = folder / "vol.cpic"
    usage_error(run("reconstruct", tmp_path / "missing", "-o", tmp_path / "x.npy"), "missing")
    usage_error(cli("reconstruct", model, "--slice", "q5", "-o", tmp_path / "x.npy"), "--slice")
    usage_error(cli("reconstruct", model, "--slice", "2:99", "-o", tmp_path / "x.npy"), "outside")
    usage_error(cli("reconstruct", model, "--region", "0:4,:", "-o", tmp_path / "x.npy"), "--region")
    usage_error(cli("reconstruct", model, "-o", tmp_path / "x.png"), ".npy")
    usage_error(cli("reconstruct", model), "nothing to do")
    (tmp_path / "junk.json").write_text("{}")
    usage_error(cli("reconstruct", tmp_path / "junk", "-o", tmp_path / "x.npy"), "junk")
    # a latent that belongs to another model is refused
    for suffix in ("safetensors", "json"):
        (tmp_path / f"m.{suffix}").write_bytes((folder / f"vol.cpic.{suffix}").read_bytes())
    latent = json.loads((folder / "vol.cpic.latent.json").read_text())
    latent["meta"]["model_sha256"] = "0" * 64
    (tmp_path / "m.latent.json").write_text(json.dumps(latent))
    (tmp_path / "m.latent.safetensors").write_bytes((folder / "vol.cpic.latent.safetensors").read_bytes())
    usage_error(cli("reconstruct", tmp_path / "m", "-o", tmp_path / "x.npy"), "another model")


def test_compress_bad_inputs(tmp_path):
    usage_error(run("compress", tmp_path / "none.npy", "-o", tmp_path / "c"), "none.npy")
    np.save(tmp_path / "flat.npy", np.zeros((8, 8), np.float32))
    usage_error(cli("compress", tmp_path / "flat.npy", "-o", tmp_path / "c"), "grid axes")
    np.save(tmp_path / "v.npy", np.zeros((8, 8, 8), np.float32))
    usage_error(cli("compress", tmp_path / "v.npy", "-o", tmp_path / "c", "--rank", 0), "--rank")
    out = run("compress", "--help")
    assert out.returncode == 0 and "example:" in out.stdout and "--normalize" in out.stdout


def test_demo_tiny_writes_figures_and_json(tmp_path):
    out = run(
        "demo", "--side", 16, "--count", 30, "--classes", 3, "--epochs", 2, "--scale-max", 64,
        "--out", tmp_path / "demo", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
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

    assert nibabel.load(tmp_path / "les" / with_lesions[0]).shape == (16, 16, 16)
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
