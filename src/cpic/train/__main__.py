"""``python -m cpic.train ARGS`` is ``cpic train ARGS``: the module that torchrun starts on each rank.

Example (two processes on this machine; see docs/scaling.md for clusters)::

    torchrun --standalone --nproc-per-node 2 -m cpic.train cohort.csv -o model --epochs 10
"""

import sys

from cpic.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
