import math

import pandas as pd
import pytest

from harness.report import leaderboard as lb
from harness.report import plots, render
from harness.tracking.keys import from_mlflow_key, to_mlflow_key
from harness.tracking.query import fetch_runs
from harness.tracking.runs import TrackedRun
from harness.tracking.store import artifact_root, check_reachable, tracking_uri


def test_runs_roundtrip_and_leaderboard(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    accs = {"a": [50.0, 52.0, 51.0], "b": [40.0, 41.0, 39.0]}
    for method, vals in accs.items():
        for seed, v in enumerate(vals):
            with TrackedRun("exp", f"{method}-s{seed}", uri,
                                     params={"method": method, "backbone": "cnn4", "data.name": "d", "budget.kind": "steps",
                                             "budget.value": 10, "seed": seed, "eval.knn_k": [20]}) as run:
                run.log_metrics({"knn/top1@20": v, "align": 0.5})
    with TrackedRun("exp", "failed", uri, params={"method": "c"}) as run:
        run.end("FAILED")
    runs = fetch_runs(["exp"], uri=uri)
    assert len(runs) == 6 and "metrics.knn/top1@20" in runs
    tables = lb.build(runs)
    assert len(tables) == 1
    f = tables[0].frame
    assert list(f["method"]) == ["a", "b"]  # sorted by kNN@20
    mean, half, n = lb.ci95(accs["a"])
    assert n == 3 and mean == pytest.approx(51.0)
    # t(0.975, 2) = 4.3027; std = 1
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)
    assert f.loc[0, "knn/top1@20/ci"] == pytest.approx(half)
    text = render.plain(tables[0])
    assert "51.0 ± 2.5 (n=3)" in text
    paths = render.write(tables, tmp_path / "out", "leaderboard", command="sslbench test")
    assert all(p.exists() for p in paths)
    assert "51.0 ± 2.5 (n=3)" in (tmp_path / "out" / "leaderboard.md").read_text()


def test_budgets_and_datasets_never_share_a_table():
    rows = []
    for budget in (10, 20):
        for ds in ("x", "y"):
            rows.append({"params.method": "m", "params.backbone": "b", "params.data.name": ds, "params.budget.kind": "steps",
                         "params.budget.value": str(budget), "params.seed": "0", "metrics.knn/top1@20": 1.0})
    assert len(lb.build(pd.DataFrame(rows))) == 4


def test_protocols_never_share_a_table_but_seeds_and_idle_config_keys_do():
    base = {"params.method": "m", "params.backbone": "b", "params.data.name": "x", "params.budget.kind": "steps",
            "params.budget.value": "10", "metrics.knn/top1@20": 1.0, "params.eval/knn_k": "10,20"}
    rows = [{**base, "params.seed": "0", "params.eval/seed": "0"},
            {**base, "params.seed": "1", "params.eval/seed": "1", "params.eval.semisup_fractions": "[0.01]"},
            {**base, "params.seed": "2", "params.eval/knn_k": "20"}]
    tables = lb.build(pd.DataFrame(rows))
    assert sorted(int(t.frame["knn/top1@20/n"].sum()) for t in tables) == [1, 2]


def test_newest_record_of_a_run_supersedes_older_ones_across_protocols():
    base = {"params.method": "m", "params.backbone": "b", "params.data.name": "x", "params.budget.kind": "steps",
            "params.budget.value": "10", "params.seed": "0", "experiment": "e"}
    rows = [{**base, "start_time": 1, "params.eval/linear_epochs": "30", "metrics.linear/top1": 50.0},
            {**base, "start_time": 2, "params.eval/linear_epochs": "10", "metrics.linear/top1": 52.0},
            {**base, "start_time": 3, "experiment": "other", "params.eval/linear_epochs": "30", "metrics.linear/top1": 40.0}]
    tables = lb.build(pd.DataFrame(rows))
    got = sorted(float(t.frame["linear/top1/mean"].iloc[0]) for t in tables)
    assert got == [40.0, 52.0]  # the older evaluation (50.0) of the same run is gone; other experiments stay


def test_provenance_lists_only_the_records_the_tables_show():
    base = {"params.method": "m", "params.backbone": "b", "params.data.name": "x", "params.budget.kind": "steps",
            "params.budget.value": "10", "params.seed": "0", "experiment": "e"}
    runs = pd.DataFrame([{**base, "run_id": "old", "start_time": 1, "tags.command": "sslbench run OLD", "metrics.knn/top1@20": 40.0},
                         {**base, "run_id": "new", "start_time": 2, "tags.command": "sslbench run NEW", "metrics.knn/top1@20": 45.0}])
    tables = lb.build(runs)
    assert [t.run_ids for t in tables] == [("new",)]
    text = lb.provenance(lb.current_runs(runs, tables))
    assert "sslbench run NEW" in text and "OLD" not in text


def test_single_seed_is_marked():
    assert render._cell(50.0, float("nan"), 1, 1) == "50.0 (n=1)"


def test_unreachable_server_is_one_line_error():
    from harness.core.errors import SSLBenchError

    with pytest.raises(SSLBenchError, match="unreachable"):
        check_reachable("http://127.0.0.1:9", timeout=2)


