"""Data-parallel training (docs/scaling.md): 2 gloo processes on localhost against 1 process.

Tolerances, "the same model": the 2-process model's outputs (logits) on every volume equal the
1-process model's within 1e-5, and so do the logged losses. Only the order of float sums differs
(the all-reduce sums each rank's batch-weighted float32 gradient in float64; the gradients agree
to ~1e-8). The parameters are held to 3e-3, the learning rate, i.e. under one AdamW step: AdamW
divides by sqrt(v) + 1e-8, so a weight whose gradient is ~1e-9 moves by a visibly different
amount when that gradient's last bits differ. Measured: parameters 5e-7 to 9e-6 apart on the
ball cohort (7 cohort paths), 5e-4 on the 8^3 noise volumes, where the logits still agree to 7e-8.
"""

import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import cpic
from cpic.cli.main import main
from cpic.nn import Classification
from cpic.sources import VolumeSource
from cpic.train import Distributed, VolumeDataset, fit, load_checkpoint, load_model
from cpic.train.distributed import leave as _leave
from cpic.train.launch import free_port, launch, worker_env

SRC = str(Path(cpic.__file__).parents[1])  # the cpic under test, also in the workers
TOLERANCE = 1e-5  # outputs and losses
PARAMETERS = 3e-3  # the learning rate: less than one AdamW step
SIDE = 16
SMALL = ["--rank", "3", "--features", "4", "--patch", "3", "--batch-size", "5", "--quiet"]
SMALL += ["--sampler", "cross"]  # its reads depend on each volume alone: the same for any process count


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [env.get("PYTHONPATH")])])
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _write_zarr3_sharded(path: Path, volume: np.ndarray) -> None:
    """The layout docs/scaling.md recommends: Zarr v3, 8^3 chunks inside one shard per volume here."""
    ts = pytest.importorskip("tensorstore")
    inner = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "zstd"}]
    spec = {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": list(volume.shape),
            "data_type": "float32",
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(volume.shape)}},
            "codecs": [
                {
                    "name": "sharding_indexed",
                    "configuration": {"chunk_shape": [8, 8, 8], "codecs": inner},
                }
            ],
        },
    }
    ts.open(spec, create=True, delete_existing=True).result().write(volume).result()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A manifest of 11 small volumes (balls of two sizes), memmapped .npy and sharded Zarr v3."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    grid = np.indices((SIDE,) * 3).astype(np.float32)
    rows = ["path,label"]
    for i in range(11):
        centre = SIDE / 2 + rng.normal(size=3)
        radius = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0))
        volume = (radius < 3 + 2 * (i % 2)).astype(np.float32) + 0.1 * rng.normal(size=radius.shape)
        volume = volume.astype(np.float32)
        if i % 3 == 2:
            _write_zarr3_sharded(root / f"v{i}.zarr", volume)
            rows.append(f"v{i}.zarr,{i % 2}")
        else:
            np.save(root / f"v{i}.npy", volume)
            rows.append(f"v{i}.npy,{i % 2}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    return root / "cohort.csv"


def _train_in_processes(manifest: Path, out: Path, nproc: int, *extra: str, timeout: float = 120):
    command = [sys.executable, "-m", "cpic.cli.main", "train", str(manifest), "-o", str(out)]
    return subprocess.run(
        [*command, *SMALL, "--nproc", str(nproc), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _assert_same_model(first: cpic.CPIC, second: cpic.CPIC, volumes: list) -> None:
    """Outputs within TOLERANCE, parameters within PARAMETERS (see the module's docstring)."""
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) < PARAMETERS
    with torch.no_grad():  # pivots selected afresh, per volume
        assert float((first(volumes) - second(volumes)).abs().max()) < TOLERANCE


def _same_files(a: Path, b: Path, manifest: Path) -> None:
    volumes = [cpic.open_volume(p) for p in sorted(manifest.parent.glob("v*"))]
    _assert_same_model(load_model(a)[0], load_model(b)[0], volumes)


def test_ownership_splits_every_global_batch_across_ranks():
    ranks = [Distributed(rank, 3) for rank in range(3)]
    batch = [7, 2, 9, 4, 0, 5]
    parts = [r.shard(batch) for r in ranks]
    assert sorted(sum(parts, [])) == sorted(batch) and parts == [[9, 0], [7, 4], [2, 5]]
    assert [len(r.owned(10)) for r in ranks] == [4, 3, 3]
    # outside a process group the collectives are the identity
    one = Distributed()
    assert one.mean([1.0, 3.0], [1, 3]) == 2.5 and one.agree(True) and not one.active


def _collectives(rank: int, port: int, out: str) -> None:
    """Rank ``rank`` of 2 (gloo): every collective of Distributed once, results to ``out``."""
    dist.init_process_group(
        "gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )
    ctx = Distributed(rank, 2)
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.full_like(model.weight, [1.0, 5.0][rank])  # the bias gets none
    step = ctx.sync_gradients(model, [0.5, 1.5][rank], [3, 1][rank])
    result = {"step": step, "weight": model.weight.grad.tolist(), "bias": model.bias.grad}
    model.weight.grad = torch.full_like(model.weight, 7.0)
    result["skipped"] = ctx.sync_gradients(model, [0.5, None][rank], [2, 2][rank])  # rank 1 skipped
    result["weight_skipped"] = model.weight.grad.tolist()
    result["gather"] = ctx.gather(10 * torch.tensor(ctx.owned(5)), 5).tolist()
    result["total"] = ctx.total(Counter(skipped_steps=rank + 1, drift=1), since=Counter(drift=1))
    result["mean"] = ctx.mean([float(rank)] * (rank + 1), [1.0] * (rank + 1))
    result["agree"] = ctx.agree(rank == 0)
    result["objects"] = ctx.gather_objects({"rank": rank})
    # fit() joins the process group; each rank opens only the volumes it owns
    model, train, val = _small_run(Path(out))
    result["opened"] = [
        [i for i, v in enumerate(d._items) if isinstance(v, VolumeSource)] for d in (train, val)
    ]
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(out, f"fit{rank}.safetensors"))
    )
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # neither rank leaves (and drops its connections) while the other still works
    dist.destroy_process_group()
    # the results are on disk: leave as `cpic train`'s ranks do, without the interpreter's
    # teardown, where gloo's threads can still end rank 0 in std::terminate (SIGABRT)
    _leave(0)


def _small_model() -> cpic.CPIC:
    torch.manual_seed(0)
    return cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=2)


