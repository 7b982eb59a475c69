"""The training loop: epochs of batched C-PIC steps, validation metrics, logs, checkpoints, resume."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cpic.nn import CPIC
from cpic.train import metrics
from cpic.train.checkpoint import (
    CheckpointError,
    checkpoint_paths,
    flatten_state,
    load_checkpoint,
    save_checkpoint,
    unflatten_state,
)
from cpic.train.dataset import VolumeDataset
from cpic.train.distributed import Distributed, current
from cpic.train.resume_state import restore_state, save_state, sync_log
from cpic.util.checks import check_int
from cpic.util.progress import counter, write
from cpic.util.progress import progress as progress_bar

OPTIMIZERS = {"adamw": torch.optim.AdamW, "radam": torch.optim.RAdam}
#: the peak learning rate of fit and of cpic.implicit.compress (both cosine-decayed)
LEARNING_RATE = 3e-3


@dataclass
class History:
    """One row of metrics per epoch, the best epoch, and the numerical events of the run.

    ``best_epoch`` is the epoch of the best validation metric (``monitor``: the highest
    ``val_accuracy`` for classification, ties to the lower ``val_loss``; else the lowest
    ``val_loss``), ``None`` without validation. ``best_state`` holds
    the model's weights at that epoch (CPU copies; without validation, those of the last
    epoch); :meth:`restore_best` puts them back into the model.
    """

    rows: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    #: events met while training: pivot refreshes after failures, lowered ranks, drift
    #: refreshes, retried and skipped steps (never skipped silently)
    numerics: dict = field(default_factory=dict)
    monitor: str | None = None
    best_state: dict[str, Tensor] | None = field(default=None, repr=False)

    @property
    def last(self) -> dict:
        return self.rows[-1] if self.rows else {}

    @property
    def best(self) -> dict:
        """The row of the best epoch (of the last one without validation)."""
        return self.rows[self.best_epoch - 1] if self.best_epoch else self.last

    def restore_best(self, model: CPIC) -> int:
        """Load the best epoch's weights into ``model``; returns that epoch.

        Example:
            >>> import torch, cpic
            >>> from cpic.nn import Classification
            >>> from cpic.train import VolumeDataset, fit
            >>> vols = [cpic.open_volume(torch.full((8, 8, 8), float(i % 2))) for i in range(4)]
            >>> data = VolumeDataset(vols, [0, 1, 0, 1])
            >>> model = cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=2)
            >>> history = fit(model, data, data, epochs=2, batch_size=2, progress=False)
            >>> history.restore_best(model) == history.best_epoch
            True
        """
        if self.best_state is None:
            raise ValueError("this history holds no weights (no epoch has finished).")
        model.load_state_dict(self.best_state)
        return self.best_epoch or len(self.rows)


def _weights(model: CPIC) -> dict[str, Tensor]:
    """A CPU copy of the model's weights."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def epoch_line(row: dict, epochs: int, monitor: str, best: bool) -> str:
    """The line :func:`fit` prints after each epoch when its progress is on.

    Example:
        >>> row = {"epoch": 3, "train_loss": 0.512, "val_accuracy": 0.75, "seconds": 4.21,
        ...        "fraction_read": 0.0231}
        >>> epoch_line(row, 10, "val_accuracy", best=True)
        'epoch 3/10  train_loss 0.5120  val_accuracy 0.7500 (best)  voxels read 2.31%  4.2 s'
    """
    metric = f"  {monitor} {row[monitor]:.4f}{' (best)' if best else ''}" if monitor in row else ""
    return (
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}{metric}  "
        f"voxels read {100 * row['fraction_read']:.2f}%  {row['seconds']:.1f} s"
    )


def _monitor(task: str) -> str:
    """The validation metric that picks the best epoch."""
    return "val_accuracy" if task == "classification" else "val_loss"


def _score(row: dict, monitor: str) -> tuple[float, float]:
    """What the best epoch maximises: the higher accuracy, ties to the lower loss; else the
    lower loss."""
    if monitor == "val_accuracy":
        return row[monitor], -row["val_loss"]
    return -row[monitor], 0.0


