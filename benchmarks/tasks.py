"""Whole-volume tasks: C-PIC against a dense 3-D CNN, random patches and attention sampling.

Task ``lesion``: presence of 0..3 ellipsoidal lesions in a real head (Colin27 T1, deformed,
bias field and noise; ``cpic.data.lesion_cohort``) on a ``--side^3`` grid. Task ``shapes``: the
10 classes of ``cpic.data.shape_cohort``. Every method trains under the same wall-clock budget
(``--minutes``) on the same 80/20 split, with the same batch size and optimiser, and is then
scored on the validation volumes:

- ``cpic``: ``cpic.CPIC``, pivots kept per volume and refreshed (warm) every ``--refresh`` epochs;
- ``cpic-max``: the same with ``sampled_max=True`` (the max of each feature over the patches the
  cross picked joins the TT projection);
- ``random``: the same encoder and head on as many patches per volume as C-PIC encodes per
  step, drawn uniformly at random and mean-pooled (``cpic.nn.RandomPatchModel``);
- ``random-max``: the same with the mean and the max of the features (as C-PIC with
  ``--sampled-max``);
- ``attention``: attention sampling with that many patches (``AttentionPatches``);
- ``dense``: a small 3-D ResNet on the volume area-averaged to 64^3 (``DenseCNN``), which reads
  every voxel; ``dense-max``: the same, average- and max-pooled.

Reported per method: validation ROC AUC and accuracy (the best epoch's and the last), the
fraction of each volume's voxels read over the whole run, the memory of one training step
(input plus what autograd saves, per volume) and the time per volume of a training step.
``--sweep 64,128,256,512`` adds a table of voxels read and step memory against resolution.

Run: ``python benchmarks/tasks.py --task lesion --side 256 --count 240 --minutes 4``
(``--write docs/results.md`` writes the report and figures next to it).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import cpic
from cpic.data import SHAPE_CLASSES, lesion_cohort, shape_cohort
from cpic.data.lesions import CONTRAST
from cpic.layout import QTTLayout
from cpic.nn import AttentionPatches, Classification, DenseCNN, RandomPatchModel, lattice
from cpic.train.metrics import roc_auc
from train_step import saved_bytes  # a sibling script (its folder is on sys.path)

METHODS = ("dense", "dense-max", "cpic", "cpic-max", "random", "random-max", "attention")


def cohort(task: str, count: int, side: int, seed: int, oedema: bool = False):
    if task == "lesion":
        sources, labels = lesion_cohort(count, side=side, seed=seed, oedema=oedema)
        return sources, labels["presence"], 2
    sources, labels = shape_cohort(count, side=side, seed=seed)
    return sources, labels, len(SHAPE_CLASSES)


def build(method: str, args, classes: int, samples: int):
    head = Classification(classes)
    grid = (args.side,) * 3
    common = dict(features=args.features, patch=args.patch, positions=True, seed=args.seed)
    if method in ("cpic", "cpic-max"):
        layout = QTTLayout(lattice(grid, args.stride), features=args.features, group=args.layout == "grouped")
        return cpic.CPIC(
            grid,
            head,
            layout=layout,
            stride=args.stride,
            rank=args.rank,
            sweeps=args.sweeps,
            background=0.0,
            projection=args.projection,
            sampled_max=method == "cpic-max",
            **common,
        )
    if method == "random":
        return RandomPatchModel(grid, head, samples, **common)
    if method == "random-max":
        return RandomPatchModel(grid, head, samples, pool="mean+max", **common)
    if method == "attention":
        return AttentionPatches(grid, head, samples, view=args.view, **common)
    return DenseCNN(head, side=args.dense_side, pool="mean+max" if method == "dense-max" else "mean")


def predict(model, sources, batch: int) -> torch.Tensor:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(sources), batch):
            part = sources[i : i + batch]
            out.append(model(part))  # C-PIC: a fresh cross selection (one look at a new volume)
    model.train()
    return torch.cat(out)


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    prob = logits.softmax(1)
    return {
        "auc": roc_auc(prob if prob.shape[1] > 2 else prob[:, 1], labels),
        "accuracy": float((prob.argmax(1) == labels).float().mean()),
    }


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil's (1982) standard error of a ROC AUC (NaN without both classes)."""
    if not positives or not negatives:
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def step_memory(model, sources, labels) -> int:
    """Bytes per volume of one training step: what autograd saves for the backward."""
    saved = saved_bytes(lambda: model.loss(sources, labels, keys=sources)[0])
    model.zero_grad(set_to_none=True)
    return saved // len(sources)


