"""Crash safety: a resumed run ends with the same model as an uninterrupted one, also when the
training process is killed with SIGKILL at random moments (checkpoints are written atomically)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cpic.train import load_checkpoint
from tests.crash_train import train

ROOT = Path(__file__).parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}


def same_weights(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("refresh", ["epoch", 3, None])
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, refresh):
    """Stopping after each epoch (max_minutes=0) and resuming gives the uninterrupted run's
    weights, losses and pivots: pivots, batch order and random states travel in checkpoints."""
    straight, history = train(tmp_path / "straight", 4, refresh=refresh)
    for _ in range(3):
        train(tmp_path / "stepwise", 4, refresh=refresh, max_minutes=0)
    resumed, resumed_history = train(tmp_path / "stepwise", 4, refresh=refresh)
    assert same_weights(straight.state_dict(), resumed.state_dict())
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "fraction_read")} for row in history.rows]
    assert strip == [
        {k: v for k, v in row.items() if k not in ("seconds", "fraction_read")}
        for row in resumed_history.rows
    ]
    assert straight.pivots.counts == resumed.pivots.counts
    keys = list(straight.pivots._items)
    resumed_keys = list(resumed.pivots._items)
    assert len(keys) == len(resumed_keys) == 8
    for key, other in zip(keys, resumed_keys):
        a, b = straight.pivots._items[key], resumed.pivots._items[other]
        assert a.uses == b.uses and all(torch.equal(x, y) for x, y in zip(a.left + a.right, b.left + b.right))


def _epoch(last: Path) -> int:
    try:
        return json.loads(last.read_text())["meta"]["epoch"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def _cohort(root: Path) -> Path:
    """Eight 8^3 volumes (noise, every other one with a bright cube) and their manifest."""
    import numpy as np

    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(8):
        volume = 0.1 * rng.normal(size=(8, 8, 8)).astype(np.float32)
        volume[2:6, 2:6, 2:6] += i % 2
        np.save(root / f"v{i}.npy", volume)
        rows.append(f"v{i}.npy,{'ab'[i % 2]}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    return root / "cohort.csv"


def _train(manifest: Path, name: str, epochs: int) -> subprocess.Popen:
    """``cpic train --resume`` writing checkpoints to ``name-ckpt`` and the model to ``name``."""
    folder = manifest.parent
    args = ["train", manifest, "-o", folder / name, "--checkpoint-dir", folder / f"{name}-ckpt", "--resume",
            "--epochs", epochs, "--sampler", "cross", "--rank", 2, "--features", 3, "--patch", 3,
            "--batch-size", 2, "--val", 0.25, "--log-csv", folder / f"{name}.csv", "--quiet"]  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "cpic.cli.main", *map(str, args)],
        env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def test_sigkill_at_random_moments_resumes_to_the_same_model(tmp_path):
    """``cpic train --resume`` killed with SIGKILL three times at random moments, then run to
    the end, writes the same model (and log) as a run never interrupted."""
    epochs, manifest = 12, _cohort(tmp_path)
    reference = _train(manifest, "reference", epochs)
    rng, kills = random.Random(), []
    last = tmp_path / "killed-ckpt" / "last.json"
    for _ in range(3):
        proc = _train(manifest, "killed", epochs)
        before, started = _epoch(last), time.monotonic()
        while proc.poll() is None and _epoch(last) == before and time.monotonic() - started < 120:
            time.sleep(0.01)  # until this run has written a checkpoint of its own
        delay = rng.uniform(0.0, 0.3)  # then a random moment: a step, a validation or a save
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((_epoch(last), round(delay, 3)))
            if kills[-1][0] < epochs:  # killed before its last checkpoint: no model file yet
                assert not (tmp_path / "killed.safetensors").exists(), kills
    final = _train(manifest, "killed", epochs)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()
    # at least two runs were killed part-way: (epoch of the last checkpoint, delay) of each kill
    assert sum(0 < epoch < epochs for epoch, _ in kills) >= 2, kills
    weights, meta = load_checkpoint(tmp_path / "killed")
    expected, expected_meta = load_checkpoint(tmp_path / "reference")
    assert same_weights(weights, expected), kills
    losses = [[row["train_loss"], row["val_loss"]] for row in meta["provenance"]["history"]]
    assert losses == [[row["train_loss"], row["val_loss"]] for row in expected_meta["provenance"]["history"]]
    log = [line.split(",")[:3] for line in (tmp_path / "killed.csv").read_text().splitlines()]
    assert log == [line.split(",")[:3] for line in (tmp_path / "reference.csv").read_text().splitlines()]
    print("kills (checkpoint epoch, delay):", kills)


def test_reconstruction_resume_is_exact_too(tmp_path):
    """A reconstruction loss samples the voxels read so far: checkpoints carry them."""
    import cpic
    from cpic.nn import ImplicitVolume
    from cpic.train import VolumeDataset, fit

    def run(folder, **kwargs):
        gen = torch.Generator().manual_seed(0)
        volumes = [cpic.open_volume(torch.rand(8, 8, 8, generator=gen)) for _ in range(4)]
        torch.manual_seed(1)
        model = ImplicitVolume((8, 8, 8), features=3, patch=1, rank=2, positions=True)
        fit(model, VolumeDataset(volumes), epochs=3, batch_size=2, progress=False, checkpoint_dir=folder,
            resume=True, **kwargs)  # fmt: skip
        return model

    straight = run(tmp_path / "straight")
    for _ in range(2):
        run(tmp_path / "stepwise", max_minutes=0)
    assert same_weights(straight.state_dict(), run(tmp_path / "stepwise").state_dict())


def test_the_csv_log_matches_the_checkpoint_after_a_resume(tmp_path):
    """Killed after its checkpoint but before its log line, or after logging an epoch it redoes:
    on resume the log is made to hold exactly the checkpointed epochs, then continues."""
    log = tmp_path / "log.csv"
    train(tmp_path, 3, log_csv=log, max_minutes=0)
    train(tmp_path, 3, log_csv=log, max_minutes=0)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n")  # epoch 2 checkpointed, its log line lost
    train(tmp_path, 3, log_csv=log)
    assert [line.split(",")[0] for line in log.read_text().splitlines()] == ["epoch", "1", "2", "3"]
    log.write_text(log.read_text() + "4,0.1,0.1,0.5,0.5,1.0,0.1\n")  # an epoch the checkpoint lacks
    train(tmp_path, 3, log_csv=log)
    assert [line.split(",")[0] for line in log.read_text().splitlines()] == ["epoch", "1", "2", "3"]
