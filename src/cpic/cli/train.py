"""``cpic train``: fit a C-PIC model on a CSV manifest of volumes and write a model file.

Every option may also come from ``--config FILE.json`` (keys are the long option names, with
dashes or underscores); flags given on the command line override the file. To tell the two
apart, every option's parser default is ``None`` and the real defaults live in ``_OPTIONS``.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
import warnings
from pathlib import Path

from cpic.cli.common import (
    EXIT_FAILED,
    WORK_FAILURES,
    add_common,
    comma_list,
    default,
    device_of,
    emit,
    fail,
    float_list,
    memory_budget_option,
    naming_the_flag,
    one_line_errors,
    positive_int,
    read_budget_type,
    subparser,
    volume_defaults,
)
from cpic.nn import CPIC, DEFAULT_READ_BUDGET, SAMPLERS
from cpic.sources import open_defaults
from cpic.train import VolumeDataset, checkpoint_paths, class_names, distributed, fit
from cpic.train.config import read_config
from cpic.train.dataset import manifest_files
from cpic.train.launch import launch
from cpic.train.manifest import QUANTILES, build_model, head_for, manifest_datasets
from cpic.train.output_lock import training_locks
from cpic.train.saving import model_files, save_best_and_last
from cpic.util.outputs import check_writable, refuse_inputs, write_failure
from cpic.util.progress import shows_progress

#: the defaults of the options, read from the library functions that own them
DATA, MODEL, MODEL_BUILD, FIT = (
    functools.partial(default, owner) for owner in (manifest_datasets, CPIC, build_model, fit)
)
#: dest -> (argparse action, real default) of every option that ``--config`` may set
_OPTIONS: dict[str, tuple[argparse.Action, object]] = {}


# ---------------------------------------------------------------------- argument types
def _seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value}")
    return value


def _refresh(text: str) -> str | int:
    """``epoch``, ``none`` or a positive number of uses (kept as given until :func:`fit`)."""
    if str(text) in ("epoch", "none"):
        return str(text)
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected 'epoch', 'none' or a number of uses, got {text!r}"
        ) from None


# ---------------------------------------------------------------------- the parser
def _option(parser: argparse.ArgumentParser, *flags: str, default=None, help: str, **kwargs) -> None:
    """An option whose parser default is ``None``; ``default`` is applied after ``--config``."""
    if default not in (None, False, []):
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help = f"{help} (default {shown})"
    action = parser.add_argument(*flags, default=None, help=help, **kwargs)
    _OPTIONS[action.dest] = (action, default)


def register(commands) -> None:
    p = subparser(
        commands,
        "train",
        help="train a C-PIC model on a CSV manifest of volumes and labels",
        description=(
            "Train a C-PIC model on the volumes of a CSV manifest (a path column, a target column, "
            "optional extra columns) and write MODEL.safetensors + MODEL.json, the weights of the "
            "epoch of the best validation metric, and MODEL.last.safetensors + .json, those of the "
            "last epoch. Nothing is written unless training finishes."
        ),
        example="cpic train cohort.csv -o model --target diagnosis --extra age --epochs 30 --json",
    )
    p.add_argument("manifest", metavar="MANIFEST.csv", help="CSV: one row per volume (paths relative to it)")
    _option(
        p,
        "-o",
        "--output",
        metavar="MODEL",
        help="model file to write (MODEL.safetensors + MODEL.json: the best epoch; MODEL.last: the last)",
    )
    _add_data_options(p)
    _add_model_options(p)
    _add_training_options(p)
    p.add_argument("--config", metavar="FILE.json", help="options as a JSON object; flags override it")
    add_common(p)
    for action in p._actions:  # the common flags too may come from --config
        if action.dest in ("json", "quiet", "device", "seed"):
            _OPTIONS[action.dest] = (action, action.default)
            action.default = None
    one_line_errors(p, "train")
    p.set_defaults(handler=run)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    _option(
        p,
        "--task",
        default=DATA("task"),
        choices=("classification", "regression", "quantile"),
        help="what to predict",
    )
    _option(p, "--target", default=DATA("target"), metavar="COLUMN", help="the manifest column to predict")
    _option(
        p, "--extra", default=[], type=comma_list, metavar="COL,...", help="numeric columns fed to the head"
    )
    _option(
        p,
        "--path-column",
        default=DATA("path_column"),
        metavar="COLUMN",
        help="the manifest column of volume paths",
    )
    _option(
        p, "--val", default=DATA("val"), type=_fraction, metavar="FRACTION", help="validation split (0: none)"
    )
    _option(p, "--val-manifest", metavar="FILE", help="validation volumes from another manifest (not --val)")
    _option(
        p,
        "--normalize",
        default="none",
        choices=("none", "range", "percentile"),
        help="intensity normalisation of each volume (recorded in the model file)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    _option(p, "--rank", default=MODEL("rank"), type=positive_int, help="TT rank of the latent tensor")
    _option(p, "--features", default=MODEL("features"), type=positive_int, help="encoder features per voxel")
    _option(p, "--patch", default=MODEL("patch"), type=positive_int, help="patch side, odd")
    _option(
        p,
        "--stride",
        default=MODEL("stride"),
        type=positive_int,
        help="patch centres on every n-th voxel: an n^D times smaller latent grid (about --patch "
        "for patches that barely overlap)",
    )
    _option(
        p,
        "--sampler",
        default=MODEL_BUILD("sampler"),
        choices=SAMPLERS,
        help="which patches a prediction reads: cross pivots, uniformly random, a jittered lattice, or "
        "explore-exploit (a lattice, then more reads where a learnt score is highest)",
    )
    _option(
        p,
        "--read-budget",
        type=read_budget_type,
        metavar="SHARE|VOXELS",
        help=f"voxels one prediction reads per volume, e.g. 0.5%% or 20000 (random, lattice and "
        f"explore-exploit; default {DEFAULT_READ_BUDGET.replace('%', '%%')} or the sampler's minimum)",
    )
    _option(p, "--encoder", default=MODEL("encoder"), choices=("mlp", "conv"), help="patch encoder")
    _option(
        p,
        "--projection",
        default=MODEL("projection"),
        choices=("mean", "moments", "grid"),
        help="TT -> vector",
    )
    _option(
        p,
        "--positions",
        default=False,
        action=argparse.BooleanOptionalAction,
        help="feed voxel positions to the encoder (default off)",
    )
    _option(p, "--background", type=float, metavar="FLOAT", help="intensity that patches are centred on")
    _option(
        p,
        "--sampled-max",
        default=False,
        action=argparse.BooleanOptionalAction,
        help="add each feature's maximum over the patches cross picked (finds small anomalies such as "
        "lesions, which averages dilute) (default off)",
    )
    _option(p, "--quantiles", default=list(QUANTILES), type=float_list, help="quantiles of --task quantile")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    _option(p, "--epochs", default=FIT("epochs"), type=positive_int, help="training epochs")
    _option(p, "--batch-size", default=FIT("batch_size"), type=positive_int, help="volumes per step")
    _option(p, "--lr", default=FIT("lr"), type=float, help="learning rate (cosine-decayed)")
    _option(p, "--optimizer", default=FIT("optimizer"), choices=("adamw", "radam"), help="optimiser")
    _option(
        p,
        "--refresh",
        default=FIT("refresh"),
        type=_refresh,
        help="pivot refresh: epoch, none or every N uses",
    )
    _option(p, "--checkpoint-dir", metavar="DIR", help="write DIR/last and DIR/best every epoch")
    _option(p, "--resume", action="store_true", help="continue from --checkpoint-dir/last if it exists")
    _option(p, "--log-csv", metavar="FILE", help="append one row of metrics per epoch")
    _option(p, "--memory-budget", **memory_budget_option("to start a step"))
    _option(
        p,
        "--nproc",
        default=1,
        type=positive_int,
        metavar="N",
        help="train data-parallel in N processes on this machine (torch.distributed; see docs/scaling.md)",
    )
    _option(
        p,
        "--dist-timeout",
        default=distributed.DEFAULT_TIMEOUT,
        type=_seconds,
        metavar="SECONDS",
        help="a distributed job fails when a rank waits this long for the others",
    )


# ---------------------------------------------------------------------- --config
def _config(path: str) -> dict:
    """The options of a JSON config file, converted and checked like their flags."""
    values = {}
    for key, value in read_config(path).items():
        dest = str(key).lstrip("-").replace("-", "_")
        if dest not in _OPTIONS:
            raise ValueError(f"config {path!r}: unknown option {key!r}; see cpic train --help.")
        if value is not None:
            values[dest] = _config_value(path, key, _OPTIONS[dest][0], value)
    return values


def _config_value(path: str, key: str, action: argparse.Action, value):
    """``value`` from a config file, as its flag would have parsed it."""
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise ValueError(f"config {path!r}: {key!r} must be true or false, got {value!r}.")
        return value
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    try:
        converted = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        raise ValueError(f"config {path!r}: {key!r}: {err}") from None
    if action.choices and converted not in action.choices:
        raise ValueError(f"config {path!r}: {key!r} must be one of {list(action.choices)}, got {value!r}.")
    return converted


def resolve_options(args: argparse.Namespace) -> None:
    """Fill the options not given on the command line from ``--config``, then the defaults."""
    config = _config(args.config) if args.config else {}
    for dest, (_action, value) in _OPTIONS.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, config.get(dest, value))


def _check_options(args: argparse.Namespace) -> None:
    if not args.output:
        raise ValueError("-o/--output MODEL is required (the model file to write).")
    if Path(args.output).is_dir():
        raise ValueError(f"-o {args.output!r} is a directory; give a file name such as {args.output}/model.")
    check_writable(model_files(args.output), "model file (-o)")
    if args.checkpoint_dir:
        check_writable(args.checkpoint_dir, "checkpoint folder (--checkpoint-dir)", folder=True)
    if args.log_csv:
        check_writable(args.log_csv, "log file (--log-csv)")
    inputs = [p for m in (args.manifest, args.val_manifest) if m for p in manifest_files(m, args.path_column)]
    outputs = [args.output, *model_files(args.output), *([args.log_csv] if args.log_csv else [])]
    inputs += [args.config] if args.config else []
    refuse_inputs(outputs, inputs, "-o/--log-csv", remedy="give another name")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (where the run's checkpoints are).")
    if args.patch % 2 == 0:
        raise ValueError(f"--patch must be odd (the patch is centred on a voxel), got {args.patch}.")
    if args.task == "quantile" and not args.quantiles:
        raise ValueError("--quantiles needs at least one quantile, e.g. 0.1,0.5,0.9.")


# ---------------------------------------------------------------------- data and model
def _model(args, train: VolumeDataset, data: VolumeDataset) -> CPIC:
    """The model the options describe, for the grid of the first training volume."""
    name = f"manifest {args.manifest!r}: column {args.target!r}"
    try:
        return _build(args, train, data, name)
    except ValueError as err:
        if "read budget" in str(err):  # the flag's value did not suit the sampler or the volumes
            raise naming_the_flag(args, err) from None
        raise


def _build(args, train: VolumeDataset, data: VolumeDataset, name: str) -> CPIC:
    return build_model(
        train,
        head_for(args.task, data, args.quantiles, name),
        extra_features=len(args.extra),
        seed=args.seed,
        features=args.features,
        patch=args.patch,
        encoder=args.encoder,
        positions=args.positions,
        background=args.background,
        projection=args.projection,
        sampled_max=args.sampled_max,
        rank=args.rank,
        stride=args.stride,
        sampler=args.sampler,
        read_budget=args.read_budget,
    )


# ---------------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    """Train, save, summarise; an interrupt (Ctrl-C) anywhere writes no model (exit code 1).

    With ``--nproc N`` (N > 1) outside a distributed job, start N workers running this same
    command line (:func:`cpic.train.launch.launch`); under torchrun or as such a worker, join
    the job (:func:`cpic.train.distributed.init`) and train data-parallel.
    """
    try:
        resolve_options(args)
        # a --config file's memory_budget bounds loading too, as the flag does
        with open_defaults(**volume_defaults(args)):
            if distributed.in_distributed_env():  # a worker: the launcher (or torchrun's caller) locks
                return _train_in_job(args)
            _check_options(args)
            with training_locks(args.output, args.checkpoint_dir, on_stale=_report):
                if args.nproc > 1:
                    argv = getattr(args, "argv", None) or sys.argv[1:]
                    return launch([sys.executable, "-m", "cpic.cli.main", *argv], args.nproc)
                return _train_in_job(args)
    except KeyboardInterrupt:
        folder = getattr(args, "checkpoint_dir", None)
        more = f"; --resume --checkpoint-dir {folder} continues from the last checkpoint" if folder else ""
        return fail("train", f"interrupted; no model was written{more}.", EXIT_FAILED)


def _report(message: str) -> None:
    print(f"cpic train: {message}", file=sys.stderr)


def _train_in_job(args: argparse.Namespace) -> int:
    """:func:`_train` as one rank of a distributed job (:func:`cpic.train.distributed.run_as_rank`:
    under a job, this does not return), or alone outside one."""
    if not distributed.in_distributed_env():
        return _train(args)
    _check_options(args)
    device_of(args)  # a clear message when CUDA is asked for but absent
    try:
        ctx, device = distributed.init(device=args.device, timeout=args.dist_timeout)
    except distributed.RankLost as err:
        return fail("train", str(err), EXIT_FAILED)
    args.device = str(device)  # cuda:LOCAL_RANK
    if not ctx.is_main:  # rank 0 alone prints progress and the summary
        args.quiet, args.json = True, False
    distributed.run_as_rank(lambda: _train(args))


def _train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    resolve_options(args)
    _check_options(args)
    device = device_of(args)
    train, val, data = manifest_datasets(
        args.manifest,
        target=args.target,
        extra=args.extra,
        path_column=args.path_column,
        task=args.task,
        normalize=args.normalize,
        val=args.val,
        val_manifest=args.val_manifest,
        seed=args.seed,
    )
    model = _model(args, train, data).to(device)
    model.memory_budget = args.memory_budget
    resumed = bool(args.resume) and checkpoint_paths(Path(args.checkpoint_dir) / "last")[1].exists()
    provenance = _provenance(args, data)
    try:
        history = _fit(args, model, train, val, provenance)
    except WORK_FAILURES as err:  # incl. distributed.RankLost
        return fail("train", f"training failed, no model was written: {err}", EXIT_FAILED)
    except OSError as err:  # a checkpoint or log that cannot be written: the disk is full...
        return fail("train", f"training stopped, no model was written: {write_failure(err)}", EXIT_FAILED)
    if not history.rows or history.last["train_loss"] != history.last["train_loss"]:  # NaN: all skipped
        return fail(
            "train",
            "every step of the last epoch was skipped (non-finite losses): normalise the volumes "
            "(--normalize range or percentile) or lower --lr; no model was written.",
            EXIT_FAILED,
        )
    if not distributed.current().is_main:  # rank 0 writes the model
        return 0
    try:
        saved = save_best_and_last(model, history, args.output, provenance)
    except OSError as err:
        return fail("train", f"writing the model failed: {write_failure(err)}", EXIT_FAILED)
    classes = class_names(model.config, provenance)
    summary = _summary(args, model, history, saved, len(train), 0 if val is None else len(val), classes)
    summary.update(resumed=resumed, seconds=time.perf_counter() - started)
    summary["processes"] = distributed.current().world
    emit(args, summary, _lines(summary))
    return 0


def _fit(args, model: CPIC, train: VolumeDataset, val: VolumeDataset | None, provenance: dict):
    """:func:`cpic.train.fit` with the options; its warnings become one line each on stderr."""
    refresh = None if args.refresh == "none" else args.refresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = fit(
            model,
            train,
            val,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            refresh=refresh,
            seed=args.seed,
            checkpoint_dir=args.checkpoint_dir,
            resume=bool(args.resume),
            log_csv=args.log_csv,
            progress=shows_progress(args),
            provenance=provenance,
        )
    if not args.quiet:
        for seen in {str(w.message) for w in caught}:
            print(f"cpic train: warning: {seen}", file=sys.stderr)
    return history


def _provenance(args, data: VolumeDataset) -> dict:
    """What prediction and evaluation need, and how the model was trained: stored in every
    checkpoint and in the model files."""
    return {
        "normalize": args.normalize,
        "manifest": str(Path(args.manifest).resolve()),
        "val_manifest": str(Path(args.val_manifest).resolve()) if args.val_manifest else None,
        "val_fraction": None if args.val_manifest else args.val,
        "classes": data.classes,
        "target": args.target,
        "extra": list(args.extra),
        "path_column": args.path_column,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "processes": distributed.current().world,
        "seed": args.seed,
    }


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("epoch", "seconds", "fraction_read")}


def _summary(args, model: CPIC, history, saved: tuple[Path, Path], n_train: int, n_val: int, classes) -> dict:
    best, last = saved
    budget = model.reads.budget
    return {
        "sampler": model.config["reads"]["type"],
        "read_budget": budget,
        "read_budget_share": None if budget is None else budget / math.prod(model.grid_shape),
        "model": str(best),
        "metadata": str(checkpoint_paths(best)[1]),
        "model_epoch": history.best["epoch"],
        "last_model": str(last),
        "task": args.task,
        "classes": classes,
        "train_volumes": n_train,
        "val_volumes": n_val,
        "epochs": len(history.rows),
        "best_epoch": history.best_epoch,
        "monitor": history.monitor,
        "metrics": _metrics(history.best),
        "last_metrics": _metrics(history.last),
        "fraction_read": history.last.get("fraction_read"),
        "numerics": history.numerics,
        "history": history.rows,
    }


def _lines(summary: dict) -> list[str]:
    events = ", ".join(f"{k} {v}" for k, v in summary["numerics"].items() if v) or "none"
    classes = f" of {len(summary['classes'])} classes" if summary["classes"] else ""
    monitor, epoch = summary["monitor"], summary["model_epoch"]
    if monitor:
        chosen = f"best {monitor} {summary['metrics'][monitor]:.4f}"
        last = f"{monitor} {summary['last_metrics'][monitor]:.4f}"
    else:
        chosen, last = "the last (no validation set)", "the same weights"
    n_val = summary["val_volumes"]
    validation = f"{n_val} validation volumes" if n_val else "no validation (--val 0)"
    reads = summary["sampler"]
    if summary["read_budget"] is not None:
        share, voxels = 100 * summary["read_budget_share"], summary["read_budget"]
        reads += f", {share:.2f}% per prediction ({voxels} voxels)"
    lines = [
        f"cpic train: {summary['task']}{classes}, {summary['train_volumes']} training / {validation}",
        f"  sampler             {reads}",
        f"  epochs              {summary['epochs']}" + (" (resumed)" if summary["resumed"] else ""),
    ]
    if summary.get("processes", 1) > 1:
        lines.append(f"  processes           {summary['processes']} (data-parallel)")
    lines.append(f"  metrics of epoch    {epoch}" + (f" (best by {monitor})" if monitor else ""))
    lines += [f"  {name:<19} {value:.4f}" for name, value in summary["metrics"].items()]
    lines += [
        f"  voxels read         {100 * summary['fraction_read']:.2f}% of each training volume",
        f"  numerical events    {events}",
        f"  time                {summary['seconds']:.1f} s",
        f"  model               {summary['model']} (+ .json): epoch {epoch}, {chosen}",
        f"  last epoch          {summary['last_model']} (+ .json): epoch {summary['epochs']}, {last}",
    ]
    return lines