def train(method: str, args, sources, labels, classes: int, samples: int) -> dict:
    """Train under the time budget; the learning curve is scored after every epoch."""
    n_val = max(len(sources) // 5, 2)
    train_idx, val_idx = list(range(n_val, len(sources))), list(range(n_val))
    val_sources, val_labels = [sources[i] for i in val_idx], labels[val_idx]
    torch.manual_seed(args.seed)
    model = build(method, args, classes, samples)
    read_seconds = dense_views(model, args, sources) if isinstance(model, DenseCNN) else 0.0
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed)
    # the budget counts training only (steps and re-selections), not the validation passes
    curve, trained, step_seconds, steps = [], 0.0, 0.0, 0
    budget = 60 * args.minutes
    epoch = 0
    while trained < budget:
        epoch += 1
        started = time.perf_counter()
        if args.refresh and epoch > 1 and (epoch - 1) % args.refresh == 0:
            if isinstance(model, cpic.CPIC):
                model.refresh_pivots()
            elif hasattr(model, "refresh"):  # the sampling baselines draw new positions as often
                model.refresh()
        order = torch.randperm(len(train_idx), generator=gen).tolist()
        for i in range(0, len(order), args.batch):
            items = [train_idx[j] for j in order[i : i + args.batch]]
            part = [sources[j] for j in items]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss, _ = model.loss(part, labels[items], keys=part)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step_seconds += (time.perf_counter() - t0) / len(items)
            steps += 1
            if trained + time.perf_counter() - started > budget:
                break
        trained += time.perf_counter() - started
        curve.append(
            {
                "epoch": epoch,
                "minutes": trained / 60,
                **scores(predict(model, val_sources, args.batch), val_labels),
            }
        )
        print(f"  {method} epoch {epoch}: {curve[-1]}", flush=True)
    voxels = math.prod(sources[0].shape)
    read = [sources[i].stats.unique_voxels / voxels for i in train_idx]
    look = 1.0
    if not isinstance(model, DenseCNN):  # what one prediction reads of a validation volume
        for s in val_sources:
            s.stats.reset()
        predict(model, val_sources, args.batch)
        look = sum(s.stats.unique_voxels for s in val_sources) / voxels / len(val_sources)
    best = max(curve, key=lambda r: r["auc"])
    positives = int(val_labels.sum()) if classes == 2 else 0
    return {
        "method": method,
        "epochs": epoch,
        "auc": curve[-1]["auc"],
        "accuracy": curve[-1]["accuracy"],
        "best_auc": best["auc"],
        "read": sum(read) / len(read),
        "read_per_prediction": look,
        "auc_se": auc_standard_error(curve[-1]["auc"], positives, len(val_idx) - positives),
        "memory": step_memory(model, [sources[i] for i in train_idx[:2]], labels[train_idx[:2]]),
        "seconds_per_volume": step_seconds / max(steps, 1),
        "read_seconds": read_seconds,
        "curve": curve,
    }


def dense_views(model: DenseCNN, args, sources) -> float:
    """Fill the dense CNN's downsampled views, from ``--cache`` when an earlier run wrote them
    (every voxel is read, which for a procedural cohort means computed: slow, so done once).
    Returns the seconds per volume that reading and downsampling took when it was measured."""
    version = "-".join(f"{v:g}" for v in CONTRAST) if args.task == "lesion" else "v1"  # cohort settings
    version += "-oedema" if args.oedema else ""
    name = f"{args.task}-{version}-{args.side}-{args.seed}-{args.count}-{args.dense_side}.pt"
    path = Path(args.cache) / name
    if path.exists():
        saved = torch.load(path)
        model.views.update(saved["views"])
        for s in sources:  # the reads happened when the cache was written
            s.stats.unique_voxels = math.prod(s.shape)
        return saved["seconds"]
    started = time.perf_counter()
    for s in sources:
        model.view(s)
        s.stats.reset()  # the ids of every voxel would take 8 bytes each: keep the count only
        s.stats.unique_voxels = math.prod(s.shape)
    seconds = (time.perf_counter() - started) / len(sources)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"views": model.views, "seconds": seconds}, path)
    return seconds


