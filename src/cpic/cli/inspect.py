"""``cpic inspect``: what a model file, a training checkpoint or a volume holds."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cpic.cli.common import add_common, emit, one_line_errors, positive_int, subparser
from cpic.sources import open_volume
from cpic.sources.open import detect_format
from cpic.train import checkpoint_paths, class_names, load_checkpoint, load_model
from cpic.train.model_file import MODEL_FORMAT


def register(commands) -> None:
    p = subparser(
        commands,
        "inspect",
        help="describe a model file or a volume",
        description=(
            "Describe a cpic model file (.safetensors/.json: task, classes, grid, layout, rank, "
            "encoder, projection, parameters, provenance), a training checkpoint (which predict "
            "and evaluate also take), or any volume "
            "cpic opens (shape, dtype, spacing, channels, format, values of a random sample)."
        ),
        example="cpic inspect model.safetensors --json",
    )
    p.add_argument("file", metavar="FILE", help="a model file, a checkpoint, or a volume")
    p.add_argument(
        "--sample", type=positive_int, default=4096, help="voxels sampled from a volume (default 4096)"
    )
    add_common(p, device=False, threads=False)
    one_line_errors(p, "inspect")
    p.set_defaults(handler=run)


def _is_checkpoint(path: str) -> bool:
    """Whether ``path`` names a safetensors + JSON pair (a model file or a checkpoint)."""
    st_path, json_path = checkpoint_paths(path)
    return Path(path).suffix in (".safetensors", ".json") or (json_path.exists() and st_path.exists())


def run(args: argparse.Namespace) -> int:
    if _is_checkpoint(args.file):
        _, meta = load_checkpoint(args.file)
        if meta.get("format") == MODEL_FORMAT:
            info = describe_model(args.file)
            lines = _model_lines(info)
        else:
            info = describe_checkpoint(args.file, meta)
            lines = _checkpoint_lines(info)
    else:
        info = describe_volume(args.file, args.sample, args.seed)
        lines = _volume_lines(info)
    emit(args, info, lines)
    return 0


# ---------------------------------------------------------------------- model files
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


def _model_lines(info: dict) -> list[str]:
    prov = info["provenance"]
    history = prov.get("history") or []
    last = {k: v for k, v in (history[-1] if history else {}).items() if k not in ("epoch", "seconds")}
    lines = [
        f"{info['file']}: {info['format']} version {info['version']}, a {info['task']} model",
        f"  classes        {info['classes']}" if info["classes"] is not None else None,
        f"  quantiles      {info['quantiles']}" if info["quantiles"] is not None else None,
        f"  grid           {tuple(info['grid'])}, layout {info['layout']}, "
        f"tensor {tuple(info['tensor_shape'])}",
        f"  latent         rank {info['rank']}, {info['features']} features, patch {info['patch']}"
        f"{f', stride {stride}' if (stride := info['stride']) != 1 else ''}, "
        f"{info['channels']} channel(s)",
        f"  encoder        {info['encoder']} "
        f"(positions {info['positions']}, background {info['background']})",
        f"  projection     {info['projection']}{' + sampled max' if info['sampled_max'] else ''}, "
        f"{info['extra_features']} extra feature(s)",
        f"  parameters     {info['parameters']:,}",
        f"  saved          {prov.get('saved')} by cpic {prov.get('cpic')}, torch {prov.get('torch')}",
    ]
    for key in ("manifest", "target", "extra", "normalize", "epoch", "epochs", "best_epoch"):
        if key in prov:
            lines.append(f"  {key:<14} {prov[key]}")
    if last:
        lines.append("  last epoch     " + ", ".join(f"{k} {v:.4g}" for k, v in last.items()))
    return [line for line in lines if line is not None]


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


def _checkpoint_lines(info: dict) -> list[str]:
    lines = [
        f"{info['file']}: training checkpoint after epoch {info['epoch']} (best {info['best_epoch']}), "
        f"a {info['task']} model",
        f"  classes        {info['classes']}" if info["classes"] is not None else None,
        f"  grid           {tuple(info['grid'])}, rank {info['rank']}, {info['features']} features, "
        f"patch {info['patch']}, encoder {info['encoder']}, projection {info['projection']}",
    ]
    prov = info["provenance"]
    for key in ("manifest", "target", "extra", "normalize"):
        if key in prov:
            lines.append(f"  {key:<14} {prov[key]}")
    if info["last"]:
        lines.append("  last epoch     " + ", ".join(f"{k} {v:.4g}" for k, v in info["last"].items()))
    lines.append(
        "  (predict with it: `cpic predict FILE VOLUME...`; continue it: "
        "`cpic train ... --checkpoint-dir DIR --resume`)"
    )
    return [line for line in lines if line is not None]


# ---------------------------------------------------------------------- volumes
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
        "voxels": source.size,
        "sample": {
            "voxels": count,
            "min": float(values.min()),
            "max": float(values.max()),
            "mean": float(values.mean()),
            "nonfinite": source.stats.nonfinite,
        },
    }


def _volume_lines(info: dict) -> list[str]:
    s = info["sample"]
    lines = [
        f"{info['file']}: {info['format']} volume ({info['reader']})",
        f"  shape          {tuple(info['shape'])} ({info['voxels']:,} voxels)",
        f"  dtype          {info['dtype']}",
        f"  channels       {info['channels'] or 1}",
        f"  spacing        {tuple(info['spacing']) if info['spacing'] else 'not recorded'}",
        f"  sample         {s['voxels']:,} random voxels: min {s['min']:.4g}, max {s['max']:.4g}, "
        f"mean {s['mean']:.4g}",
    ]
    if s["nonfinite"]:
        lines.append(f"  non-finite     {s['nonfinite']} of the sampled voxels are NaN or Inf")
    return lines
