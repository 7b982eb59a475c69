"""Training layer: metrics, checkpoints, and the fit loop."""

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
from cpic.train.dataset import VolumeDataset
from cpic.train.fit import History, evaluate, fit
from cpic.train.metrics import accuracy, mean_absolute_error, pinball_loss, roc_auc

__all__ = [
    "CheckpointError",
    "History",
    "VolumeDataset",
    "evaluate",
    "fit",
    "accuracy",
    "checkpoint_paths",
    "flatten_state",
    "load_checkpoint",
    "mean_absolute_error",
    "pinball_loss",
    "rng_state",
    "roc_auc",
    "save_checkpoint",
    "set_rng_state",
    "unflatten_state",
]
