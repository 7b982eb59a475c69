"""benchmarks/tasks.py: equal read budgets, cohorts and paired differences, on a tiny setting."""

import re
from pathlib import Path

import pytest

from cpic.data import DataUnavailable

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
BUDGET = 491  # 12% of 16^3: enough for every sampler's minimum with 3^3 patches


@pytest.fixture
def tasks(monkeypatch):
    try:
        from cpic.data.lesions import _anatomy

        _anatomy("colin27")
    except DataUnavailable as err:  # pragma: no cover - CI installs mricron-data
        pytest.skip(f"Colin27 not installed: {err}")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tasks

    return tasks


def _rows(report: str) -> dict[str, list[str]]:
    return {
        cells[1]: cells
        for line in report.splitlines()
        if line.startswith(f"| {BUDGET} ")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }


def test_every_method_reads_within_the_budget_and_is_paired_with_the_best_design(tasks, tmp_path):
    argv = ["--side", "16", "--count", "8", "--cohorts", "2", "--minutes", "0.003", "--read-budget", "12%"]
    argv += ["--methods", "random,lattice,explore-exploit,strided,attention", "--dense-side", "8"]
    argv += ["--cache", str(tmp_path / "cache"), "--plot", str(tmp_path), "--write", str(tmp_path / "r.md")]
    report = tasks.main(argv)
    rows = _rows(report)
    assert set(rows) == {"random", "lattice", "explore-exploit", "strided", "attention"}
    for method, cells in rows.items():
        read = int(cells[3].split()[0])
        assert 0 < read <= BUDGET, method  # distinct voxels one prediction read, at most the budget
        assert re.fullmatch(r"[01]\.\d{3} ± (\d\.\d{3}|nan)", cells[2])
    assert int(rows["strided"][3].split()[0]) == 7**3  # the largest lattice within the budget
    best = [m for m, cells in rows.items() if cells[4] == "(best non-adaptive)"]
    assert len(best) == 1 and best[0] in tasks.NON_ADAPTIVE
    assert all(re.match(r"[+-]\d\.\d{3}", rows[m][4]) for m in rows if m != best[0])
    figures = {p.name for p in tmp_path.glob("*.png")}
    assert figures == {"tasks_lesion_16_reads.png", "tasks_lesion_16_where.png"}
    assert "Command: `python benchmarks/tasks.py --side 16" in (tmp_path / "r.md").read_text()


def test_regression_reports_the_error_and_the_ratio_to_the_best_design(tasks, tmp_path):
    argv = ["--task", "lesion-count", "--side", "16", "--count", "8", "--cohorts", "2", "--minutes", "0.003"]
    argv += ["--read-budget", str(BUDGET), "--methods", "random,strided", "--cache", str(tmp_path)]
    rows = _rows(tasks.main(argv))
    assert float(rows["random"][2].split()[0]) >= 0  # mean absolute error of the count
    ratio = rows["strided"][5] if rows["random"][4] == "(best non-adaptive)" else rows["random"][5]
    assert float(ratio) > 0


def test_calibration_scores_the_dense_view_detector(tasks, tmp_path):
    """Large lesions stand out of a coarse view's deviation from the mean head; tiny ones do not."""
    argv = ["--task", "needle", "--side", "16", "--count", "8", "--cohorts", "1", "--calibrate"]
    argv += ["--dense-side", "8", "--cache", str(tmp_path)]
    aucs = {}
    for radius in ("10,12", "0.5,1"):
        report = tasks.main(argv + ["--needle-radius", radius])
        aucs[radius] = float(re.search(r"\| 0 \| 8 \| (\S+) \|", report).group(1))
    assert aucs["10,12"] > 0.9 > 0.7 > aucs["0.5,1"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--read-budget", "50"], "--read-budget: explore-exploit needs at least"),
        (["--read-budget", "120%"], "--read-budget: a read budget share must be above 0% and at most 100%"),
        (["--methods", "random,cpic-max"], "--methods: unknown cpic-max"),
        (["--task", "shapes", "--calibrate"], "--calibrate"),
        (["--needle-radius", "2,1"], "--needle-radius"),
        (["--attention-view", "1"], "--attention-view"),
        (["--explore", "1.5"], "explore must be a share"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(tasks, capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        tasks.main(["--side", "32"] + argv)
    assert exit.value.code == 2 and message in capsys.readouterr().err
