"""A small training run for the crash-safety tests; also a script: ``python -m tests.crash_train DIR``.

It trains with checkpoints in ``DIR/ckpt`` and ``resume=True`` (so a killed run, started again,
continues from its last checkpoint), then writes the final weights to ``DIR/final``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def cohort(n: int = 8, side: int = 8, seed: int = 0):
    """``n`` volumes: noise, every other one with a bright cube; labels 0/1."""
    import cpic

    gen = torch.Generator().manual_seed(seed)
    volumes = []
    for i in range(n):
        v = 0.1 * torch.randn(side, side, side, generator=gen)
        if i % 2:
            v[2:6, 2:6, 2:6] += 1.0
        volumes.append(cpic.open_volume(v))
    return volumes, [i % 2 for i in range(n)]


def train(folder: Path, epochs: int, refresh="epoch", **kwargs):
    """Train the tiny model with checkpoints in ``folder/ckpt``; returns ``(model, history)``."""
    import cpic
    from cpic.nn import Classification
    from cpic.train import VolumeDataset, fit

    torch.set_num_threads(1)
    volumes, labels = cohort()
    train_data, val = VolumeDataset(volumes, labels).split(0.25, seed=0)
    torch.manual_seed(1)
    model = cpic.CPIC((8, 8, 8), Classification(2, hidden=8), features=3, patch=3, rank=2, seed=0)
    history = fit(
        model, train_data, val, epochs=epochs, batch_size=2, refresh=refresh, seed=0,
        checkpoint_dir=folder / "ckpt", resume=True, progress=False, **kwargs,
    )  # fmt: skip
    return model, history


if __name__ == "__main__":
    from cpic.train import save_checkpoint

    folder = Path(sys.argv[1])
    model, history = train(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 8)
    save_checkpoint(folder / "final", model.state_dict(), {"rows": len(history.rows)})
