"""The outputs shown in docs/usage.md and the README are what the commands print."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_outputs_have_the_shape_the_commands_print():
    """``scripts/regenerate_docs.py --check`` runs every documented command (but the slow ones)
    on the toy cohort the page describes and compares each output with the page's, numbers
    aside; ``python scripts/regenerate_docs.py`` rewrites the pages when this fails."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "regenerate_docs.py"), "--check", "--skip-slow"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
