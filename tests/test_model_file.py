"""Model files: safetensors + JSON, rebuilt from their configuration, refused when they differ."""

import json

import pytest
import torch

import cpic
from cpic.nn import Classification, PatchMLP, QuantileRegression, Reconstruction, Regression
from cpic.train import CheckpointError, class_names, load_model, save_checkpoint, save_model
from cpic.train.checkpoint import checkpoint_paths


@pytest.mark.parametrize(
    "head,kwargs",
    [
        (Classification(3, hidden=16, label_smoothing=0.1), dict(projection="moments")),
        (Regression(outputs=2, loss="l1"), dict(projection="grid", extra_features=2)),
        (QuantileRegression((0.2, 0.8)), dict(encoder="conv", positions=True, background=0.0)),
        (Reconstruction(hidden=8), dict(layout=None)),
    ],
)
def test_a_saved_model_loads_with_the_same_configuration_and_weights(tmp_path, head, kwargs):
    torch.manual_seed(0)
    model = cpic.CPIC((16, 16, 12), head, features=4, patch=3, rank=3, **kwargs)
    save_model(model, tmp_path / "m", note="test")
    loaded, meta = load_model(tmp_path / "m.safetensors")
    assert loaded.config == model.config and meta["provenance"]["note"] == "test"
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    srcs = [cpic.open_volume(torch.rand(16, 16, 12)) for _ in range(2)]
    extra = torch.ones(2, 2) if kwargs.get("extra_features") else None
    if not isinstance(head, Reconstruction):  # same pivots (same seed) -> same predictions
        torch.testing.assert_close(model.eval()(srcs, extra=extra), loaded.eval()(srcs, extra=extra))


def test_files_of_another_version_shape_or_kind_are_refused(tmp_path):
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=2)
    save_model(model, tmp_path / "m")
    st_path, json_path = checkpoint_paths(tmp_path / "m")
    record = json.loads(json_path.read_text())

    record["meta"]["version"] = 99
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(tmp_path / "m")

    record["meta"]["version"] = 1
    record["meta"]["config"]["features"] = 8  # the tensors no longer fit the configuration
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path / "m")

    record["meta"]["format"] = "something-else"
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="neither a cpic model file nor"):
        load_model(tmp_path / "m")
    save_checkpoint(tmp_path / "other", {"w": torch.zeros(1)}, {"epoch": 1})  # not fit's either
    with pytest.raises(CheckpointError, match="neither a cpic model file nor a training checkpoint"):
        load_model(tmp_path / "other")


def test_class_names_are_the_recorded_names_else_integer_ids():
    model = cpic.CPIC((16, 16, 16), Classification(3), features=4, patch=3, rank=2)
    assert class_names(model.config, {}) == [0, 1, 2]
    assert class_names(model.config, {"classes": ["a", "b", "c"]}) == ["a", "b", "c"]
    regression = cpic.CPIC((16, 16, 16), Regression(), features=4, patch=3, rank=2)
    assert class_names(regression.config, {"classes": ["a"]}) is None


def test_custom_modules_cannot_be_saved_as_model_files(tmp_path):
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=2, encoder=PatchMLP(3, 4))
    with pytest.raises(ValueError, match="built-in encoder"):
        save_model(model, tmp_path / "m")
    assert not list(tmp_path.iterdir())
