import numpy as np
import pandas as pd
import pytest

from harness.core.errors import SSLBenchError
from harness.report.compare import compare


def _runs(shift: dict, noise: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for m, base in (("simclr", 48.0), ("byol", 47.0), ("rotnet", 45.0)):
        for s in range(3):
            rows.append({"method": m, "dataset": "cifar10", "backbone": "cnn4", "budget": "seconds=240", "seed": str(s),
                         "knn/top1@20": base + s * 0.3 + shift.get(m, 0.0) + rng.normal(0, noise)})
    return pd.DataFrame(rows)


def test_planted_regression_is_flagged():
    a = _runs({}, 0.2, 0)
    b = _runs({"byol": -5.0}, 0.2, 1)
    rows = {r.method: r for r in compare(a, b, ["knn/top1@20"], tolerance=1.0)}
    assert rows["byol"].verdict == "regression" and rows["byol"].delta == pytest.approx(-5.0, abs=0.8)
    assert rows["simclr"].verdict == "noise" and rows["rotnet"].verdict == "noise"


def test_seed_noise_passes():
    rows = compare(_runs({}, 0.3, 0), _runs({}, 0.3, 7), ["knn/top1@20"], tolerance=1.0)
    assert all(r.verdict == "noise" for r in rows)


def test_improvement_and_cli_exit_code(tmp_path):
    a, b = _runs({}, 0.2, 0), _runs({"simclr": 4.0}, 0.2, 1)
    assert {r.method: r.verdict for r in compare(a, b, ["knn/top1@20"], 1.0)}["simclr"] == "improvement"
    from harness.cli import main

    a.to_csv(tmp_path / "a.csv", index=False)
    _runs({"rotnet": -6.0}, 0.2, 2).to_csv(tmp_path / "b.csv", index=False)
    b.to_csv(tmp_path / "c.csv", index=False)
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), "--metric", "knn/top1@20"]) == 1
    assert main(["compare", str(tmp_path / "a.csv"), str(tmp_path / "c.csv"), "--metric", "knn/top1@20"]) == 0


def test_unpaired_is_an_error():
    a = _runs({}, 0.1, 0)
    b = a.assign(dataset="stl10")
    with pytest.raises(SSLBenchError, match="pair up"):
        compare(a, b, ["knn/top1@20"], 1.0)
