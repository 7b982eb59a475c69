"""The bad-input suite: every input path (volume files, manifests, model files, command flags)
against a corpus of bad files generated here (tests/bad_corpus.py) and hypothesis.

Each bad input must give exactly one line on stderr naming it, a non-zero exit code, no
traceback or warning, no hang, and no output file (not even a temporary one). Commands run
in-process (``main``) so that the hundreds of cases take seconds; a few run as real
subprocesses to check what a user sees, library log messages included. The hypothesis tests
are derandomized (the same cases every run) so that CI is stable; docs/reliability.md records a
longer randomized run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpic.cli.main import main
from cpic.sources import SourceError, open_volume
from cpic.train import VolumeDataset
from tests import bad_corpus

TINY = ["--rank", "2", "--features", "2", "--patch", "3", "--epochs", "1", "--batch-size", "4", "--quiet"]
TINY += ["--sampler", "cross"]  # the corpus of broken model files edits the cross's settings
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}


@pytest.fixture(autouse=True)
def no_hang():
    """Fail (instead of hanging CI) when a case takes over 60 s."""

    def expired(*_):
        raise TimeoutError("a bad input made the command hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def cli(capsys, *args) -> SimpleNamespace:
    """Run ``cpic *args`` in-process: exit code, stdout, stderr and any Python warnings."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    out, err = capsys.readouterr()
    return SimpleNamespace(code=code, out=out, err=err, warnings=[str(w.message) for w in caught])


def refused(result, needle: str, out_dir: Path | None = None) -> None:
    """One line on stderr naming ``needle``, a non-zero exit, no traceback, warning or output."""
    lines = result.err.strip().splitlines()
    assert result.code in (1, 2), (result.code, result.err)
    assert len(lines) == 1 and lines[0].startswith("cpic"), result.err
    assert "Traceback" not in result.err and not result.warnings, (result.err, result.warnings)
    assert needle.lower() in result.err.lower(), (needle, result.err)
    if out_dir is not None:
        assert not any(out_dir.iterdir()), sorted(p.name for p in out_dir.iterdir())


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Good 8^3 volumes, a manifest, a trained model file, and the corpus of bad inputs."""
    root = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    names = []
    for i in range(6):
        volume = rng.normal(0, 1, bad_corpus.GRID).astype(np.float32) + 3 * (i % 2)
        np.save(root / f"v{i}.npy", volume)
        names.append(f"v{i}.npy")
    rows = ["path,label"] + [f"{n},{'ab'[i % 2]}" for i, n in enumerate(names)]
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    code = main(["train", str(root / "cohort.csv"), "-o", str(root / "model"), "--val", "0", *TINY])
    assert code == 0
    return SimpleNamespace(
        root=root,
        names=names,
        model=root / "model",
        broken=bad_corpus.broken_volumes(root / "broken"),
        odd=bad_corpus.odd_volumes(root / "odd"),
        manifests=bad_corpus.manifests(root, names),
        models=bad_corpus.broken_models(root / "models", root / "model"),
        hostile=bad_corpus.hostile_volumes(root / "hostile"),
    )


@pytest.fixture
def out(tmp_path) -> Path:
    """An empty folder for a command's outputs: it must stay empty when the command fails."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def manifest_with(world, volume, tmp_path) -> Path:
    """A manifest of good volumes plus ``volume`` (absolute path) in its last row."""
    path = tmp_path / "with_bad.csv"
    rows = ["path,label"] + [f"{world.root / n},{'ab'[i % 2]}" for i, n in enumerate(world.names)]
    path.write_text("\n".join(rows + [f"{volume},b"]) + "\n")
    return path


def _needle(path) -> str:
    return Path(str(path).split(":/")[0]).name


# ---------------------------------------------------------------------- volume files
def pytest_generate_tests(metafunc):
    if "broken_case" in metafunc.fixturenames:
        names = [
            "npy truncated", "npy wrong magic", "npy 0 bytes", "npy header only", "npy garbage header",
            "npy header shape too big", "npy header shape too small", "npy absurd declared dims",
            "npy negative dims", "npy zero-size dims", "npy pickle payload", "npy strings", "npy complex",
            "npy beyond float32", "a directory", "a FIFO (would block)", "missing file", "unknown suffix",
            "nii truncated", "nii header cut", "nii wrong magic", "nii header shape too big",
            "nii absurd dims", "nii negative dims", "nii dim[0] = 9", "nii unknown datatype",
            "nii data offset beyond the file", "nii 0 bytes", "nii.gz truncated", "nii.gz not gzip",
            "nii.gz garbage inside", "h5 garbage", "h5 truncated", "h5 two datasets, none named",
            "h5 dataset missing", "h5 strings", "h5 compound records", "h5 scalar", "h5 empty dataset",
            "h5 level not dividing the base",
            "tif garbage", "tif truncated", "tif 0 bytes", "zarr bad metadata", "zarr empty folder",
            "zarr chunk of the wrong size", "zarr level not dividing the base",
        ]  # fmt: skip
        metafunc.parametrize("broken_case", names)


def test_corpus_lists_every_case(world):
    assert len(world.broken) == 47 and len(world.odd) == 6
    assert len(world.manifests) == len(MANIFEST_CASES) == 18 and len(world.models) == 24
    assert len(world.hostile) == len(HOSTILE_CASES) == 13


