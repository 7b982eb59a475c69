"""Model files: a trained :class:`cpic.CPIC` as safetensors plus JSON metadata, never a pickle.

The JSON records the format and its version, the model's configuration (layout, ranks,
encoder, projection, head, read policy), the shape of every tensor and the provenance (how the
model was trained, the normalisation its volumes used, class names, target and extra columns).
All of it is sealed with the tensors (:mod:`cpic.train.checkpoint`): an edited configuration is
refused. Loading rebuilds the model from the configuration and refuses a file whose version,
tensor names or shapes differ; :class:`ModelFile` gives a loaded model with what it needs to
predict as ``cpic predict`` does (the normalisation, the class names).
:func:`load_model` also reads the training checkpoints of :func:`cpic.train.fit`
(``checkpoint_dir/best``, ``checkpoint_dir/last``), which carry the same provenance.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cpic._version import __version__
from cpic.layout import PlainLayout, QTTLayout
from cpic.nn import CPIC, ImplicitVolume, LatentModel, head_from_config, lattice, read_policy_from_config
from cpic.nn.encoders import ENCODERS
from cpic.nn.projections import PROJECTIONS
from cpic.sources import VolumeSource, open_volume
from cpic.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

MODEL_FORMAT = "cpic-model"
#: 2: read policy in the configuration, metadata sealed with the tensors
MODEL_VERSION = 2


def model_from_config(config: dict) -> LatentModel:
    """A fresh, untrained model with the configuration ``config`` (a ``model.config``).

    Example:
        >>> import cpic
        >>> from cpic.nn import Regression
        >>> model = cpic.CPIC((16, 16, 16), Regression(), features=4, patch=3, rank=3)
        >>> model_from_config(model.config).config == model.config
        True
    """
    cfg = dict(config)
    head = head_from_config(cfg.pop("head"))
    reads = read_policy_from_config(cfg.pop("reads", None), cfg)
    layout_cfg = cfg.pop("layout", {"type": "qtt", "group": True})
    grid = tuple(cfg.pop("grid_shape"))
    centres = lattice(grid, cfg.get("stride", 1))  # an implicit volume has none: 1
    if layout_cfg.get("type") == "qtt":
        layout = QTTLayout(centres, features=cfg["features"], group=layout_cfg.get("group", True))
    elif layout_cfg.get("type") == "PlainLayout":
        layout = PlainLayout(centres, features=cfg["features"])
    else:
        raise ValueError(f"unknown layout {layout_cfg!r} in the model configuration.")
    try:
        if cfg.pop("model", None) == "implicit-volume":
            return ImplicitVolume(grid, layout=layout, reads=reads, **cfg)
        return CPIC(grid, head, layout=layout, reads=reads, **cfg)
    except TypeError as err:
        raise ValueError(f"the model configuration does not match this cpic version: {err}") from None


def save_model(model: LatentModel, path: str | os.PathLike[str], **provenance) -> Path:
    """Write ``model`` to ``path`` (``.safetensors`` + ``.json``); ``provenance`` (JSON values:
    data, epochs, normalisation...) is stored with it. Returns the safetensors path.

    Example:
        >>> import tempfile, cpic
        >>> from cpic.nn import Classification
        >>> model = cpic.CPIC((16, 16, 16), Classification(3), features=4, patch=3, rank=3)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_model(model, f"{d}/model", normalize="percentile")
        ...     loaded, meta = load_model(f"{d}/model")
        >>> meta["provenance"]["normalize"], loaded.config == model.config
        ('percentile', True)
    """
    if model.config["encoder"] not in ENCODERS or model.config.get("projection", "mean") not in PROJECTIONS:
        raise ValueError(
            "only models with a built-in encoder ('mlp', 'conv') and projection ('mean', 'moments', "
            f"'grid') can be saved as a model file; this one has {model.config['encoder']!r} and "
            f"{model.config.get('projection')!r}: save its state_dict with cpic.train.save_checkpoint."
        )
    tensors = {k: v.detach() for k, v in model.state_dict().items()}
    meta = {
        "format": MODEL_FORMAT,
        "version": MODEL_VERSION,
        "config": model.config,
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "provenance": {
            "cpic": __version__,
            "torch": torch.__version__,
            "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **provenance,
        },
    }
    return save_checkpoint(path, tensors, meta)


def check_tensor(path, name: str, found: torch.Tensor, expected: torch.Tensor) -> None:
    """Refuse a stored tensor whose shape or dtype differs from the model's (loading would cast
    or fail silently) or that holds NaN or Inf (every prediction would be NaN).

    Example:
        >>> import torch
        >>> try:
        ...     check_tensor("m", "w", torch.zeros(2, dtype=torch.float64), torch.zeros(2))
        ... except CheckpointError as err:
        ...     print(err)
        m: tensor 'w' is torch.float64, the model expects torch.float32.
    """
    if tuple(found.shape) != tuple(expected.shape):
        raise CheckpointError(
            f"{path}: tensor {name!r} has shape {tuple(found.shape)}, "
            f"the model expects {tuple(expected.shape)}."
        )
    if found.dtype != expected.dtype:
        raise CheckpointError(
            f"{path}: tensor {name!r} is {found.dtype}, the model expects {expected.dtype}."
        )
    if found.is_floating_point() and not bool(torch.isfinite(found).all()):
        raise CheckpointError(f"{path}: tensor {name!r} holds non-finite values (NaN or Inf).")


def class_names(config: dict, provenance: dict) -> list | None:
    """The class names of a classification model: those recorded at training (strings from a
    manifest's labels), else its integer class ids; ``None`` for other tasks.

    Example:
        >>> config = {"head": {"task": "classification", "classes": 2}}
        >>> class_names(config, {}), class_names(config, {"classes": ["healthy", "lesion"]})
        ([0, 1], ['healthy', 'lesion'])
    """
    head = config.get("head", {})
    if head.get("task") != "classification":
        return None
    named = provenance.get("classes")
    return list(named) if named is not None else list(range(int(head["classes"])))


def is_training_checkpoint(meta: dict) -> bool:
    """Whether checkpoint metadata ``meta`` is that of a :func:`cpic.train.fit` checkpoint.

    Example:
        >>> is_training_checkpoint({"config": {}, "epoch": 3, "optimizer": {}}), is_training_checkpoint({})
        (True, False)
    """
    return isinstance(meta, dict) and {"config", "epoch", "optimizer"} <= meta.keys()


def _as_model(path, tensors: dict, meta: dict) -> tuple[dict, dict]:
    """The model tensors and model-file metadata of a model file or of a training checkpoint
    (whose provenance gains the epoch of its weights and the run's history)."""
    if isinstance(meta, dict) and meta.get("format") == MODEL_FORMAT:
        if meta.get("version") != MODEL_VERSION:
            raise CheckpointError(
                f"{path}: model file version {meta.get('version')!r}; "
                f"this cpic reads version {MODEL_VERSION}."
            )
        return tensors, {"kind": "model", **meta}
    if not is_training_checkpoint(meta):
        raise CheckpointError(
            f"{path}: neither a cpic model file nor a training checkpoint (of cpic train or save_model, "
            "or fit's checkpoint_dir/best or last)."
        )
    provenance = {
        **(meta.get("provenance") or {}),
        "epoch": meta["epoch"],
        "epochs": len(meta.get("history") or []),
        "best_epoch": meta.get("best_epoch"),
        "numerics": meta.get("numerics"),
        "history": meta.get("history"),
    }
    model_tensors = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    return model_tensors, {"kind": "checkpoint", "config": meta["config"], "provenance": provenance}


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[LatentModel, dict]:
    """The model in ``path`` and its metadata: a model file, or a training checkpoint of
    :func:`cpic.train.fit` (metadata ``kind`` ``"model"`` or ``"checkpoint"``; both have
    ``config`` and ``provenance``). A clear :class:`CheckpointError` for a file that is
    neither, of another format version, or whose tensors do not match.

    Example:
        >>> import tempfile, torch, cpic
        >>> from cpic.nn import Classification
        >>> from cpic.train import VolumeDataset, fit
        >>> vols = [cpic.open_volume(torch.full((8, 8, 8), float(i % 2))) for i in range(4)]
        >>> model = cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=2)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = fit(model, VolumeDataset(vols, [0, 1, 0, 1], classes=["a", "b"]), epochs=1,
        ...             batch_size=2, checkpoint_dir=d, progress=False)
        ...     loaded, meta = load_model(f"{d}/last")
        >>> meta["kind"], meta["provenance"]["epoch"], meta["provenance"]["classes"]
        ('checkpoint', 1, ['a', 'b'])
    """
    tensors, meta = load_checkpoint(path)
    tensors, meta = _as_model(path, tensors, meta)
    try:
        model = model_from_config(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: its configuration cannot be rebuilt: {err!s}") from None
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{path}: tensors missing {missing[:3]} or unexpected {extra[:3]} for its model."
        )
    for name, value in expected.items():
        check_tensor(path, name, tensors[name], value)
    model.load_state_dict(tensors)
    return model.to(device), meta


@dataclass
class ModelFile:
    """A loaded model file with what predicting needs: the model (in eval mode), its class
    names (classification), the normalisation its volumes were opened with, the target and
    extra columns of training and the whole metadata; :meth:`open` opens a volume as the model
    expects. ``model(sources, extra=...)`` then gives the raw outputs that ``cpic predict``
    turns into its rows (softmax for the class probabilities).

    Example:
        >>> import tempfile, torch, cpic
        >>> from cpic.nn import Classification
        >>> model = cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=2)
        >>> volume = torch.rand(8, 8, 8)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = save_model(model, f"{d}/m", classes=["healthy", "lesion"], normalize="none")
        ...     loaded = ModelFile.load(f"{d}/m")
        >>> loaded.classes, loaded.normalize, loaded.model(loaded.open(volume)).shape
        (['healthy', 'lesion'], 'none', torch.Size([1, 2]))
    """

    model: LatentModel
    meta: dict = field(repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ModelFile:
        """The model file (or training checkpoint) at ``path``, as :func:`load_model` reads it."""
        model, meta = load_model(path, device=device)
        return cls(model.eval(), meta)

    @property
    def provenance(self) -> dict:
        return self.meta.get("provenance", {})

    @property
    def classes(self) -> list | None:
        """Class names (or ids) of a classification model; None for other tasks."""
        return class_names(self.meta["config"], self.provenance)

    @property
    def normalize(self):
        """The normalisation recorded at training (None: the default of :func:`cpic.open_volume`)."""
        return self.provenance.get("normalize")

    @property
    def target(self) -> str | None:
        return self.provenance.get("target")

    @property
    def extra(self) -> list:
        return list(self.provenance.get("extra") or [])

    def open(self, volume, name: str | None = None) -> VolumeSource:
        """``volume`` (a path, an array or a source) opened with the recorded normalisation and
        checked against the model's grid and channels (``name`` in the error, default the path)."""
        normalize = None if self.normalize in (None, "none") else self.normalize
        source = volume if isinstance(volume, VolumeSource) else open_volume(volume, normalize=normalize)
        name = name or (str(volume) if isinstance(volume, (str, os.PathLike)) else "the volume")
        if tuple(source.shape) != tuple(self.model.grid_shape):
            raise ValueError(
                f"volume {name!r} has grid {tuple(source.shape)}; the model expects {self.model.grid_shape}."
            )
        if (source.channels or 1) != self.model.channels:
            raise ValueError(
                f"volume {name!r} has {source.channels or 1} channel(s); "
                f"the model expects {self.model.channels}."
            )
        return source
