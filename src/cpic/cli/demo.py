"""``cpic demo``: the main job end to end on a built-in cohort, in about 1.5 minutes on 2 CPU cores.

1. A cohort of voxelised shapes (``cpic.data.shape_cohort``: soft occupancy, random upright
   poses; nothing is downloaded or stored), split 80/20 stratified by class.
2. A :class:`cpic.CPIC` classifier (an MLP on each sampled voxel and its position, features
   relative to empty space, a rank-10 QTT of the features by cross, the feature-moments
   projection) trained with :func:`cpic.train.fit`; pivots are selected once per volume and
   kept, so each volume is read once, at its pivots.
3. In ``--output`` (alias ``--out``): the model of the best validation epoch (a model file),
   two validation volumes as ``.npy`` files and the ``cpic predict`` command line that applies
   the one to the others; figures of slices with the voxels the model reads, the learning
   curve, and the voxels TT-cross reads against the size of a procedural volume (32^3 ... 512^3).
"""

from __future__ import annotations

import argparse
import math
import shlex
import time
from pathlib import Path

import numpy as np
import torch

import cpic
from cpic._version import __version__
from cpic.cli import figures
from cpic.cli.common import EXIT_FAILED, add_common, emit, fail, read_uncounted, subparser
from cpic.data import SHAPE_CLASSES, blobs, shape_cohort
from cpic.implicit import FIT_FAILURES
from cpic.layout import QTTLayout
from cpic.nn import Classification
from cpic.sampling import IntensityFunction
from cpic.train import History, VolumeDataset, fit, save_model
from cpic.train.metrics import relative_error
from cpic.util.outputs import check_writable
from cpic.util.progress import progress, shows_progress

#: the model settings that generalised best in our experiments
MODEL = {
    "features": 16,
    "patch": 1,
    "rank": 10,
    "sweeps": 2,
    "positions": True,
    "background": 0.0,
    "projection": "moments",
}
#: the smallest procedural volume side of the sampling-scale figure (then doubled up to --scale-max)
SCALE_MIN = 32
SCALE_RANK, SCALE_SWEEPS = 10, 3
#: validation volumes shown in the slice figure, and those saved for ``cpic predict``
SHOWN, SAVED = 4, 2


def register(commands) -> None:
    demo = subparser(
        commands,
        "demo",
        help="train a classifier on a built-in shape cohort, reading a few %% of each volume",
        description=(
            "The main job end to end, no download: a built-in cohort of voxelised shapes, a C-PIC "
            "classifier trained on the voxels its cross pivots read, validation accuracy, the "
            "fraction of voxels read, and figures (slices with the voxels read, learning curve, "
            "voxels read against volume size), the model and two validation volumes in --output, "
            "and the `cpic predict` line that applies them. About 1.5 minutes on 2 idle CPU cores."
        ),
        example="cpic demo --output cpic-demo --json",
    )
    demo.add_argument("--side", type=int, default=64, help="voxels per side of the shapes (default 64)")
    demo.add_argument("--count", type=int, default=400, help="volumes in the cohort (default 400)")
    demo.add_argument("--classes", type=int, default=5, help="shape classes, the first 2..10 (default 5)")
    demo.add_argument("--epochs", type=int, default=40, help="training epochs (default 40)")
    demo.add_argument(
        "--output",
        "--out",
        metavar="DIR",
        default="cpic-demo",
        help="folder for the model, two validation volumes and the figures (default cpic-demo/)",
    )
    demo.add_argument(
        "--scale-max",
        type=int,
        default=512,
        help="largest side in the voxels-read-against-size figure (default 512)",
    )
    demo.add_argument("--no-scale", action="store_true", help="skip the voxels-read-against-size figure")
    add_common(demo, device=False)
    demo.set_defaults(handler=run)


def _check(args: argparse.Namespace) -> None:
    if args.side < 8:
        raise ValueError(f"--side must be at least 8, got {args.side}.")
    if not 2 <= args.classes <= len(SHAPE_CLASSES):
        raise ValueError(f"--classes must be in 2..{len(SHAPE_CLASSES)}, got {args.classes}.")
    if args.count < 2 * args.classes:
        raise ValueError(f"--count must be at least 2 per class ({2 * args.classes}), got {args.count}.")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be a positive integer, got {args.epochs}.")
    if not args.no_scale and not SCALE_MIN <= args.scale_max <= 2**15:
        raise ValueError(f"--scale-max must be in {SCALE_MIN}..{2**15}, got {args.scale_max}.")