def test_broken_volume_is_refused_by_every_command(world, broken_case, capsys, out, tmp_path):
    path = world.broken[broken_case]
    needle = _needle(path)
    refused(cli(capsys, "inspect", path), needle)
    refused(cli(capsys, "predict", world.model, path, "-o", out / "p.csv"), needle, out)
    refused(cli(capsys, "compress", path, "-o", out / "c", "--read-budget", "50%", "--quiet"), needle, out)
    manifest = manifest_with(world, path, tmp_path)
    refused(cli(capsys, "train", manifest, "-o", out / "m", "--val", "0", *TINY), needle, out)
    refused(cli(capsys, "evaluate", world.model, manifest), needle)


@pytest.mark.parametrize(
    "case, needle",
    [("NaN voxels", "NaN"), ("Inf voxels", "NaN or Inf"), ("nii.gz NaN voxels", "NaN"),
     ("1 voxel", "(1, 1, 1)"), ("2-D", "(8, 8)"), ("5-D", "(2, 2, 8, 8, 8)")],
)  # fmt: skip
def test_odd_volumes_are_described_but_not_used(world, case, needle, capsys, out, tmp_path):
    path = world.odd[case]
    described = cli(capsys, "inspect", path, "--json")
    assert described.code == 0 and not described.err, described.err
    info = json.loads(described.out)
    if "NaN" in needle:
        assert info["sample"]["nonfinite"] > 0
    refused(cli(capsys, "predict", world.model, path, "-o", out / "p.csv"), needle, out)
    manifest = manifest_with(world, path, tmp_path)
    refused(cli(capsys, "train", manifest, "-o", out / "m", "--val", "0", *TINY), needle, out)
    refused(cli(capsys, "evaluate", world.model, manifest), needle)
    compress_needle = needle if "NaN" in needle else ("grid axes" if case in ("2-D", "5-D") else "too thin")
    compressed = cli(capsys, "compress", path, "-o", out / "c", "--read-budget", "50%", "--quiet")
    refused(compressed, compress_needle.split()[0], out)


# ---------------------------------------------------------------------- files not named, memory
HOSTILE_CASES = [
    "h5 external storage in /etc/passwd", "h5 external storage in another file",
    "h5 external storage in a FIFO", "h5 external link", "h5 soft link through an external link",
    "h5 virtual dataset", "zarr chunk symlinked out of the store", "zarr chunk that is a FIFO",
    "a device file (/dev/zero) as a volume", "nii.gz bomb: 4 GiB of zeros in 4 MB",
    "nii.gz header declaring 32767^3 voxels", "h5 one 1 GiB compressed chunk", "zarr one 32 GiB chunk",
]  # fmt: skip
BUDGET = ["--memory-budget", "512M"]


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_volume_beyond_its_file_or_budget_is_refused_by_every_command(world, case, capsys, out, tmp_path):
    path, needle = world.hostile[case]
    refused(cli(capsys, "inspect", path), needle)  # inspect's own budget: 256M
    refused(cli(capsys, "predict", world.model, path, "-o", out / "p.csv", *BUDGET), needle, out)
    compress = ["compress", path, "-o", out / "c", "--method", "implicit", "--steps", 2, "--rank", 2,
                "--quiet", *BUDGET]  # fmt: skip
    refused(cli(capsys, *compress), needle, out)
    manifest = manifest_with(world, path, tmp_path)
    refused(cli(capsys, "train", manifest, "-o", out / "m", "--val", "0", *TINY, *BUDGET), needle, out)
    refused(cli(capsys, "evaluate", world.model, manifest, *BUDGET), needle)


@pytest.mark.parametrize(
    "case, expected",
    [("h5 external storage in another file", "good"), ("h5 external link", "good"),
     ("h5 soft link through an external link", "good"), ("h5 virtual dataset", "good"),
     ("zarr chunk symlinked out of the store", "chunks")],
)  # fmt: skip
def test_files_a_volume_refers_to_are_read_when_allowed(world, case, expected, capsys):
    path, _ = world.hostile[case]
    described = cli(capsys, "inspect", path, "--allow-external", "--json")
    assert described.code == 0 and not described.err, described.err
    values = open_volume(path, allow_external=True).read_planes(0, bad_corpus.GRID[0]).numpy()
    if expected == "good":  # the data the links and mappings point at
        good = np.random.default_rng(2).normal(size=bad_corpus.GRID).astype(np.float32)
        np.testing.assert_array_equal(values, good)
    else:  # chunk (i, j, k) holds i + j + k; chunk (1, 1, 1) is the file outside, holding 7
        assert values[4:, 4:, 4:].min() == values[4:, 4:, 4:].max() == 7 and values[:4, :4, 4:].max() == 1


def test_allowed_external_files_must_still_be_regular_files(world):
    for case, needle in [("h5 external storage in a FIFO", "FIFO"), ("zarr chunk that is a FIFO", "FIFO")]:
        with pytest.raises(SourceError, match=needle):
            open_volume(world.hostile[case][0], allow_external=True)


