"""cpic train / predict / evaluate / inspect, driven as a user would, in subprocesses.

Independent commands run concurrently (each subprocess spends most of its time importing torch).
"""

import csv
import fcntl
import json
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cpic.train import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = ["--epochs", "2", "--rank", "2", "--features", "4", "--patch", "3", "--quiet"]
CLASSES = ["healthy", "lesion"]


def start(*args, cwd):
    return subprocess.Popen(
        [sys.executable, "-m", "cpic.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        cwd=cwd,
    )


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_all(*commands, cwd):
    """Run the commands concurrently; their completed processes in order."""
    procs = [start(*command, cwd=cwd) for command in commands]
    return [finish(proc) for proc in procs]


def run(*args, cwd):
    return finish(start(*args, cwd=cwd))


def ok(out):
    assert out.returncode == 0, out.stderr
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Ten 16^3 volumes (noise, or noise plus a bright cube), a manifest, and a trained model
    (its checkpoints in run/)."""
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = ["path,label,age"]
    for i in range(10):
        volume = rng.normal(0, 1, (16, 16, 16)).astype(np.float32)
        if i % 2:
            volume[4:10, 4:10, 4:10] += 4
        np.save(root / f"v{i}.npy", volume)
        rows.append(f"v{i}.npy,{CLASSES[i % 2]},{50 + i}")
    (root / "cohort.csv").write_text("\n".join(rows) + "\n")
    np.save(root / "other.npy", np.zeros((8, 16, 16), np.float32))
    out = ok(
        run(
            *["train", "cohort.csv", "-o", "model", "--extra", "age", *SMALL, "--epochs", "3"],
            *["--checkpoint-dir", "run", "--json"],
            cwd=root,
        )
    )
    return SimpleNamespace(
        root=root, summary=json.loads(out.stdout), volumes=[f"v{i}.npy" for i in range(10)]
    )


def test_train_writes_the_model_and_a_json_summary(cohort):
    assert (cohort.root / "model.safetensors").is_file() and (cohort.root / "model.json").is_file()
    summary = cohort.summary
    assert summary["epochs"] == 3 and len(summary["history"]) == 3
    assert summary["classes"] == CLASSES and summary["task"] == "classification"
    assert summary["train_volumes"] + summary["val_volumes"] == 10
    assert {"train_loss", "val_loss", "val_accuracy", "val_auc"} <= set(summary["metrics"])
    assert 0 < summary["fraction_read"] <= 1 and summary["seconds"] > 0
    # the model file holds the best epoch (run/best's weights), model.last the last (run/last's)
    best = summary["best_epoch"]
    assert summary["monitor"] == "val_accuracy" and summary["model_epoch"] == best
    assert summary["metrics"]["val_loss"] == summary["history"][best - 1]["val_loss"]
    assert summary["last_metrics"]["val_loss"] == summary["history"][-1]["val_loss"]
    assert summary["last_model"] == "model.last.safetensors"
    for model, checkpoint, epoch in (("model", "run/best", best), ("model.last", "run/last", 3)):
        tensors, meta = load_checkpoint(cohort.root / model)
        assert meta["provenance"]["epoch"] == epoch and meta["provenance"]["best_epoch"] == best
        stored = load_checkpoint(cohort.root / checkpoint)[0]
        weights = {k[6:]: v for k, v in stored.items() if k.startswith("model/")}
        assert tensors.keys() == weights.keys() and all(torch.equal(tensors[k], weights[k]) for k in tensors)


def test_predict_writes_csv_and_json(cohort):
    root, volumes = cohort.root, cohort.volumes
    to_csv, to_json, to_stdout = run_all(
        ["predict", "model.safetensors", *volumes, "--extra", "61", "-o", "pred.csv"],
        [
            "predict",
            "model.json",
            *volumes[:3],
            "--extra",
            "61",
            "--extra",
            "62",
            "--extra",
            "63",
            "-o",
            "p.json",
        ],
        ["predict", "model", volumes[0], "--extra", "61", "--json", "--figure", "look.png"],
        cwd=root,
    )
    ok(to_csv), ok(to_json), ok(to_stdout)
    with open(root / "pred.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["volume"] for r in rows] == volumes
    assert list(rows[0]) == ["volume", "predicted", "class_id", "p_healthy", "p_lesion"]
    for r in rows:
        assert r["predicted"] == CLASSES[int(r["class_id"])]
        assert float(r["p_healthy"]) + float(r["p_lesion"]) == pytest.approx(1, abs=1e-5)
    document = json.loads((root / "p.json").read_text())
    assert document["classes"] == CLASSES and len(document["predictions"]) == 3
    printed = json.loads(to_stdout.stdout)
    assert printed["predictions"][0]["predicted"] in CLASSES
    assert printed["figure"] == "look.png"
    assert (root / "look.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_in_python_gives_the_rows_of_the_command(cohort):
    from cpic.train import class_names, load_model, predict, prediction_rows
    from cpic.train.manifest import open_for

    root, volumes = cohort.root, cohort.volumes[:4]
    printed = json.loads(ok(run("predict", "model", *volumes, "--extra", "61", "--json", cwd=root)).stdout)
    model, meta = load_model(root / "model")
    provenance = meta["provenance"]
    sources = open_for(model.eval(), [str(root / v) for v in volumes], provenance.get("normalize"))
    pred = predict(model, sources, torch.tensor([[61.0]] * len(volumes)), batch_size=3)
    rows = prediction_rows(model, class_names(model.config, provenance), volumes, pred)
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in printed["predictions"]]
    for mine, theirs in zip(rows, printed["predictions"]):
        assert mine.keys() == theirs.keys()
        assert all(mine[k] == pytest.approx(theirs[k], abs=1e-6) for k in mine if k.startswith("p_"))


def test_inspect_prints_what_describe_returns(cohort):
    from cpic.train import describe

    printed = json.loads(ok(run("inspect", "model", "--json", cwd=cohort.root)).stdout)
    info = json.loads(json.dumps(describe(str(cohort.root / "model"))))
    assert info["kind"] == "model" and info["classes"] == CLASSES
    assert {k: v for k, v in printed.items() if k not in ("file", "threads")} == {
        k: v for k, v in info.items() if k != "file"
    }


def test_a_model_file_loaded_in_python_predicts_what_cpic_predict_prints(cohort):
    """Normalisation and class names come from the (sealed) model file, not from the command."""
    from cpic.train import ModelFile

    root, volumes = cohort.root, cohort.volumes[:3]
    args = [a for v in (61, 62, 63) for a in ("--extra", str(v))]
    printed = json.loads(ok(run("predict", "model", *volumes, *args, "--json", cwd=root)).stdout)
    loaded = ModelFile.load(root / "model")
    assert loaded.classes == CLASSES and loaded.normalize == "none"  # as cpic train recorded it
    assert loaded.extra == ["age"]
    sources = [loaded.open(root / v) for v in volumes]
    with torch.no_grad():
        probs = torch.softmax(loaded.model(sources, extra=torch.tensor([[61.0], [62.0], [63.0]])), 1)
    for row, p in zip(printed["predictions"], probs.tolist()):
        assert [row["p_healthy"], row["p_lesion"]] == p
        assert row["predicted"] == loaded.classes[max(range(2), key=p.__getitem__)]


def test_evaluate_and_inspect(cohort):
    evaluated, model, model_table, volume = run_all(
        ["evaluate", "model", "cohort.csv", "--json"],
        ["inspect", "model.safetensors", "--json"],
        ["inspect", "model.json"],
        ["inspect", "v1.npy", "--json"],
        cwd=cohort.root,
    )
    summary = json.loads(ok(evaluated).stdout)
    assert summary["volumes"] == 10 and {"test_loss", "test_accuracy", "test_auc"} <= set(summary["metrics"])
    info = json.loads(ok(model).stdout)
    assert info["kind"] == "model" and info["task"] == "classification" and info["classes"] == CLASSES
    assert info["grid"] == [16, 16, 16] and info["rank"] == 2 and info["parameters"] > 0
    assert info["stride"] == 1 and info["sampled_max"] is False
    assert info["provenance"]["extra"] == ["age"] and info["provenance"]["normalize"] == "none"
    assert "parameters" in ok(model_table).stdout
    info = json.loads(ok(volume).stdout)
    assert info["shape"] == [16, 16, 16] and info["dtype"] == "float32" and info["format"] == "npy"
    assert info["sample"]["min"] < 0 < 4 < info["sample"]["max"]


def test_predict_evaluate_and_inspect_take_the_checkpoints_of_a_run(cohort):
    best, last, evaluated, shown, table = run_all(
        ["predict", "run/best", "v1.npy", "v2.npy", "--extra", "61", "--json"],
        ["predict", "run/last.json", "v1.npy", "--extra", "61", "-o", "last.csv"],
        ["evaluate", "run/best", "cohort.csv", "--json"],
        ["inspect", "run/last", "--json"],
        ["inspect", "run/best"],
        cwd=cohort.root,
    )
    document = json.loads(ok(best).stdout)
    assert document["classes"] == CLASSES and all(p["predicted"] in CLASSES for p in document["predictions"])
    assert "wrote 1 prediction(s)" in ok(last).stdout and last.stderr == ""  # no bar into a pipe
    with open(cohort.root / "last.csv", newline="") as fh:
        assert list(next(csv.DictReader(fh))) == ["volume", "predicted", "class_id", "p_healthy", "p_lesion"]
    summary = json.loads(ok(evaluated).stdout)
    assert summary["volumes"] == 10 and summary["classes"] == CLASSES
    assert "test_accuracy" in summary["metrics"]
    info = json.loads(ok(shown).stdout)
    assert info["kind"] == "checkpoint" and info["epoch"] == 3 and info["classes"] == CLASSES
    assert info["provenance"]["extra"] == ["age"] and info["provenance"]["normalize"] == "none"
    assert f"classes        {CLASSES}" in ok(table).stdout and "cpic predict" in table.stdout


def run_on_terminal(*args, cwd) -> tuple[int, str]:
    """Run with stderr a pseudo-terminal, as in an interactive shell: exit code and stderr."""
    master, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm needs a width
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpic.cli.main", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=ENV,
        cwd=cwd,
    )
    os.close(terminal)
    chunks = []

    def drain():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the process closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    code = proc.wait(timeout=300)
    reader.join(timeout=30)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_evaluate_and_predict_show_a_bar_over_the_volumes_on_a_terminal(cohort):
    code, err = run_on_terminal("evaluate", "run/best", "cohort.csv", cwd=cohort.root)
    assert code == 0 and "evaluate test" in err and "/10 [" in err and "volume/s" in err, err
    volumes = [*cohort.volumes[:3], "--extra", "61"]
    code, err = run_on_terminal("predict", "model", *volumes, cwd=cohort.root)
    assert code == 0 and "predict" in err and "/3 [" in err and "volume/s" in err, err
    code, err = run_on_terminal("predict", "model", *volumes, "--quiet", cwd=cohort.root)
    assert code == 0 and err == "", err


def test_integer_labels_stay_numbers_and_epoch_lines_show_without_quiet(cohort):
    root = cohort.root
    rows = ["path,label"] + [f"v{i}.npy,{i % 2}" for i in range(10)]
    (root / "ints.csv").write_text("\n".join(rows) + "\n")
    small = [a for a in SMALL if a != "--quiet"]
    trained, quiet = run_all(
        ["train", "ints.csv", "-o", "ints", *small, "--val", "0"],
        ["train", "ints.csv", "-o", "ints_q", *small, "--val", "0", "--quiet"],
        cwd=root,
    )
    epoch_lines = [line for line in ok(trained).stderr.splitlines() if "train_loss" in line]
    assert [line.split("  ")[0] for line in epoch_lines] == ["epoch 1/2", "epoch 2/2"]
    assert "voxels read" in epoch_lines[0] and "val_" not in epoch_lines[0]  # no validation set
    assert "ints.safetensors (+ .json): epoch 2, the last (no validation set)" in trained.stdout
    assert ok(quiet).stdout == "" and "train_loss" not in quiet.stderr
    predicted, evaluated, shown, table = run_all(
        ["predict", "ints", "v1.npy", "--json"],
        ["evaluate", "ints.last", "ints.csv", "--json"],
        ["inspect", "ints", "--json"],
        ["predict", "ints", "v1.npy", "--quiet", "-o", "ints_pred.json"],
        cwd=root,
    )
    document = json.loads(ok(predicted).stdout)
    assert document["classes"] == [0, 1]
    row = document["predictions"][0]
    assert row["predicted"] in (0, 1) and row["predicted"] == row["class_id"] and {"p_0", "p_1"} <= set(row)
    assert json.loads(ok(evaluated).stdout)["classes"] == [0, 1]
    assert json.loads(ok(shown).stdout)["classes"] == [0, 1]
    saved = json.loads((root / "ints_pred.json").read_text())
    assert ok(table) and saved["classes"] == [0, 1] and isinstance(saved["predictions"][0]["predicted"], int)


def test_resume_and_config(cohort):
    root = cohort.root
    small = ["--rank", "2", "--features", "4", "--patch", "3", "--json"]
    (root / "config.json").write_text(
        json.dumps(
            {"epochs": 1, "rank": 3, "features": 4, "patch": 3, "sampled-max": True, "stride": 2}
            | {"quiet": True}
        )
    )
    first, configured = run_all(
        [
            "train",
            "cohort.csv",
            "-o",
            "r1",
            "--epochs",
            "1",
            *small,
            "--checkpoint-dir",
            "ck",
            "--log-csv",
            "log.csv",
        ],
        ["train", "cohort.csv", "-o", "cfg", "--config", "config.json", "--rank", "2", "--json"],
        cwd=root,
    )
    first = json.loads(ok(first).stdout)
    configured = json.loads(ok(configured).stdout)
    assert configured["epochs"] == 1
    config = json.loads((root / "cfg.json").read_text())["meta"]["config"]
    assert config["rank"] == 2  # the flag wins
    assert config["sampled_max"] is True and config["stride"] == 2
    assert ok(run("predict", "cfg", "v1.npy", "--json", cwd=root)).stdout  # sampled-max, strided: loads
    shown = ok(run("inspect", "cfg", cwd=root)).stdout
    assert "patch 3, stride 2, 1 channel(s)" in shown and "mean + sampled max, 0 extra feature(s)" in shown
    resumed = ok(
        run(
            *["train", "cohort.csv", "-o", "r2", "--epochs", "2", *small],
            *["--checkpoint-dir", "ck", "--resume", "--log-csv", "log.csv"],
            cwd=root,
        )
    )
    resumed = json.loads(resumed.stdout)
    assert resumed["resumed"] and resumed["epochs"] == 2
    assert resumed["history"][0]["train_loss"] == first["history"][0]["train_loss"]
    assert len((root / "log.csv").read_text().splitlines()) == 3  # header + one epoch per run


def test_train_with_val_0_trains_on_every_volume(cohort):
    out = ok(run("train", "cohort.csv", "-o", "all/model", "--val", "0", *SMALL[:-1], cwd=cohort.root))
    assert "10 training / no validation (--val 0)" in out.stdout
    assert "val_" not in out.stdout
    assert (cohort.root / "all" / "model.safetensors").is_file()


def test_bad_inputs_exit_2_with_one_line_naming_them(cohort):
    root = cohort.root
    (root / "holes.csv").write_text("path,label\nv0.npy,healthy\nmissing_volume.npy,lesion\n")
    rows = [f"v{i}.npy,{CLASSES[i % 2]}" for i in range(4)] + ["v4.npy,tumour"]
    (root / "single.csv").write_text("\n".join(["path,label", *rows, ""]))
    (root / "broken").mkdir(exist_ok=True)
    for suffix in (".safetensors", ".json"):
        shutil.copy(root / f"model{suffix}", root / "broken" / f"model{suffix}")
    with open(root / "broken" / "model.safetensors", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0garbage\0")
    cases = {
        "no_such.csv": ["train", "no_such.csv", "-o", "m0"],
        "missing_volume.npy": ["train", "holes.csv", "-o", "m1", "--val", "0"],
        "class 'tumour' has 1 volume": ["train", "single.csv", "-o", "m2", "--val", "0.2"],
        "diagnosis": ["train", "cohort.csv", "-o", "m3", "--target", "diagnosis"],
        "patch": ["train", "cohort.csv", "-o", "m4", "--patch", "4"],
        "'healthy'": ["train", "cohort.csv", "-o", "m5", "--task", "regression"],
        "other.npy": ["predict", "model", "other.npy", "--extra", "61"],
        "broken/model": ["predict", "broken/model.safetensors", "v0.npy", "--extra", "61"],
        "look.jpg": ["predict", "model", "v0.npy", "--extra", "61", "--figure", "look.jpg"],
        "--read-budget: a read budget share must be above 0% and at most 100%, got '101%'": [
            *["train", "cohort.csv", "-o", "m6", "--sampler", "lattice", "--read-budget", "101%"],
        ],
        "--read-budget: a read budget is a share of the volume (0.5%) or a number of voxels, got 'lots'": [
            *["train", "cohort.csv", "-o", "m7", "--sampler", "random", "--read-budget", "lots"],
        ],
        "--read-budget 1%: a read budget of 40 voxels is below the 431 that the explore-exploit sampler": [
            *["train", "cohort.csv", "-o", "m8", "--sampler", "explore-exploit", "--patch", "3"],
            *["--read-budget", "1%"],
        ],
        "the cross sampler reads what its rank needs": [
            *["train", "cohort.csv", "-o", "m9", "--sampler", "cross", "--read-budget", "5%"],
        ],
        "--read-budget 20: a read budget of 20 voxels is below the 27 that the lattice sampler": [
            *["predict", "model", "v0.npy", "--extra", "61", "--sampler", "lattice", "--read-budget", "20"],
        ],
    }
    # run side by side, so each training gets its own output (one run per output: a lock)
    results = run_all(*[[*command, "--quiet"] for command in cases.values()], cwd=root)
    for needle, out in zip(cases, results):
        assert out.returncode == 2, (needle, out.stderr)
        assert "Traceback" not in out.stderr and needle in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not list(root.glob("m[0-9].safetensors"))


def test_samplers_train_and_predict_within_their_read_budget(cohort):
    root = cohort.root
    trained = run_all(
        *[
            ["train", "cohort.csv", "-o", f"s-{name}", "--extra", "age", *SMALL, "--sampler", name]
            + ["--read-budget", "15%", "--sampled-max", "--json"]
            for name in ("random", "lattice", "explore-exploit")
        ],
        cwd=root,
    )
    for name, out in zip(("random", "lattice", "explore-exploit"), trained):
        assert json.loads(ok(out).stdout)["epochs"] == 2, name
    evaluated = run_all(
        ["evaluate", "s-random", "cohort.csv", "--json"],
        ["evaluate", "s-lattice", "cohort.csv", "--json"],
        ["evaluate", "s-explore-exploit", "cohort.csv", "--json"],
        ["evaluate", "s-explore-exploit", "cohort.csv", "--read-budget", "40%", "--json"],
        ["evaluate", "s-lattice", "cohort.csv", "--sampler", "random", "--read-budget", "2000", "--json"],
        cwd=root,
    )
    reads = [json.loads(ok(out).stdout)["fraction_read"] for out in evaluated]
    assert all(0 < r <= 0.15 for r in reads[:3]), reads  # per prediction, within the budget
    assert 0.15 < reads[3] <= 0.40  # the trained view CNN reads the new budget
    assert reads[4] <= 2000 / 16**3


def test_predict_figure_refused_without_matplotlib_before_any_work(cohort, tmp_path, monkeypatch, capsys):
    from cpic.cli.main import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed: import fails
    model, volume = cohort.root / "model", cohort.root / cohort.volumes[0]
    out, figure = tmp_path / "p.csv", tmp_path / "look.png"
    args = ["predict", model, volume, "--extra", "61", "-o", out, "--figure", figure]
    assert main([str(a) for a in args]) == 2
    needs = "cpic predict: figures need matplotlib: pip install 'cpic[plot]'"
    assert capsys.readouterr().err.strip() == needs
    assert not out.exists() and not figure.exists()


def test_predict_prints_plain_csv_and_says_its_threads_in_json(cohort):
    table, document = run_all(
        ["predict", "model", cohort.volumes[0], "--extra", "61"],
        ["predict", "model", cohort.volumes[0], "--extra", "61", "--json", "--threads", "1"],
        cwd=cohort.root,
    )
    rows = list(csv.DictReader(ok(table).stdout.splitlines()))
    assert [r["volume"] for r in rows] == [cohort.volumes[0]]  # data only: no threads line
    assert json.loads(ok(document).stdout)["threads"] == 1


@pytest.mark.parametrize("command", ["train", "predict", "evaluate", "inspect"])
def test_help_of_each_command_shows_an_example(command, capsys):
    from cpic.cli.main import main  # in-process: --help needs no subprocess of its own

    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.count("example:") == 1
