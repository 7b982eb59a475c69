"""One differentiable C-PIC training step, cpic against tntorch, side by side in one process.

The latent tensor is the 16 features of an MLP on 5x5x5 patches around every voxel of a
64^3, 128^3 or 256^3 volume, in the grouped Morton QTT layout (modes of 8) plus the feature mode;
rank 10. Both sides use the same encoder and the same batched feature function, which reads
and encodes each distinct patch once per call (the floor every implementation shares).

Steps timed (medians over ``--repeats``):
  select   pivot selection, no gradient: ``cpic.cross`` (batched) vs ``tntorch.cross``, 3 sweeps
  grad     the differentiable step from given pivots: ``cpic.interpolate`` vs
           ``tntorch.cross_forward``, then the mean-feature projection, a loss and backward
  full     select + grad, i.e. what a step costs when pivots are re-selected every step
  refresh  cpic only: grad every step plus a warm one-sweep refresh every 10 steps, per step
For B = 16 (at ``--batch-sides``), cpic runs the 16 volumes in one call; tntorch has no
batching (16 separate runs, timed on 2 and scaled). teneva (no autograd) joins in the
selection only: ``teneva.cross`` at fixed rank, 3 sweeps, with its cache.

Floors: for the selection, the feature function alone, called once on all the entries cpic's
selection evaluated; for the differentiable step, its forward and backward on the entries
``cpic.interpolate`` evaluates. Each library's time is printed over them.

Held-out error: relative error of the latent TT at 2,000 random entries, averaged over the
volumes. "saved MiB": tensors autograd keeps for the backward of one step (its peak memory
beyond the inputs).

Run: ``python benchmarks/train_step.py [--sides 64,128,256] [--batch-sides 64,128] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import logging
import statistics
import warnings

import numpy as np
import torch

import cpic
from cpic.data import blob_field
from cpic.layout import QTTLayout
from cpic.nn import PatchFeatures, PatchMLP, feature_mean
from cpic.tci import CrossInfo
from cpic.tt import TT
from cross_peers import Recorder, floor_time, median_time  # a sibling script (its folder is on sys.path)

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)
RANK, FEATURES, PATCH, SWEEPS = 10, 16, 5, 3


def volumes(count: int, side: int) -> list:
    coords = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return [
        cpic.open_volume(blob_field(coords, (side,) * 3, seed=k).reshape(side, side, side))
        for k in range(count)
    ]


def saved_bytes(step) -> int:
    """Bytes of the tensors autograd saves for the backward of ``step()``."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    loss.backward()
    return total


def loss_of(tt: TT, layout) -> torch.Tensor:
    return feature_mean(tt, layout).square().sum()


def held_out_error(tt: TT, f, seed: int = 7) -> float:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randint(0, n, (tt.batch, 2000), generator=gen) for n in tt.shape], -1)
    with torch.no_grad():
        exact = f(idx).double()
        approx = tt.detach().eval(idx).double()
    return float(((approx - exact).norm(dim=1) / exact.norm(dim=1)).mean())


# ------------------------------------------------------------------------- cpic
def cpic_select(f, seed=0, through=None) -> CrossInfo:
    """Pivots of ``f``, evaluated through ``through`` (a :class:`Recorder` of ``f``) if given."""
    return cpic.cross(through or f, f.shape, batch=f.batch, rank=RANK, sweeps=SWEEPS, seed=seed, n_test=0)[1]


def floors(f, info: CrossInfo, repeats: int) -> dict:
    """The floors: ``f`` alone in one call on the entries the selection evaluated, and ``f``'s
    forward + backward on the entries the interpolation evaluates."""
    selection = Recorder(f)
    cpic_select(f, through=selection)
    interpolation = Recorder(f)
    with torch.no_grad():
        cpic.interpolate(interpolation, info)
    entries = interpolation.entries()

    def forward_backward():
        f(entries).square().sum().backward()

    select = floor_time(f, selection.entries(), repeats)
    grad = median_time(forward_backward, repeats)[0]
    return dict(select=select, grad=grad, full=select + grad)