def test_model_files_that_are_not_regular_files_are_refused(world, capsys, out, tmp_path):
    st, js = world.model.with_suffix(".safetensors"), world.model.with_suffix(".json")
    cases = {}
    for name, fifo_suffix in [("fifo_json", ".json"), ("fifo_tensors", ".safetensors")]:
        for suffix, source in [(".json", js), (".safetensors", st)]:
            if suffix == fifo_suffix:
                os.mkfifo(tmp_path / f"{name}{suffix}")
            else:
                shutil.copy(source, tmp_path / f"{name}{suffix}")
        cases[tmp_path / name] = "FIFO"
    shutil.copy(st, tmp_path / "zero.safetensors")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    cases[tmp_path / "zero"] = "character device"
    shutil.copy(js, tmp_path / "zero_st.json")
    (tmp_path / "zero_st.safetensors").symlink_to("/dev/zero")
    cases[tmp_path / "zero_st"] = "character device"
    volume = world.root / world.names[0]
    for base, needle in cases.items():
        refused(cli(capsys, "predict", base, volume, "-o", out / "p.csv"), needle, out)
        refused(cli(capsys, "inspect", f"{base}.json"), needle)
        refused(cli(capsys, "evaluate", base, world.root / "cohort.csv"), needle)


def _volume_and_model_files(world, root: Path, volume: np.ndarray) -> list[Path]:
    """``volume`` as ``.npy``, ``.nii`` and ``.nii.gz`` in ``root``, and a copy of the model's
    tensor file (with its ``.json``): the files cpic reads through its own guarded readers."""
    import nibabel as nib

    np.save(root / "v.npy", volume)
    for suffix in (".nii", ".nii.gz"):
        nib.save(nib.Nifti1Image(volume, np.eye(4)), root / f"v{suffix}")
    for suffix in (".safetensors", ".json"):
        shutil.copy(world.model.with_suffix(suffix), root / f"model{suffix}")
    return [root / "v.npy", root / "v.nii", root / "v.nii.gz", root / "model.safetensors"]


def _load(path: Path):
    from cpic.train.checkpoint import load_checkpoint

    return load_checkpoint(path, device="cpu")[0] if path.suffix == ".safetensors" else open_volume(path)


