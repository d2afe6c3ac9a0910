"""4 processes log runs concurrently into one SQLite store: no run and no metric is lost."""

import subprocess
import sys
import textwrap

from harness.tracking.query import fetch_runs, metric_history
from harness.tracking.runs import TrackedRun

WORKER = textwrap.dedent('''
    import sys
    from harness.tracking.runs import TrackedRun
    uri, worker = sys.argv[1], int(sys.argv[2])
    for r in range(4):
        with TrackedRun("concurrent", f"w{worker}-r{r}", uri, params={"worker": worker, "run": r, "method": "m"}) as run:
            for step in range(10):
                run.log_metrics({"train/loss": worker + r + step / 10, "knn/top1@20": float(step)}, step=step)
''')


def test_four_processes_one_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    TrackedRun("concurrent", "init", uri).end()  # create the schema once, as the first run of a suite does
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, uri, str(w)], stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    runs = fetch_runs(["concurrent"], uri=uri)
    runs = runs[runs["run_name"] != "init"]
    assert len(runs) == 16
    assert sorted(runs["run_name"]) == sorted(f"w{w}-r{r}" for w in range(4) for r in range(4))
    for run_id in runs["run_id"]:
        assert len(metric_history(run_id, "train/loss", uri=uri)) == 10
        assert len(metric_history(run_id, "knn/top1@20", uri=uri)) == 10
