"""``cpic train``: fit a C-PIC model on a CSV manifest of volumes and write a model file.

Every option may also come from ``--config FILE.json`` (keys are the long option names, with
dashes or underscores); flags given on the command line override the file. To tell the two
apart, every option's parser default is ``None`` and the real defaults live in ``_OPTIONS``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import NoReturn

import torch

from cpic.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    add_common,
    device_of,
    emit,
    fail,
    memory_budget_option,
    subparser,
)
from cpic.nn import CPIC, Classification, QuantileRegression, Regression
from cpic.train import VolumeDataset, checkpoint_paths, class_names, distributed, fit, save_model
from cpic.train.launch import launch
from cpic.train.output_lock import training_locks
from cpic.util.guard import read_bytes
from cpic.util.outputs import check_writable, staged, write_failure
from cpic.util.progress import shows_progress

#: dest -> (argparse action, real default) of every option that ``--config`` may set
_OPTIONS: dict[str, tuple[argparse.Action, object]] = {}
#: numerical failures that end a training run (the work failed, not the input)
TRAINING_FAILURES = (FloatingPointError, RuntimeError, MemoryError)


# ---------------------------------------------------------------------- argument types
def comma_list(text: str) -> list[str]:
    """``"age,sex"`` -> ``["age", "sex"]`` (empty items dropped)."""
    return [item.strip() for item in str(text).split(",") if item.strip()]


def float_list(text: str) -> list[float]:
    """``"0.1,0.5,0.9"`` -> ``[0.1, 0.5, 0.9]``."""
    try:
        return [float(item) for item in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


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


def one_line_errors(parser: argparse.ArgumentParser, command: str) -> None:
    """Make ``parser`` report usage errors in one line on stderr (exit code 2)."""

    def error(message: str):
        parser.exit(EXIT_USAGE, f"cpic {command}: {message} (see cpic {command} --help)\n")

    parser.error = error


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
        default="classification",
        choices=("classification", "regression", "quantile"),
        help="what to predict",
    )
    _option(p, "--target", default="label", metavar="COLUMN", help="the manifest column to predict")
    _option(
        p, "--extra", default=[], type=comma_list, metavar="COL,...", help="numeric columns fed to the head"
    )
    _option(p, "--path-column", default="path", metavar="COLUMN", help="the manifest column of volume paths")
    _option(p, "--val", default=0.2, type=_fraction, metavar="FRACTION", help="validation split (0: none)")
    _option(p, "--val-manifest", metavar="FILE", help="validation volumes from another manifest (not --val)")
    _option(
        p,
        "--normalize",
        default="none",
        choices=("none", "range", "percentile"),
        help="intensity normalisation of each volume (recorded in the model file)",
    )


def _add_model_options(p: argparse.ArgumentParser) -> None:
    _option(p, "--rank", default=10, type=positive_int, help="TT rank of the latent tensor")
    _option(p, "--features", default=16, type=positive_int, help="encoder features per voxel")
    _option(p, "--patch", default=5, type=positive_int, help="patch side, odd")
    _option(
        p,
        "--stride",
        default=1,
        type=positive_int,
        help="patch centres on every n-th voxel: an n^D times smaller latent grid (about --patch "
        "for patches that barely overlap)",
    )
    _option(p, "--encoder", default="mlp", choices=("mlp", "conv"), help="patch encoder")
    _option(p, "--projection", default="mean", choices=("mean", "moments", "grid"), help="TT -> vector")
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
    _option(p, "--quantiles", default=[0.1, 0.5, 0.9], type=float_list, help="quantiles of --task quantile")


def _add_training_options(p: argparse.ArgumentParser) -> None:
    _option(p, "--epochs", default=10, type=positive_int, help="training epochs")
    _option(p, "--batch-size", default=8, type=positive_int, help="volumes per step")
    _option(p, "--lr", default=3e-3, type=float, help="learning rate (cosine-decayed)")
    _option(p, "--optimizer", default="adamw", choices=("adamw", "radam"), help="optimiser")
    _option(p, "--refresh", default="epoch", type=_refresh, help="pivot refresh: epoch, none or every N uses")
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
#: a --config file is small; a pipe (``--config <(...)``) must deliver it within this many seconds
CONFIG_BYTES, CONFIG_PIPE_SECONDS = 1 << 20, 5.0


def _config(path: str) -> dict:
    """The options of a JSON config file, converted and checked like their flags."""
    text = read_bytes(path, "config file (JSON)", max_bytes=CONFIG_BYTES, pipe_timeout=CONFIG_PIPE_SECONDS)
    try:
        raw = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"config {path!r} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"config {path!r} must hold a JSON object of option names and values.")
    values = {}
    for key, value in raw.items():
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
    for dest, (_action, default) in _OPTIONS.items():
        if getattr(args, dest, None) is None:
            setattr(args, dest, config.get(dest, default))


def _check_options(args: argparse.Namespace) -> None:
    if not args.output:
        raise ValueError("-o/--output MODEL is required (the model file to write).")
    if Path(args.output).is_dir():
        raise ValueError(f"-o {args.output!r} is a directory; give a file name such as {args.output}/model.")
    check_writable(_model_files(args.output), "model file (-o)")
    if args.checkpoint_dir:
        check_writable(args.checkpoint_dir, "checkpoint folder (--checkpoint-dir)", folder=True)
    if args.log_csv:
        check_writable(args.log_csv, "log file (--log-csv)")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (where the run's checkpoints are).")
    if args.patch % 2 == 0:
        raise ValueError(f"--patch must be odd (the patch is centred on a voxel), got {args.patch}.")
    if args.task == "quantile" and not args.quantiles:
        raise ValueError("--quantiles needs at least one quantile, e.g. 0.1,0.5,0.9.")


# ---------------------------------------------------------------------- data and model
def normalize_option(value):
    """The ``normalize=`` of :func:`cpic.sources.open_volume` for a recorded setting."""
    return None if value in (None, "none") else value


def load_manifest(path, target, extra, path_column, task, normalize) -> VolumeDataset:
    """A manifest as a dataset, its volumes opened with ``normalize`` on first use."""
    return VolumeDataset.from_csv(
        path,
        target=target,
        extra=extra,
        path_column=path_column,
        task=task,
        normalize=normalize_option(normalize),
    )


def open_all(data: VolumeDataset, manifest: str) -> None:
    """Open every volume of ``data`` now, so that a bad one is named with its manifest row."""
    for i in range(len(data)):
        try:
            data.source(i)
        except ValueError as err:
            raise ValueError(f"manifest {manifest!r}, row {i + 2}: {err}") from None


def align_classes(data: VolumeDataset, classes: list | None, name: str) -> None:
    """Re-number ``data``'s class ids to the model's class names ``classes`` (in place)."""
    if data.classes is None and classes is None:
        return
    if classes is None:
        raise ValueError(f"{name}: its labels are names {data.classes}; the model's classes are integer ids.")
    if data.classes is None:
        raise ValueError(f"{name}: its labels are integer ids; the model's classes are names {classes}.")
    unknown = sorted(set(data.classes) - set(classes))
    if unknown:
        raise ValueError(f"{name}: class(es) {unknown} are not among the model's classes {classes}.")
    lookup = torch.tensor([classes.index(c) for c in data.classes])
    data.targets, data.classes = lookup[data.targets], list(classes)


def _datasets(args) -> tuple[VolumeDataset, VolumeDataset | None, VolumeDataset]:
    """``(train, val, all)`` from the manifest and ``--val`` or ``--val-manifest``."""
    options = (args.target, args.extra, args.path_column, args.task, args.normalize)
    data = load_manifest(args.manifest, *options)
    alone = distributed.current().world == 1  # a rank of a job opens only its own volumes (in fit)
    if alone:
        open_all(data, args.manifest)
    if args.val_manifest:
        val = load_manifest(args.val_manifest, *options)
        if alone:
            open_all(val, args.val_manifest)
        if args.task == "classification":
            align_classes(val, data.classes, f"validation manifest {args.val_manifest!r}")
        return data, val, data
    if args.val == 0:
        return data, None, data
    train, val = data.split(args.val, seed=args.seed)
    return train, val, data


def _head(args, data: VolumeDataset):
    if args.task == "regression":
        return Regression()
    if args.task == "quantile":
        return QuantileRegression(args.quantiles)
    count = len(data.classes) if data.classes is not None else int(data.targets.max()) + 1
    if count < 2:
        raise ValueError(
            f"manifest {args.manifest!r}: column {args.target!r} holds a single class; "
            "classification needs two or more."
        )
    return Classification(count)


def build_model(args, train: VolumeDataset, data: VolumeDataset) -> CPIC:
    """The model the options describe, for the grid of the first training volume; its initial
    weights depend on ``--seed`` only (every rank of a distributed job builds the same model)."""
    first = train.source(0)
    torch.manual_seed(args.seed)
    return CPIC(
        first.shape,
        _head(args, data),
        features=args.features,
        patch=args.patch,
        channels=first.channels or 1,
        encoder=args.encoder,
        positions=args.positions,
        background=args.background,
        projection=args.projection,
        sampled_max=args.sampled_max,
        rank=args.rank,
        stride=args.stride,
        extra_features=len(args.extra),
        seed=args.seed,
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
    """:func:`_train` as one rank of a distributed job (or alone outside one). A rank leaves
    the process group at the end, after waiting for the other ranks when it succeeded, and then
    ends its process (:func:`_leave`): under a job, this does not return."""
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
    try:
        code = _train(args)
    except BaseException:
        distributed.shutdown()
        raise
    if code == 0:
        distributed.shutdown(wait=True)
    _leave(code)


def _leave(code: int) -> NoReturn:
    """End this rank's process now, with ``code``: its files are written and closed, its
    messages flushed. Interpreter exit after a gloo job can end in ``std::terminate``
    (SIGABRT) as gloo's threads are torn down, even after ``destroy_process_group``: 1 run in
    60 of a successful 2-rank ``cpic train --nproc 2`` on this machine, and more often when a
    peer has died. That would turn a finished job into a failed one and add a C++ message
    after ours."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    resolve_options(args)
    _check_options(args)
    device = device_of(args)
    train, val, data = _datasets(args)
    model = build_model(args, train, data).to(device)
    model.memory_budget = args.memory_budget
    resumed = bool(args.resume) and checkpoint_paths(Path(args.checkpoint_dir) / "last")[1].exists()
    provenance = _provenance(args, data)
    try:
        history = _fit(args, model, train, val, provenance)
    except TRAINING_FAILURES as err:  # incl. distributed.RankLost
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
        saved = _save(args, model, history, provenance)
    except OSError as err:
        return fail("train", f"writing the model failed: {write_failure(err)}", EXIT_FAILED)
    classes = class_names(model.config, provenance)
    summary = _summary(args, history, saved, len(train), 0 if val is None else len(val), classes)
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