def test_default_store_is_sqlite_under_results(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking_uri(None)
    assert uri == f"sqlite:///{tmp_path}/results/mlflow.db"
    assert artifact_root(uri) == (tmp_path / "results" / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert tracking_uri(None) == "sqlite:///elsewhere.db"
    assert tracking_uri("http://x") == "http://x"


def test_metric_names_roundtrip_through_mlflow_keys():
    for name, key in [("knn/top1@20", "knn/top1_k20"), ("linear@1%/top1", "linear_1pct/top1"), ("align", "align")]:
        assert to_mlflow_key(name) == key and from_mlflow_key(key) == name


def test_reevaluation_with_other_knobs_is_a_new_run(tmp_path, monkeypatch):
    """MLflow params are immutable: evaluating a checkpoint again with another protocol setting
    must not attach new metrics to the old knobs; it logs a new run pointing at the old one."""
    from harness.data.sources import synthetic
    from harness.run.evaluate import evaluate_target
    from harness.run.pretrain import pretrain
    from harness.train.config import resolve

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    ds = synthetic(n_train=128, n_test=64, image_size=16)
    base = {"method": "simclr", "data.name": "synthetic", "budget.kind": "steps", "budget.value": 2,
            "optim.batch_size": 32, "train.progress": False, "tracking.uri": uri, "out_dir": str(tmp_path / "runs"),
            "eval.protocols": ["linear"], "eval.linear_epochs": 2}
    first = pretrain(resolve(base), dataset=ds)
    evaluate_target(first["checkpoint"], resolve(base), dataset=ds)          # same knobs: same run
    again = evaluate_target(first["checkpoint"], resolve({**base, "eval.linear_epochs": 3}), dataset=ds)
    runs = fetch_runs(None, uri=uri)
    assert len(runs) == 2 and again["run_id"] != first["run_id"]
    old = runs[runs["run_id"] == first["run_id"]].iloc[0]
    new = runs[runs["run_id"] == again["run_id"]].iloc[0]
    assert old["params.eval.linear_epochs"] == "2" and old["metrics.linear/top1"] == first["metrics"]["linear/top1"]
    assert new["params.eval.linear_epochs"] == "3" and new["tags.evaluation_of"] == first["run_id"]
    assert new["metrics.pretrain/steps"] == 2
    # `pretrain --resume` of the finished run under other knobs takes the same path: no retraining,
    # a new record; the old ones keep their knobs and numbers
    third = pretrain(resolve({**base, "eval.linear_epochs": 4}), resume=True, dataset=ds)
    runs = fetch_runs(None, uri=uri)
    assert len(runs) == 3 and third["run_id"] not in (first["run_id"], again["run_id"])
    new3 = runs[runs["run_id"] == third["run_id"]].iloc[0]
    assert new3["params.eval.linear_epochs"] == "4" and new3["metrics.pretrain/steps"] == 2
    assert runs[runs["run_id"] == first["run_id"]].iloc[0]["params.eval.linear_epochs"] == "2"
    assert pretrain(resolve({**base, "eval.linear_epochs": 4}), resume=True, dataset=ds)["run_id"] == third["run_id"]


def test_budget_curves_plot_when_a_method_has_several_budgets(tmp_path):
    rows = []
    for budget, acc in ((10, 40.0), (20, 45.0), (40, 50.0)):
        for seed in (0, 1):
            rows.append({"params.method": "m", "params.backbone": "b", "params.data.name": "x", "params.budget.kind": "steps",
                         "params.budget.value": str(budget), "params.seed": str(seed), "metrics.knn/top1@20": acc + seed})
    rows.append({"params.method": "random_init", "params.backbone": "b", "params.data.name": "x", "params.seed": "0",
                 "metrics.knn/top1@20": 30.0})
    tables = lb.build(pd.DataFrame(rows))
    assert len(tables) == 3
    paths = render.write(tables, tmp_path, "lb")
    assert (tmp_path / "lb-budget.png") in paths and (tmp_path / "lb-budget.png").stat().st_size > 10_000
    assert plots.plot_budget_curves(tables[:1], tmp_path, "one") == []  # one budget: no curve


def test_a_rewrite_leaves_no_stale_png_of_its_own(tmp_path):
    rows = [{"params.method": "m", "params.backbone": "b", "params.data.name": "x", "params.budget.kind": "steps",
             "params.budget.value": str(budget), "params.seed": "0", "metrics.knn/top1@20": 40.0 + budget}
            for budget in (10, 20)]
    (tmp_path / "lb.png").write_bytes(b"stale")            # what a one-table write left
    (tmp_path / "lb-notes.png").write_bytes(b"a user's")     # not a name we write: kept
    paths = render.write(lb.build(pd.DataFrame(rows)), tmp_path, "lb")
    assert not (tmp_path / "lb.png").exists() and (tmp_path / "lb-notes.png").exists()
    assert {p.name for p in paths if p.suffix == ".png"} == {"lb-0.png", "lb-1.png", "lb-budget.png"}
