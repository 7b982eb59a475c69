"""Training layer: datasets and manifests, the fit loop, evaluation and prediction, metrics,
model files and checkpoints, data-parallel training (``cpic.train.distributed``,
``cpic.train.launch``)."""

from cpic.train.checkpoint import CheckpointError, checkpoint_paths, load_checkpoint, save_checkpoint
from cpic.train.dataset import VolumeDataset
from cpic.train.description import describe
from cpic.train.distributed import Distributed
from cpic.train.loop import History, evaluate, fit
from cpic.train.manifest import build_model, head_for, load_manifest, manifest_datasets
from cpic.train.metrics import accuracy, mean_absolute_error, pinball_loss, psnr, relative_error, roc_auc
from cpic.train.model_file import ModelFile, class_names, load_model, model_from_config, save_model
from cpic.train.prediction import predict, prediction_rows
from cpic.train.saving import last_path, save_best_and_last

__all__ = [
    "CheckpointError",
    "Distributed",
    "History",
    "ModelFile",
    "VolumeDataset",
    "accuracy",
    "build_model",
    "checkpoint_paths",
    "class_names",
    "describe",
    "evaluate",
    "fit",
    "head_for",
    "last_path",
    "load_checkpoint",
    "load_manifest",
    "load_model",
    "manifest_datasets",
    "mean_absolute_error",
    "model_from_config",
    "pinball_loss",
    "predict",
    "prediction_rows",
    "psnr",
    "relative_error",
    "roc_auc",
    "save_best_and_last",
    "save_checkpoint",
    "save_model",
]
