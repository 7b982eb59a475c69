"""The training layer end to end on tiny problems: learning, heads, extras, CSV manifests,
target checks, checkpoints and resume, CSV logs, numerical failures, pivot refresh schedules."""

import csv
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import cpic
from cpic.nn import Classification, ImplicitVolume, QuantileRegression, Regression
from cpic.train import CheckpointError, VolumeDataset, evaluate, fit, load_checkpoint, load_model

GRID = (8, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")


def blob_arrays(n: int, seed: int = 0) -> list[torch.Tensor]:
    """Even: zeros plus small noise; odd: the same with a bright 4^3 cube."""
    gen = torch.Generator().manual_seed(seed)
    arrays = []
    for i in range(n):
        v = 0.05 * torch.randn(GRID, generator=gen)
        if i % 2:
            v[2:6, 2:6, 2:6] += 1.0
        arrays.append(v)
    return arrays


def blob_volumes(n: int, seed: int = 0) -> tuple[list, list[int]]:
    """``n`` in-memory volumes of the two classes, alternating, and their labels."""
    return [cpic.open_volume(v) for v in blob_arrays(n, seed)], [i % 2 for i in range(n)]


def level_volumes(levels, seed: int = 0) -> list:
    """Constant volumes at ``levels`` plus small noise (a regression target)."""
    gen = torch.Generator().manual_seed(seed)
    return [cpic.open_volume(float(c) + 0.05 * torch.randn(GRID, generator=gen)) for c in levels]


def make_model(head, *, features=4, rank=2, seed=0, init_seed=None, **kwargs) -> cpic.CPIC:
    # the head and encoder weights come from the global generator
    torch.manual_seed(seed if init_seed is None else init_seed)
    return cpic.CPIC(GRID, head, features=features, patch=3, rank=rank, seed=seed, **kwargs)


def classification_data(n: int = 12):
    volumes, labels = blob_volumes(n)
    return VolumeDataset(volumes, labels).split(1 / 3, seed=0)


def run(model, train, val=None, **kwargs):
    kwargs = {"epochs": 2, "batch_size": 4, "progress": False, **kwargs}
    return fit(model, train, val, **kwargs)


def losses(history, key="train_loss") -> list[float]:
    return [row[key] for row in history.rows]


class Faulty(nn.Module):
    """Wraps a module; its output is NaN on the calls numbered in ``bad`` (1-based), or always."""

    def __init__(self, inner: nn.Module, bad=(1,), always: bool = False):
        super().__init__()
        self.inner, self.bad, self.always, self.calls = inner, set(bad), always, 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.always or self.calls in self.bad else out


# ---------------------------------------------------------------------- learning


def test_easy_classification_learns_and_is_deterministic():
    train, val = classification_data()
    assert len(train) == 8 and len(val) == 4
    histories = []
    for _ in range(2):
        model = make_model(Classification(2, hidden=32))
        histories.append(run(model, train, val, epochs=8, lr=1e-2))
    first, second = histories
    assert losses(first) == losses(second)
    assert losses(first, "val_loss") == losses(second, "val_loss")
    train_loss = losses(first)
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert first.last["val_accuracy"] == 1.0 and first.last["val_auc"] == 1.0
    assert first.best_epoch is not None and first.rows[first.best_epoch - 1]["val_accuracy"] == 1.0
    assert [row["epoch"] for row in first.rows] == list(range(1, 9))
    assert all(0 < row["fraction_read"] <= 1 for row in first.rows)
    assert first.numerics.get("skipped_steps", 0) == 0


def test_other_seed_gives_other_history():
    train, val = classification_data()
    a = run(make_model(Classification(2, hidden=16)), train, epochs=1, seed=0)
    b = run(make_model(Classification(2, hidden=16)), train, epochs=1, seed=1)
    assert losses(a) != losses(b)


def test_regression_trains_and_reports_mae():
    levels = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 0.25, 1.25, 2.25, 0.75]
    data = VolumeDataset(level_volumes(levels), targets=levels)
    train, val = data.subset(range(8)), data.subset([8, 9])
    model = make_model(Regression(hidden=16))
    history = run(model, train, val, epochs=5, lr=1e-2)
    train_loss = losses(history)
    assert train_loss[-1] < 0.5 * train_loss[0]
    assert {"val_loss", "val_mae"} <= history.last.keys()
    assert history.last["val_mae"] >= 0 and math.isfinite(history.last["val_mae"])
    # the best regression epoch is the one with the lowest validation loss
    val_loss = losses(history, "val_loss")
    assert history.best_epoch == 1 + val_loss.index(min(val_loss))