def _batches(n: int, batch_size: int, gen: torch.Generator | None) -> list[list[int]]:
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def _batch(data: VolumeDataset, items: list[int]):
    sources = [data.source(i) for i in items]
    targets = None if data.targets is None else data.targets[items]
    extra = None if data.extra is None else data.extra[items]
    return sources, targets, extra


def _task_metrics(model: CPIC, pred: Tensor, target: Tensor | None, prefix: str) -> dict:
    task = model.head.task
    out = {}
    if task == "classification":
        out[f"{prefix}accuracy"] = metrics.accuracy(pred, target)
        out[f"{prefix}auc"] = metrics.roc_auc(torch.softmax(pred, 1), target)
    elif task == "regression":
        out[f"{prefix}mae"] = metrics.mean_absolute_error(pred, target.to(pred.dtype))
    elif task == "quantile":
        q = model.head.quantiles
        median = int((q - 0.5).abs().argmin())
        out[f"{prefix}mae"] = metrics.mean_absolute_error(pred[:, median], target.to(pred.dtype))
        out[f"{prefix}pinball"] = float(metrics.pinball_loss(pred, target.to(pred.dtype), q))
    return out


@torch.no_grad()
def evaluate(
    model: CPIC,
    data: VolumeDataset,
    batch_size: int = 8,
    split: str = "val",
    distributed: Distributed | None = None,
    progress: bool = False,
) -> dict:
    """Loss and the task's metrics of ``model`` on ``data`` (keys ``"<split>_loss"``, ...).

    In a distributed job (``distributed``, default the current process group) each rank
    evaluates the volumes it owns and every rank gets the metrics of all of them.
    ``progress=True`` shows a bar over the volumes on stderr (rank 0's, in a job).

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Regression
        >>> from cpic.train import VolumeDataset
        >>> vols = [cpic.open_volume(torch.full((8, 8, 8), float(v))) for v in range(4)]
        >>> model = cpic.CPIC((8, 8, 8), Regression(), features=2, patch=3, rank=2)
        >>> sorted(evaluate(model, VolumeDataset(vols, targets=[0.0, 1, 2, 3])))
        ['val_loss', 'val_mae']
    """
    model.eval()
    ctx = distributed or current()
    owned = ctx.share(len(data))
    if len(owned) == len(data):  # one process, or too few volumes to share: every rank does all
        ctx = Distributed()
    losses, weights, preds = [], [], []
    with counter(progress and ctx.is_main, f"evaluate {split}", total=len(owned), unit="volume") as bar:
        for chunk in _batches(len(owned), batch_size, None):
            items = [owned[j] for j in chunk]
            sources, targets, extra = _batch(data, items)
            loss, pred = model.loss(sources, targets, keys=sources, extra=extra)
            losses.append(float(loss))
            weights.append(len(items))
            preds.append(pred)
            bar.update(len(items))
    out = {f"{split}_loss": ctx.mean(losses, weights)}
    if model.supervised:
        target = model.head.check_targets(data.targets, name=f"{split} targets")
        out.update(_task_metrics(model, ctx.gather(torch.cat(preds), len(data)), target, f"{split}_"))
    return out


def _fraction_read(data: VolumeDataset, opened: set[int], ctx: Distributed) -> float:
    """Mean fraction of voxels read per opened volume (since each was opened), over all ranks."""
    fractions = []
    for i in opened:
        src = data.source(i)
        fractions.append(src.stats.fraction(math.prod(src.shape)))
    return ctx.mean(fractions, [1.0] * len(fractions))


def _check_data(model: CPIC, data: VolumeDataset, name: str, items: list[int] | None = None) -> None:
    if model.supervised:
        if data.targets is None:
            raise ValueError(f"the {name} dataset has no targets, but a {model.task} model needs them.")
        if data.classes is not None and model.head.task != "classification":
            raise ValueError(
                f"the {name} dataset has class labels {data.classes}, but a {model.task} model "
                "needs numeric targets."
            )
        model.head.check_targets(data.targets, name=f"{name} targets")
    if model.extra_features and (data.extra is None or data.extra.shape[1] != model.extra_features):
        got = None if data.extra is None else data.extra.shape[1]
        raise ValueError(
            f"the model takes {model.extra_features} extra features; the {name} dataset has {got}."
        )
    shape = tuple(model.grid_shape)
    for i in range(len(data)) if items is None else items:  # opens them
        src = data.source(i)
        if src.shape != shape:
            raise ValueError(f"{name} volume {data.names[i]!r} has grid {src.shape}, the model {shape}.")


