"""The ``sslbench`` command line.

    sslbench run [SUITE] [key=value ...]        pretrain + evaluate a suite, print the leaderboard
    sslbench pretrain [key=value ...]           train one method under a budget (then evaluate it)
    sslbench eval TARGET [key=value ...]        score a checkpoint, or a random-init timm/backbone name
    sslbench leaderboard [--experiment NAME]    tables with 95% CIs from MLflow, written under results/
    sslbench compare A B                        paired regression report between two run sets (exit 1 on regression)
    sslbench check [key=value ...]              CI gate: tiny suite vs the committed baseline (exit 1 on failure)
    sslbench methods                            every method with family and paper
    sslbench ui [--port N]                      the MLflow UI on 127.0.0.1 against the same store

Errors caused by input print one line (``sslbench: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from harness.errors import SSLBenchError

OVERRIDES_HELP = ("config overrides as key=value, e.g. budget.kind=steps budget.value=200 optim.lr=0.1 "
                  "method_cfg.temperature=0.2 data.name=cifar10 data.data_dir=PATH (see 'sslbench pretrain --help')")


def _config_keys_help() -> str:
    from harness.config import RunConfig, flatten

    keys = flatten(RunConfig())
    return "config keys (defaults):\n" + "\n".join(f"  {k} = {v!r}" for k, v in keys.items() if k != "method_cfg") + \
        "\n  method_cfg.<key> = the method's own settings (see 'sslbench methods --verbose')"


def _cfg(args, extra_base: dict | None = None):
    from harness.config import load_yaml, parse_overrides, resolve

    base = dict(extra_base or {})
    if getattr(args, "config", None):
        base.update(load_yaml(args.config))
    return resolve(parse_overrides(args.overrides), base=base)


def cmd_pretrain(args) -> int:
    from harness.runner import pretrain

    cfg = _cfg(args)
    state = pretrain(cfg, resume=args.resume, evaluate=not args.no_eval)
    if not state:  # a non-main DDP rank: rank 0 reports
        return 0
    _print_metrics(state.get("metrics", {}))
    if state.get("checkpoint"):
        print(f"checkpoint: {state['checkpoint']}")
    print(f"mlflow run: {state.get('run_id')}")
    return 0


def _print_metrics(metrics: dict) -> None:
    for k, v in sorted(metrics.items()):
        if isinstance(v, float):
            print(f"  {k:28s} {v:.4f}")


def cmd_eval(args) -> int:
    from harness.runner import evaluate_target

    cfg = _cfg(args)
    if args.protocols:
        cfg.eval.protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
        from harness.config import resolve

        resolve({"eval.protocols": cfg.eval.protocols})  # validates the names
    res = evaluate_target(args.target, cfg)
    _print_metrics(res["metrics"])
    print(f"mlflow run: {res['run_id']}")
    return 0


def cmd_run(args) -> int:
    from harness.config import parse_overrides
    from harness.runner import load_suite, run_suite, suite_configs

    overrides = parse_overrides(args.overrides)
    suite_spec = args.suite
    if args.seeds or args.methods:
        spec = dict(load_suite(args.suite).__dict__)
        if args.seeds:
            try:
                spec["seeds"] = [int(s) for s in args.seeds.split(",")]
            except ValueError:
                raise SSLBenchError(f"--seeds takes comma-separated integers, got '{args.seeds}'") from None
        if args.methods:
            spec["methods"] = _method_list(args.methods)
        suite_spec = spec
    run_suite(suite_spec, overrides, resume=args.resume)
    # the experiments the runs were logged to (the suite's name unless the suite or an override set another)
    names = dict.fromkeys(c.tracking.experiment for c in suite_configs(load_suite(suite_spec), overrides))
    command = "sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return max(_leaderboard(experiment=name, uri=overrides.get("tracking.uri"), out=args.out, command=command)
               for name in names)


def _method_list(text: str) -> list[str]:
    """``--methods a,b,c`` (validated against the registry), or ``all`` for every registered method."""
    from harness.registry import get_method, methods

    if text.strip() == "all":
        return list(methods())
    names = [m.strip() for m in text.split(",") if m.strip()]
    for n in names:
        get_method(n)  # one-line error naming the valid choices
    return names


def _leaderboard(experiment: str | None, uri: str | None, out: str, dataset=None, backbone=None, budget=None,
                 sort="knn/top1@20", command: str = "") -> int:
    from harness import leaderboard as lb
    from harness import tracking

    runs = tracking.fetch_runs([experiment] if experiment else None, uri=uri)
    tables = lb.build(runs, dataset=dataset, backbone=backbone, budget=budget, sort=sort)
    if not tables:
        where = f"experiment '{experiment}'" if experiment else "the store"
        raise SSLBenchError(f"no finished runs in {where} ({tracking.tracking_uri(uri)}); run 'sslbench run' first")
    for t in tables:
        print()
        print(lb.plain(t))
    stem = "leaderboard"
    out_dir = Path(out) / (experiment or "all")
    runs = lb.current_runs(runs, tables)   # provenance and runs.csv: the records the tables show
    paths = lb.write(tables, out_dir, stem, command=command, title=experiment or "all experiments",
                     meta=lb.provenance(runs))
    from harness.compare import runs_frame

    runs_frame(runs).to_csv(out_dir / "runs.csv", index=False)  # per-run rows, for 'sslbench compare'
    paths.append(out_dir / "runs.csv")
    print("\nwritten: " + ", ".join(str(p) for p in paths))
    return 0


def cmd_leaderboard(args) -> int:
    cmd = "sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return _leaderboard(args.experiment, args.tracking_uri, args.out, args.dataset, args.backbone, args.budget,
                        args.sort, command=cmd)


def cmd_compare(args) -> int:
    from harness.compare import compare, load_selection, report

    a = load_selection(args.a, args.tracking_uri)
    b = load_selection(args.b, args.tracking_uri)
    rows = compare(a, b, args.metric or ["knn/top1@20", "linear/top1"], args.tolerance)
    print(report(rows, args.tolerance))
    regressions = [r for r in rows if r.verdict.startswith("regression")]
    if regressions:
        names = ", ".join(sorted({f"{r.method} ({r.metric})" for r in regressions}))
        print(f"REGRESSION: {names}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args) -> int:
    import pandas as pd

    from harness import check
    from harness.config import parse_overrides
    from harness.runner import load_suite, run_suite

    overrides = parse_overrides(args.overrides)
    suite = load_suite(args.suite).__dict__
    suite["seeds"] = [int(s) for s in args.seeds.split(",")] if args.seeds else suite["seeds"]
    if args.methods:
        suite["methods"] = args.methods.split(",")
    results = run_suite(dict(suite), overrides, resume=False)
    rows = []
    for r in results:
        if "failed" in r:
            rows.append({"method": r["config"]["method"], "seed": r["config"]["seed"], args.metric: float("nan")})
        elif r.get("metrics"):
            rows.append({"method": r["config"]["method"], "seed": r["config"]["seed"], args.metric: r["metrics"].get(args.metric)})
    current = pd.DataFrame(rows)
    baseline_path = Path(args.baseline)
    if args.update_baseline:
        base = check.make_baseline(current, args.metric)
        if (base["n"] < 3).any():
            print("sslbench: warning: a baseline from fewer than 3 seeds has no useful variance band", file=sys.stderr)
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
        base.to_csv(baseline_path, index=False)
        print(base.to_string(index=False))
        print(f"baseline written: {baseline_path}")
        return 0
    baseline = check.load_baseline(baseline_path)
    baseline = baseline[baseline["method"].isin(suite["methods"])]
    verdicts = check.judge(current, baseline, k=args.k, min_band=args.min_band)
    print(check.table(verdicts))
    failed = [v.method for v in verdicts if not v.ok]
    if failed:
        print(f"CHECK FAILED: {', '.join(failed)} below the baseline band ({args.metric})", file=sys.stderr)
        return 1
    print("CHECK PASSED")
    return 0


def cmd_methods(args) -> int:
    import dataclasses

    from harness.registry import methods

    rows = [(e.name, e.family, e.paper, e.source) for e in methods().values()]
    w = [max(len(r[i]) for r in rows + [("method", "family", "paper", "source")]) for i in range(3)]
    print(f"{'method'.ljust(w[0])}  {'family'.ljust(w[1])}  paper")
    for r in rows:
        print(f"{r[0].ljust(w[0])}  {r[1].ljust(w[1])}  {r[2]}" + (f"  [{r[3]}]" if not r[3].startswith("methods.") else ""))
        if args.verbose:
            e = methods()[r[0]]
            for f in dataclasses.fields(e.cls.Config):
                print(f"    method_cfg.{f.name} = {getattr(e.cls.Config(), f.name)!r}")
            print(f"    optimizer {e.cls.optimizer}, base lr {e.cls.base_lr} x batch/256, weight decay {e.cls.weight_decay}")
    return 0


def cmd_ui(args) -> int:
    import time
    import urllib.request

    from harness import tracking

    uri = tracking.tracking_uri(args.tracking_uri)
    tracking.client(uri)  # creates the store's schema (and checks a server URI) before the UI opens it
    proc = tracking.start_ui(uri, "127.0.0.1", args.port)
    url = f"http://127.0.0.1:{args.port}"
    deadline = time.time() + args.start_timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise SSLBenchError(f"the MLflow UI exited at start ({err[-1] if err else 'no message'}); is port {args.port} free?")
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        tracking_stop(proc)
        raise SSLBenchError(f"the MLflow UI did not answer on {url} within {args.start_timeout:.0f}s")
    print(f"MLflow UI: {url} (store {uri}); Ctrl-C to stop", flush=True)
    try:
        if args.duration:
            time.sleep(args.duration)
        else:
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        tracking_stop(proc)
    return 0


def tracking_stop(proc) -> None:
    import signal

    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except Exception:
            os.killpg(proc.pid, signal.SIGKILL)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sslbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, help_, fn, overrides=True, epilog=None):
        sp = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.set_defaults(fn=fn)
        if overrides:
            sp.add_argument("--config", metavar="YAML", help="a YAML file of config keys (applied before key=value overrides)")
        return sp

    sp = add("pretrain", "pretrain one method under a fixed budget, then evaluate it (logged to MLflow)", cmd_pretrain,
             epilog=_config_keys_help())
    sp.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    sp.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    sp.add_argument("--no-eval", action="store_true", help="skip evaluation after pretraining")

    sp = add("eval", "evaluate a checkpoint, or a random-init encoder given a backbone/timm model name", cmd_eval,
             epilog=_config_keys_help())
    sp.add_argument("target", help="a checkpoint.pt written by 'sslbench pretrain', or a backbone name (e.g. cnn4, resnet18)")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    sp.add_argument("--protocols", help="comma-separated protocols: knn, linear, align_uniform (the default three), "
                                          "linear_lbfgs, finetune, semisup (SimCLR v2 fine-tune + distil on label fractions)")

    sp = add("run", "run a suite (pretrain + evaluate several methods, plus random-init rows) and print the leaderboard",
             cmd_run, overrides=False)
    sp.add_argument("suite", nargs="?", default="default",
                    help="a suite YAML path or a built-in suite name (default: 'default', Fashion-MNIST)")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run of the suite")
    sp.add_argument("--resume", action="store_true", help="skip finished runs and continue interrupted ones")
    sp.add_argument("--seeds", help="comma-separated seeds, replacing the suite's")
    sp.add_argument("--methods", help="comma-separated methods (or 'all'), replacing the suite's list; the "
                                      "suite's per-method settings still apply")
    sp.add_argument("--out", default="results", help="where leaderboards are written (default: results/)")

    sp = add("leaderboard", "print and write leaderboards (Markdown, CSV, HTML, PNG) from the MLflow store", cmd_leaderboard,
             overrides=False)
    sp.add_argument("--experiment", help="the suite/experiment name (default: all)")
    sp.add_argument("--dataset")
    sp.add_argument("--backbone")
    sp.add_argument("--budget", help="e.g. seconds=240.0")
    sp.add_argument("--sort", default="knn/top1@20", help="metric to sort rows by (default knn/top1@20)")
    sp.add_argument("--out", default="results", help="output folder (default: results/)")
    sp.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or results/mlflow.db)")

    sp = add("compare", "compare two run sets (runs CSVs, commit:SHA or experiment:NAME); exit 1 on a regression",
             cmd_compare, overrides=False)
    sp.add_argument("a", help="baseline: a runs.csv, commit:SHA or experiment:NAME")
    sp.add_argument("b", help="candidate: a runs.csv, commit:SHA or experiment:NAME")
    sp.add_argument("--metric", action="append", help="metric(s) to compare (default: knn/top1@20 and linear/top1)")
    sp.add_argument("--tolerance", type=float, default=1.0, help="smallest drop (in metric units) called a regression")
    sp.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or results/mlflow.db)")

    sp = add("check", "CI performance gate: run the CI suite and compare with the committed baseline (exit 1 on failure)",
             cmd_check, overrides=False)
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run (e.g. data.data_dir=PATH)")
    sp.add_argument("--suite", default="ci", help="suite name or YAML (default: ci)")
    sp.add_argument("--methods", help="comma-separated subset of the suite's methods")
    sp.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    sp.add_argument("--metric", default="knn/top1@20")
    sp.add_argument("--baseline", default=str(Path("results/ci/baseline.csv")))
    sp.add_argument("--update-baseline", action="store_true", help="write the baseline from this run's seeds")
    sp.add_argument("--k", type=float, default=3.0, help="band = max(k x seed std, --min-band)")
    sp.add_argument("--min-band", type=float, default=1.0)

    sp = add("methods", "list every registered method with its family and paper", cmd_methods, overrides=False)
    sp.add_argument("--verbose", "-v", action="store_true", help="also list each method's config keys and defaults")

    sp = add("ui", "start the MLflow UI on 127.0.0.1 against the same store (Ctrl-C stops it)", cmd_ui, overrides=False)
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or results/mlflow.db)")
    sp.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until Ctrl-C)")
    sp.add_argument("--start-timeout", type=float, default=60)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops collecting positionals there)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    if args.fn in (cmd_run, cmd_pretrain, cmd_eval, cmd_check):
        from harness.tracking import git_info

        git_info()  # pin the commit this process's code came from, before any long work
    import signal

    def _terminate(signum, frame):  # SIGTERM (a scheduler, `kill`): mark runs KILLED, keep the last checkpoint
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        return args.fn(args)
    except SSLBenchError as e:
        print(f"sslbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sslbench: interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