def test_quantile_regression_trains_and_reports_pinball():
    levels = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 0.25, 1.25, 2.25, 0.75]
    data = VolumeDataset(level_volumes(levels), targets=levels)
    train, val = data.subset(range(8)), data.subset([8, 9])
    model = make_model(QuantileRegression((0.1, 0.5, 0.9), hidden=16))
    history = run(model, train, val, epochs=5, lr=1e-2)
    train_loss = losses(history)
    assert train_loss[-1] < 0.7 * train_loss[0]
    assert {"val_loss", "val_mae", "val_pinball"} <= history.last.keys()
    # the pinball loss of the validation set is the validation loss of this head
    assert history.last["val_pinball"] == pytest.approx(history.last["val_loss"], rel=1e-5)


def test_reconstruction_trains_without_targets():
    volumes, _ = blob_volumes(4)
    data = VolumeDataset(volumes)
    torch.manual_seed(0)
    model = ImplicitVolume(GRID, features=4, patch=3, rank=2, hidden=16)
    history = run(model, data, data, epochs=4, batch_size=2, lr=1e-2)
    train_loss = losses(history)
    assert train_loss[-1] < 0.7 * train_loss[0]
    assert set(evaluate(model, data)) == {"val_loss"}
    assert "val_loss" in history.last


# ---------------------------------------------------------------------- extra features


def test_extra_features_train_and_mismatch_is_rejected_before_training():
    volumes, labels = blob_volumes(4)
    ages = [[0.2], [0.7], [0.4], [0.9]]
    model = make_model(Classification(2, hidden=16), extra_features=1)
    history = run(model, VolumeDataset(volumes, labels, extra=ages), epochs=1, batch_size=2)
    assert math.isfinite(history.last["train_loss"])

    fresh = make_model(Classification(2, hidden=16), extra_features=1)
    with pytest.raises(ValueError, match="extra features"):
        run(fresh, VolumeDataset(volumes, labels), epochs=1)
    with pytest.raises(ValueError, match="1 extra features; the training dataset has 2"):
        run(fresh, VolumeDataset(volumes, labels, extra=[[0.0, 1.0]] * 4), epochs=1)
    with pytest.raises(ValueError, match="validation"):
        run(fresh, VolumeDataset(volumes, labels, extra=ages), VolumeDataset(volumes, labels), epochs=1)
    assert fresh.pivots.counts.selected == 0

    plain = make_model(Classification(2, hidden=16))
    with pytest.raises(ValueError, match="no extra features"):
        run(plain, VolumeDataset(volumes, labels, extra=ages), epochs=1)


# ---------------------------------------------------------------------- CSV manifests


def write_manifest(tmp_path, rows, header="path,label,age", name="manifest.csv"):
    lines = [header] + [",".join(str(v) for v in row) for row in rows]
    (tmp_path / name).write_text("\n".join(lines) + "\n")
    return tmp_path / name


def save_volumes(tmp_path, n):
    (tmp_path / "vols").mkdir()
    paths = []
    for i, v in enumerate(blob_arrays(n)):
        paths.append(tmp_path / "vols" / f"v{i}.npy")
        np.save(paths[-1], v.numpy())
    return paths


