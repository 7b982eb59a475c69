"""What every command shares: common flags, output as a table or JSON, exit codes."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable

import torch

from cpic.nn.reads import DEFAULT_READ_BUDGET
from cpic.util.safe_text import strict_json
from cpic.util.units import check_read_budget

#: exit codes: 0 success, 1 the work failed (a numerical failure, a target not met), 2 bad usage
#: or input (arguments, paths, formats)
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: numerical failures that end training, evaluation or prediction (the work failed, not the input)
WORK_FAILURES = (FloatingPointError, RuntimeError, MemoryError)


def add_common(
    parser: argparse.ArgumentParser, device: bool = True, seed: bool = True, threads: bool = True
) -> None:
    """``--json``, ``--quiet`` and (optionally) ``--device``, ``--seed``, ``--threads`` (for the
    commands that compute; ``main`` applies it before the command runs)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars or tables")
    if device:
        parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    if threads:
        parser.add_argument(
            "--threads",
            type=int,
            metavar="N",
            help="CPU threads per operation (default: OMP_NUM_THREADS if set, else the idle cores)",
        )


def default(function: Callable, name: str):
    """The default of ``function``'s parameter ``name``: a flag shows the library's default,
    written once, where the parameter is owned.

    Example:
        >>> from cpic.train import fit
        >>> default(fit, "lr")
        0.003
    """
    return inspect.signature(function).parameters[name].default


def one_line_errors(parser: argparse.ArgumentParser, command: str) -> None:
    """Make ``parser`` report usage errors in one line on stderr (exit code 2)."""

    def error(message: str):
        parser.exit(EXIT_USAGE, f"cpic {command}: {message} (see cpic {command} --help)\n")

    parser.error = error


# ---------------------------------------------------------------------- argument types
def comma_list(text: str) -> list[str]:
    """``"age,sex"`` -> ``["age", "sex"]`` (empty items dropped).

    Example:
        >>> comma_list("age, sex,,")
        ['age', 'sex']
    """
    return [item.strip() for item in str(text).split(",") if item.strip()]