def cohort(count: int, side: int, classes: int, seed: int) -> VolumeDataset:
    """``count`` shapes of the first ``classes`` classes, balanced."""
    total = math.ceil(count * len(SHAPE_CLASSES) / classes)
    sources, labels = shape_cohort(total, side=side, seed=seed)
    keep = [i for i in range(total) if labels[i] < classes][:count]
    return VolumeDataset([sources[i] for i in keep], labels[keep], classes=list(SHAPE_CLASSES[:classes]))


def run(args: argparse.Namespace) -> int:
    _check(args)
    figures.require_matplotlib()
    out = check_writable(args.output, "demo folder (--output)", folder=True)[0]
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    train, val = cohort(args.count, args.side, args.classes, args.seed).split(0.2, seed=args.seed)
    model = cpic.CPIC((args.side,) * 3, Classification(args.classes), seed=args.seed, **MODEL)
    try:
        history = fit(
            model,
            train,
            val,
            epochs=args.epochs,
            refresh=None,
            seed=args.seed,
            progress=shows_progress(args),
        )
    except FIT_FAILURES as err:
        return fail("demo", f"training failed: {err}", EXIT_FAILED)
    trained = time.perf_counter() - started
    read = _fractions_read(model, train, val)
    kept = _keep_model(model, history, val, out)
    paths = {
        "slices": _slices_figure(model, val, out / "slices.png"),
        "learning_curve": figures.learning_curve(history.rows, out / "learning_curve.png"),
    }
    scale = None
    if not args.no_scale:
        scale = sampling_scale(args.seed, args.scale_max, shows_progress(args))
        paths["sampling_scale"] = figures.sampling_scale(
            scale, out / "sampling_scale.png", f"TT-cross of a procedural volume, rank {SCALE_RANK}"
        )
    summary = _summary(args, model, train, val, history, read, trained, scale, paths, started)
    summary.update(kept)
    emit(args, summary, _lines(summary))
    return 0


def _fractions_read(model: cpic.CPIC, train: VolumeDataset, val: VolumeDataset) -> list[float]:
    """Fraction of voxels read of every volume (pivot selection included)."""
    voxels = math.prod(model.grid_shape)
    return [d.source(i).stats.fraction(voxels) for d in (train, val) for i in range(len(d))]


