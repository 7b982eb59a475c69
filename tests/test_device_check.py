"""benchmarks/device_check.py: runs on a machine without CUDA, and its comparisons can fail."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "device_check.py"


def load():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_device_check_runs_on_the_cpu_and_detects_mismatches(capsys):
    check = load()
    assert check.main(["--quick", "--device", "cpu"]) == 0  # the CPU against itself: all pass
    out = capsys.readouterr().out
    assert out.count("| yes |") == 7 and "NO" not in out
    if not torch.cuda.is_available():
        assert check.main(["--quick"]) == 0
        assert "no CUDA device" in capsys.readouterr().out
        assert not torch.cuda.is_initialized()
    case = check.Case(16)
    for make in (check.interpolation, check.training_step):
        c = make(case)
        ref = c.run(torch.device("cpu"))
        off = {k: v * (1 + 1e-3) if k.startswith("grad") else v for k, v in ref.items()}
        assert c.compare(ref, ref)[1] and not c.compare(ref, off)[1]
