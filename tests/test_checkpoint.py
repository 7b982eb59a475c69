"""Checkpoints: exact resume of model + optimizer, atomic writes, corrupt files, flatten/unflatten."""

import hashlib
import json
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cpic.train.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    flatten_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten_state,
)


def assert_same(a, b):
    """Equal values of identical types, all the way down (tensors: same dtype and bits)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


def model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    return model, optimizer


def train_step(model, optimizer):
    x, y = torch.randn(8, 4), torch.randn(8, 3)
    optimizer.zero_grad()
    ((model(x) - y) ** 2).mean().backward()
    optimizer.step()


def save_training_state(path, model, optimizer, **meta):
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()}
    tensors, skeleton = flatten_state(state)
    return save_checkpoint(path, tensors, {"skeleton": skeleton, **meta})


def test_resume_is_bit_identical(tmp_path):
    model, optimizer = model_and_optimizer(0)
    for _ in range(3):
        train_step(model, optimizer)
    save_training_state(tmp_path / "ckpt", model, optimizer, step=3)
    train_step(model, optimizer)

    tensors, meta = load_checkpoint(tmp_path / "ckpt")
    state = unflatten_state(tensors, meta["skeleton"])
    assert meta["step"] == 3 and type(state["optimizer"]["param_groups"][0]["betas"]) is tuple
    resumed, resumed_optimizer = model_and_optimizer(1)
    resumed.load_state_dict(state["model"])
    resumed_optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    train_step(resumed, resumed_optimizer)

    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert_same(optimizer.state_dict(), resumed_optimizer.state_dict())


def test_optimizer_state_round_trips_exactly_through_json():
    model, optimizer = model_and_optimizer(0)
    train_step(model, optimizer)
    original = optimizer.state_dict()
    tensors, skeleton = flatten_state(original)
    assert_same(unflatten_state(tensors, json.loads(json.dumps(skeleton))), original)
    assert set(tensors) == {f"state/{i}/{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
dtypes = st.sampled_from([torch.int64, torch.float32, torch.bool])
small_tensors = st.builds(lambda n, dtype: torch.arange(n).to(dtype), st.integers(0, 3), dtypes)
# the markers of the skeleton and colliding paths among the keys
markers = ["__tensor__", "__tuple__", "__dict__", "__float__"]
keys = st.sampled_from([*markers, "a", "a/b", "b"]) | st.text(max_size=3)
any_keys = keys | st.integers() | st.tuples(st.integers(), st.text(max_size=2))
states = st.recursive(
    scalars | small_tensors,
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(any_keys, children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(keys, states, max_size=4))
def test_flatten_unflatten_round_trip(state):
    tensors, skeleton = flatten_state(state)
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    text = json.dumps(skeleton, allow_nan=False)  # strict JSON, even with nan and inf floats
    assert_same(unflatten_state(tensors, json.loads(text)), state)


def test_colliding_paths_get_distinct_keys():
    state = {"a/b": torch.zeros(1), "a": {"b": torch.ones(1)}}
    tensors, skeleton = flatten_state(state)
    assert len(tensors) == 2
    assert_same(unflatten_state(tensors, skeleton), state)


def test_flatten_rejects_what_json_cannot_hold():
    with pytest.raises(TypeError, match="opt/fn"):
        flatten_state({"opt": {"fn": print}})
    with pytest.raises(TypeError, match="state must be a dict"):
        flatten_state([torch.zeros(1)])
    with pytest.raises(CheckpointError, match="missing"):
        unflatten_state({}, {"__tensor__": "w"})


def test_suffix_handling(tmp_path):
    saved = save_checkpoint(tmp_path / "run" / "ckpt.safetensors", {"w": torch.ones(2)}, {"n": 1})
    assert saved == tmp_path / "run" / "ckpt.safetensors"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ckpt.json", "ckpt.safetensors"]
    for name in ("ckpt", "ckpt.safetensors", "ckpt.json"):
        tensors, meta = load_checkpoint(str(tmp_path / "run" / name))
        assert torch.equal(tensors["w"], torch.ones(2)) and meta == {"n": 1}
    assert [p.name for p in checkpoint_paths("ckpt.v1")] == ["ckpt.v1.safetensors", "ckpt.v1.json"]


def test_shared_and_odd_tensors_save_fine(tmp_path):
    base = torch.arange(6.0, requires_grad=True)
    tensors = {
        "base": base,
        "head": base[:3],
        "matrix": base.view(2, 3),
        "transposed": base.view(2, 3).t(),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 2),
        "flags": torch.tensor([True, False]),
    }
    save_checkpoint(tmp_path / "ckpt", tensors, {})
    loaded, _ = load_checkpoint(tmp_path / "ckpt", device=torch.device("cpu"))
    for name, tensor in tensors.items():
        assert_same(loaded[name], tensor.detach())


def test_json_is_replaced_last(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(1)}, {"version": "old"})
    real_replace = os.replace

    def save_failing_on_second_replace(name, undo):
        calls = []

        def replace(src, dst):
            calls.append(os.path.basename(dst))
            if len(calls) == 2:
                raise OSError("disk full")
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        with pytest.raises(OSError, match="disk full"):
            save_checkpoint(tmp_path / name, {"w": torch.ones(3)}, {"version": "new"})
        monkeypatch.setattr(os, "replace", real_replace)
        assert calls == [f"{name}.safetensors", f"{name}.json"] + undo

    save_failing_on_second_replace("ckpt", undo=["ckpt.safetensors"])  # the previous tensors put back
    save_failing_on_second_replace("fresh", undo=[])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt.json", "ckpt.safetensors"]  # no temporary or half-saved files left
    # the failed save was undone: the previous checkpoint loads as it was
    tensors, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta == {"version": "old"} and tensors["w"].tolist() == [0.0]
    with pytest.raises(CheckpointError, match="fresh.json"):
        load_checkpoint(tmp_path / "fresh")


def test_a_save_killed_between_its_renames_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """SIGKILL between the two renames runs no clean-up: new tensors, old JSON, the old tensors
    in the hidden backup. Loading falls back to the previous pair; the next save cleans up."""
    save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(1)}, {"epoch": 1})
    real_replace = os.replace

    class Killed(BaseException):
        pass

    dead = []

    def replace(src, dst):  # the process dies at the JSON's rename and does nothing after it
        if dead or str(dst).endswith(".json"):
            dead.append(dst)
            raise Killed
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(type(tmp_path), "unlink", lambda self, missing_ok=False: None)  # no clean-up
    with pytest.raises(Killed):
        save_checkpoint(tmp_path / "ckpt", {"w": torch.ones(1)}, {"epoch": 2})
    monkeypatch.undo()
    assert len(list(tmp_path.glob(".ckpt.json.*.tmp"))) == 1  # what the killed save left
    tensors, meta = load_checkpoint(tmp_path / "ckpt")
    assert meta == {"epoch": 1} and tensors["w"].tolist() == [0.0]
    save_checkpoint(tmp_path / "ckpt", {"w": torch.full((1,), 3.0)}, {"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.json", "ckpt.safetensors"]
    assert load_checkpoint(tmp_path / "ckpt")[1] == {"epoch": 3}


def test_unserialisable_meta_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "ckpt", {"w": torch.zeros(1)}, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def saved(tmp_path):
    save_checkpoint(tmp_path / "ckpt", {"w": torch.arange(100.0)}, {"epoch": 1})
    return checkpoint_paths(tmp_path / "ckpt")


def test_hash_mismatch_names_the_file(saved):
    st_path, _ = saved
    data = bytearray(st_path.read_bytes())
    data[-1] ^= 1
    st_path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256") as error:
        load_checkpoint(st_path)
    assert str(st_path) in str(error.value)


def test_truncated_file_names_the_file(saved):
    st_path, _ = saved
    st_path.write_bytes(st_path.read_bytes()[:50])
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(st_path)
    assert str(st_path) in str(error.value)


def test_non_safetensors_file_names_the_file(saved):
    st_path, json_path = saved
    st_path.write_bytes(b"\x80\x04 this is not safetensors")
    record = json.loads(json_path.read_text())
    record["sha256"] = hashlib.sha256(st_path.read_bytes()).hexdigest()
    json_path.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="not a readable safetensors") as error:
        load_checkpoint(st_path)
    assert str(st_path) in str(error.value)


def test_invalid_or_missing_files_name_the_file(saved):
    st_path, json_path = saved
    json_path.write_text('{"format": "cpic-checkpoint", ')
    with pytest.raises(CheckpointError, match="not valid JSON") as error:
        load_checkpoint(st_path)
    assert str(json_path) in str(error.value)
    json_path.write_text('{"weights": "elsewhere"}')
    with pytest.raises(CheckpointError, match="not a cpic-checkpoint"):
        load_checkpoint(st_path)
    json_path.unlink()
    with pytest.raises(CheckpointError, match="does not exist") as error:
        load_checkpoint(st_path)
    assert str(json_path) in str(error.value)


def test_missing_tensor_file_names_the_file(saved):
    st_path, _ = saved
    st_path.unlink()
    with pytest.raises(CheckpointError, match="do not exist") as error:
        load_checkpoint(st_path)
    assert str(st_path) in str(error.value)


def test_rng_state_round_trip_and_checks():
    gen = torch.Generator().manual_seed(5)
    state = rng_state(gen)
    first = torch.randn(4, generator=gen)
    set_rng_state(state, gen)
    assert torch.equal(torch.randn(4, generator=gen), first)
    with pytest.raises(ValueError, match="uint8"):
        set_rng_state(state.long(), gen)
