import os

import pandas as pd
import pytest

from conftest import CIFAR_NPZ
from harness.report import check


def test_band_from_seed_variance():
    vals = pd.DataFrame({"method": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "knn/top1@20": [50.0, 51.0, 52.0, 40.0, 40.1, 39.9]})
    base = check.make_baseline(vals, "knn/top1@20")
    a = base.set_index("method").loc["a"]
    assert a["mean"] == pytest.approx(51.0) and a["std"] == pytest.approx(1.0) and a["n"] == 3
    cur = pd.DataFrame({"method": ["a", "b"], "knn/top1@20": [48.5, 38.5]})
    v = {x.method: x for x in check.judge(cur, base, k=3.0, min_band=1.0)}
    assert v["a"].ok and v["a"].band == pytest.approx(3.0)         # 48.5 >= 51 - 3
    assert not v["b"].ok and v["b"].band == pytest.approx(1.0)     # band floor: 38.5 < 40 - 1
    up = check.judge(pd.DataFrame({"method": ["a"], "knn/top1@20": [54.5]}), base[base.method == "a"])
    assert not up[0].ok and "over the mean" in check.table(up)              # two-sided: 54.5 > 51 + 3
    missing = check.judge(cur[cur.method == "a"], base)
    assert [x.ok for x in missing] == [True, False]
    assert "FAIL" in check.table(check.judge(cur, base)) or "MISSING" in check.table(missing)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CIFAR_NPZ), reason="needs ../shared/data/cifar10.npz")
def test_check_fails_on_a_broken_method(tmp_path, monkeypatch):
    """`sslbench check` with MoCo v2's learning switched off (lr=0) fails and names moco_v2.

    (A frozen MoCo v2 scores about random init, 44% kNN@20, far below its 300-step baseline of
    about 50.6 ± 0.4.)"""
    from harness.cli import main

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    rc = main(["check", "--methods", "moco_v2", "--baseline", os.path.join(root, "results/ci/baseline.csv"),
               f"data.data_dir={CIFAR_NPZ}", "optim.lr=0.0", "out_dir=" + str(tmp_path / "runs")])
    assert rc == 1


def test_the_band_is_two_sided_in_words_and_the_baseline_is_found_from_anywhere(tmp_path, monkeypatch):
    import pandas as pd

    from harness.core.errors import SSLBenchError
    from harness.report.check import BASELINE, CHECKOUT, default_baseline, ensure_writable, judge, table

    base = pd.DataFrame({"method": ["a", "b"], "metric": "m", "mean": [50.0, 50.0], "std": [0.5, 0.5], "n": [3, 3]})
    cur = pd.DataFrame({"method": ["a", "b"], "m": [40.0, 60.0]})
    text = table(judge(cur, base, k=3.0, min_band=1.0))
    assert text.count("outside the band") == 2 and "10.00 under" in text and "10.00 over" in text
    assert "below" not in text
    monkeypatch.chdir(tmp_path)                       # outside the checkout: the checkout's own baseline
    assert default_baseline() == CHECKOUT / BASELINE and default_baseline().exists()
    (tmp_path / BASELINE).parent.mkdir(parents=True)
    (tmp_path / BASELINE).write_text("method,metric,mean,std,n\n")
    assert default_baseline() == (tmp_path / BASELINE).resolve()   # a folder's own baseline wins
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):                # (root writes anywhere)
            with pytest.raises(SSLBenchError, match="cannot write the baseline"):
                ensure_writable(ro / "sub" / "baseline.csv")
    finally:
        ro.chmod(0o700)