def cpic_case(f, layout, repeats: int) -> dict:
    t_select, info = median_time(lambda: cpic_select(f), repeats)

    def grad_step():
        loss = loss_of(cpic.interpolate(f, info), layout)
        loss.backward()
        return loss

    t_grad, _ = median_time(grad_step, repeats)

    def refresh_cycle():  # 10 steps, the pivots refreshed warm (one sweep) before the first
        warm = cpic.cross(f, f.shape, batch=f.batch, rank=RANK, sweeps=1, init=info, n_test=0)[1]
        for _ in range(10):
            loss_of(cpic.interpolate(f, warm), layout).backward()

    t_cycle, _ = median_time(refresh_cycle, max(1, repeats // 2))
    with torch.no_grad():
        error = held_out_error(cpic.interpolate(f, info), f)
    memory = saved_bytes(lambda: loss_of(cpic.interpolate(f, info), layout))
    return dict(
        select=t_select,
        grad=t_grad,
        full=t_select + t_grad,
        refresh=t_cycle / 10,
        error=error,
        saved=memory,
        unique=info.unique_evaluations,
        floor=floors(f, info, repeats),
    )


# ------------------------------------------------------------------------- tntorch
def tntorch_case(f, layout, repeats: int) -> dict:
    import tntorch as tn

    domain = [torch.arange(n) for n in f.shape]

    def function(x):
        return f(x.long()[None])[0].double()

    def select():
        torch.manual_seed(0)
        np.random.seed(0)
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            return tn.cross(
                function=function,
                domain=domain,
                function_arg="matrix",
                ranks_tt=RANK,
                max_iter=SWEEPS,
                verbose=False,
                return_info=True,
            )[1]

    t_select, info = median_time(select, repeats)

    def forward():
        t = tn.cross_forward(dict(info), function, domain, function_arg="matrix")
        return loss_of(TT([c[None] for c in t.cores]), layout)

    def grad_step():
        loss = forward()
        loss.backward()
        return loss

    t_grad, _ = median_time(grad_step, repeats)
    with torch.no_grad():
        t = tn.cross_forward(dict(info), function, domain, function_arg="matrix")
    error = held_out_error(TT([c[None] for c in t.cores]), f)
    return dict(select=t_select, grad=t_grad, full=t_select + t_grad, error=error, saved=saved_bytes(forward))


def teneva_select(f, repeats: int) -> float:
    """Median time of ``teneva.cross`` on ``f`` (one volume) at fixed rank, ``SWEEPS`` sweeps, cached."""
    import teneva

    def function(i):
        with torch.no_grad():
            return f(torch.from_numpy(i)[None])[0].double().numpy()

    def select():
        y0 = teneva.rand(list(f.shape), RANK, seed=0)
        return teneva.cross(function, y0, nswp=SWEEPS, dr_min=0, dr_max=0, cache={})

    return median_time(select, repeats)[0]


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(f"{c:.3g}" if isinstance(c, float) else str(c) for c in row) + " |")


def per_volume(many: dict | None, key: str, batch: int) -> str:
    """Milliseconds per volume of the batched run's ``key``, or "-" where it did not run."""
    return "-" if many is None else f"{1000 * many[key] / batch:.1f}"


def floor_table(side: int, one: dict, many: dict | None, peer: dict, t_teneva: float, batch: int) -> None:
    rows = []
    for name in ("select", "grad", "full"):
        floor = one["floor"][name]
        row = [name, f"{1000 * floor:.1f}", f"{peer[name] / floor:.1f}"]
        row += [f"{t_teneva / floor:.1f}" if name == "select" else "-", f"{one[name] / floor:.2f}"]
        if many is None:
            row += ["-", "-"]
        else:
            row += [f"{1000 * many['floor'][name] / batch:.1f}", f"{many[name] / many['floor'][name]:.2f}"]
        rows.append(row)
    table(
        f"{side}^3: each library's time over the floor (f alone on cpic's entries)",
        ["step", "floor B=1 (ms)", "tntorch / floor", "teneva / floor", "cpic B=1 / floor"]
        + [f"floor B={batch} per volume (ms)", f"cpic B={batch} / floor"],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sides", default="64,128,256")
    parser.add_argument("--batch-sides", default="64,128", help="sides where B = --batch runs too")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    batch_sides = {int(s) for s in args.batch_sides.split(",") if s}
    for side in [int(s) for s in args.sides.split(",")]:
        layout = QTTLayout((side,) * 3, features=FEATURES, group=True)
        encoder = PatchMLP(patch=PATCH, features=FEATURES)  # cpic in float32, tntorch in its float64
        encoder64 = copy.deepcopy(encoder).double()
        vols = volumes(args.batch if side in batch_sides else 2, side)

        def function(items, enc=encoder, layout=layout):
            return PatchFeatures(items, layout, enc, PATCH, border="reflect")

        one = cpic_case(function(vols[:1]), layout, args.repeats)
        many = cpic_case(function(vols), layout, args.repeats) if side in batch_sides else None
        peer = [tntorch_case(function(vols[b : b + 1], encoder64), layout, args.repeats) for b in range(2)]
        t_teneva = teneva_select(function(vols[:1]), args.repeats)
        tn_mean = {
            k: statistics.mean(p[k] for p in peer) for k in ("select", "grad", "full", "error", "saved")
        }
        B = args.batch

        rows = []
        for name in ("select", "grad", "full"):
            rows.append(
                [
                    name,
                    f"{1000 * tn_mean[name]:.0f}",
                    f"{1000 * one[name]:.0f}",
                    per_volume(many, name, B),
                    f"{tn_mean[name] / one[name]:.1f}x",
                    "-" if many is None else f"{tn_mean[name] / (many[name] / B):.1f}x",
                ]
            )
        rows.append(
            [
                "grad + warm refresh every 10",
                "-",
                f"{1000 * one['refresh']:.0f}",
                per_volume(many, "refresh", B),
                f"{tn_mean['full'] / one['refresh']:.1f}x (vs tntorch full)",
                "-" if many is None else f"{tn_mean['full'] / (many['refresh'] / B):.1f}x",
            ]
        )
        table(
            f"{side}^3, rank {RANK}, {FEATURES} features, {PATCH}^3 patches: ms per volume per step",
            ["step", "tntorch", "cpic B=1", f"cpic B={B} (per volume)", "speed-up B=1", f"speed-up B={B}"],
            rows,
        )
        floor_table(side, one, many, tn_mean, t_teneva, B)
        table(
            f"{side}^3: latent TT quality and memory",
            ["", "tntorch", "cpic B=1", f"cpic B={B}"],
            [
                [
                    "held-out relative error (mean over items)",
                    tn_mean["error"],
                    one["error"],
                    "-" if many is None else many["error"],
                ],
                [
                    "saved for backward, MiB per volume",
                    tn_mean["saved"] / 2**20,
                    one["saved"] / 2**20,
                    "-" if many is None else many["saved"] / 2**20 / B,
                ],
                [
                    "unique evaluations per volume (selection)",
                    "-",
                    one["unique"],
                    "-" if many is None else many["unique"] // B,
                ],
            ],
        )


if __name__ == "__main__":
    main()