def voxels_used(model: cpic.CPIC, sources) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Predicted classes and, per volume, the coordinates ``[K, 3]`` of every voxel read from it
    (pivot selection and the pivots' patches)."""
    with torch.no_grad():
        model.eval()
        logits = model(sources, keys=sources)
    return logits.argmax(1), [src.voxels_read() for src in sources]


def _distinct(val: VolumeDataset, count: int) -> list[int]:
    """The first ``count`` validation volumes of distinct classes."""
    picked, classes = [], set()
    for i in range(len(val)):
        label = int(val.targets[i])
        if label not in classes and len(picked) < count:
            picked.append(i)
            classes.add(label)
    return picked


def _keep_model(model: cpic.CPIC, history: History, val: VolumeDataset, out: Path) -> dict:
    """The best epoch's weights put back into ``model`` and saved in ``out``, validation volumes
    of distinct classes saved beside it, and the ``cpic predict`` line that applies it to them."""
    epoch = history.restore_best(model)
    saved = save_model(
        model,
        out / "model",
        classes=val.classes,
        normalize="none",
        data="cpic demo shape cohort",
        epoch=epoch,
        epochs=len(history.rows),
        best_epoch=history.best_epoch,
        monitor=history.monitor,
        history=history.rows,
    )
    volumes = []
    for i in _distinct(val, SAVED):
        path = out / f"val_{i}_{val.classes[int(val.targets[i])]}.npy"
        np.save(path, read_uncounted(val.source(i)).numpy())
        volumes.append(str(path))
    command = shlex.join(["cpic", "predict", str(saved), *volumes])
    return {"model_file": str(saved), "model_epoch": epoch, "predict_volumes": volumes, "predict": command}


def _slices_figure(model: cpic.CPIC, val: VolumeDataset, path: Path) -> str:
    """Central slices of the first validation volumes of distinct classes, voxels read in red."""
    picked = _distinct(val, SHOWN)
    sources = [val.source(i) for i in picked]
    predicted, read = voxels_used(model, sources)
    names = list(SHAPE_CLASSES)
    titles = [
        f"{names[int(val.targets[i])]} (predicted {names[int(p)]}), embedded from {len(c):,} voxels"
        for i, p, c in zip(picked, predicted, read)
    ]
    volumes = [read_uncounted(s).numpy() for s in sources]
    return figures.orthogonal_slices(volumes, path, titles, [c.numpy() for c in read], slab=1)


def sampling_scale(seed: int, max_side: int, bars: bool = False) -> list[dict]:
    """Unique voxels read by TT-cross of a procedural volume (Gaussian blobs), per side from 32
    to ``max_side``; the error is measured afterwards on 1,000 other random voxels (not counted)."""
    sides = [2**k for k in range(SCALE_MIN.bit_length() - 1, max_side.bit_length())]
    rows = []
    for side in progress(sides, bars, "sampling scale"):
        src = blobs((side,) * 3, seed=seed)
        f = IntensityFunction([src], QTTLayout(src.shape, group=True))
        tt, info = cpic.cross(f, f.shape, rank=SCALE_RANK, sweeps=SCALE_SWEEPS, seed=seed, n_test=0)
        coords, truth = _held_out_voxels(f, seed)  # a fresh copy: not counted in src.stats
        rows.append(
            {
                "side": side,
                "voxels": src.size,
                "unique_voxels": src.stats.unique_voxels,
                "fraction": src.stats.fraction(src.size),
                "held_out_relative_error": relative_error(tt.eval(f.layout.to_index(coords)[None])[0], truth),
                "seconds": info.time,
            }
        )
    return rows


def _held_out_voxels(f: IntensityFunction, seed: int, count: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random voxels and their values, read from a fresh copy of ``f``'s source."""
    gen = torch.Generator().manual_seed(seed + 1)
    shape = f.sources[0].shape
    coords = torch.stack([torch.randint(0, n, (count,), generator=gen) for n in shape], 1)
    return coords, blobs(shape, seed=seed).read(coords)


def _summary(args, model, train, val, history, read, trained, scale, paths, started) -> dict:
    last = history.last
    best = history.best  # the epoch of the model kept
    return {
        "cohort": {
            "side": args.side,
            "volumes": len(train) + len(val),
            "train": len(train),
            "val": len(val),
            "classes": list(SHAPE_CLASSES[: args.classes]),
        },
        "model": {"rank": model.rank, **{k: v for k, v in MODEL.items() if k != "rank"}},
        "epochs": len(history.rows),
        "val_accuracy": last["val_accuracy"],
        "val_auc": last.get("val_auc"),
        "best_val_accuracy": best["val_accuracy"],
        "best_epoch": best["epoch"],
        "chance_accuracy": 1 / args.classes,
        "fraction_read_mean": sum(read) / len(read),
        "fraction_read_max": max(read),
        "voxels_per_volume": math.prod(model.grid_shape),
        "history": history.rows,
        "numerics": history.numerics,
        "sampling_scale": scale,
        "figures": paths,
        "train_seconds": trained,
        "seconds": time.perf_counter() - started,
    }


def _lines(s: dict) -> list[str]:
    c = s["cohort"]
    lines = [
        f"cpic {__version__} demo: {c['volumes']} shapes at {c['side']}^3, {len(c['classes'])} classes "
        f"({c['train']} train / {c['val']} validation)",
        f"  model                CPIC rank {s['model']['rank']}, {s['model']['features']} features, "
        f"{s['model']['projection']} projection, {s['epochs']} epochs",
        f"  validation accuracy  {s['val_accuracy']:.3f} (best {s['best_val_accuracy']:.3f} at epoch "
        f"{s['best_epoch']}; chance {s['chance_accuracy']:.2f})",
        f"  voxels read          {100 * s['fraction_read_mean']:.1f}% per volume on average "
        f"(max {100 * s['fraction_read_max']:.1f}%) of {s['voxels_per_volume']:,}",
        f"  training time        {s['train_seconds']:.0f} s",
    ]
    for r in s["sampling_scale"] or []:
        lines.append(
            f"  cross of {r['side']:>3}^3        {r['unique_voxels']:>7,} voxels read "
            f"({100 * r['fraction']:.4f}%), held-out rel. error {r['held_out_relative_error']:.1e}"
        )
    lines.append(f"  total time           {s['seconds']:.0f} s")
    lines += [f"  figure               {p}" for p in s["figures"].values()]
    lines += [
        f"  model                {s['model_file']} (+ .json): epoch {s['model_epoch']}, best val_accuracy "
        f"{s['best_val_accuracy']:.3f}",
        f"  try it               {s['predict']}",
    ]
    return lines