def test_a_file_swapped_for_a_fifo_after_its_check_is_refused_not_waited_on(world, tmp_path, monkeypatch):
    """The guard decides on the descriptor it opened: a name that is a regular file when it is
    looked at and a FIFO by the time it is opened is refused at once (no reader opens it again)."""
    from cpic.train.checkpoint import CheckpointError

    files = _volume_and_model_files(world, tmp_path, np.zeros(bad_corpus.GRID, np.float32))
    real_open, swapped = os.open, []

    def swap_then_open(path, flags, *args, **kwargs):
        if Path(path) in files and Path(path) not in swapped:
            Path(path).unlink()
            os.mkfifo(path)
            swapped.append(Path(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", swap_then_open)
    for path in files:
        with pytest.raises((SourceError, CheckpointError), match=r"FIFO \(named pipe\), not a regular file"):
            _load(path)
    assert swapped == files


def test_the_file_read_is_the_file_the_guard_opened(world, tmp_path, monkeypatch):
    """A name renamed over after the guard opened it: the reader reads the opened file, not
    the newcomer."""
    volume = np.arange(512, dtype=np.float32).reshape(bad_corpus.GRID)
    files = _volume_and_model_files(world, tmp_path, volume)
    expected = {path: _load(path) for path in files}
    (tmp_path / "other").mkdir()
    others = _volume_and_model_files(world, tmp_path / "other", -volume)
    (tmp_path / "other" / "model.safetensors").write_bytes(b"not the checked file")
    real_open = os.open

    def open_then_replace(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if Path(path) in files:
            os.replace(others[files.index(Path(path))], path)
        return fd

    monkeypatch.setattr(os, "open", open_then_replace)
    for path in files:
        loaded = _load(path)
        if isinstance(loaded, dict):  # the model's tensors, whose sha256 the .json records
            assert loaded.keys() == expected[path].keys()
            assert all(torch.equal(loaded[k], expected[path][k]) for k in loaded)
        else:
            np.testing.assert_array_equal(np.asarray(loaded.array), volume)


def test_config_that_is_not_a_small_regular_file_is_refused_fast(world, capsys, out, tmp_path, monkeypatch):
    from cpic.cli import train
    from cpic.train import config

    monkeypatch.setattr(config, "CONFIG_PIPE_SECONDS", 0.5)
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    cases = {"fifo.json": "time limit (0.5 s)", "folder.json": "is a directory",
             "deep.json": "not valid JSON", "zero.json": "character device"}  # fmt: skip
    args = [world.root / "cohort.csv", "-o", out / "m", "--val", "0", *TINY]
    for name, needle in cases.items():
        refused(cli(capsys, "train", *args, "--config", tmp_path / name), needle, out)
    writer = os.open(tmp_path / "fifo.json", os.O_RDWR)  # a writer that never writes
    try:
        refused(cli(capsys, "train", *args, "--config", tmp_path / "fifo.json"), "time limit", out)
    finally:
        os.close(writer)
    read, write = os.pipe()  # --config <(...): a pipe that delivers is read
    os.write(write, b'{"rank": 3}')
    os.close(write)
    try:
        assert train._config(f"/dev/fd/{read}") == {"rank": 3}
    finally:
        os.close(read)


def test_gzip_bomb_is_refused_fast_without_inflating(world, tmp_path):
    """In a fresh process: inspect (its own budget) and predict (--memory-budget) refuse the
    4 GiB bomb within seconds, and the process never holds more than a fraction of it."""
    bomb, _ = world.hostile["nii.gz bomb: 4 GiB of zeros in 4 MB"]
    script = (  # VmHWM: this process's peak RSS (ru_maxrss would carry the forking parent's over exec)
        "import re, time\n"
        "from cpic.cli.main import main\n"
        "start = time.monotonic()\n"
        f"codes = [main(['inspect', {str(bomb)!r}]),\n"
        f"         main(['predict', {str(world.model)!r}, {str(bomb)!r}, '--memory-budget', '1G'])]\n"
        "peak = int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) * 1024\n"
        "print(codes, time.monotonic() - start, peak)\n"
    )
    command = [sys.executable, "-c", script]
    proc = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=120)
    codes, seconds, peak = proc.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert codes == "[2, 2]" and float(seconds) < 10, proc.stdout + proc.stderr
    assert int(peak) < 2**30, f"peak RSS {int(peak) / 2**20:.0f} MiB"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and all("4.0 GiB" in line and "bomb.nii.gz" in line for line in lines), lines
    assert "256.0 MiB" in lines[0] and "1.0 GiB" in lines[1]


# ---------------------------------------------------------------------- manifests
MANIFEST_CASES = [
    "empty file", "header only", "no path column", "no label column", "missing path", "empty path cell",
    "duplicate path", "empty label", "short row", "long row", "single class", "binary garbage", "a directory",
    "labels differing by case", "labels differing by spaces", "huge class id", "negative class id",
    "a FIFO (would block)",
]  # fmt: skip


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_bad_manifest_is_refused_by_train_and_evaluate(world, case, capsys, out):
    path, needle = world.manifests[case]
    refused(cli(capsys, "train", path, "-o", out / "m", "--val", "0", *TINY), needle, out)
    if case != "single class":  # evaluating one class is fine
        refused(cli(capsys, "evaluate", world.model, path), needle)


def test_missing_manifest(world, capsys, out):
    refused(cli(capsys, "train", world.root / "nope.csv", "-o", out / "m", *TINY), "nope.csv", out)


# ---------------------------------------------------------------------- model files
def test_every_broken_model_file_is_refused(world, capsys, out):
    volume = world.root / world.names[0]
    for case, (path, needle) in world.models.items():
        for form in (path, f"{path}.safetensors", f"{path}.json"):
            refused(cli(capsys, "predict", form, volume, "-o", out / "p.csv"), needle, out)
        refused(cli(capsys, "inspect", f"{path}.json"), needle)
        refused(cli(capsys, "evaluate", path, world.root / "cohort.csv"), needle)
        print(case, "refused")


def test_model_file_loading_never_unpickles(world, monkeypatch):
    import pickle

    from cpic.train import CheckpointError, load_model

    def forbidden(*args, **kwargs):
        raise AssertionError("a model file was unpickled")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    for case in ("pickle payload", "torch.save zip-pickle payload"):
        with pytest.raises(CheckpointError, match="safetensors"):
            load_model(world.models[case][0])
    load_model(world.model)


def test_every_broken_compressed_volume_is_refused(world, capsys, out):
    code = main(["compress", str(world.root / "v0.npy"), "-o", str(world.root / "vol.cpic"), "--read-budget",
                 "20%", "--quiet"])  # fmt: skip
    assert code == 0
    cases = bad_corpus.broken_compressed(world.root / "compressed", world.root / "vol.cpic")
    assert len(cases) == 9
    for path, needle in cases.values():
        refused(cli(capsys, "reconstruct", path, "-o", out / "r.npy", "--figure", out / "r.png"), needle, out)


# ---------------------------------------------------------------------- command flags
FLAG_CASES = {
    "rank 0": (["train", "C", "--rank", "0"], "--rank"),
    "rank negative": (["train", "C", "--rank", "-3"], "--rank"),
    "rank not a number": (["train", "C", "--rank", "ten"], "--rank"),
    "even patch": (["train", "C", "--patch", "4"], "patch"),
    "patch 0": (["train", "C", "--patch", "0"], "--patch"),
    "oversized patch": (["train", "C", "--patch", "99"], "patch=99"),
    "features 0": (["train", "C", "--features", "0"], "--features"),
    "epochs 0": (["train", "C", "--epochs", "0"], "--epochs"),
    "batch size 0": (["train", "C", "--batch-size", "0"], "--batch-size"),
    "validation fraction 1.5": (["train", "C", "--val", "1.5"], "--val"),
    "memory budget 0": (["train", "C", "--memory-budget", "0"], "--memory-budget"),
    "memory budget garbage": (["train", "C", "--memory-budget", "lots"], "--memory-budget"),
    "unknown device": (["train", "C", "--device", "tpu"], "tpu"),
    "absent CUDA device": (["train", "C", "--device", "cuda:9"], "cuda"),
    "unknown task": (["train", "C", "--task", "dance"], "--task"),
    "bad config file": (["train", "C", "--config", "nope.json"], "nope.json"),
    "compress rank 0": (["compress", "V", "--rank", "0"], "--rank"),
    "compress rank negative": (["compress", "V", "--rank", "-1"], "--rank"),
    "compress steps 0": (["compress", "V", "--steps", "0"], "--steps"),
    "compress features 0": (["compress", "V", "--features", "0"], "--features"),
    "compress memory budget 0": (["compress", "V", "--memory-budget", "0"], "--memory-budget"),
    "compress unknown device": (["compress", "V", "--device", "quantum"], "quantum"),
    "predict batch size 0": (["predict", "M", "V", "--batch-size", "0"], "--batch-size"),
    "predict memory budget 0": (["predict", "M", "V", "--memory-budget", "0"], "--memory-budget"),
    "evaluate memory budget -1G": (["evaluate", "M", "C", "--memory-budget=-1G"], "--memory-budget"),
    "predict unknown device": (["predict", "M", "V", "--device", "tpu"], "tpu"),
    "predict bad output suffix": (["predict", "M", "V", "-o", "p.txt"], ".csv"),
    "inspect sample 0": (["inspect", "V", "--sample", "0"], "--sample"),
    "demo side 1": (["demo", "--side", "1"], "--side"),
    "unknown command": (["transmogrify"], "transmogrify"),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags_are_usage_errors(world, case, capsys, out):
    args, needle = FLAG_CASES[case]
    fill = {"C": world.root / "cohort.csv", "V": world.root / world.names[0], "M": world.model}
    args = [fill.get(a, a) for a in args]
    output = {"train": ["-o", out / "m", "--val", "0"], "compress": ["-o", out / "c"]}.get(args[0], [])
    result = cli(capsys, args[0], *output, *args[1:])
    refused(result, needle, out)
    assert result.code == 2


def test_cross_budget_zero_and_too_small_are_refused():
    import cpic

    def f(idx):
        return idx.float().sum(-1)

    for budget in (0, -5, 10):
        with pytest.raises(ValueError, match="budget"):
            cpic.cross(f, (4, 4, 4, 4), rank=2, budget=budget)


# ---------------------------------------------------------------------- hypothesis
SUFFIXES = [".npy", ".nii", ".nii.gz", ".h5", ".tif"]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=700), suffix=st.sampled_from(SUFFIXES))
def test_random_bytes_never_crash_a_reader(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"x{suffix}"
    path.write_bytes(data)
    _open_or_refuse(path)


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    import h5py
    import nibabel as nib
    import tifffile

    root = tmp_path_factory.mktemp("valid")
    array = np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32)
    np.save(root / "v.npy", array)
    nib.save(nib.Nifti1Image(array, np.eye(4)), root / "v.nii")
    nib.save(nib.Nifti1Image(array, np.eye(4)), root / "v.nii.gz")
    with h5py.File(root / "v.h5", "w") as h5:
        h5.create_dataset("v", data=array)
    with h5py.File(root / "v.gz.h5", "w") as h5:
        h5.create_dataset("v", data=array, chunks=(3, 5, 2), compression="gzip")
    tifffile.imwrite(root / "v.tif", array)
    tifffile.imwrite(root / "v.zlib.tif", array, compression="zlib")
    return {suffix: (root / f"v{suffix}").read_bytes() for suffix in DAMAGED}


DAMAGED = [*SUFFIXES, ".gz.h5", ".zlib.tif"]  # chunked gzip HDF5 and zlib TIFF too


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    suffix=st.sampled_from(DAMAGED),
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=6),
)
def test_damaged_valid_files_are_read_or_refused(tmp_path_factory, valid_files, suffix, cut, flips):
    data = bytearray(valid_files[suffix])
    for at, value in flips:
        data[at % len(data)] = value
    data = bytes(data[: len(data) - cut % len(data)] if cut % 3 == 0 else data)
    path = tmp_path_factory.mktemp("damaged") / f"x{suffix}"
    path.write_bytes(data)
    _open_or_refuse(path)