def _trained(state: dict) -> cpic.CPIC:
    model = _small_model()
    model.load_state_dict(state)
    return model


def _small_run(root: Path):
    """fit() on 6 + 3 volumes of 8^3 given as .npy paths (opened on first use)."""
    paths = [str(root / f"b{i}.npy") for i in range(9)]
    labels = [i % 2 for i in range(9)]
    train, val = VolumeDataset(paths[:6], labels[:6]), VolumeDataset(paths[6:], labels[6:])
    model = _small_model()
    fit(model, train, val, epochs=2, batch_size=3, progress=False)
    return model, train, val


def test_the_collectives_weight_each_rank_by_its_items(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(9):
        np.save(tmp_path / f"b{i}.npy", (rng.random((8, 8, 8)) + i % 2).astype(np.float32))
    mp.spawn(_collectives, args=(free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    got = results[0]
    assert all(results[1][k] == v for k, v in got.items() if k != "opened")  # the same numbers
    assert got["step"] == [0.75, 4] and got["weight"] == [[2.0, 2.0]] and got["bias"] is None
    assert got["skipped"] == [0.5, 2] and got["weight_skipped"] == [[7.0, 7.0]]
    assert got["gather"] == [0, 10, 20, 30, 40]
    assert got["total"] == {"skipped_steps": 3, "drift": 1}
    assert got["mean"] == pytest.approx(2 / 3) and got["agree"] is True
    assert got["objects"] == [{"rank": 0}, {"rank": 1}]
    # each rank opened its own training and validation volumes, and no other
    assert [r["opened"] for r in results] == [[[0, 2, 4], [0, 2]], [[1, 3, 5], [1]]]
    one, train, val = _small_run(tmp_path)  # the same fit in this one process
    volumes = [train.source(i) for i in range(len(train))] + [val.source(i) for i in range(len(val))]
    for rank in range(2):
        _assert_same_model(one, _trained(load_file(str(tmp_path / f"fit{rank}.safetensors"))), volumes)


ARGS = ["--epochs", "2", "--val", "0.25"]


@pytest.fixture(scope="module")
def reference(cohort, tmp_path_factory) -> Path:
    """The one-process model (and its checkpoints in ``c1`` beside it)."""
    root = tmp_path_factory.mktemp("reference")
    one = root / "one"
    common = [str(cohort), *SMALL, *ARGS]
    assert main(["train", *common, "-o", str(one), "--checkpoint-dir", str(root / "c1")]) == 0
    return one


def test_two_processes_train_the_same_model_as_one_and_resume_on_another_count(cohort, reference, tmp_path):
    one, two = reference, tmp_path / "two"
    extra = ["--checkpoint-dir", str(tmp_path / "c2"), "--log-csv", str(tmp_path / "log.csv"), "--json"]
    out = _train_in_processes(cohort, two, 2, *ARGS, *extra)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["processes"] == 2  # rank 0 alone prints: one JSON object
    _same_files(one, two, cohort)
    history = [
        json.loads(p.read_text())["meta"]["provenance"]["history"]
        for p in (one.with_suffix(".json"), two.with_suffix(".json"))
    ]
    for a, b in zip(*history):  # validation is shared out too, and gives the same numbers
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=TOLERANCE)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOLERANCE)
        assert a["val_accuracy"] == b["val_accuracy"]
    # rank 0 alone wrote the log (one header, one row per epoch) and the checkpoints
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3
    _, meta = load_checkpoint(tmp_path / "c2" / "last")
    assert meta["epoch"] == 2
    # each rank's pivots were gathered into rank 0's checkpoint: every volume's, train and val
    _, one_meta = load_checkpoint(one.parent / "c1" / "last")
    assert sorted(meta["pivots"]["items"]) == sorted(one_meta["pivots"]["items"])
    assert len(meta["pivots"]["items"]) == 11

    # the 2-process checkpoint resumes in 1 process exactly as the 1-process one does
    for ckpt, name in ((one.parent / "c1", "r1"), (tmp_path / "c2", "r2")):
        more = [
            "--epochs",
            "3",
            "--resume",
            "--checkpoint-dir",
            str(ckpt),
            "-o",
            str(tmp_path / name),
        ]
        assert main(["train", str(cohort), *SMALL, "--val", "0.25", *more]) == 0
    _same_files(tmp_path / "r1", tmp_path / "r2", cohort)
    assert len(json.loads((tmp_path / "r2.json").read_text())["meta"]["provenance"]["history"]) == 3


def test_torchrun_starts_the_same_training(cohort, reference, tmp_path):
    """``torchrun -m cpic.train``: python -m torch.distributed.run is the torchrun command."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    out = subprocess.run(
        [*run, "-m", "cpic.train", str(cohort), "-o", str(tmp_path / "m"), *SMALL, *ARGS],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr
    _same_files(reference, tmp_path / "m", cohort)
    provenance = json.loads((tmp_path / "m.json").read_text())["meta"]["provenance"]
    assert provenance["processes"] == 2


def _children(pid: int) -> dict[int, int]:
    """``{rank: pid}`` of the worker processes that ``pid`` started (Linux /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0") if ppid == pid else []
        except (OSError, IndexError, ValueError):
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


def _wait_for(path: Path, proc: subprocess.Popen, limit: float = 90) -> None:
    deadline = time.monotonic() + limit
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_a_rank_that_dies_fails_the_launched_job_with_a_message(cohort, tmp_path):
    log = tmp_path / "log.csv"
    command = [sys.executable, "-m", "cpic.cli.main", "train", str(cohort), "-o", str(tmp_path / "m")]
    proc = subprocess.Popen(
        [*command, *SMALL, "--nproc", "2", "--epochs", "1000", "--log-csv", str(log)],
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        _wait_for(log, proc)  # training is under way
        os.kill(_children(proc.pid)[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    # named as the cause even when rank 0 has meanwhile stopped for want of it
    assert "cpic train: rank 1 of 2 was killed by SIGKILL" in stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_the_launcher_names_the_killed_rank_not_the_one_that_stopped_for_want_of_it(capfd):
    """Both ranks end between two polls: rank 0 with code 1, rank 1 by SIGKILL (the cause)."""
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL) if os.environ['RANK'] == '1' else exit(1)"
    assert launch([sys.executable, "-c", code], 2, poll=1.0) == 1
    assert "cpic train: rank 1 of 2 was killed by SIGKILL." in capfd.readouterr().err


def test_the_surviving_rank_of_a_torchrun_job_stops_with_a_message(cohort, tmp_path):
    """Under torchrun the agent stops the job too; the surviving worker must not hang on its own."""
    log, port = tmp_path / "log.csv", free_port()
    command = [sys.executable, "-m", "cpic.train", str(cohort), "-o", str(tmp_path / "m"), *SMALL]
    command += ["--epochs", "1000", "--log-csv", str(log), "--dist-timeout", "60"]
    workers = [
        subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=worker_env(r, 2, port, _env()))
        for r in range(2)
    ]
    try:
        _wait_for(log, workers[0])
        workers[1].kill()
        started = time.monotonic()
        _, stderr = workers[0].communicate(timeout=30)
        waited = time.monotonic() - started
    finally:
        for w in workers:
            w.kill()
            w.communicate()
    assert workers[0].returncode == 1 and waited < 30, stderr
    assert (
        "cpic train: training failed, no model was written: rank 0 lost contact with the other ranks: "
        in stderr
    )
    assert "one stopped, or did not answer within 60 s (" in stderr
    assert "Traceback" not in stderr


def test_the_process_group_is_one_process_outside_a_job():
    assert "WORLD_SIZE" not in os.environ
    from cpic.train import distributed

    ctx, device = distributed.init()
    assert ctx == Distributed() and device == torch.device("cpu")