def last_path(output: str | os.PathLike[str]) -> Path:
    """Where ``cpic train -o OUTPUT`` keeps the last epoch's model: ``OUTPUT.last``.

    Example:
        >>> last_path("run/model.safetensors").as_posix()
        'run/model.last'
    """
    base = checkpoint_paths(output)[0].with_suffix("")
    return base.with_name(base.name + ".last")


def _model_files(output: str | os.PathLike[str]) -> list[Path]:
    """The four files ``cpic train -o OUTPUT`` writes (the best and the last epoch's model)."""
    return [*checkpoint_paths(output), *checkpoint_paths(last_path(output))]


def _save(args, model: CPIC, history, provenance: dict) -> tuple[Path, Path]:
    """The last epoch's model as ``OUTPUT.last`` and the best epoch's as ``OUTPUT``, written
    under temporary names and then moved into place together (an earlier pair is never mixed
    with a new one)."""
    common = dict(
        provenance,
        epochs=len(history.rows),
        best_epoch=history.best_epoch,
        monitor=history.monitor,
        numerics=history.numerics,
        history=history.rows,
    )
    with staged(checkpoint_paths(args.output)[0].with_suffix(""), _model_files) as base:
        save_model(model, last_path(base), epoch=len(history.rows), **common)
        save_model(model, base, epoch=history.restore_best(model), **common)
    return checkpoint_paths(args.output)[0], checkpoint_paths(last_path(args.output))[0]


def _metrics(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("epoch", "seconds", "fraction_read")}


def _summary(args, history, saved: tuple[Path, Path], n_train: int, n_val: int, classes) -> dict:
    best, last = saved
    return {
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
    lines = [
        f"cpic train: {summary['task']}{classes}, {summary['train_volumes']} training / {validation}",
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
