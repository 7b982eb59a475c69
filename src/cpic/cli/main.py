"""The ``cpic`` command: one module per subcommand, each with ``register(commands)`` and a handler."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cpic._version import __version__
from cpic.cli import bench, cohort, compress, demo, inspect, predict, train
from cpic.cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    OVERWRITE_COMMANDS,
    VOLUME_COMMANDS,
    add_overwrite_option,
    add_volume_options,
    fail,
    volume_defaults,
)
from cpic.sources import open_defaults
from cpic.util import use_threads
from cpic.util.interrupt import sigterm_as_interrupt
from cpic.util.outputs import WriteFailed

#: the subcommand modules, in the order ``--help`` lists them
COMMANDS = [demo, cohort, train, predict, inspect, compress, bench]

EPILOG = """examples:
  cpic demo                                    # train C-PIC on built-in shapes, write figures
  cpic cohort lesion lesions/ --side 128       # volumes of a real head with lesions + manifest.csv
  cpic train cohort.csv -o model --epochs 20   # a model from a CSV manifest of volumes
  cpic predict model scan.nii.gz -o out.csv    # predictions for new volumes
  cpic compress scan.nii.gz -o scan.cpic       # a TT + decoder fitted from a few voxels
  cpic reconstruct scan.cpic --slice z:90 --figure z90.png
  cpic inspect model                           # what a model or volume file holds
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpic",
        description="Low-rank embeddings of huge volumes from a few cherry-picked voxels.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cpic {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(commands)
    for name, sub in commands.choices.items():  # usage errors: one line on stderr, exit code 2
        if name in VOLUME_COMMANDS:
            add_volume_options(sub, name)
        if name in OVERWRITE_COMMANDS:
            add_overwrite_option(sub)
        train.one_line_errors(sub, name)
    parser.error = lambda message: parser.exit(EXIT_USAGE, f"cpic: {message} (see cpic --help)\n")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # to start workers (train --nproc)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if hasattr(args, "threads"):
            args.threads_used = use_threads(args.threads)
        with sigterm_as_interrupt(), open_defaults(**volume_defaults(args)):
            return args.handler(args)
    except WriteFailed as err:  # the work failed: a full disk...
        return fail(args.command, str(err), EXIT_FAILED)
    except (ValueError, FileNotFoundError, OSError) as err:  # bad input: one clear line, no traceback
        return fail(args.command, str(err), EXIT_USAGE)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM in a command without its own message
        return fail(args.command, "interrupted; outputs not written completely were removed.", EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
