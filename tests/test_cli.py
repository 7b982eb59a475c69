"""The cpic command, driven as a user would, in a subprocess (the demo's full run: test_cli_tools)."""

import subprocess
import sys

import cpic


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "cpic.cli.main", *args], capture_output=True, text=True, timeout=300
    )


def test_version_and_help():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"cpic {cpic.__version__}"
    out = run("--help")
    assert out.returncode == 0 and "demo" in out.stdout and "examples:" in out.stdout
    out = run("demo", "--help")
    assert (
        out.returncode == 0 and "--side" in out.stdout and "--out" in out.stdout and "example:" in out.stdout
    )


def test_demo_bad_arguments():
    for args, word in (
        (["--side", "4"], "--side"),
        (["--count", "3"], "--count"),
        (["--epochs", "0"], "--epochs"),
        (["--classes", "11"], "--classes"),
    ):
        out = run("demo", *args)
        assert out.returncode == 2 and word in out.stderr and "Traceback" not in out.stderr, out.stderr
    out = run("frobnicate")
    assert out.returncode == 2
