"""The cpic command, driven as a user would, in a subprocess."""

import json
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
    assert out.returncode == 0 and "--side" in out.stdout and "example:" in out.stdout


def test_demo_json_reads_a_tiny_fraction():
    out = run("demo", "--side", "128", "--rank", "16", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["grid"] == [128, 128, 128]
    assert 0 < summary["fraction_read"] < 0.05
    assert summary["held_out_relative_error"] < 0.2


def test_demo_table_and_bad_arguments():
    out = run("demo", "--side", "64")
    assert out.returncode == 0 and "voxels read" in out.stdout
    out = run("demo", "--side", "100")
    assert out.returncode == 2 and "power of two" in out.stderr and "Traceback" not in out.stderr
    out = run("demo", "--rank", "0")
    assert out.returncode == 2 and "rank" in out.stderr and "Traceback" not in out.stderr
    out = run("frobnicate")
    assert out.returncode == 2