def test_csv_manifest_string_labels_and_extras(tmp_path):
    paths = save_volumes(tmp_path, 4)
    rows = [
        ("vols/v0.npy", "healthy", 61),
        ("vols/v1.npy", "tumour", 47),
        (str(paths[2]), "healthy", 55.5),  # an absolute path
        ("vols/v3.npy", "tumour", 70),
    ]
    data = VolumeDataset.from_csv(write_manifest(tmp_path, rows), extra=["age"])
    assert data.classes == ["healthy", "tumour"]
    assert data.targets.tolist() == [0, 1, 0, 1]
    assert data.extra.tolist() == [[61.0], [47.0], [55.5], [70.0]]
    assert data.names == ["v0.npy", "v1.npy", "v2.npy", "v3.npy"]
    assert data.source(1).shape == GRID

    # the manifest's volumes and ages train a model with one extra feature
    model = make_model(Classification(2, hidden=16), extra_features=1)
    history = run(model, data, epochs=1, batch_size=2)
    assert math.isfinite(history.last["train_loss"])


def test_csv_manifest_integer_and_numeric_targets(tmp_path):
    save_volumes(tmp_path, 2)
    rows = [("vols/v0.npy", 3, 1), ("vols/v1.npy", 0, 2)]
    data = VolumeDataset.from_csv(write_manifest(tmp_path, rows))
    assert data.classes is None and data.targets.tolist() == [3, 0]
    rows = [("vols/v0.npy", 1.5, 1), ("vols/v1.npy", -2, 2)]
    data = VolumeDataset.from_csv(write_manifest(tmp_path, rows), task="regression")
    assert data.targets.tolist() == [1.5, -2.0] and data.extra is None


def test_csv_manifest_errors(tmp_path):
    save_volumes(tmp_path, 2)
    with pytest.raises(ValueError, match="does not exist"):
        VolumeDataset.from_csv(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="no rows"):
        VolumeDataset.from_csv(write_manifest(tmp_path, []))
    manifest = write_manifest(tmp_path, [("vols/v0.npy", "a", 61)])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['weight'\]"):
        VolumeDataset.from_csv(manifest, extra=["age", "weight"])
    with pytest.raises(ValueError, match="lacks the column"):
        VolumeDataset.from_csv(manifest, target="diagnosis")
    bad_age = write_manifest(tmp_path, [("vols/v0.npy", "a", 61), ("vols/v1.npy", "b", "sixty")])
    with pytest.raises(ValueError, match=r"row 3: column 'age' must be a number, got 'sixty'"):
        VolumeDataset.from_csv(bad_age, extra=["age"])
    with pytest.raises(ValueError, match=r"row 2: column 'label' must be a number, got 'a'"):
        VolumeDataset.from_csv(manifest, task="regression")

    # a missing volume file: named when it is first opened, which fit does before any step
    manifest = write_manifest(tmp_path, [("vols/v0.npy", 0, 1), ("vols/nope.npy", 1, 2)])
    missing = VolumeDataset.from_csv(manifest)
    with pytest.raises(ValueError, match="nope.npy"):
        missing.source(1)
    model = make_model(Classification(2, hidden=16))
    with pytest.raises(ValueError, match="nope.npy"):
        run(model, missing, epochs=1)
    assert model.pivots.counts.selected == 0


def test_split_is_stratified_and_disjoint():
    volumes, labels = blob_volumes(12)
    data = VolumeDataset(volumes, labels)
    rest, held = data.split(1 / 3, seed=0)
    assert sorted(rest.names + held.names) == sorted(data.names)
    assert sorted(held.targets.tolist()) == [0, 0, 1, 1]
    assert data.split(1 / 3, seed=0)[1].names == held.names  # seeded
    with pytest.raises(ValueError, match="validation fraction"):
        data.split(1.0)


def tiny_volumes(n: int) -> list:
    return [cpic.open_volume(torch.zeros(2, 2, 2)) for _ in range(n)]


def test_split_of_ten_classes_of_four_validates_every_class():
    labels = [i % 10 for i in range(40)]
    rest, held = VolumeDataset(tiny_volumes(40), labels).split(0.2, seed=0)
    assert sorted(held.targets.tolist()) == list(range(10))  # round(0.8) = 1 per class
    assert sorted(rest.targets.tolist()) == sorted(list(range(10)) * 3)


