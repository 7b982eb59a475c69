"""``cpic predict`` and ``cpic evaluate``: a trained model file applied to volumes."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import torch

from cpic.cli import figures
from cpic.cli.common import (
    EXIT_FAILED,
    WORK_FAILURES,
    add_common,
    comma_list,
    default,
    device_of,
    emit,
    fail,
    memory_budget_option,
    naming_the_flag,
    one_line_errors,
    positive_int,
    read_budget_type,
    read_uncounted,
    subparser,
)
from cpic.nn import CPIC, SAMPLERS
from cpic.sources import VolumeSource
from cpic.train import checkpoint_paths, class_names, evaluate, load_model
from cpic.train.manifest import align_classes, check_grid, load_manifest, open_all, open_for
from cpic.train.prediction import predict, prediction_rows
from cpic.util import write_text_atomic
from cpic.util.outputs import check_writable, refuse_inputs
from cpic.util.progress import shows_progress
from cpic.util.safe_text import csv_cell, strict_json

OUTPUT_SUFFIXES = (".csv", ".json")
#: volumes shown by ``predict --figure``, and the strongest patches circled in each
FIGURE_VOLUMES, EVIDENCE_SHOWN = 4, 5
BATCH, EVAL_BATCH = default(predict, "batch_size"), default(evaluate, "batch_size")


def register(commands) -> None:
    p = subparser(
        commands,
        "predict",
        help="predictions of a trained model for volumes, as CSV or JSON",
        description=(
            "Predict with a model file written by `cpic train` or a training checkpoint "
            "(--checkpoint-dir's best or last): each volume is opened with the normalisation "
            "recorded in it. Writes CSV or JSON by the suffix of -o "
            "(CSV on stdout without -o; JSON on stdout with --json)."
        ),
        example="cpic predict model.safetensors scan1.nii.gz scan2.nii.gz --extra 61 -o predictions.csv",
    )
    p.add_argument("model", metavar="MODEL", help="model file or training checkpoint (.safetensors or .json)")
    p.add_argument("volumes", metavar="VOLUME", nargs="+", help="volumes of the model's grid")
    p.add_argument("-o", "--output", metavar="FILE", help="write predictions to FILE.csv or FILE.json")
    p.add_argument(
        "--extra",
        action="append",
        metavar="V,...",
        help='extra features in training order (e.g. "61,1"): once for all volumes or once per volume',
    )
    p.add_argument(
        "--figure",
        metavar="FILE.png",
        help=f"slices of the first {FIGURE_VOLUMES} volumes through the patch the prediction depends on "
        "most, the voxels read in red",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=BATCH, help=f"volumes per batch (default {BATCH})"
    )
    p.add_argument("--memory-budget", **memory_budget_option("a batch"))
    _sampler_options(p)
    add_common(p, seed=False)
    one_line_errors(p, "predict")
    p.set_defaults(handler=run)

    e = subparser(
        commands,
        "evaluate",
        help="loss and metrics of a trained model on a labelled manifest",
        description=(
            "Evaluate a model file or training checkpoint on the volumes of a CSV manifest (the "
            "target, extra and path "
            "columns recorded at training unless given); metrics are prefixed test_."
        ),
        example="cpic evaluate model.safetensors test.csv --json",
    )
    e.add_argument("model", metavar="MODEL", help="model file or training checkpoint (.safetensors or .json)")
    e.add_argument("manifest", metavar="MANIFEST.csv", help="CSV: one row per volume (paths relative to it)")
    e.add_argument("--target", metavar="COLUMN", help="the label column (default: as in training)")
    e.add_argument(
        "--extra", type=comma_list, metavar="COL,...", help="extra columns (default: as in training)"
    )
    e.add_argument("--path-column", metavar="COLUMN", help="the path column (default: as in training)")
    e.add_argument(
        "--batch-size",
        type=positive_int,
        default=EVAL_BATCH,
        help=f"volumes per batch (default {EVAL_BATCH})",
    )
    e.add_argument("--memory-budget", **memory_budget_option("a batch"))
    _sampler_options(e)
    add_common(e, seed=False)
    one_line_errors(e, "evaluate")
    e.set_defaults(handler=run_evaluate)


def _sampler_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sampler", choices=SAMPLERS, help="read with this sampler, not the model's own (see cpic train)"
    )
    p.add_argument(
        "--read-budget",
        type=read_budget_type,
        metavar="SHARE|VOXELS",
        help="voxels one prediction reads per volume (default: as in training)",
    )


# ---------------------------------------------------------------------- shared
def _load(args: argparse.Namespace) -> tuple[CPIC, dict]:
    model, meta = load_model(args.model, device=device_of(args))
    model.eval()
    model.memory_budget = args.memory_budget
    if args.sampler or args.read_budget:
        try:
            model.use_sampler(args.sampler, args.read_budget)
        except ValueError as err:
            raise naming_the_flag(args, err) from None
    return model, meta.get("provenance", {})


# ---------------------------------------------------------------------- predict
def _extra(model: CPIC, values: list[str] | None, count: int) -> torch.Tensor | None:
    """``[count, E]`` extra features from the ``--extra`` options (one for all, or one per volume)."""
    if not model.extra_features:
        if values:
            raise ValueError("--extra was given, but this model takes no extra features.")
        return None
    if not values:
        raise ValueError(
            f"this model takes {model.extra_features} extra feature(s) per volume: pass --extra."
        )
    if len(values) not in (1, count):
        raise ValueError(
            f"--extra was given {len(values)} times for {count} volumes; give it once or per volume."
        )
    rows = []
    for text in values:
        try:
            row = [float(v) for v in comma_list(text)]
        except ValueError:
            raise ValueError(f"--extra {text!r}: expected comma-separated numbers.") from None
        if len(row) != model.extra_features:
            raise ValueError(
                f"--extra {text!r} has {len(row)} value(s); the model takes {model.extra_features}."
            )
        rows.append(row)
    return torch.tensor(rows * count if len(rows) == 1 else rows)


def _csv_text(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    return out.getvalue()


def run(args: argparse.Namespace) -> int:
    suffix = Path(args.output).suffix.lower() if args.output else None
    if args.output and suffix not in OUTPUT_SUFFIXES:
        return fail("predict", f"-o {args.output!r}: the file name must end in .csv or .json.")
    if args.figure and Path(args.figure).suffix.lower() != ".png":
        return fail("predict", f"--figure {args.figure!r}: the file name must end in .png.")
    if args.figure:
        figures.require_matplotlib()
    outputs = [p for p in (args.output, args.figure) if p]
    check_writable(outputs)
    refuse_inputs(outputs, [*args.volumes, *checkpoint_paths(args.model)], "-o/--figure", args.overwrite)
    model, provenance = _load(args)
    if not model.supervised:
        return fail("predict", f"{args.model}: a reconstruction model makes no per-volume predictions.")
    if args.figure and len(model.grid_shape) != 3:
        return fail("predict", f"--figure shows 3-D volumes; this model's grid is {model.grid_shape}.")
    extra = _extra(model, args.extra, len(args.volumes))
    sources = open_for(model, args.volumes, provenance.get("normalize"))
    try:
        pred = predict(model, sources, extra, args.batch_size, shows_progress(args))
    except WORK_FAILURES as err:
        return fail("predict", f"prediction failed: {err}", EXIT_FAILED)
    classes = class_names(model.config, provenance)
    rows = prediction_rows(model, classes, list(args.volumes), pred)
    document = {"model": str(checkpoint_paths(args.model)[0]), "task": model.head.task, "classes": classes}
    document["predictions"] = rows
    if args.figure:
        document["figure"] = evidence_figure(model, sources[:FIGURE_VOLUMES], rows, extra, args.figure)
    if args.output:
        text = strict_json(document, indent=1) + "\n" if suffix == ".json" else _csv_text(rows)
        write_text_atomic(args.output, text)
        emit(args, document | {"output": args.output}, [f"wrote {len(rows)} prediction(s) to {args.output}"])
    else:
        emit(args, document, [_csv_text(rows).rstrip("\n")], footer=False)
    return 0


def evidence_figure(model: CPIC, sources: list[VolumeSource], rows: list[dict], extra, path: str) -> str:
    """Orthogonal slices of each volume through the patch its prediction depends on most
    (:meth:`CPIC.evidence`), the voxels read in red and the strongest patches circled."""
    _, found = model.evidence(sources, None if extra is None else extra[: len(sources)])
    volumes, read, centres, strongest, titles = [], [], [], [], []
    for source, row, (patches, weight) in zip(sources, rows, found):
        top = weight.argsort(descending=True)[:EVIDENCE_SHOWN]
        volumes.append(read_uncounted(source).float().numpy())
        read.append(source.voxels_read().numpy())
        centres.append(patches[top[0]].tolist())
        strongest.append(patches[top].numpy())
        if "predicted" in row:
            said = f"predicted {row['predicted']} (p={row['p_' + str(row['predicted'])]:.2f})"
        else:
            said = ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k != "volume")
        fraction = source.stats.fraction(source.size)
        titles.append(f"{Path(row['volume']).name}: {said}, from {100 * fraction:.2f}% of its voxels")
    return figures.orthogonal_slices(volumes, path, titles, read, slab=1, centres=centres, evidence=strongest)


# ---------------------------------------------------------------------- evaluate
def run_evaluate(args: argparse.Namespace) -> int:
    model, provenance = _load(args)
    task = model.task
    target = args.target or provenance.get("target", "label")
    extra = args.extra if args.extra is not None else provenance.get("extra", [])
    if len(extra) != model.extra_features:
        return fail("evaluate", f"the model takes {model.extra_features} extra column(s); got {extra}.")
    path_column = args.path_column or provenance.get("path_column", "path")
    data = load_manifest(
        args.manifest,
        None if task == "reconstruction" else target,
        extra,
        path_column,
        task,
        provenance.get("normalize"),
    )
    if task == "classification":
        align_classes(data, provenance.get("classes"), f"manifest {args.manifest!r}")
    open_all(data, args.manifest)
    for i in range(len(data)):
        check_grid(model, data.source(i), data.names[i])
    try:
        metrics = evaluate(
            model, data, batch_size=args.batch_size, split="test", progress=shows_progress(args)
        )
    except WORK_FAILURES as err:
        return fail("evaluate", f"evaluation failed: {err}", EXIT_FAILED)
    read = [data.source(i).stats.fraction(data.source(i).size) for i in range(len(data))]
    summary = {
        "model": str(checkpoint_paths(args.model)[0]),
        "manifest": args.manifest,
        "task": task,
        "classes": class_names(model.config, provenance),
        "volumes": len(data),
        "metrics": metrics,
        "fraction_read": sum(read) / len(read),
    }
    lines = [f"cpic evaluate: {task} model on {len(data)} volumes of {args.manifest}"]
    lines += [f"  {name:<19} {value:.4f}" for name, value in metrics.items()]
    lines.append(f"  voxels read         {100 * summary['fraction_read']:.2f}% of each volume")
    emit(args, summary, lines)
    return 0
