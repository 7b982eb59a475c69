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
from cpic.train.distributed import Distributed
from cpic.train.fit import History, evaluate, fit
from cpic.train.metrics import accuracy, mean_absolute_error, pinball_loss, roc_auc
from cpic.train.model_file import ModelFile, class_names, load_model, model_from_config, save_model

__all__ = [
    "CheckpointError",
    "Distributed",
    "History",
    "ModelFile",
    "VolumeDataset",
    "evaluate",
    "fit",
    "load_model",
    "model_from_config",
    "save_model",
    "accuracy",
    "class_names",
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