def test_split_of_uneven_classes_keeps_each_class_on_both_sides():
    counts = {0: 2, 1: 3, 2: 10, 3: 25}
    labels = [c for c, n in counts.items() for _ in range(n)]
    names = [f"v{i}" for i in range(len(labels))]
    rest, held = VolumeDataset(tiny_volumes(len(labels)), labels, names=names).split(0.2, seed=1)
    held_counts = torch.bincount(held.targets, minlength=4).tolist()
    rest_counts = torch.bincount(rest.targets, minlength=4).tolist()
    assert held_counts == [1, 1, 2, 5]  # at least one; round(0.6) = 1, round(2.0), round(5.0)
    assert rest_counts == [1, 2, 8, 20]
    assert abs(len(held) / len(labels) - 0.2) < 0.05
    assert not set(rest.names) & set(held.names)


def test_split_names_a_class_with_a_single_volume():
    data = VolumeDataset(tiny_volumes(5), [0, 0, 1, 1, 2], classes=["healthy", "lesion", "tumour"])
    with pytest.raises(ValueError, match=r"class 'tumour' has 1 volume.*--val-manifest.*--val 0"):
        data.split(0.2)
    with pytest.raises(ValueError, match=r"classes 2, 3 each have 1 volume"):  # ids without names
        VolumeDataset(tiny_volumes(6), [0, 0, 1, 1, 2, 3]).split(0.5)


def test_split_of_real_targets_is_random_and_keeps_both_parts():
    data = VolumeDataset(tiny_volumes(10), [float(i) for i in range(10)])
    rest, held = data.split(0.2, seed=0)
    assert (len(rest), len(held)) == (8, 2)
    assert len(VolumeDataset(tiny_volumes(2), [0.5, 1.5]).split(0.01)[1]) == 1  # never an empty part
    with pytest.raises(ValueError, match=r"at least 2 volumes, the dataset has 1.*--val 0"):
        VolumeDataset(tiny_volumes(1), [0.5]).split(0.2)


@pytest.mark.parametrize("targets", [[i % 4 for i in range(24)], [i / 3 for i in range(24)], None])
def test_split_depends_only_on_the_seed(targets):
    data = VolumeDataset(tiny_volumes(24), targets, names=[f"v{i}" for i in range(24)])
    first = data.split(0.25, seed=7)[1].names
    assert data.split(0.25, seed=7)[1].names == first
    assert any(data.split(0.25, seed=s)[1].names != first for s in range(8))


# ---------------------------------------------------------------------- target checks


@pytest.mark.parametrize(
    "head, targets, message",
    [
        (Classification(2), [0, 1, 2, 1], "class id 2 is outside"),
        (Classification(2), [0, -1, 0, 1], "class id -1 is outside"),
        (Classification(2), [0.5, 1.0, 0.0, 1.0], "integer class ids"),
        (Regression(), [0.0, float("nan"), 1.0, 2.0], "NaN"),
        (QuantileRegression(), [0.0, 1.0, float("inf"), 2.0], "NaN or infinite"),
        (Regression(), None, "has no targets"),
    ],
)
def test_bad_targets_are_rejected_before_any_step(head, targets, message):
    volumes, _ = blob_volumes(4)
    model = make_model(head)
    with pytest.raises(ValueError, match=message):
        run(model, VolumeDataset(volumes, targets), epochs=1)
    assert model.pivots.counts.selected == 0


def test_bad_validation_targets_are_rejected_before_any_step():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2))
    with pytest.raises(ValueError, match="validation targets: class id 5"):
        run(model, VolumeDataset(volumes, labels), VolumeDataset(volumes, [0, 1, 5, 0]), epochs=1)
    assert model.pivots.counts.selected == 0