def float_list(text: str) -> list[float]:
    """``"0.1,0.5,0.9"`` -> ``[0.1, 0.5, 0.9]``.

    Example:
        >>> float_list("0.1,0.5")
        [0.1, 0.5]
    """
    try:
        return [float(item) for item in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def read_budget_type(text: str) -> str:
    """``--read-budget``: a share (``0.5%``) or a count of voxels, checked here, converted for
    the volumes' grid by :func:`cpic.nn.make_sampler`.

    Example:
        >>> read_budget_type("0.5%")
        '0.5%'
    """
    try:
        return check_read_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def naming_the_flag(args: argparse.Namespace, err: ValueError) -> ValueError:
    """``err`` from building a sampler, naming the flag it is about: ``--read-budget VALUE``
    when it concerns the read budget, else ``--sampler``.

    Example:
        >>> args = argparse.Namespace(read_budget="20", sampler="lattice")
        >>> str(naming_the_flag(args, ValueError("a read budget of 20 voxels is too small.")))
        '--read-budget 20: a read budget of 20 voxels is too small.'
    """
    if "read budget" in str(err):
        budget = getattr(args, "read_budget", None) or DEFAULT_READ_BUDGET
        return ValueError(f"--read-budget {budget}: {err}")
    return ValueError(f"--sampler {getattr(args, 'sampler', None)}: {err}")


def positive_int(text: str) -> int:
    """An integer >= 1.

    Example:
        >>> positive_int("3")
        3
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def byte_size(text: str) -> int:
    """A positive number of bytes: ``"512M"``, ``"4G"``, ``"1.5T"`` or plain ``"1000000"``.

    Example:
        >>> byte_size("4G"), byte_size("512M"), byte_size("1000")
        (4294967296, 536870912, 1000)
    """
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    try:
        value = float(raw[: len(raw) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 512M or 4G, got {text!r}") from None
    size = value * _UNITS[unit]
    if not size >= 1 or size == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive size such as 512M or 4G, got {text!r}")
    return int(size)


def memory_budget_option(what: str) -> dict:
    """``add_argument`` keywords of ``--memory-budget``, refusing ``what`` (e.g. "a batch") whose
    estimated memory exceeds the given size."""
    return dict(
        type=byte_size,
        metavar="SIZE",
        help=f"refuse {what}, or loading a volume, whose estimated memory exceeds SIZE (e.g. 4G; "
        "default: free memory for a step, half of it for a load)",
    )


#: commands that open volumes, and so take ``--allow-external``
VOLUME_COMMANDS = ("train", "predict", "evaluate", "inspect", "compress")
#: what ``inspect`` may allocate to load a volume unless told otherwise: it reads a sample only
INSPECT_BUDGET = "256M"


def add_volume_options(parser: argparse.ArgumentParser, name: str) -> None:
    """``--allow-external`` (and ``inspect``'s ``--memory-budget``) on a command that opens volumes."""
    parser.add_argument(
        "--allow-external",
        action="store_true",
        default=None,
        help="read files a volume refers to besides itself (HDF5 external storage, external links, "
        "virtual datasets; Zarr chunks linked out of the store); refused by default",
    )
    if name == "inspect":
        parser.add_argument(
            "--memory-budget",
            type=byte_size,
            default=byte_size(INSPECT_BUDGET),
            metavar="SIZE",
            help=f"refuse a volume whose loading needs more than SIZE (default {INSPECT_BUDGET})",
        )


#: commands that may refuse to write over an input or another run's files, and so take ``--overwrite``
OVERWRITE_COMMANDS = ("predict", "compress", "reconstruct", "cohort")


def add_overwrite_option(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: write an output even where it is an input or holds another cohort."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write the output even where it names an input (a volume, the model) or a folder "
        "holding another manifest.csv; refused by default",
    )


def volume_defaults(args: argparse.Namespace) -> dict:
    """The ``open_defaults`` keywords of a command's flags: every volume it opens obeys them.

    Example:
        >>> volume_defaults(argparse.Namespace(allow_external=True, memory_budget=None))
        {'allow_external': True, 'memory_budget': None}
    """
    return {
        "allow_external": getattr(args, "allow_external", None),
        "memory_budget": getattr(args, "memory_budget", None),
    }


def subparser(commands, name: str, help: str, description: str, example: str) -> argparse.ArgumentParser:
    """A command's parser with its one-line help, description and example epilog."""
    return commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def device_of(args: argparse.Namespace) -> torch.device:
    """The ``--device`` as a torch device; a usage error for a name torch does not know, a CUDA
    device this machine lacks, or any other backend (cpic runs on the CPU and CUDA).

    Example:
        >>> device_of(argparse.Namespace(device="cpu"))
        device(type='cpu')
        >>> try:
        ...     device_of(argparse.Namespace(device="tpu"))
        ... except ValueError as err:
        ...     print(err)
        --device 'tpu' is not a device; use cpu, cuda or cuda:N.
    """
    name = getattr(args, "device", "cpu") or "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: cpic runs on cpu or cuda, not {device.type}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was asked for, but this torch build sees no CUDA device.")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    return device


def emit(args: argparse.Namespace, summary: dict, lines: list[str], footer: bool = True) -> None:
    """Print ``summary`` as strict JSON with ``--json`` (NaN/Inf as null, named in
    ``"warnings"``: :func:`cpic.util.safe_text.strict_json`), else ``lines`` unless ``--quiet``; both say the
    CPU threads used (``args.threads_used``, where ``main`` set them), the table in a last line
    unless ``footer`` is false (output that is data, such as CSV).

    Example:
        >>> from cpic.util import Threads
        >>> args = argparse.Namespace(json=False, threads_used=Threads(1, "--threads"))
        >>> emit(args, {"volumes": 3}, ["cpic cohort: wrote 3 volumes"])
        cpic cohort: wrote 3 volumes
          threads              1 (--threads)
        >>> emit(argparse.Namespace(json=True, threads_used=Threads(1, "--threads")), {"volumes": 3}, [])
        {"volumes": 3, "threads": 1}
    """
    threads = getattr(args, "threads_used", None)
    if threads is not None:
        summary = {**summary, "threads": threads.count}
        if footer:
            lines = [*lines, f"  threads              {threads.count} ({threads.reason})"]
    if getattr(args, "json", False):
        print(strict_json(summary))
    elif not getattr(args, "quiet", False):
        print("\n".join(lines))


def fail(command: str, message: str, code: int = EXIT_USAGE) -> int:
    print(f"cpic {command}: {message}", file=sys.stderr)
    return code


def read_uncounted(source) -> torch.Tensor:
    """All voxels of a (small) volume, for a figure: read without counting them as read by a model.

    Example:
        >>> import cpic
        >>> src = cpic.open_volume(torch.ones(4, 4, 4))
        >>> read_uncounted(src).shape, src.stats.unique_voxels
        (torch.Size([4, 4, 4]), 0)
    """
    with source.uncounted():
        return source.read_planes(0, source.shape[0])
