"""benchmarks/cross_breakdown.py: the parts of one cross add up to its time, and are unwrapped after."""

import re
from pathlib import Path

import cpic.tci.engine as engine
import cpic.util.keystore as keystore

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_breakdown_accounts_for_the_whole_run_and_restores_the_engine(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cross_breakdown

    originals = (engine.maxvol_rect, keystore.KeyStore.lookup, engine.torch.linalg.qr)
    cross_breakdown.breakdown(side=16, runs=1)
    assert (engine.maxvol_rect, keystore.KeyStore.lookup, engine.torch.linalg.qr) == originals
    report = capsys.readouterr().out
    total = float(re.search(r"timed runs: ([\d.]+) ms", report).group(1))
    rows = dict(re.findall(r"^\| ([^|]+) \| ([\d.]+) \| \d+% \|$", report, flags=re.M))
    assert {"f (the encoder, inside the cross)", "maxvol (LU, solve, row swaps)", "QR"} <= set(rows)
    assert abs(sum(float(ms) for ms in rows.values()) - total) <= 0.1 * len(rows)  # rounding only
    assert float(rows["f (the encoder, inside the cross)"]) > 0
