"""What a model file, a training checkpoint or a volume holds, as JSON-ready dictionaries
(``cpic inspect``)."""

from __future__ import annotations

from pathlib import Path

import torch

from cpic.sources import open_volume
from cpic.sources.open import detect_format
from cpic.train.checkpoint import checkpoint_paths, load_checkpoint
from cpic.train.model_file import MODEL_FORMAT, class_names, load_model


def describe(path: str, sample: int = 4096, seed: int = 0) -> dict:
    """A description of the model file, training checkpoint or volume ``path`` (``kind``:
    ``"model"``, ``"checkpoint"`` or ``"volume"``; a volume's values from ``sample`` random voxels).

    Example:
        >>> import tempfile, numpy as np
        >>> with tempfile.TemporaryDirectory() as d:
        ...     np.save(f"{d}/v.npy", np.ones((4, 4, 4), np.float32))
        ...     info = describe(f"{d}/v.npy", sample=10)
        >>> info["kind"], info["shape"], info["sample"]["mean"]
        ('volume', [4, 4, 4], 1.0)
    """
    if _is_checkpoint(path):
        _, meta = load_checkpoint(path)
        if meta.get("format") == MODEL_FORMAT:
            return describe_model(path)
        return describe_checkpoint(path, meta)
    return describe_volume(path, sample, seed)


def _is_checkpoint(path: str) -> bool:
    """Whether ``path`` names a safetensors + JSON pair (a model file or a checkpoint)."""
    st_path, json_path = checkpoint_paths(path)
    return Path(path).suffix in (".safetensors", ".json") or (json_path.exists() and st_path.exists())


def _model_summary(config: dict) -> dict:
    """The configuration entries worth showing (shared by models and checkpoints)."""
    head = config.get("head", {})
    return {
        "task": head.get("task"),
        "grid": config.get("grid_shape"),
        "layout": config.get("layout"),
        "rank": config.get("rank"),
        "features": config.get("features"),
        "patch": config.get("patch"),
        "stride": config.get("stride", 1),
        "sampled_max": config.get("sampled_max", False),
        "channels": config.get("channels"),
        "encoder": config.get("encoder"),
        "projection": config.get("projection"),
        "positions": config.get("positions"),
        "background": config.get("background"),
        "extra_features": config.get("extra_features"),
    }


def describe_model(path: str) -> dict:
    """A JSON-ready description of the model file ``path`` (loading it checks it whole)."""
    model, meta = load_model(path)
    provenance = meta.get("provenance", {})
    head = meta["config"]["head"]
    classes = class_names(meta["config"], provenance)
    return {
        "file": str(checkpoint_paths(path)[0]),
        "kind": "model",
        "format": meta["format"],
        "version": meta["version"],
        **_model_summary(meta["config"]),
        "classes": classes,
        "quantiles": head.get("quantiles"),
        "tensor_shape": list(model.layout.tensor_shape),
        "parameters": sum(p.numel() for p in model.parameters()),
        "provenance": provenance,
    }


def describe_checkpoint(path: str, meta: dict) -> dict:
    """A training checkpoint (``fit(checkpoint_dir=...)``): its epoch, model and last metrics."""
    if "config" not in meta or "epoch" not in meta:
        raise ValueError(f"{path}: a cpic checkpoint, but neither a model file nor a training checkpoint.")
    history = meta.get("history") or []
    provenance = meta.get("provenance") or {}
    return {
        "file": str(checkpoint_paths(path)[0]),
        "kind": "checkpoint",
        **_model_summary(meta["config"]),
        "classes": class_names(meta["config"], provenance),
        "epoch": meta["epoch"],
        "best_epoch": meta.get("best_epoch"),
        "last": history[-1] if history else None,
        "numerics": meta.get("numerics"),
        "provenance": provenance,
    }


def describe_volume(path: str, sample: int, seed: int) -> dict:
    """Shape, dtype, spacing, channels, format and the values of ``sample`` random voxels."""
    source = open_volume(path, nonfinite="zero")
    gen = torch.Generator().manual_seed(seed)
    count = min(sample, source.size)
    coords = torch.stack([torch.randint(0, n, (count,), generator=gen) for n in source.shape], 1)
    values = source.read(coords, normalize=False).double()
    described = source.describe()
    return {
        "file": path,
        "kind": "volume",
        "format": detect_format(path),
        "reader": described["kind"],
        "shape": described["shape"],
        "dtype": described["dtype"],
        "spacing": described["spacing"],
        "channels": described["channels"],
        "levels": described["levels"],
        "voxels": source.size,
        "sample": {
            "voxels": count,
            "min": float(values.min()),
            "max": float(values.max()),
            "mean": float(values.mean()),
            "nonfinite": source.stats.nonfinite,
        },
    }