def patches_per_step(args, sources, labels, classes: int) -> int:
    """How many distinct patches C-PIC encodes per volume in a training step (the budget the
    sampling baselines get)."""
    model = build("cpic", args, classes, 1)
    part = sources[: min(4, len(sources))]
    f = model.feature_function(part)
    info = model.pivots.pivots(f.subset, f.shape, list(part), dtype=f.dtype, device=f.device)
    cpic.interpolate(f, info)  # one call of f with every fiber: what a training step encodes
    return max(f.encoded // len(part), 1)


def resolution_sweep(args, sides: list[int], classes: int) -> list[dict]:
    """Voxels read and step memory of C-PIC and of the dense CNN at full resolution, per side."""
    rows = []
    for side in sides:
        sub = argparse.Namespace(**{**vars(args), "side": side})
        sources, labels, _ = cohort(args.task, 2, side, args.seed, args.oedema)
        model = build("cpic", sub, classes, 1)
        memory = step_memory(model, sources, labels)
        read = sum(s.stats.unique_voxels for s in sources) / len(sources) / side**3
        dense_input = side**3 * 4
        # the first stage of DenseCNN at full resolution: 8 channels at side/2, two norms/convs saved
        dense_full = dense_input + 4 * 8 * 4 * (side // 2) ** 3
        rows.append(
            {
                "side": side,
                "cpic_read": read,
                "cpic_memory": memory,
                "cpic_voxels": read * side**3,
                "dense_memory_full": dense_full,
                "dense_read": 1.0,
            }
        )
        print(f"  sweep {side}: {rows[-1]}", flush=True)
    return rows


def markdown(args, results: list[dict], sweep: list[dict], samples: int) -> str:
    lines = [
        f"### {args.task} at {args.side}^3: {args.count} volumes (80/20 split), "
        f"{args.minutes:g} min of training per method",
        "",
        f"C-PIC: rank {args.rank}, {args.sweeps} sweep(s) per cold selection, stride {args.stride}, "
        f"{args.layout} QTT, {args.patch}^3 patches + position, "
        f"{args.features} features, "
        f"projection {args.projection} (cpic-max: and each feature's max over the sampled patches), "
        f"refresh every {args.refresh} epochs; sampling baselines: "
        f"{samples} patches per volume per step; dense CNN on {args.dense_side}^3.",
        "",
        "| method | epochs | val AUC, last (± s.e.) / best | val accuracy | read per prediction | "
        "read per training volume over the run | step memory per volume | train step per volume | "
        "read + downsample per volume |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['method']} | {r['epochs']} | {r['auc']:.3f} (± {r['auc_se']:.3f}) / {r['best_auc']:.3f} | "
            f"{r['accuracy']:.3f} | {100 * r['read_per_prediction']:.2f}% | {100 * r['read']:.2f}% | "
            f"{r['memory'] / 2**20:.1f} MiB | {1000 * r['seconds_per_volume']:.0f} ms | "
            f"{r['read_seconds']:.2f} s |"
        )
    if sweep:
        lines += [
            "",
            "Against resolution (2 volumes; dense CNN at full resolution: input + first stage, estimated):",
            "",
            "| side | C-PIC voxels read | C-PIC fraction read | C-PIC step memory | dense CNN read | "
            "dense CNN memory at full resolution |",
            "|---|---|---|---|---|---|",
        ]
        for r in sweep:
            lines.append(
                f"| {r['side']}^3 | {r['cpic_voxels']:.0f} | {100 * r['cpic_read']:.3f}% | "
                f"{r['cpic_memory'] / 2**20:.1f} MiB | 100% | {r['dense_memory_full'] / 2**20:.0f} MiB |"
            )
    return "\n".join(lines) + "\n"


def figures(results: list[dict], sweep: list[dict], folder: Path, task: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in results:
        axes[0].plot([c["minutes"] for c in r["curve"]], [c["auc"] for c in r["curve"]], label=r["method"])
        axes[1].scatter(100 * r["read_per_prediction"], r["auc"], label=r["method"])
    axes[0].set(xlabel="training minutes", ylabel="val ROC AUC", title="learning curves")
    axes[1].set(
        xscale="log",
        xlabel="% of voxels read per prediction",
        ylabel="final val ROC AUC",
        title="accuracy against voxels read",
    )
    axes[0].legend()
    fig.tight_layout()
    names.append(f"results_{task}_curves.png")
    fig.savefig(folder / names[-1], dpi=110)
    if sweep:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        sides = [r["side"] ** 3 for r in sweep]
        axes[0].loglog(sides, [r["cpic_voxels"] for r in sweep], "o-", label="C-PIC")
        axes[0].loglog(sides, sides, "s--", label="dense (every voxel)")
        axes[1].loglog(sides, [r["cpic_memory"] / 2**20 for r in sweep], "o-", label="C-PIC step")
        axes[1].loglog(
            sides, [r["dense_memory_full"] / 2**20 for r in sweep], "s--", label="dense CNN, full res."
        )
        axes[0].set(xlabel="voxels in the volume", ylabel="voxels read", title="reads against size")
        axes[1].set(xlabel="voxels in the volume", ylabel="MiB per volume", title="memory against size")
        axes[0].legend()
        axes[1].legend()
        fig.tight_layout()
        names.append(f"results_{task}_resolution.png")
        fig.savefig(folder / names[-1], dpi=110)
    plt.close("all")
    return names


def example_figure(source, path: Path) -> None:
    """Three slices through the largest lesion of a lesion-cohort volume, the lesion outlined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, side = source.function, source.shape[0]
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(
        -1, 2
    )
    lesion = max(f.lesions, key=lambda le: math.prod(le.radii))
    centre = f.to_anatomy(torch.cartesian_prod(*(torch.arange(0, side, 4),) * 3))
    nearest = ((centre - torch.tensor(lesion.centre)) ** 2).sum(1).argmin()
    at = [int(4 * v) for v in torch.unravel_index(nearest, ((side + 3) // 4,) * 3)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    for axis, ax in enumerate(axes):
        coords = torch.cat([grid[:, :axis], torch.full((len(grid), 1), at[axis]), grid[:, axis:]], 1)
        image = source.read(coords).reshape(side, side)
        lesions = (f(coords) - f(coords, with_lesions=False)).reshape(side, side)
        ax.imshow(image.T, cmap="gray", origin="lower")
        ax.contour(lesions.T, levels=[0.15], colors="red", linewidths=0.8)
        if f.oedema:
            ax.contour(lesions.T, levels=[-0.1], colors="cyan", linewidths=0.8)
        ax.set_title(f"axis {axis} = {at[axis]}")
        ax.axis("off")
    halo = ", oedema in cyan" if f.oedema else ""
    fig.suptitle(f"{source.name}: {len(f.lesions)} lesion(s), largest in {lesion.region} (red outline{halo})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", choices=("lesion", "shapes"), default="lesion")
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--oedema", action="store_true", help="lesion: each lesion in a faint oedema halo")
    parser.add_argument("--count", type=int, default=240)
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per method")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--sweeps", type=int, default=2, help="C-PIC: sweeps of a cold pivot selection")
    parser.add_argument("--patch", type=int, default=3)
    parser.add_argument("--stride", type=int, default=1, help="C-PIC: patch centres on every n-th voxel")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument(
        "--layout",
        choices=("grouped", "binary"),
        default="grouped",
        help="C-PIC's QTT modes: one of size 8 per level (grouped) or three of size 2 (binary)",
    )
    parser.add_argument("--projection", default="moments")
    parser.add_argument(
        "--refresh", type=int, default=5, help="C-PIC: re-select pivots every N epochs (0: never)"
    )
    parser.add_argument(
        "--samples", type=int, default=0, help="sampling baselines: patches per step (default: C-PIC's count)"
    )
    parser.add_argument("--view", type=int, default=32, help="attention sampling: low-resolution side")
    parser.add_argument("--dense-side", type=int, default=64)
    parser.add_argument("--sweep", default="", help="sides for the resolution table, e.g. 64,128,256,512")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=".cache/tasks", help="where the dense CNN's views are kept")
    parser.add_argument("--write", default="", help="write the markdown report here (figures next to it)")
    args = parser.parse_args()

    sources, labels, classes = cohort(args.task, args.count, args.side, args.seed, args.oedema)
    samples = args.samples or patches_per_step(args, sources, labels, classes)
    print(f"the sampling baselines encode {samples} patches per volume per step", flush=True)
    results = []
    for method in args.methods.split(","):  # a fresh cohort: fresh read counters
        sources, labels, classes = cohort(args.task, args.count, args.side, args.seed, args.oedema)
        results.append(train(method, args, sources, labels, classes, samples))
    sweep = resolution_sweep(args, [int(s) for s in args.sweep.split(",") if s], classes)
    report = markdown(args, results, sweep, samples)
    print("\n" + report)
    if args.write:
        path = Path(args.write)
        names = figures(results, sweep, path.parent, args.task)
        if args.task == "lesion":
            example_figure(next(s for s in sources if s.function.lesions), path.parent / "lesion_example.png")
        with path.open("a") as out:
            out.write("\n" + report + "\n" + "\n".join(f"![{n}]({n})" for n in names) + "\n")


if __name__ == "__main__":
    main()