def test_string_labels_are_rejected_for_regression(tmp_path):
    save_volumes(tmp_path, 2)
    manifest = write_manifest(tmp_path, [("vols/v0.npy", "young", 1), ("vols/v1.npy", "old", 2)])
    with pytest.raises(ValueError, match="must be a number"):
        VolumeDataset.from_csv(manifest, task="regression")
    # read as classes, then given to a regression model: refused, not trained on class ids
    data = VolumeDataset.from_csv(manifest)
    model = make_model(Regression())
    with pytest.raises(ValueError, match="class labels .* numeric targets"):
        run(model, data, epochs=1)
    assert model.pivots.counts.selected == 0
    with pytest.raises(ValueError):
        VolumeDataset([cpic.open_volume(torch.zeros(GRID))] * 2, targets=["young", "old"])


# ---------------------------------------------------------------------- checkpoints and resume


def test_checkpoints_and_resume(tmp_path):
    train, val = classification_data(8)
    ckpt = tmp_path / "ckpt"
    first = make_model(Classification(2, hidden=16))
    saved = run(first, train, val, epochs=2, checkpoint_dir=ckpt)
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json"):
        assert (ckpt / name).is_file()
    after_two = {k: v.clone() for k, v in first.state_dict().items()}

    tensors, meta = load_checkpoint(ckpt / "last")
    assert meta["epoch"] == 2 and meta["history"] == saved.rows and meta["config"] == first.config
    assert meta["best_epoch"] == saved.best_epoch
    for key, value in after_two.items():
        assert torch.equal(tensors[f"model/{key}"], value), key
    _, best_meta = load_checkpoint(ckpt / "best")
    assert best_meta["epoch"] == saved.best_epoch

    # resuming at the saved epoch loads the state and trains nothing: the parameters are the
    # checkpointed ones, as they stand before the third epoch
    resumed = make_model(Classification(2, hidden=16), init_seed=1)
    assert not all(torch.equal(v, after_two[k]) for k, v in resumed.state_dict().items())
    loaded = run(resumed, train, val, epochs=2, checkpoint_dir=ckpt, resume=True)
    # nothing was selected: the pivots are the checkpointed ones, with their counts
    assert loaded.rows == saved.rows and resumed.pivots.counts == first.pivots.counts
    for key, value in resumed.state_dict().items():
        assert torch.equal(value, after_two[key]), key

    # a third epoch continues from there
    history = run(resumed, train, val, epochs=3, checkpoint_dir=ckpt, resume=True)
    assert [row["epoch"] for row in history.rows] == [1, 2, 3]
    assert history.rows[:2] == saved.rows
    assert math.isfinite(history.rows[2]["train_loss"])
    assert load_checkpoint(ckpt / "last")[1]["epoch"] == 3
    assert not all(torch.equal(v, after_two[k]) for k, v in resumed.state_dict().items())

    # the optimiser state travelled too: AdamW's step count is the one of three epochs
    steps = load_checkpoint(ckpt / "last")[0]
    step_keys = [k for k in steps if k.startswith("optim/") and k.endswith("/step")]
    assert step_keys and all(float(steps[k]) == 3 * 2 for k in step_keys)  # 6 train volumes / 4 per batch

    other = make_model(Classification(2, hidden=16), rank=3)
    with pytest.raises(ValueError, match="config"):
        run(other, train, val, epochs=3, checkpoint_dir=ckpt, resume=True)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _model_tensors(path) -> dict:
    return {k[6:]: v for k, v in load_checkpoint(path)[0].items() if k.startswith("model/")}


