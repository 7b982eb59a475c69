"""cpic on a CUDA device against the CPU: the same computations from the same seeds and
pivots, their results compared within stated tolerances, their times side by side.

Checks (each run on the CPU, then on the device; "warm" runs start both from the same index
sets, drawn once on the CPU, because a CUDA generator draws other numbers than a CPU one from
the same seed):
  cross, exact TT     float64 cross of a random rank-4 TT (8^6), warm, 3 sweeps: the same
                      pivots, or both held-out errors <= 1e-10
  cross, features     float32 cross of the encoder features (5^3-patch MLP, 8 features, QTT)
                      of a blob volume, rank 8, warm, 3 sweeps: the same pivots, or the
                      device's held-out error <= 1.5x the CPU's + 1e-4
  cross, cold         the same, cold from seeds 0, 1, 2 on each side: the device's worst
                      held-out error <= 2x the CPU's worst
  interpolate         float32 interpolate() from the CPU's pivots, then feature_mean, a loss and
                      backward: TT values at 2,000 entries within 1e-5 (relative, whole vector),
                      encoder gradients within 1e-4 (relative, per parameter)
  projections         feature_mean, feature_moments and coarse_feature_grid(level 1) of that TT
                      in float64 (within 1e-12) and float32 (within 1e-5), relative
  training step       one step of cpic.CPIC (classification, 2 volumes, rank 8, the CPU's
                      pivots loaded into the device's model): loss within 1e-5, gradients
                      within 1e-4 (relative, per parameter), parameters after one SGD step
                      within 1e-5
Relative differences are ||device - cpu|| / ||cpu||. The float32 tolerances are 10-20x what
separates float32 from float64 on the CPU for the same computation (values 1e-6, gradients
5e-6, parameters after the step 1.5e-6, loss 6e-8 at 16^3 and 64^3). Times are medians over
``--repeats`` runs, on the device after one warm-up run, synchronised.

Run: ``python benchmarks/device_check.py [--device cuda] [--side 64] [--repeats 3]``
(``--quick``: side 16, one repeat; ``--device cpu`` compares the CPU with itself, to test the
script). Exit status 1 when a check fails; without CUDA the CPU half runs, the script says so
and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import cpic
from cpic.data import blob_field
from cpic.layout import QTTLayout
from cpic.nn import (
    Classification,
    PatchFeatures,
    PatchMLP,
    coarse_feature_grid,
    feature_mean,
    feature_moments,
)
from cpic.tci import CrossInfo
from cpic.util.norms import relative_error

PATCH, FEATURES, RANK, SWEEPS = 5, 8, 8, 3
Result = dict[str, Tensor]


@dataclass
class Check:
    name: str
    run: Callable[[torch.device], Result]  # results on the CPU, whatever the device
    compare: Callable[[Result, Result], tuple[float, bool]]  # (measured, within tolerance)
    tolerance: str  # what is measured; when it passes


def relative(a: Tensor, b: Tensor) -> float:
    """``||a - b|| / ||b||`` in float64 (the absolute difference when ``b`` is zero)."""
    return float(relative_error(a.double(), b.double()))


def on(info: CrossInfo, device: torch.device) -> CrossInfo:
    """A copy of ``info`` whose index sets live on ``device``."""
    moved = copy.copy(info)
    moved.left = [s.to(device) for s in info.left]
    moved.right = [s.to(device) for s in info.right]
    return moved


def same_pivots(a: Result, b: Result) -> bool:
    keys = [k for k in a if k.startswith("set")]
    return all(torch.equal(a[k], b[k]) for k in keys)


def index_sets(info: CrossInfo) -> Result:
    sets = {f"set left {k}": s.cpu() for k, s in enumerate(info.left)}
    sets.update({f"set right {k}": s.cpu() for k, s in enumerate(info.right)})
    return sets


def held_out(shape, batch: int, count: int = 2000, seed: int = 7) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, n, (batch, count), generator=gen) for n in shape], -1)


def cross_error(tt, f, idx: Tensor) -> Tensor:
    with torch.no_grad():
        exact = f(idx).double()
        return (tt.eval(idx).double() - exact).norm(dim=1) / exact.norm(dim=1)


# ----------------------------------------------------------------------------- the cases
class Case:
    """What every check shares: the volumes, the encoder, the exact TT, starting index sets
    and pivots, all made once on the CPU."""

    def __init__(self, side: int):
        self.side = side
        coords = torch.stack(torch.meshgrid(*[torch.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.volumes = [
            cpic.open_volume(blob_field(coords, (side,) * 3, seed=k).reshape(side, side, side))
            for k in range(2)
        ]
        self.layout = QTTLayout((side,) * 3, features=FEATURES, group=True)
        torch.manual_seed(0)
        self.encoder = PatchMLP(patch=PATCH, features=FEATURES)
        gen = torch.Generator().manual_seed(1)
        self.exact = cpic.TT(
            [
                torch.randn(1, a, 8, b, dtype=torch.float64, generator=gen)
                for a, b in zip([1] + [4] * 5, [4] * 5 + [1])
            ]
        )
        cpu = torch.device("cpu")
        self.exact_start = cpic.cross(self.exact.eval, self.exact.shape, rank=4, sweeps=1, seed=0, n_test=0)[
            1
        ]
        f = self.features(cpu)
        self.start = cpic.cross(f, f.shape, rank=RANK, sweeps=1, seed=0, n_test=0)[1]
        self.pivots = cpic.cross(f, f.shape, rank=RANK, sweeps=SWEEPS, init=self.start, n_test=0)[1]

    def features(self, device: torch.device, volumes: int = 1) -> PatchFeatures:
        encoder = copy.deepcopy(self.encoder).to(device)
        return PatchFeatures(self.volumes[:volumes], self.layout, encoder, PATCH, border="reflect")


def cross_exact(case: Case) -> Check:
    def run(device):
        ref = case.exact.to(device)
        run = dict(rank=4, sweeps=SWEEPS, init=on(case.exact_start, device), n_test=0)
        tt, info = cpic.cross(ref.eval, ref.shape, dtype=torch.float64, device=device, **run)
        return {
            "error": cross_error(tt, ref.eval, held_out(ref.shape, 1).to(device)).cpu(),
            **index_sets(info),
        }

    def compare(cpu, dev):
        worst = float(torch.maximum(cpu["error"], dev["error"]).max())
        return worst, same_pivots(cpu, dev) or worst <= 1e-10

    return Check("cross, exact TT (float64)", run, compare, "larger error; same pivots, or <= 1e-10")


def cross_features(case: Case) -> Check:
    def run(device):
        f = case.features(device)
        tt, info = cpic.cross(
            f, f.shape, rank=RANK, sweeps=SWEEPS, init=on(case.start, device), device=device, n_test=0
        )
        return {"error": cross_error(tt, f, held_out(f.shape, 1).to(device)).cpu(), **index_sets(info)}

    def compare(cpu, dev):
        diff = float((dev["error"] - cpu["error"]).max())
        return diff, same_pivots(cpu, dev) or bool((dev["error"] <= 1.5 * cpu["error"] + 1e-4).all())

    return Check(
        "cross, features (float32, warm)",
        run,
        compare,
        "error increase; same pivots, or error <= 1.5x CPU's + 1e-4",
    )


def cross_cold(case: Case) -> Check:
    def run(device):
        f = case.features(device)
        idx = held_out(f.shape, 1).to(device)
        errors = [
            cross_error(
                cpic.cross(f, f.shape, rank=RANK, sweeps=SWEEPS, seed=s, device=device, n_test=0)[0], f, idx
            )
            for s in range(3)
        ]
        return {"errors": torch.cat(errors).cpu()}

    def compare(cpu, dev):
        ratio = float(dev["errors"].max() / cpu["errors"].max())
        return ratio, ratio <= 2.0

    return Check("cross, features (cold, seeds 0-2)", run, compare, "worst-error ratio; <= 2")


def interpolation(case: Case) -> Check:
    def run(device):
        f = case.features(device)
        tt = cpic.interpolate(f, on(case.pivots, device))
        feature_mean(tt, case.layout).square().sum().backward()
        out = {"values": tt.detach().eval(held_out(tt.shape, 1).to(device)).cpu()}
        out.update({f"grad {n}": p.grad.cpu() for n, p in f.encoder.named_parameters()})
        return out

    def compare(cpu, dev):
        values = relative(dev["values"], cpu["values"])
        grads = max(relative(dev[k], cpu[k]) for k in cpu if k.startswith("grad"))
        return max(values, grads), values <= 1e-5 and grads <= 1e-4

    return Check(
        "interpolate + backward (float32)", run, compare, "largest difference; values 1e-5, gradients 1e-4"
    )


def projections(case: Case, dtype: torch.dtype, tol: float) -> Check:
    with torch.no_grad():
        latent = cpic.interpolate(case.features(torch.device("cpu")), case.pivots).to(dtype)

    def run(device):
        tt = latent.to(device)
        return {
            "mean": feature_mean(tt, case.layout).cpu(),
            "moments": feature_moments(tt, case.layout).cpu(),
            "grid": coarse_feature_grid(tt, case.layout, level=1).cpu(),
        }

    def compare(cpu, dev):
        worst = max(relative(dev[k], cpu[k]) for k in cpu)
        return worst, worst <= tol

    name = str(dtype).removeprefix("torch.")
    return Check(f"projections ({name})", run, compare, f"largest difference; {tol:g}")


def training_step(case: Case) -> Check:
    torch.manual_seed(3)
    model = cpic.CPIC(
        (case.side,) * 3, Classification(classes=2), features=FEATURES, patch=PATCH, rank=RANK, sweeps=SWEEPS
    )
    targets = torch.tensor([0, 1])
    with torch.no_grad():  # the pivots, selected once on the CPU
        model.latent(case.volumes, keys=[0, 1])
    pivots = model.pivots.state(str)

    def run(device):
        copy_ = copy.deepcopy(model).to(device)
        state = copy.deepcopy(pivots)
        for item in state["items"].values():
            item["left"] = [s.to(device) for s in item["left"]]
            item["right"] = [s.to(device) for s in item["right"]]
        copy_.pivots.load_state(state, int)
        optimiser = torch.optim.SGD(copy_.parameters(), lr=0.1)
        loss, _ = copy_.loss(case.volumes, targets, keys=[0, 1])
        loss.backward()
        out = {"loss": loss.detach().cpu()[None]}
        out.update({f"grad {n}": p.grad.cpu() for n, p in copy_.named_parameters() if p.grad is not None})
        optimiser.step()
        out.update({f"param {n}": p.detach().cpu() for n, p in copy_.named_parameters()})
        return out

    def compare(cpu, dev):
        loss = relative(dev["loss"], cpu["loss"])
        grads = max(relative(dev[k], cpu[k]) for k in cpu if k.startswith("grad"))
        params = max(relative(dev[k], cpu[k]) for k in cpu if k.startswith("param"))
        return max(loss, grads, params), loss <= 1e-5 and grads <= 1e-4 and params <= 1e-5

    return Check(
        "training step of cpic.CPIC", run, compare, "largest difference; loss 1e-5, gradients 1e-4, step 1e-5"
    )


# ----------------------------------------------------------------------------- running
def timed(run: Callable[[torch.device], Result], device: torch.device, repeats: int) -> tuple[float, Result]:
    """Median seconds of ``run(device)`` over ``repeats`` runs (on a device, after a warm-up
    run), and its result."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = None if device.type == "cpu" else run(device)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        out = run(device)
        sync()
        times.append(time.perf_counter() - start)
        result = out if result is None else result
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="the device to check against the CPU (default cuda)")
    parser.add_argument("--side", type=int, default=64, help="volume side, a power of two (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per check (default 3)")
    parser.add_argument("--quick", action="store_true", help="side 16, one repeat: a smoke test")
    args = parser.parse_args(argv)
    side, repeats = (16, 1) if args.quick else (args.side, max(1, args.repeats))
    device = torch.device(args.device)
    available = device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_available())
    if device.type == "cuda" and available:
        name, tf32 = torch.cuda.get_device_name(device), torch.backends.cuda.matmul.allow_tf32
        print(f"device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
        print(f"TF32 matmul: {tf32}, cuDNN TF32: {torch.backends.cudnn.allow_tf32}")
    elif device.type == "cpu":
        print("--device cpu: the CPU against itself (a test of this script; every difference should be 0)")
    else:
        print(f"no CUDA device ({args.device!r}, torch {torch.__version__}): running the CPU half only")
    case = Case(side)
    checks = [
        cross_exact(case),
        cross_features(case),
        cross_cold(case),
        interpolation(case),
        projections(case, torch.float64, 1e-12),
        projections(case, torch.float32, 1e-5),
        training_step(case),
    ]
    cpu = torch.device("cpu")
    print(f"\n### {side}^3, {PATCH}^3 patches, {FEATURES} features, rank {RANK}, {SWEEPS} sweeps\n")
    print(f"| check | CPU ms | {args.device} ms | CPU / {args.device} | measured | what; passes at | ok |")
    print("|---|---|---|---|---|---|---|")
    failed = []
    for check in checks:
        t_cpu, ref = timed(check.run, cpu, repeats)
        if not available:
            print(f"| {check.name} | {1000 * t_cpu:.1f} | - | - | - | {check.tolerance} | - |", flush=True)
            continue
        t_dev, got = timed(check.run, device, repeats)
        diff, ok = check.compare(ref, got)
        if not ok:
            failed.append(check.name)
        print(
            f"| {check.name} | {1000 * t_cpu:.1f} | {1000 * t_dev:.1f} | {t_cpu / t_dev:.2f}x | {diff:.2e} "
            f"| {check.tolerance} | {'yes' if ok else 'NO'} |",
            flush=True,
        )
    if not available:
        assert not torch.cuda.is_initialized(), "the CPU half initialised CUDA"
        print("\nCPU half done; no device to compare against.")
        return 0
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        return 1
    print("\nall checks within tolerance")
    return 0


if __name__ == "__main__":
    sys.exit(main())