def _save(
    path: Path, model: CPIC, optimizer, epoch: int, history: History, run_state, provenance: dict
) -> None:
    """A checkpoint of everything the next epoch depends on: ``run_state`` is
    :func:`cpic.train.resume_state.save_state`'s pivots, batch order and random states;
    ``provenance`` is what prediction needs (classes, normalisation...), as in a model file."""
    opt_tensors, skeleton = flatten_state(optimizer.state_dict())
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"optim/{k}": v for k, v in opt_tensors.items()})
    state_tensors, state_meta = run_state
    tensors.update(state_tensors)
    meta = {
        "config": model.config,
        "epoch": epoch,
        "history": history.rows,
        "best_epoch": history.best_epoch,
        "numerics": history.numerics,
        "optimizer": skeleton,
        "provenance": provenance,
        **state_meta,
    }
    save_checkpoint(path, tensors, meta)


def _resume(path: Path, model: CPIC, optimizer, gen, datasets, ctx: Distributed) -> tuple[int, History]:
    tensors, meta = load_checkpoint(path)
    if meta.get("config") != json.loads(json.dumps(model.config)):
        raise ValueError(f"checkpoint {str(path)!r} was written by a model with config {meta.get('config')}.")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    optimizer.load_state_dict(
        unflatten_state({k[6:]: v for k, v in tensors.items() if k.startswith("optim/")}, meta["optimizer"])
    )
    restore_state(tensors, meta, model, gen, datasets, ctx)
    history = History(rows=meta["history"], best_epoch=meta["best_epoch"], numerics=meta["numerics"])
    epoch = int(meta["epoch"])
    if history.best_epoch in (None, epoch):
        history.best_state = _weights(model)
    else:  # the best epoch's weights are in the best checkpoint
        best, best_meta = load_checkpoint(path.with_name("best"))
        if best_meta.get("epoch") != history.best_epoch:
            raise CheckpointError(
                f"{path.with_name('best')} holds epoch {best_meta.get('epoch')}; "
                f"{path} says the best epoch is {history.best_epoch}."
            )
        history.best_state = {k[6:]: v for k, v in best.items() if k.startswith("model/")}
    return epoch, history