def test_the_best_epochs_weights_are_kept_and_match_its_checkpoint(tmp_path):
    volumes, labels = blob_volumes(12)
    train, val = VolumeDataset(volumes, labels, classes=["empty", "cube"]).split(1 / 3, seed=0)
    model = make_model(Classification(2, hidden=16))
    # lr 0.3 makes the validation metrics swing: an epoch before the last is the best (fixed seeds)
    history = run(model, train, val, epochs=5, lr=0.3, checkpoint_dir=tmp_path, provenance={"target": "kind"})
    best_row = max(history.rows, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    best = best_row["epoch"]
    assert history.monitor == "val_accuracy" and history.best_epoch == best < len(history.rows) == 5
    assert history.best == best_row
    last = {k: v.clone() for k, v in model.state_dict().items()}
    assert _states_equal(last, _model_tensors(tmp_path / "last"))
    assert _states_equal(history.best_state, _model_tensors(tmp_path / "best"))
    assert not _states_equal(history.best_state, last)
    assert history.restore_best(model) == best and _states_equal(model.state_dict(), history.best_state)

    # every checkpoint carries what prediction needs, and load_model takes it
    for name, epoch, weights in (("best", best, history.best_state), ("last", 5, last)):
        loaded, meta = load_model(tmp_path / name)
        assert meta["kind"] == "checkpoint" and meta["provenance"]["epoch"] == epoch
        assert meta["provenance"]["classes"] == ["empty", "cube"] and meta["provenance"]["target"] == "kind"
        assert meta["provenance"]["best_epoch"] == best and _states_equal(loaded.state_dict(), weights)
    best_model = load_model(tmp_path / "best")[0].eval()
    sources = [val.source(i) for i in range(len(val))]
    torch.testing.assert_close(best_model(sources), model.eval()(sources))

    # a resumed run that has nothing left to train still knows the best epoch's weights
    resumed = make_model(Classification(2, hidden=16), init_seed=1)
    again = run(resumed, train, val, epochs=5, lr=0.3, checkpoint_dir=tmp_path, resume=True)
    assert again.best_epoch == best and _states_equal(again.best_state, history.best_state)


def test_without_validation_the_last_epoch_is_kept_and_provenance_must_be_json(tmp_path):
    train, _ = classification_data(8)
    model = make_model(Classification(2, hidden=16))
    history = run(model, train, epochs=2)
    assert history.best_epoch is None and history.monitor is None and history.best == history.last
    assert _states_equal(history.best_state, model.state_dict()) and history.restore_best(model) == 2
    with pytest.raises(ValueError, match="provenance must hold JSON values"):
        run(model, train, epochs=1, provenance={"when": object()})
    with pytest.raises(ValueError, match="no epoch has finished"):
        type(history)().restore_best(model)


def test_fit_prints_one_line_per_epoch_only_with_progress(capsys):
    train, val = classification_data(8)
    run(make_model(Classification(2, hidden=16)), train, val, epochs=2, progress=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("epoch ") and "train_loss" in line]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  train_loss ")
    assert "val_accuracy" in lines[0] and "(best)" in lines[0] and "voxels read" in lines[1]
    assert lines[1].endswith(" s")
    run(make_model(Classification(2, hidden=16)), train, val, epochs=2, progress=False)
    assert "train_loss" not in capsys.readouterr().err


def test_resume_needs_a_directory_and_starts_fresh_without_checkpoint(tmp_path):
    train, _ = classification_data(8)
    model = make_model(Classification(2, hidden=16))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        run(model, train, epochs=1, resume=True)
    history = run(model, train, epochs=1, checkpoint_dir=tmp_path / "new", resume=True)
    assert len(history.rows) == 1 and (tmp_path / "new" / "last.json").is_file()
    # without validation there is no best epoch and no best checkpoint
    assert history.best_epoch is None and not (tmp_path / "new" / "best.json").exists()


def test_corrupt_checkpoint_is_refused(tmp_path):
    train, _ = classification_data(8)
    run(make_model(Classification(2, hidden=16)), train, epochs=1, checkpoint_dir=tmp_path)
    with open(tmp_path / "last.safetensors", "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(CheckpointError, match="sha256"):
        run(make_model(Classification(2, hidden=16)), train, epochs=2, checkpoint_dir=tmp_path, resume=True)


# ---------------------------------------------------------------------- CSV log


def read_log(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_csv_log_rows_and_resume_appends(tmp_path):
    train, val = classification_data(8)
    log = tmp_path / "log.csv"
    ckpt = tmp_path / "ckpt"
    model = make_model(Classification(2, hidden=16))
    history = run(model, train, val, epochs=2, checkpoint_dir=ckpt, log_csv=log)
    lines = read_log(log)
    header = lines[0]
    assert header == list(history.rows[0])
    assert set(header) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_auc",
        "seconds",
        "fraction_read",
    }
    assert [row[0] for row in lines[1:]] == ["1", "2"]
    col = header.index("train_loss")
    assert [float(row[col]) for row in lines[1:]] == pytest.approx(losses(history))

    resumed = make_model(Classification(2, hidden=16))
    run(resumed, train, val, epochs=3, checkpoint_dir=ckpt, resume=True, log_csv=log)
    lines = read_log(log)
    assert lines[0] == header and sum(line == header for line in lines) == 1
    assert [row[0] for row in lines[1:]] == ["1", "2", "3"]


# ---------------------------------------------------------------------- numerical failures


def test_nan_head_once_is_retried_with_fresh_pivots():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    model.head.net = Faulty(model.head.net, bad=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a retried step is not a skipped one: no warning
        history = run(model, VolumeDataset(volumes, labels), epochs=1, batch_size=2)
    assert history.numerics["nonfinite_loss"] == 1
    assert history.numerics.get("skipped_steps", 0) == 0
    assert math.isfinite(history.last["train_loss"])
    # the failing batch's two volumes were forgotten and selected again
    assert model.pivots.counts.selected == 4 + 2


def test_nan_head_always_skips_steps_with_a_warning():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.head.net = Faulty(model.head.net, always=True)
    with pytest.warns(UserWarning, match="skipped a step") as record:
        history = run(model, VolumeDataset(volumes, labels), epochs=1, batch_size=2)
    assert len(record) == 2
    assert history.numerics["skipped_steps"] == 2 and history.numerics["nonfinite_loss"] == 4
    # no step was taken, and the epoch reports no loss rather than a perfect one
    assert math.isnan(history.last["train_loss"])
    after = {k.replace("head.net.inner.", "head.net."): v for k, v in model.state_dict().items()}
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_nan_encoder_during_pivot_selection_is_retried():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    model.encoder = Faulty(model.encoder, bad=(1,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = run(model, VolumeDataset(volumes, labels), epochs=1, batch_size=2)
    assert history.numerics["numerical_error"] == 1
    assert history.numerics.get("skipped_steps", 0) == 0
    assert math.isfinite(history.last["train_loss"]) and model.pivots.counts.selected == 4


def test_nan_encoder_always_skips_steps_with_a_warning():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    model.encoder = Faulty(model.encoder, always=True)
    with pytest.warns(UserWarning, match="skipped a step"):
        history = run(model, VolumeDataset(volumes, labels), epochs=2, batch_size=2)
    assert history.numerics["skipped_steps"] == 4 and history.numerics["numerical_error"] == 8
    assert all(math.isnan(loss) for loss in losses(history))


def test_nan_encoder_during_interpolation_refreshes_pivots():
    # count the encoder calls of one clean step: the last one is the differentiable interpolation
    volumes, labels = blob_volumes(4)
    data = VolumeDataset(volumes, labels)
    clean = make_model(Classification(2, hidden=16))
    clean.encoder = Faulty(clean.encoder, bad=())
    run(clean, data, epochs=1, batch_size=4)
    calls = clean.encoder.calls

    model = make_model(Classification(2, hidden=16))
    model.encoder = Faulty(model.encoder, bad=(calls,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = run(model, data, epochs=1, batch_size=4)
    assert history.numerics["refreshed"] == 1
    assert history.numerics.get("skipped_steps", 0) == 0
    assert math.isfinite(history.last["train_loss"])


def test_usage_errors_inside_a_step_are_not_swallowed():
    volumes, labels = blob_volumes(4)

    class WrongWidth(nn.Module):
        def forward(self, patches):
            return torch.zeros(len(patches), 3)

    model = make_model(Classification(2, hidden=16), encoder=WrongWidth())
    with pytest.raises(ValueError, match="encoder must map patches"):
        run(model, VolumeDataset(volumes, labels), epochs=1, batch_size=2)


# ---------------------------------------------------------------------- pivot refresh


def test_refresh_each_epoch_after_the_first():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    run(model, VolumeDataset(volumes, labels), epochs=3, batch_size=2, refresh="epoch")
    assert model.pivots.counts.selected == 4
    assert model.pivots.counts.refreshed == 4 * 2


def test_refresh_none_never_refreshes():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    run(model, VolumeDataset(volumes, labels), epochs=3, batch_size=2, refresh=None)
    assert model.pivots.counts.selected == 4 and model.pivots.counts.refreshed == 0


def test_refresh_every_two_uses():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    run(model, VolumeDataset(volumes, labels), epochs=5, batch_size=2, refresh=2)
    # each volume is used once an epoch: selected at 1, reused at 2, refreshed at 3 and 5
    assert model.pivots.refresh_every == 2
    assert model.pivots.counts.selected == 4 and model.pivots.counts.refreshed == 4 * 2


def test_refresh_epoch_grows_across_epochs():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    data = VolumeDataset(volumes, labels)
    counts = []
    for _ in range(3):
        run(model, data, epochs=2, batch_size=2, refresh="epoch")
        counts.append(model.pivots.counts.refreshed)
    # each call's second epoch refreshes all four volumes; its first reuses what is there
    assert counts == [4, 8, 12]


# ---------------------------------------------------------------------- evaluate and arguments


def test_evaluate_returns_task_metrics():
    volumes, labels = blob_volumes(4)
    model = make_model(Classification(2, hidden=16))
    out = evaluate(model, VolumeDataset(volumes, labels), batch_size=3)
    assert set(out) == {"val_loss", "val_accuracy", "val_auc"}
    assert 0 <= out["val_accuracy"] <= 1 and out["val_loss"] > 0
    assert set(evaluate(model, VolumeDataset(volumes, labels), split="test")) == {
        "test_loss",
        "test_accuracy",
        "test_auc",
    }
    # integral float class ids are accepted by fit, so evaluate must score them too
    floats = evaluate(model, VolumeDataset(volumes, [float(v) for v in labels]))
    assert floats["val_accuracy"] == out["val_accuracy"]
    assert not model.training

    levels = [0.0, 1.0, 2.0, 3.0]
    reg = make_model(Regression(hidden=16))
    assert set(evaluate(reg, VolumeDataset(level_volumes(levels), levels))) == {"val_loss", "val_mae"}
    quant = make_model(QuantileRegression((0.25, 0.5, 0.75), hidden=16))
    assert set(evaluate(quant, VolumeDataset(level_volumes(levels), levels))) == {
        "val_loss",
        "val_mae",
        "val_pinball",
    }


def test_bad_arguments_are_rejected():
    volumes, labels = blob_volumes(4)
    data = VolumeDataset(volumes, labels)
    model = make_model(Classification(2, hidden=16))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        run(model, data, optimizer="sgd")
    for batch_size in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="batch_size"):
            run(model, data, batch_size=batch_size)
    for refresh in ("always", True, 0, -3):
        with pytest.raises(ValueError, match="refresh"):
            run(model, data, refresh=refresh)
    assert model.pivots.counts.selected == 0 and model.pivots.refresh_every is None


def test_radam_trains():
    train, val = classification_data(8)
    model = make_model(Classification(2, hidden=16))
    history = run(model, train, val, epochs=2, optimizer="radam", lr=1e-2)
    assert len(history.rows) == 2 and all(math.isfinite(loss) for loss in losses(history))
    assert "val_accuracy" in history.last


def test_max_minutes_stops_after_the_first_epoch():
    train, _ = classification_data(8)
    history = run(make_model(Classification(2, hidden=16)), train, epochs=5, max_minutes=0)
    assert len(history.rows) == 1
