"""Model files: safetensors + JSON, rebuilt from their configuration, refused when they differ."""

import json

import pytest
import torch

import cpic
from cpic.nn import (
    Classification,
    ExploreExploit,
    ImplicitVolume,
    LatticePatches,
    PatchMLP,
    QuantileRegression,
    RandomPatches,
    Regression,
)
from cpic.train import CheckpointError, class_names, load_model, save_checkpoint, save_model
from cpic.train.checkpoint import checkpoint_paths
from tests.helpers import reseal


@pytest.mark.parametrize(
    "head,kwargs",
    [
        (Classification(3, hidden=16, label_smoothing=0.1), dict(projection="moments")),
        (Regression(outputs=2, loss="l1"), dict(projection="grid", extra_features=2)),
        (QuantileRegression((0.2, 0.8)), dict(encoder="conv", positions=True, background=0.0)),
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
    torch.testing.assert_close(  # same pivots (same seed) -> same predictions
        model.eval()(srcs, extra=extra), loaded.eval()(srcs, extra=extra)
    )


def test_implicit_volumes_and_random_reads_round_trip_too(tmp_path):
    torch.manual_seed(0)
    implicit = ImplicitVolume((16, 16, 12), features=4, patch=3, rank=3, hidden=8)
    save_model(implicit, tmp_path / "implicit")
    loaded, _ = load_model(tmp_path / "implicit")
    assert isinstance(loaded, ImplicitVolume) and loaded.config == implicit.config
    random_reads = cpic.CPIC((16, 16, 12), Regression(), features=4, patch=3, reads=RandomPatches(300))
    save_model(random_reads, tmp_path / "random")
    loaded, _ = load_model(tmp_path / "random")
    assert isinstance(loaded.reads, RandomPatches) and loaded.reads.budget == 300
    srcs = [cpic.open_volume(torch.rand(16, 16, 12)) for _ in range(2)]
    torch.testing.assert_close(random_reads.eval()(srcs), loaded.eval()(srcs))


@pytest.mark.parametrize("policy", [LatticePatches(300), ExploreExploit(27 * 20, features=4, explore=0.4)])
def test_lattice_and_explore_exploit_models_round_trip_with_the_scorer(tmp_path, policy):
    torch.manual_seed(0)
    model = cpic.CPIC((16, 16, 12), Regression(), features=4, patch=3, reads=policy)
    if isinstance(policy, ExploreExploit):
        with torch.no_grad():
            policy.view_net.score.weight.normal_()  # a trained scorer's weights travel with the model
    save_model(model, tmp_path / "model")
    loaded, _ = load_model(tmp_path / "model")
    assert type(loaded.reads) is type(policy) and loaded.reads.config() == policy.config()
    if isinstance(policy, ExploreExploit):
        torch.testing.assert_close(loaded.reads.view_net.score.weight, policy.view_net.score.weight)
    srcs = [cpic.open_volume(torch.rand(16, 16, 12)) for _ in range(2)]
    torch.testing.assert_close(model.eval()(srcs), loaded.eval()(srcs))


def test_an_edited_configuration_is_refused_naming_the_file_and_the_key(tmp_path):
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=2)
    save_model(model, tmp_path / "m", classes=["a", "b"])
    _, json_path = checkpoint_paths(tmp_path / "m")
    record = json.loads(json_path.read_text())
    record["meta"]["config"]["rank"] = 3  # would silently change the predictions
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"m\.json: .*sealed.* at config\.rank"):
        load_model(tmp_path / "m")
    record["meta"]["config"]["rank"] = 2
    record["meta"]["provenance"]["classes"] = ["b", "a"]  # so would renamed classes
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="provenance.classes"):
        load_model(tmp_path / "m")


def test_files_of_an_older_format_are_refused_naming_both_versions(tmp_path):
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=2)
    save_model(model, tmp_path / "m")
    _, json_path = checkpoint_paths(tmp_path / "m")
    record = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**record, "version": 1}))
    with pytest.raises(CheckpointError, match="version 1; this code reads 2"):
        load_model(tmp_path / "m")
    record["meta"]["version"] = 1
    reseal(json_path, record)
    with pytest.raises(CheckpointError, match="model file version 1; this cpic reads version 2"):
        load_model(tmp_path / "m")


def test_files_of_another_version_shape_or_kind_are_refused(tmp_path):
    model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, rank=2)
    save_model(model, tmp_path / "m")
    st_path, json_path = checkpoint_paths(tmp_path / "m")
    record = json.loads(json_path.read_text())

    record["meta"]["version"] = 99
    reseal(json_path, record)
    with pytest.raises(CheckpointError, match="version 99"):
        load_model(tmp_path / "m")

    record["meta"]["version"] = 2
    record["meta"]["config"]["features"] = 8  # the tensors no longer fit the configuration
    reseal(json_path, record)
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path / "m")

    record["meta"]["format"] = "something-else"
    reseal(json_path, record)
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