def fit(
    model: CPIC,
    train: VolumeDataset,
    val: VolumeDataset | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 8,
    lr: float = LEARNING_RATE,
    weight_decay: float = 1e-4,
    optimizer: str = "adamw",
    grad_clip: float | None = 1.0,
    schedule: str | None = "cosine",
    refresh: str | int | None = "epoch",
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log_csv: str | Path | None = None,
    tensorboard: str | Path | None = None,
    progress: bool = True,
    max_minutes: float | None = None,
    distributed: Distributed | None = None,
    provenance: dict | None = None,
) -> History:
    """Train ``model`` on ``train`` with AdamW or RAdam; validate on ``val`` after each epoch.

    Pivots are refreshed every epoch (``refresh="epoch"``), every ``refresh`` uses of a volume
    (an integer), or never (``None``). A step whose loss (or sampled features) is not finite is
    retried once with freshly selected pivots; if it fails again it is skipped, counted in
    ``history.numerics`` and warned about. ``checkpoint_dir`` receives ``last`` (every epoch)
    and ``best`` (by validation accuracy, ties to the lower validation loss; else by validation
    loss) as safetensors + JSON;
    ``resume=True`` continues from ``last``. ``log_csv`` gets one row per epoch.
    ``provenance`` (JSON values: the target column, the normalisation of the volumes...) is
    stored in every checkpoint, with ``train.classes`` as ``"classes"`` unless it names them,
    so that :func:`cpic.train.load_model` predicts with a checkpoint as with a model file.
    The returned :class:`History` keeps the best epoch's weights (:meth:`History.restore_best`).
    ``progress=True`` shows a bar over each epoch's batches and prints one line per epoch on
    stderr (:func:`epoch_line`: the training loss, the validation metric, the voxels read, the
    seconds).
    ``max_minutes`` stops after the epoch that crosses the limit. ``schedule="cosine"`` decays
    the learning rate from ``lr`` towards 0 over ``epochs`` (set per epoch, so a resumed run
    continues the same curve); ``None`` keeps it constant.

    In a torch.distributed job (``distributed``, default: the current process group, see
    :mod:`cpic.train.distributed`) every rank draws the same global batches of ``batch_size``
    volumes, computes the loss of the ones it owns, and the gradients are all-reduced before each
    step; rank 0 alone writes checkpoints and logs. Checkpoints do not depend on the number of
    ranks, so a run may resume on another number.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> from cpic.train import VolumeDataset, fit
        >>> vols = [cpic.open_volume(torch.full((8, 8, 8), float(i % 2))) for i in range(4)]
        >>> model = cpic.CPIC((8, 8, 8), Classification(2), features=2, patch=3, rank=2)
        >>> history = fit(model, VolumeDataset(vols, [0, 1, 0, 1]), epochs=2, batch_size=2, progress=False)
        >>> len(history.rows), sorted(history.last)[:3]
        (2, ['epoch', 'fraction_read', 'seconds'])
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}.")
    check_int("batch_size", batch_size)
    ctx = distributed or current()
    if ctx.world > 1 and not ctx.active:
        raise ValueError(f"{ctx} needs an initialised process group (see cpic.train.distributed.init).")
    _check_data(model, train, "training", ctx.share(len(train)))  # a rank opens its own volumes only
    if val is not None:
        _check_data(model, val, "validation", ctx.share(len(val)))
    if isinstance(refresh, int) and not isinstance(refresh, bool):
        if refresh < 1:
            raise ValueError(f"refresh must be 'epoch', a positive number of uses, or None, got {refresh!r}.")
        model.pivots.refresh_every = refresh
    elif refresh not in ("epoch", None):
        raise ValueError(f"refresh must be 'epoch', a number of uses, or None, got {refresh!r}.")
    if schedule not in ("cosine", None):
        raise ValueError(f"schedule must be 'cosine' or None, got {schedule!r}.")
    model.check_memory(min(batch_size, len(train)))
    provenance = {"classes": train.classes, **(provenance or {})}
    try:
        json.dumps(provenance)
    except (TypeError, ValueError) as err:
        raise ValueError(f"provenance must hold JSON values only: {err}") from None

    torch.manual_seed(seed)
    opt = OPTIMIZERS[optimizer](model.parameters(), lr=lr, weight_decay=weight_decay)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start_epoch, history = 0, History()
    gen = torch.Generator().manual_seed(seed)  # the batch order; its state travels in checkpoints
    datasets = {"train": train, "val": val}
    if resume:
        if ckpt_dir is None:
            raise ValueError("resume=True needs checkpoint_dir=.")
        if checkpoint_paths(ckpt_dir / "last")[1].exists():
            start_epoch, history = _resume(ckpt_dir / "last", model, opt, gen, datasets, ctx)
            if log_csv is not None and ctx.is_main:
                sync_log(log_csv, history.rows)  # the log may be an epoch behind or ahead of it
    ctx.broadcast_parameters(model)
    writer = _tensorboard(tensorboard) if ctx.is_main else None
    monitor = _monitor(model.task)
    history.monitor = monitor if val is not None else None
    show = progress and ctx.is_main
    events: Counter[str] = Counter(history.numerics)
    resumed_events = Counter(history.numerics)  # totals over all ranks already
    started = time.perf_counter()
    opened: set[int] = set()

    for epoch in range(start_epoch, epochs):
        model.train()
        if refresh == "epoch" and epoch > 0:
            model.refresh_pivots()
        if schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
        t0, total, count = time.perf_counter(), 0.0, 0
        before = Counter(model.numerics)
        for batch in progress_bar(_batches(len(train), batch_size, gen), show, f"epoch {epoch + 1}/{epochs}"):
            items = ctx.shard(batch)  # this rank's volumes of the global batch
            opened.update(items)
            loss = _step(model, opt, train, items, grad_clip, events, ctx)
            if loss is not None:
                total, count = total + loss * len(batch), count + len(batch)
        events.update(Counter(model.numerics) - before)
        # an epoch whose every step was skipped has no loss (not a perfect one)
        row = {"epoch": epoch + 1, "train_loss": total / count if count else math.nan}
        if val is not None:
            row.update(evaluate(model, val, batch_size))
        row["seconds"] = time.perf_counter() - t0
        row["fraction_read"] = _fraction_read(train, opened, ctx)
        history.rows.append(row)
        history.numerics = ctx.total(events, since=resumed_events)
        improved = False
        if monitor in row:
            best = history.rows[history.best_epoch - 1] if history.best_epoch else None
            improved = best is None or _score(row, monitor) > _score(best, monitor)
        if improved or monitor not in row:  # without validation the last epoch is the best
            history.best_state = _weights(model)
        if improved:
            history.best_epoch = epoch + 1
            if ckpt_dir is not None:
                run_state = save_state(model, gen, datasets, ctx)  # collective: every rank
                if ctx.is_main:
                    _save(ckpt_dir / "best", model, opt, epoch + 1, history, run_state, provenance)
        if ckpt_dir is not None:
            run_state = save_state(model, gen, datasets, ctx)
            if ctx.is_main:
                _save(ckpt_dir / "last", model, opt, epoch + 1, history, run_state, provenance)
        if ctx.is_main:
            _log(log_csv, row, writer)
        if show:
            write(epoch_line(row, epochs, monitor, improved))
        if max_minutes is not None and ctx.agree(time.perf_counter() - started > 60 * max_minutes):
            break
    if writer is not None:
        writer.close()
    return history


def _step(
    model: CPIC,
    opt,
    data: VolumeDataset,
    items: list[int],
    grad_clip,
    events: Counter,
    ctx: Distributed | None = None,
) -> float | None:
    """One optimiser step; a non-finite loss, or non-finite features met while selecting pivots,
    is retried once with fresh pivots, then the step is skipped (counted and warned about).

    In a distributed job ``items`` are this rank's part of the global batch (maybe none); the
    gradients are all-reduced before clipping, and a part skipped here adds nothing to them.
    """
    ctx = ctx or Distributed()
    value = None
    opt.zero_grad(set_to_none=True)
    if items:
        value = _backward(model, opt, data, items, events)
    value, _ = ctx.sync_gradients(model, value, len(items))
    if value is None:
        return None
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return value


def _backward(model: CPIC, opt, data: VolumeDataset, items: list[int], events: Counter) -> float | None:
    """The loss of ``items`` and its gradients (retried once with fresh pivots); ``None`` if skipped."""
    sources, targets, extra = _batch(data, items)
    keys = sources  # pivots are kept per volume
    for _attempt in range(2):
        opt.zero_grad(set_to_none=True)
        try:
            loss, _ = model.loss(sources, targets, keys=keys, extra=extra)
        except (FloatingPointError, torch.linalg.LinAlgError):  # incl. cross's NonFiniteValues
            events["numerical_error"] += 1
            model.pivots.forget(keys)
            continue
        if torch.isfinite(loss):
            loss.backward()
            return float(loss.detach())
        events["nonfinite_loss"] += 1
        model.pivots.forget(keys)
    opt.zero_grad(set_to_none=True)
    events["skipped_steps"] += 1
    warnings.warn(
        f"skipped a step: it stayed non-finite after re-selecting pivots (volumes {items}); normalise "
        "the volumes (normalize='range' or 'percentile') or lower the learning rate",
        stacklevel=3,
    )
    return None


def _tensorboard(logdir):
    if logdir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("tensorboard= needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(logdir))


def _log(path, row: dict, writer) -> None:
    if writer is not None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, row["epoch"])
    if path is None:
        return
    path = Path(path)
    new = not path.exists()
    if not new:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), None)
        new = header is None
    fields = list(row) if new else header
    with open(path, "a", newline="") as fh:
        out = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        if new:
            out.writeheader()
        out.writerow(row)