def _open_or_refuse(path: Path) -> None:
    """Either a source whose every voxel reads as finite float32, or a SourceError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            source = open_volume(path)
            if source.size > 10**6:
                return  # a header may declare a big grid over a file that holds it: not read whole
            coords = torch.cartesian_prod(*[torch.arange(n) for n in source.shape]).reshape(-1, source.ndim)
            values = source.read(coords)
        except SourceError as err:
            assert path.name in str(err)
            return
    assert bool(torch.isfinite(values).all())


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=st.text(alphabet='path,label\n"ab01.npy -x', max_size=120))
def test_random_manifests_load_or_are_refused(tmp_path_factory, text):
    root = tmp_path_factory.mktemp("manifest")
    np.save(root / "a.npy", np.zeros((4, 4, 4), np.float32))
    np.save(root / "b.npy", np.ones((4, 4, 4), np.float32))
    (root / "m.csv").write_text(text)
    try:
        data = VolumeDataset.from_csv(root / "m.csv")
        for i in range(len(data)):
            data.source(i)
    except ValueError as err:
        assert "m.csv" in str(err) or "npy" in str(err) or str(root) in str(err)
        return
    assert len(data) >= 1 and len(data.targets) == len(data)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(rank=st.integers(-5, 40), patch=st.integers(-3, 12), features=st.integers(-2, 5))
def test_model_flags_parse_or_are_usage_errors(world, rank, patch, features):
    from cpic.cli import common as train

    args = SimpleNamespace(rank=rank, patch=patch, features=features)
    valid = rank >= 1 and features >= 1 and patch >= 1 and patch % 2 == 1 and patch <= 8
    try:
        import cpic
        from cpic.nn import Classification

        for name in ("rank", "patch", "features"):
            train.positive_int(str(getattr(args, name)))
        cpic.CPIC(bad_corpus.GRID, Classification(2), features=features, patch=patch, rank=rank)
    except (ValueError, Exception) as err:
        assert not valid, err
        assert isinstance(err, ValueError) or type(err).__name__ == "ArgumentTypeError"
        return
    assert valid


# ---------------------------------------------------------------------- what a user sees
def test_real_processes_print_one_line_and_no_traceback(world, tmp_path):
    """In subprocesses (library loggers and warnings reach stderr there): one line each."""
    out = tmp_path / "out"
    out.mkdir()
    b = world.broken
    cases = [
        ["inspect", b["tif truncated"]],
        ["inspect", b["nii.gz garbage inside"]],
        ["predict", world.models["tensor of the wrong dtype (float64)"][0], world.root / "v0.npy"],
        ["predict", world.model, b["zarr chunk of the wrong size"], "-o", out / "p.csv"],
        ["compress", world.odd["NaN voxels"], "-o", out / "c", "--read-budget", "50%"],
        ["train", world.root / "cohort.csv", "-o", out / "m", "--device", "tpu"],
        ["inspect", world.hostile["zarr chunk that is a FIFO"][0]],  # FIFOs: refused, never read
        ["inspect", world.hostile["h5 external storage in a FIFO"][0], "--allow-external"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cpic.cli.main", *map(str, case)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )
        for case in cases
    ]  # fmt: skip
    for case, proc in zip(cases, procs):
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (case, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (case, err)
    assert not any(out.iterdir())


def test_no_read_permission(world, tmp_path):
    """An unreadable file is refused by name. Root reads everything, so as root the command runs
    without the capability that overrides file permissions (setpriv)."""
    locked = tmp_path / "locked.npy"
    shutil.copy(world.root / "v0.npy", locked)
    locked.chmod(0)
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root without setpriv reads every file")
        prefix = ["setpriv", "--bounding-set=-all", "--inh-caps=-all"]
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "cpic.cli.main", "inspect", str(locked)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "permission denied" in proc.stderr and "locked.npy" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------- outputs, locks, interrupts
def test_non_finite_extra_features_are_refused_naming_row_and_column(world, capsys, out, tmp_path):
    for bad in ("nan", "inf", "-Infinity"):
        path = tmp_path / "extra.csv"
        rows = [f"{world.root / n},{'ab'[i % 2]},{60 + i}" for i, n in enumerate(world.names)]
        rows[2] = rows[2].rsplit(",", 1)[0] + f",{bad}"
        path.write_text("path,label,age\n" + "\n".join(rows) + "\n")
        result = cli(capsys, "train", path, "-o", out / "m", "--extra", "age", "--val", "0", *TINY)
        refused(result, "row 4: column 'age'", out)


def _unwritable_outputs(world, tmp_path) -> list[tuple[list, str]]:
    """``(command line, needle)`` of outputs that cannot be written; made here."""
    (tmp_path / "a_file").write_text("x")
    os.mkfifo(tmp_path / "fifo.csv")
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "c.cpic").mkdir()
    manifest, volume, in_file = world.root / "cohort.csv", world.root / "v0.npy", tmp_path / "a_file" / "x"
    train = ["train", manifest, "--val", "0", *TINY]
    return [
        ([*train, "-o", in_file], "is not a folder"),
        ([*train, "-o", tmp_path / "m", "--log-csv", "/dev/null"], "character device"),
        ([*train, "-o", tmp_path / "m", "--log-csv", tmp_path / "fifo.csv"], "FIFO"),
        ([*train, "-o", tmp_path / "m", "--checkpoint-dir", tmp_path / "a_file"], "expected a folder"),
        (["predict", world.model, volume, "-o", tmp_path / "fifo.csv"], "FIFO"),
        (["compress", volume, "-o", tmp_path / "c.cpic"], "is a directory"),
        (["cohort", "shapes", tmp_path / "a_file", "--count", "2", "--side", "8"], "expected a folder"),
        (["demo", "--output", tmp_path / "a_file", "--epochs", "1"], "expected a folder"),
    ]


def test_outputs_that_cannot_be_written_are_refused_before_any_work(world, capsys, tmp_path):
    import time

    for args, needle in _unwritable_outputs(world, tmp_path):
        before = sorted(p.name for p in tmp_path.iterdir())
        started = time.perf_counter()
        result = cli(capsys, *args)
        refused(result, needle)
        assert time.perf_counter() - started < 2, args  # refused before training or compressing
        assert sorted(p.name for p in tmp_path.iterdir()) == before, args


def test_train_onto_its_manifest_or_a_volume_is_refused_before_any_work(world, capsys, tmp_path):
    import time

    for name in world.names:
        shutil.copy(world.root / name, tmp_path / name)
    manifest = tmp_path / "cohort.csv"
    shutil.copy(world.root / "cohort.csv", manifest)
    (tmp_path / "val.csv").write_text("path,label\nv0.npy,a\nv1.npy,b\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    train = ["train", manifest, "--val", "0", *TINY]
    for extra, named in [
        (["-o", manifest], manifest),
        (["-o", tmp_path / "v3.npy"], tmp_path / "v3.npy"),
        (["-o", tmp_path / "model", "--log-csv", manifest], manifest),
        (["-o", tmp_path / "model", "--log-csv", tmp_path / "v1.npy"], tmp_path / "v1.npy"),
        (["-o", tmp_path / "val.csv", "--val-manifest", tmp_path / "val.csv"], tmp_path / "val.csv"),
    ]:
        started = time.perf_counter()
        result = cli(capsys, *train, *extra)
        refused(result, f"{str(named)!r} is also an input; give another name.")
        assert time.perf_counter() - started < 2, extra  # before any volume is opened or trained on
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before, extra


def test_a_config_memory_budget_bounds_loading_as_the_flag_does(capsys, tmp_path):
    import nibabel as nib

    rows = ["path,label"]
    for i in range(4):  # 8^3 float32: 2 KiB each, inflated whole from gzip
        image = nib.Nifti1Image(np.full(bad_corpus.GRID, i, np.float32), np.eye(4))
        nib.save(image, tmp_path / f"v{i}.nii.gz")
        rows.append(f"v{i}.nii.gz,{'ab'[i % 2]}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "budget.json").write_text(json.dumps({"memory_budget": "1K"}))
    train = ["train", tmp_path / "cohort.csv", "-o", tmp_path / "model", "--val", "0", *TINY]
    for budget in (["--config", tmp_path / "budget.json"], ["--memory-budget", "1K"]):
        refused(cli(capsys, *train, *budget), "v0.nii.gz: loading it needs 2.0 KiB in memory")
        assert not (tmp_path / "model.safetensors").exists()
    assert cli(capsys, *train).code == 0  # the default budget loads them


def test_reconstruct_and_predict_onto_an_input_need_overwrite(world, capsys, tmp_path):
    volume = tmp_path / "scan.npy"
    shutil.copy(world.root / "v0.npy", volume)
    compressed = cli(capsys, "compress", volume, "-o", tmp_path / "scan.cpic", "--read-budget", "20%")
    assert compressed.code == 0
    original = volume.read_bytes()
    again = cli(capsys, "reconstruct", tmp_path / "scan.cpic", "-o", volume)
    refused(again, "is also an input")
    assert volume.read_bytes() == original
    assert cli(capsys, "reconstruct", tmp_path / "scan.cpic", "-o", volume, "--overwrite", "-q").code == 0
    assert np.load(volume).shape == bad_corpus.GRID
    shutil.copy(world.model.with_suffix(".json"), tmp_path / "model.json")
    shutil.copy(world.model.with_suffix(".safetensors"), tmp_path / "model.safetensors")
    onto_model = cli(capsys, "predict", tmp_path / "model", volume, "-o", tmp_path / "model.json")
    refused(onto_model, "also an input")


def test_cohort_refuses_a_folder_holding_another_manifest(capsys, tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label\nmine.npy,x\n")
    refused(cli(capsys, "cohort", "shapes", tmp_path, "--count", "2", "--side", "8"), "manifest.csv")
    assert (tmp_path / "manifest.csv").read_text() == "path,label\nmine.npy,x\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.csv"]
    code = cli(capsys, "cohort", "shapes", tmp_path, "--count", "2", "--side", "8", "--overwrite", "-q").code
    assert code == 0 and (tmp_path / "manifest.csv").read_text().startswith("path,label\nsphere-0000.npy")
    (tmp_path / "manifest.csv").unlink()  # a killed run's volumes, without a manifest: named
    refused(cli(capsys, "cohort", "shapes", tmp_path, "--count", "2", "--side", "8"), "sphere-0000.npy")


def test_a_second_live_training_run_is_refused_and_a_stale_lock_taken_over(world, capsys, tmp_path):
    lock = tmp_path / "model.lock"
    sleeper = subprocess.Popen(["sleep", "60"])
    train = ["train", world.root / "cohort.csv", "-o", tmp_path / "model", "--val", "0", *TINY]
    try:
        lock.write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        result = cli(capsys, *train)
        refused(result, f"running process {sleeper.pid}")
        assert str(lock) in result.err and not (tmp_path / "model.safetensors").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    result = cli(capsys, *train)
    assert result.code == 0 and f"took over a stale lock left by process {sleeper.pid}" in result.err
    assert (tmp_path / "model.safetensors").exists() and not lock.exists()


def _catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler (``cpic.cli.main`` installs it at start)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def _started(proc, ready: Path | None, seconds: float = 60) -> None:
    """Wait until ``proc`` handles SIGTERM and, if given, ``ready`` exists."""
    import time

    deadline = time.monotonic() + seconds
    while not _catches_sigterm(proc.pid) or (ready is not None and not ready.exists()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
def test_sigterm_is_an_interrupt_in_train_compress_and_cohort(world, tmp_path):
    """SIGTERM mid-run: one line, exit 1, no traceback, no output under its final name; train
    leaves a checkpoint that a resumed run finishes from."""
    ckpt = tmp_path / "ckpt"
    volume = world.root / "v0.npy"
    cases = {
        "train": (["train", world.root / "cohort.csv", "-o", tmp_path / "m", "--val", "0", *TINY,
                   "--epochs", "500", "--checkpoint-dir", ckpt], ckpt / "last.json"),
        "compress": (["compress", volume, "-o", tmp_path / "c", "--method", "implicit", "--steps", "100000",
                      "-q"], None),
        "cohort": (["cohort", "shapes", tmp_path / "shapes", "--count", "400", "--side", "24", "-q"],
                   tmp_path / "shapes" / "sphere-0000.npy"),
    }  # fmt: skip
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "cpic.cli.main", *map(str, args)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for name, (args, _) in cases.items()
    }  # fmt: skip
    import time

    for name, proc in procs.items():
        _started(proc, cases[name][1])
        if name == "compress":
            time.sleep(2)  # into its steps
        proc.send_signal(signal.SIGTERM)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 1, (name, err)
        assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err, err
        if name == "train":
            assert f"--resume --checkpoint-dir {ckpt}" in err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "c").exists()
    assert not (tmp_path / "shapes" / "manifest.csv").exists()
    assert not [p for p in (tmp_path / "shapes").iterdir() if p.name.startswith(".")]
    resumed = subprocess.run(
        [sys.executable, "-m", "cpic.cli.main", *map(str, cases["train"][0][:-4]), "--epochs", "1",
         "--checkpoint-dir", ckpt, "--resume"], capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert resumed.returncode in (0, 2), resumed.stderr  # 2: the checkpoint is past --epochs 1


TRUNCATE_DURING_READS = """
import os, sys
from cpic.sources.array import ArraySource
from cpic.cli.main import main
volume, model = sys.argv[1:]
read = ArraySource._read_mapped
def truncating(self, coords):
    os.truncate(volume, 200)  # while the command reads: the file shrinks under its memory map
    return read(self, coords)
