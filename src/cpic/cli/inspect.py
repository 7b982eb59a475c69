"""``cpic inspect``: what a model file, a training checkpoint or a volume holds."""

from __future__ import annotations

import argparse

from cpic.cli.common import add_common, default, emit, one_line_errors, positive_int, subparser
from cpic.train import describe


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
    sample = default(describe, "sample")
    p.add_argument(
        "--sample", type=positive_int, default=sample, help=f"voxels sampled from a volume (default {sample})"
    )
    add_common(p, device=False, threads=False)
    one_line_errors(p, "inspect")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    info = describe(args.file, args.sample, args.seed)
    lines = {"model": _model_lines, "checkpoint": _checkpoint_lines, "volume": _volume_lines}[info["kind"]]
    emit(args, info, lines(info))
    return 0


# ---------------------------------------------------------------------- model files
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
def _volume_lines(info: dict) -> list[str]:
    s = info["sample"]
    lines = [
        f"{info['file']}: {info['format']} volume ({info['reader']})",
        f"  shape          {tuple(info['shape'])} ({info['voxels']:,} voxels)",
        f"  dtype          {info['dtype']}",
        f"  channels       {info['channels'] or 1}",
        f"  spacing        {tuple(info['spacing']) if info['spacing'] else 'not recorded'}",
        f"  levels         {', '.join(_level(lv) for lv in info['levels'])}" if info["levels"] else None,
        f"  sample         {s['voxels']:,} random voxels: min {s['min']:.4g}, max {s['max']:.4g}, "
        f"mean {s['mean']:.4g}",
    ]
    if s["nonfinite"]:
        lines.append(f"  non-finite     {s['nonfinite']} of the sampled voxels are NaN or Inf")
    return [line for line in lines if line is not None]


def _level(level: dict) -> str:
    return f"{tuple(level['shape'])} (/{'x'.join(str(f) for f in level['factors'])})"
