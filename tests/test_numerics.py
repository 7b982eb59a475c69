"""Numerical edge cases (cross and training on rank-deficient, constant, all-zero, huge-range and
adversarial inputs), resource limits (memory budget, evaluation budget) and determinism."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import cpic
from cpic.data import shape_cohort
from cpic.layout import QTTLayout
from cpic.nn import Classification, Regression
from cpic.sampling import IntensityFunction
from cpic.sources import ProceduralSource
from cpic.train import VolumeDataset, evaluate, fit

GRID = (16, 16, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


def finite_tt(tt) -> bool:
    return all(bool(torch.isfinite(core).all()) for core in tt.cores)


# ---------------------------------------------------------------------- cross
def _grid_values(idx: torch.Tensor) -> torch.Tensor:
    return idx.double()


CROSS_CASES = {
    # rank 1 (separable) asked for at rank 6: a rank-deficient fiber at every bond
    "rank-deficient": lambda idx: torch.cos(idx.double()).prod(-1),
    "constant": lambda idx: torch.full(idx.shape[:2], 7.0, dtype=torch.float64),
    "all-zero": lambda idx: torch.zeros(idx.shape[:2], dtype=torch.float64),
    # 60 orders of magnitude across the tensor
    "huge dynamic range": lambda idx: torch.exp(idx.double().sum(-1) * 2.3 - 69.0),
    # a single non-zero entry among 4^10 = 1,048,576
    "one bright entry": lambda idx: (idx == 3).all(-1).double() * 1e6,
}


@pytest.mark.parametrize("case", sorted(CROSS_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_stays_finite_on_degenerate_tensors(case, dtype):
    f = CROSS_CASES[case]
    tt, info = cpic.cross(f, [4] * 10, rank=6, dtype=dtype, seed=0, n_test=64)
    assert finite_tt(tt) and math.isfinite(float(info.error.max()))
    idx = torch.randint(0, 4, (1, 200, 10), generator=torch.Generator().manual_seed(1))
    approx, exact = tt.eval(idx).double(), f(idx)
    if case != "one bright entry":  # cross cannot promise to find one entry in a million
        scale = exact.abs().max().clamp_min(1e-300)
        assert float((approx - exact).abs().max() / scale) < (1e-3 if dtype == torch.float32 else 1e-8)


def test_one_bright_voxel_in_a_huge_volume():
    """A 1024^3 procedural volume (2^30 voxels), zero but for one voxel: the TT is finite and
    cross reads a vanishing fraction of the voxels."""
    side = 1024

    def fn(coords):
        return ((coords == torch.tensor([700, 21, 513])).all(-1)).float() * 1e4

    src = ProceduralSource(fn, (side,) * 3)
    f = IntensityFunction([src], QTTLayout(src.shape, group=True))
    for dtype in (torch.float32, torch.float64):
        tt, info = cpic.cross(f, f.shape, rank=4, dtype=dtype, seed=0, n_test=32)
        assert finite_tt(tt) and info.unique_evaluations < 1e-4 * side**3


def test_non_finite_values_name_the_entry_and_what_to_do():
    def f(idx):
        out = idx.double().sum(-1)
        out[0, 0] = float("nan")
        return out

    with pytest.raises(FloatingPointError, match="non-finite values .* f must return finite values"):
        cpic.cross(f, [4] * 4, rank=2, seed=0)


# ---------------------------------------------------------------------- training
def _volumes(kind: str, n: int = 4) -> list:
    gen = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        if kind == "all-zero":
            v = torch.zeros(GRID)
        elif kind == "constant":
            v = torch.full(GRID, 3.0 + i % 2)
        elif kind == "rank-deficient":  # a function of one axis only
            v = torch.arange(16.0)[:, None, None].expand(GRID).clone() * (1 + i % 2)
        elif kind == "one bright voxel":
            v = torch.zeros(GRID)
            v[3, 7, 11] = 1e6 * (i % 2)
        elif kind == "tiny values":
            v = torch.rand(GRID, generator=gen) * 1e-30
        else:  # "huge dynamic range", normalised when opened
            v = torch.rand(GRID, generator=gen) * 10.0 ** (30 * (i % 2))
        out.append(cpic.open_volume(v, normalize="range" if kind == "huge dynamic range" else None))
    return out


@pytest.mark.parametrize(
    "kind",
    ["all-zero", "constant", "rank-deficient", "one bright voxel", "tiny values", "huge dynamic range"],
)
def test_training_on_degenerate_volumes_stays_finite(kind):
    torch.manual_seed(0)
    model = cpic.CPIC(GRID, Classification(2, hidden=8), features=3, patch=3, rank=4)
    data = VolumeDataset(_volumes(kind), [0, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped step warns: none may happen here
        history = fit(model, data, data, epochs=3, batch_size=2, progress=False)
    assert all(math.isfinite(row["train_loss"]) and math.isfinite(row["val_loss"]) for row in history.rows)
    assert not history.numerics.get("skipped_steps")
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert torch.isfinite(model(data.source(1), keys=[data.source(1)])).all()


def test_unnormalised_huge_intensities_are_detected_and_say_what_to_change():
    """Raw intensities of 1e30 overflow float32 losses: the steps are skipped, counted and warned
    about with the fix (normalise the volumes); the CLI turns it into one line (test_bad_inputs)."""
    torch.manual_seed(0)
    vols = [cpic.open_volume(torch.full(GRID, 1e30) * (1 + torch.rand(GRID))) for _ in range(4)]
    model = cpic.CPIC(GRID, Regression(), features=3, patch=3, rank=2)
    with pytest.warns(UserWarning, match="normali[sz]e"):
        history = fit(model, VolumeDataset(vols, [0.0, 1, 2, 3]), epochs=1, batch_size=2, progress=False)
    assert history.numerics["skipped_steps"] >= 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())  # no NaN reached the weights


def test_float32_training_runs_1000_steps_on_the_shape_cohort_without_nan():
    volumes, labels = shape_cohort(10, side=16, seed=0)  # one volume of each of the ten shapes
    torch.manual_seed(0)
    model = cpic.CPIC(GRID, Classification(10, hidden=8), features=4, patch=3, rank=3, seed=0)
    assert next(model.parameters()).dtype == torch.float32
    history = fit(
        model, VolumeDataset(volumes, labels), epochs=200, batch_size=2, refresh=100, progress=False
    )
    steps = 5 * len(history.rows)
    assert steps == 1000 and not history.numerics.get("skipped_steps")
    assert all(math.isfinite(row["train_loss"]) for row in history.rows)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert history.rows[-1]["train_loss"] < history.rows[0]["train_loss"]


# ---------------------------------------------------------------------- resource limits
def test_memory_budget_refuses_before_reading_a_voxel():
    volumes = [cpic.open_volume(torch.rand(64, 64, 64)) for _ in range(4)]
    model = cpic.CPIC((64, 64, 64), Regression(), features=8, patch=7, rank=12)
    need = model.memory_estimate(4)
    model.memory_budget = need - 1
    with pytest.raises(MemoryError, match=r"rank=12, features=8, patch=7, 4 volumes per step needs about"):
        fit(model, VolumeDataset(volumes, [0.0, 1, 2, 3]), epochs=1, batch_size=4, progress=False)
    assert all(v.stats.requests == 0 for v in volumes)  # refused before it started
    with pytest.raises(MemoryError, match="lower the rank, the features, the patch or the batch size"):
        model(volumes[:4], keys=volumes[:4])
    model.memory_budget = need  # exactly enough is enough
    model.check_memory(4)
    with pytest.raises(ValueError, match="memory_budget"):
        model.memory_budget = 0


@pytest.mark.parametrize("knob", ["rank", "patch", "features", "batch"])
def test_memory_estimate_grows_with_every_knob(knob):
    base = dict(rank=4, patch=3, features=4)
    bigger = {**base, knob: {"rank": 8, "patch": 5, "features": 8}[knob]} if knob != "batch" else base

    def estimate(kw, batch):
        return cpic.CPIC((32, 32, 32), Regression(), **kw).memory_estimate(batch)

    assert estimate(bigger, 4 if knob == "batch" else 2) > estimate(base, 2)


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(1, 6000), rank=st.integers(1, 5), n_test=st.sampled_from([0, 16]))
def test_the_evaluation_budget_is_honoured_exactly(budget, rank, n_test):
    evaluated = []

    def f(idx):
        evaluated.append(idx.shape[0] * idx.shape[1])
        return torch.sin(idx.double().sum(-1) / 3)

    try:
        _, info = cpic.cross(f, [4] * 6, rank=rank, budget=budget, seed=0, n_test=n_test)
    except ValueError as err:  # a budget below one sweep is refused before any evaluation
        assert "budget" in str(err) and not evaluated
        return
    assert sum(evaluated) == info.evaluations <= budget


# ---------------------------------------------------------------------- determinism
def _cohort_model(seed: int):
    torch.manual_seed(seed)
    return cpic.CPIC(GRID, Classification(2, hidden=8), features=3, patch=3, rank=3, seed=seed)


def test_same_seed_gives_bit_identical_pivots_tt_and_predictions():
    volumes, labels = shape_cohort(6, side=16, seed=3)
    runs = []
    for _ in range(2):
        model = _cohort_model(5)
        data = VolumeDataset(volumes, labels % 2)
        fit(model, data, epochs=2, batch_size=3, progress=False, seed=5)
        with torch.no_grad():
            latent = model.latent(volumes, keys=volumes)
            runs.append((model, latent, model(volumes, keys=volumes), evaluate(model, data)))
    (a, tt_a, pred_a, ev_a), (b, tt_b, pred_b, ev_b) = runs
    state_a = a.pivots.state(lambda key: key.name)
    state_b = b.pivots.state(lambda key: key.name)
    for name, item in state_a["items"].items():
        other = state_b["items"][name]
        assert all(
            torch.equal(x, y) for x, y in zip(item["left"] + item["right"], other["left"] + other["right"])
        )
    assert all(torch.equal(x, y) for x, y in zip(tt_a.cores, tt_b.cores))
    assert torch.equal(pred_a, pred_b) and ev_a == ev_b
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_a_volume_gets_the_same_pivots_in_any_batch():
    """Pivots are seeded per volume: identical whatever batch a volume comes in (the predictions
    then agree to rounding: a batched matrix product may sum in another order)."""
    volumes, _ = shape_cohort(4, side=16, seed=1)
    model = _cohort_model(0).eval()
    with torch.no_grad():
        together = model(volumes, keys=volumes)
        state = model.pivots.state(lambda key: key.name)
        model.pivots.forget()
        alone = torch.cat([model([v], keys=[v]) for v in reversed(volumes)]).flip(0)
        again = model.pivots.state(lambda key: key.name)
    for name, item in state["items"].items():
        assert all(torch.equal(x, y) for x, y in zip(item["left"], again["items"][name]["left"]))
    assert torch.allclose(together, alone, atol=1e-6)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_cross_is_deterministic_for_any_seed(seed):
    def f(idx):
        return torch.cos(idx.double() @ torch.tensor([0.3, 0.7, 1.1, 0.2, 0.5], dtype=torch.float64))

    (tt1, i1), (tt2, i2) = [cpic.cross(f, [5] * 5, rank=3, seed=seed) for _ in range(2)]
    assert all(torch.equal(x, y) for x, y in zip(tt1.cores, tt2.cores))
    assert all(torch.equal(x, y) for x, y in zip(i1.left + i1.right, i2.left + i2.right))


def test_predict_cli_gives_identical_files(tmp_path):
    from cpic.cli.main import main

    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(6):
        np.save(tmp_path / f"v{i}.npy", (rng.normal(size=(8, 8, 8)) + 2 * (i % 2)).astype(np.float32))
        rows.append(f"v{i}.npy,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    small = ["--rank", "2", "--features", "2", "--patch", "3", "--epochs", "2", "--val", "0", "--quiet"]
    for name in ("a", "b"):
        assert main(["train", str(tmp_path / "m.csv"), "-o", str(tmp_path / name), *small]) == 0
    # the same tensors (the files also seal their metadata, whose time of saving differs)
    import safetensors.torch

    a, b = (safetensors.torch.load_file(tmp_path / f"{name}.safetensors") for name in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    volumes = [str(tmp_path / f"v{i}.npy") for i in range(6)]
    for name in ("a", "b"):
        assert (
            main(["predict", str(tmp_path / name), *volumes, "-o", str(tmp_path / f"{name}.csv"), "-q"]) == 0
        )
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


# ---------------------------------------------------------------------- what the command reports
def _cli(capsys, *args):
    from cpic.cli.main import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_cli_reports_numerical_failure_and_memory_refusal_with_what_to_change(tmp_path, capsys):
    rows = ["path,label"]
    for i in range(4):
        np.save(tmp_path / f"v{i}.npy", np.full((8, 8, 8), 1e30 * (1 + i), np.float32))
        rows.append(f"v{i}.npy,{i % 2}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    small = ["--rank", "2", "--features", "2", "--patch", "3", "--epochs", "1", "--val", "0", "--quiet"]
    small += ["--sampler", "cross"]  # its singular blocks are the failure reported
    code, err = _cli(capsys, "train", tmp_path / "m.csv", "-o", tmp_path / "raw", *small)
    assert code == 1 and "--normalize" in err and len(err.strip().splitlines()) == 1, err
    code, err = _cli(
        capsys, "train", tmp_path / "m.csv", "-o", tmp_path / "ok", *small, "--normalize", "range"
    )
    assert code == 0, err
    code, err = _cli(
        capsys, "train", tmp_path / "m.csv", "-o", tmp_path / "big", *small, "--memory-budget", "1K"
    )
    assert code == 1 and "needs about" in err and "1.0 KiB is the memory budget" in err, err
    assert "lower the rank" in err and len(err.strip().splitlines()) == 1
    code, err = _cli(
        capsys, "compress", tmp_path / "v0.npy", "-o", tmp_path / "c", "--method", "implicit",
        "--memory-budget", "1K", "-q",
    )
    assert code == 1 and "refused before starting" in err, err
    volume, budget = tmp_path / "v0.npy", ["--memory-budget", "1K"]
    code, err = _cli(capsys, "predict", tmp_path / "ok", volume, "-o", tmp_path / "p.csv", *budget)
    assert code == 1 and "1.0 KiB is the memory budget" in err, err
    code, err = _cli(capsys, "evaluate", tmp_path / "ok", tmp_path / "m.csv", *budget)
    assert code == 1 and "1.0 KiB is the memory budget" in err, err
    written = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("v"))
    assert written == ["m.csv", "ok.json", "ok.last.json", "ok.last.safetensors", "ok.safetensors"]