ArraySource._read_mapped = truncating
sys.exit(main(["predict", model, volume]))
"""


def test_a_volume_truncated_while_read_is_an_error_not_sigbus(world, tmp_path):
    volume = tmp_path / "shrinking.npy"
    shutil.copy(world.root / "v0.npy", volume)
    result = subprocess.run(
        [sys.executable, "-c", TRUNCATE_DURING_READS, str(volume), str(world.model)],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, (result.returncode, result.stderr)  # -7 would be SIGBUS
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "shrinking.npy: the file was truncated while being read" in result.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (root only; skipped elsewhere, where the monkeypatched cases still run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)]
    mounted = subprocess.run(command, capture_output=True)
    if mounted.returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _complete_cohort_files(folder: Path, side: int) -> None:
    """Every volume under a listed-looking name is complete; no temporary file is left."""
    assert not (folder / "manifest.csv").exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]
    for path in folder.glob("*.npy"):
        assert np.load(path).shape == (side,) * 3, path


def test_cohort_filling_the_disk_is_one_error_and_no_partial_file(tiny_disk, capsys):
    result = cli(capsys, "cohort", "shapes", tiny_disk, "--count", "20", "--side", "32", "-q")
    refused(result, "the disk is full")
    assert result.code == 1 and "no manifest was written" in result.err
    _complete_cohort_files(tiny_disk, 32)
    assert 1 <= len(list(tiny_disk.glob("*.npy"))) < 20


def test_cohort_writer_raising_enospc_is_one_error(capsys, tmp_path, monkeypatch):
    import errno

    calls = []

    def full(fd, offset, size):
        calls.append(size)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", full)
    result = cli(capsys, "cohort", "shapes", tmp_path / "c", "--count", "5", "--side", "8", "-q")
    refused(result, "the disk is full (No space left on device)")
    _complete_cohort_files(tmp_path / "c", 8)
    assert len(list((tmp_path / "c").glob("*.npy"))) == 2


def test_disk_full_while_checkpointing_is_one_error(world, capsys, tmp_path, monkeypatch):
    import errno

    def full(path, tensors, meta):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(sys.modules["cpic.train.loop"], "save_checkpoint", full)
    args = ["--checkpoint-dir", tmp_path / "ckpt", "--val", "0", *TINY]
    result = cli(capsys, "train", world.root / "cohort.csv", "-o", tmp_path / "m", *args)
    refused(result, "training stopped, no model was written: the disk is full")
    assert result.code == 1 and not (tmp_path / "m.safetensors").exists()


def test_json_output_is_strict_and_names_non_finite_values(capsys):
    import argparse

    from cpic.cli.common import emit

    emit(argparse.Namespace(json=True), {"psnr_db": float("inf"), "rows": [{"loss": float("nan")}]}, [])
    text = capsys.readouterr().out

    def refuse(name):
        raise AssertionError(f"{name} in --json output")

    document = json.loads(text, parse_constant=refuse)
    assert document["psnr_db"] is None and document["rows"] == [{"loss": None}]
    assert document["warnings"] == [
        "psnr_db was inf or NaN (not JSON): written as null",
        "rows[0].loss was inf or NaN (not JSON): written as null",
    ]


def test_labels_that_look_like_formulas_are_escaped_in_prediction_csvs(world, capsys, tmp_path):
    labels = ['=HYPERLINK("http://x","y")', "@SUM(A1)"]
    rows = ["path,label"] + [f'{world.root / n},"{labels[i % 2]}"'.replace('"y"', '""y""').replace(
        '"http://x"', '""http://x""') for i, n in enumerate(world.names)]  # fmt: skip
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    assert cli(capsys, "train", tmp_path / "m.csv", "-o", tmp_path / "model", "--val", "0", *TINY).code == 0
    volume = world.root / "v0.npy"
    assert cli(capsys, "predict", tmp_path / "model", volume, "-o", tmp_path / "p.csv", "-q").code == 0
    import csv

    with open(tmp_path / "p.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["predicted"] in ["'" + label for label in labels]
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row.values())


KILLED_AT_THE_RENAME = """
import os, sys
from cpic.cli.main import main
replace = os.replace
def dying(src, dst, *a, **k):
    if not os.path.basename(dst).startswith("."):  # the final name: the new file is moved into place
        os._exit(9)  # as SIGKILL: no cleanup
    return replace(src, dst, *a, **k)
os.replace = dying
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_compress_writes_keeps_the_earlier_output(world, capsys, tmp_path):
    volume, out = world.root / "v0.npy", tmp_path / "scan"
    args = ["compress", volume, "-o", out, "--read-budget", "20%", "-q"]
    assert cli(capsys, *args).code == 0
    earlier = out.read_bytes()
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_THE_RENAME, *map(str, args), "--method", "lattice"],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert killed.returncode == 9, killed.stderr
    assert out.read_bytes() == earlier  # the earlier file, whole
    assert cli(capsys, "reconstruct", out, "-o", tmp_path / "r.npy", "-q").code == 0
    assert cli(capsys, *args).code == 0  # the next write removes the killed run's staged file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.npy", "scan"]
