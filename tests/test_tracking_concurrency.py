"""8 processes started together on a brand-new SQLite store (nobody created its schema first): every
process records every run and every metric, none crashes (the store is created once, under a lock)."""

import subprocess
import sys
import textwrap

from harness.tracking.query import fetch_runs, metric_history

WORKER = textwrap.dedent('''
    import sys
    from harness.tracking.runs import TrackedRun
    uri, worker = sys.argv[1], int(sys.argv[2])
    for r in range(4):
        with TrackedRun("concurrent", f"w{worker}-r{r}", uri, params={"worker": worker, "run": r, "method": "m"}) as run:
            for step in range(10):
                run.log_metrics({"train/loss": worker + r + step / 10, "knn/top1@20": float(step)}, step=step)
''')


def test_eight_processes_on_a_brand_new_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/new/mlflow.db"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(w)], stderr=subprocess.PIPE, text=True)
             for w in range(8)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, "\n".join(e[-1500:] for e in errs)
    assert not any("Traceback" in e for e in errs)
    runs = fetch_runs(["concurrent"], uri=uri)
    assert len(runs) == 32
    assert sorted(runs["run_name"]) == sorted(f"w{w}-r{r}" for w in range(8) for r in range(4))
    for run_id in runs["run_id"]:
        assert len(metric_history(run_id, "train/loss", uri=uri)) == 10
        assert len(metric_history(run_id, "knn/top1@20", uri=uri)) == 10
