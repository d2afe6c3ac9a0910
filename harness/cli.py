"""The ``sslbench`` command line.

    sslbench run [SUITE] [key=value ...]        pretrain + evaluate a suite, print the leaderboard
    sslbench pretrain [key=value ...]           train one method under a budget (then evaluate it)
    sslbench eval TARGET [key=value ...]        score a checkpoint, or a random-init timm/backbone name
    sslbench leaderboard [--experiment NAME]    tables with 95% CIs from MLflow, written under results/
    sslbench compare A B                        paired regression report between two run sets (exit 1 on regression)
    sslbench check [key=value ...]              CI gate: tiny suite vs the committed baseline (exit 1 on failure)
    sslbench export CHECKPOINT                  the encoder as a plain (timm-loadable) state dict + a model card
    sslbench methods [NAME] [-v]                every method: family, needs, paper, venue
    sslbench ui [--port N]                      the MLflow UI on 127.0.0.1 against the same store
    sslbench sweep [SUITE] [key=value ...]      a suite as run specs on an executor (in-process, submitit local, Slurm)
    sslbench evolve [SUITE] [key=value ...]     search a method's loss weights (CMA-ES), then train and evaluate with the best
    sslbench rl game=GAME [key=value ...]       an Atari agent (DQN) with CURL as its auxiliary loss, budgeted in env steps
    sslbench rl-table [--experiment rl]         the agent runs' returns, mean ± 95% CI over seeds, written under results/
    sslbench server [--host H] [--port N]       a team tracking server (MLflow) with a database and an artifact root

Errors caused by input print one line (``sslbench: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
from pathlib import Path

from evals.protocols import HEADLINE, HEADLINE_METRICS, PROTOCOLS
from harness.core import interrupts
from harness.core.config import flatten, load_yaml, parse_overrides
from harness.core.errors import SSLBenchError
from harness.train.config import RunConfig, resolve

STORE_HELP = ("the MLflow store, also written tracking.uri=URI as on every command (default: $MLFLOW_TRACKING_URI, "
              "else sqlite results/mlflow.db)")

# Each command imports the layer it runs when it runs (below, in its function): building the parser
# needs only the config and the protocol table, so `sslbench --help` answers without loading torch.

OVERRIDES_HELP = ("config overrides as key=value, e.g. budget.kind=steps budget.value=200 optim.lr=0.1 "
                  "method_cfg.temperature=0.2 data.name=cifar10 data.data_dir=PATH (see 'sslbench pretrain --help')")


def _config_keys_help() -> str:
    keys = flatten(RunConfig())
    return "config keys (defaults):\n" + "\n".join(f"  {k} = {v!r}" for k, v in keys.items() if k != "method_cfg") + \
        "\n  method_cfg.<key> = the method's own settings (see 'sslbench methods --verbose')"


def _suites_help() -> str:
    """The built-in suites with their descriptions (read from the YAML files: no torch, no MLflow)."""
    import yaml

    from harness.core.config import CONFIG_DIR

    lines = []
    for f in sorted((CONFIG_DIR / "suites").glob("*.yaml")):
        try:
            desc = str((yaml.safe_load(f.read_text()) or {}).get("description", ""))
        except (OSError, yaml.YAMLError):
            desc = "(unreadable)"
        lines.append(f"  {f.stem:18s} {desc}")
    return "built-in suites:\n" + "\n".join(lines) + "\n\nA token with '=' is an override, never the suite name: " \
        "'sslbench run --methods simclr,byol budget.value=30' runs the default suite."


def _cfg(args, overrides: dict | None = None) -> RunConfig:
    base = load_yaml(args.config) if getattr(args, "config", None) else {}
    return resolve({**parse_overrides(args.overrides), **(overrides or {})}, base=base)


def cmd_pretrain(args) -> int:
    from harness.run.pretrain import pretrain

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
    from harness.run.evaluate import evaluate_target

    extra = {"eval.protocols": [p.strip() for p in args.protocols.split(",") if p.strip()]} if args.protocols else {}
    cfg = _cfg(args, overrides=extra)   # the names are validated against the protocol table
    explicit = set(parse_overrides(args.overrides)) | set(extra) | set(load_yaml(args.config) if args.config else {})
    res = evaluate_target(args.target, cfg, explicit=explicit)
    _print_metrics(res["metrics"])
    print(f"mlflow run: {res['run_id']}")
    return 0


def cmd_run(args) -> int:
    from harness.report.export import export_leaderboard
    from harness.run.suites import load_suite, run_suite, suite_configs

    overrides = parse_overrides(args.overrides)
    suite_spec = _suite_spec(args)
    run_suite(suite_spec, overrides, resume=args.resume)
    # the experiments the runs were logged to (the suite's name unless the suite or an override set another)
    names = dict.fromkeys(c.tracking.experiment for c in suite_configs(load_suite(suite_spec), overrides))
    command = "sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for name in names:
        export_leaderboard(name, overrides.get("tracking.uri"), args.out, command=command)
    return 0


def _method_list(text: str) -> list[str]:
    """``--methods a,b,c`` (validated against the registry), or ``all`` for every registered method."""
    from harness.run.plugins import get_method, methods

    if text.strip() == "all":
        return list(methods())
    names = [m.strip() for m in text.split(",") if m.strip()]
    for n in names:
        get_method(n)  # one-line error naming the valid choices
    return names


def cmd_leaderboard(args) -> int:
    from harness.report.export import export_leaderboard, replot

    if args.replot:
        replot(args.replot)
        return 0
    cmd = "sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    export_leaderboard(args.experiment, args.tracking_uri, args.out, args.dataset, args.backbone, args.budget,
                       args.sort, command=cmd)
    return 0


def cmd_compare(args) -> int:
    from harness.report.compare import compare, load_selection, not_comparable, report

    a = load_selection(args.a, args.tracking_uri)
    b = load_selection(args.b, args.tracking_uri)
    rows = compare(a, b, args.metric or list(HEADLINE_METRICS), args.tolerance)
    print(report(rows, args.tolerance))
    for line in not_comparable(a, b):
        print(line)
    regressions = [r for r in rows if r.verdict.startswith("regression")]
    if regressions:
        names = ", ".join(sorted({f"{r.method} ({r.metric})" for r in regressions}))
        print(f"REGRESSION: {names}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args) -> int:
    from harness.report import check
    from harness.run.suites import run_suite

    overrides = parse_overrides(args.overrides)
    suite = _suite_spec(args)
    baseline_path = Path(args.baseline) if args.baseline else check.default_baseline()
    baseline = None if args.update_baseline else check.load_baseline(baseline_path)  # before any training
    if args.update_baseline:
        check.ensure_writable(baseline_path)                                        # also before training
    print(f"sslbench: check: suite '{suite['name']}' ({len(suite['methods'])} methods x {len(suite['seeds'])} seeds) "
          f"against {baseline_path}", file=sys.stderr)
    results = run_suite(suite, overrides, resume=False)
    current = check.current_values(results, args.metric)
    if args.update_baseline:
        print(check.write_baseline(current, baseline_path, args.metric).to_string(index=False))
        print(f"baseline written: {baseline_path}")
        return 0
    verdicts, failed = check.gate(current, baseline, suite["methods"], k=args.k, min_band=args.min_band)
    print(check.table(verdicts))
    if failed:
        print(f"CHECK FAILED: {', '.join(failed)} outside the baseline band ({args.metric})", file=sys.stderr)
        return 1
    print("CHECK PASSED")
    return 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SSLBenchError(f"--seeds takes comma-separated integers, got '{text}'") from None


def cmd_methods(args) -> int:
    from harness.run.method_table import method_card, methods_table

    print(method_card(args.name) if args.name else methods_table(verbose=args.verbose))
    return 0


def cmd_export(args) -> int:
    from harness.run.export_model import export

    res = export(args.checkpoint, args.out)
    print(f"encoder weights: {res['weights']}\nmodel card:      {res['card']}\nload with:       {res['load']}")
    return 0


def cmd_ui(args) -> int:
    from harness.tracking.ui import serve_ui

    serve_ui(args.tracking_uri, args.port, args.start_timeout, args.duration)
    return 0


def _suite_spec(args):
    from harness.run.suites import load_suite

    spec = dict(load_suite(args.suite).__dict__)
    if args.seeds:
        spec["seeds"] = _seed_list(args.seeds)
    if args.methods:
        spec["methods"] = _method_list(args.methods)
    return spec


def cmd_sweep(args) -> int:
    from harness.report.export import export_leaderboard
    from harness.run import sweep

    overrides = parse_overrides(args.overrides)
    spec = _suite_spec(args)
    spec["grid"] = {**spec.get("grid", {}), **sweep.grid_overrides(args.grid)}
    specs = sweep.sweep_specs(spec, overrides)
    slurm = sweep.SlurmOptions(args.partition, args.gpus_per_node, args.cpus_per_task, args.mem_gb, args.time_min,
                               args.nodes, args.account, args.qos, args.constraint, tuple(args.setup or ()))
    if args.specs_out:
        sweep.write_specs(specs, Path(args.specs_out))
    if args.dry_run:
        print(f"{len(specs)} run specs (id = the run's identity hash; status from the run folders):")
        for s in specs:
            print(f"  {s.describe()}  [{sweep.spec_status(s)}]")
        if args.executor == "slurm":
            print("\nthe sbatch script submitit would submit (one array job):\n")
            print(sweep.slurm_script(specs, slurm, args.max_parallel))
        return 0
    results = sweep.execute(specs, args.executor, args.max_parallel, slurm, wait=not args.no_wait)
    print(f"sslbench: sweep: {len(results)} runs: {sweep.summary(results)}", file=sys.stderr)
    if args.no_wait:
        return 0
    command = "sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for name in dict.fromkeys(s.config["tracking"]["experiment"] for s in specs):
        export_leaderboard(name, overrides.get("tracking.uri"), args.out, command=command)
    failed = [r for r in results if r["status"].startswith("failed")]
    for r in failed:
        print(f"sslbench: {r['id']}: {r['status']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_evolve(args) -> int:
    from harness.core.schema import BudgetConfig
    from harness.report.export import export_leaderboard
    from harness.run.evolve import SearchSettings, evolve

    overrides = parse_overrides(args.overrides)
    settings = SearchSettings(BudgetConfig.parse(args.trial_budget), args.fitness, args.fitness_clips, args.clusters,
                              args.zipf_s, args.popsize, args.sigma0, not args.no_screen, args.trials, args.timeout)
    seeds = _seed_list(args.seeds) if args.seeds else None
    results = evolve(overrides, settings, suite=args.suite, seeds=seeds, resume=args.resume, search_only=args.search_only)
    experiments = []
    for r in results:
        if "search" in r:
            b = r["search"]
            print(f"search {b['folder']}: best {b['fitness_kind']} fitness {b['fitness']:.4f} (trial {b['trial']} of "
                  f"{b['trials']}; the config's own weights: {_num(b['baseline_fitness'])})")
            print("  best weights: " + " ".join(f"method_cfg.{k}={v:.4f}" for k, v in b["weights"].items()))
        elif r.get("metrics"):
            cfg = r.get("config", {})
            experiments.append(cfg.get("tracking", {}).get("experiment"))
            print(f"{cfg.get('method')} seed {cfg.get('seed')}: run {r.get('run_id')}")
            _print_metrics(r["metrics"])
    if not args.search_only:
        command = "sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        for name in dict.fromkeys(e for e in experiments if e):
            export_leaderboard(name, overrides.get("tracking.uri"), args.out, command=command)
    return 0


def cmd_rl(args) -> int:
    from harness.rl.config import load_rl_yaml, resolve_rl
    from harness.run.rl import train_agent

    cfg = resolve_rl(parse_overrides(args.overrides), base=load_rl_yaml(args.config) if args.config else None)
    state = train_agent(cfg, resume=args.resume)
    if state.get("skipped"):
        return 0
    m = state.get("metrics", {})
    arm = f"curl_weight={cfg.curl_weight:g}" if cfg.curl_weight > 0 else "no CURL (curl_weight=0)"
    print(f"{cfg.game}, seed {cfg.seed}, {arm}, {int(m.get('rl/env_steps', 0))} env steps, "
          f"{int(m.get('rl/episodes', 0))} episodes, {m.get('rl/seconds', 0):.0f} s")
    print(f"  mean return, last {cfg.last_episodes} training episodes: {m.get('rl/return_last', float('nan')):.2f}")
    print(f"  evaluation return, {cfg.eval_episodes} episodes at epsilon {cfg.eval_epsilon:g}: "
          f"{m.get('rl/eval_return', float('nan')):.2f} ({', '.join(f'{r:g}' for r in state.get('eval_returns', []))})")
    print(f"checkpoint: {state.get('checkpoint')}")
    print(f"mlflow run: {state.get('run_id')}")
    return 0


def cmd_rl_table(args) -> int:
    from harness.report.rl import rl_table, write_rl_table

    table = rl_table(args.experiment, args.tracking_uri)
    print(table.to_string(index=False))
    files = write_rl_table(table, Path(args.out), args.experiment,
                           command="sslbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print("written: " + ", ".join(str(f) for f in files))
    return 0


def _rl_keys_help() -> str:
    from harness.rl.config import RLConfig

    keys = flatten(RLConfig())
    return "config keys (defaults: CURL's Atari agent, the Atari 100k budget):\n" + \
        "\n".join(f"  {k} = {v!r}" for k, v in keys.items() if k != "method_cfg") + \
        "\n  method_cfg.<key> = CURL's own settings (see 'sslbench methods curl')" + \
        "\n\n--config NAME: a YAML of these keys, or a named one of harness/configs/rl/ (breakout_cpu: the CPU budget)."


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def cmd_server(args) -> int:
    from harness.tracking.ui import serve

    serve(args.backend_store_uri or args.tracking_uri, args.host, args.port, artifacts=args.artifacts_destination,
          workers=args.workers, start_timeout=args.start_timeout, duration=args.duration, label="tracking server")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, ``sslbench: error: ...``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"sslbench: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sslbench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def add(name, help_, fn, overrides=True, epilog=None):
        # help is %-formatted by argparse (a '%' in it must be doubled), the description is printed as it is
        sp = sub.add_parser(name, help=help_.replace("%", "%%"), description=help_, epilog=epilog,
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
    sp.add_argument("--protocols", help="comma-separated protocols (default: the config's eval.protocols):\n" +
                    "\n".join(f"  {p.name}: {p.summary}" for p in PROTOCOLS.values()).replace("%", "%%"))

    sp = add("run", "run a suite (pretrain + evaluate several methods, plus random-init rows) and print the leaderboard",
             cmd_run, overrides=False, epilog=_suites_help())
    sp.add_argument("suite", nargs="?", default="default",
                    help="a suite YAML path or a built-in suite name (default: 'default', Fashion-MNIST)")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run of the suite")
    sp.add_argument("--resume", action="store_true", help="skip finished runs and continue interrupted ones")
    sp.add_argument("--seeds", help="comma-separated seeds, replacing the suite's")
    sp.add_argument("--methods", help="comma-separated methods (or 'all'), replacing the suite's list; the "
                                      "suite's per-method settings still apply")
    sp.add_argument("--tables", "--out", dest="out", default="results", metavar="DIR",
                    help="where the leaderboard tables are written (default: results/); the run folders "
                         "(checkpoints, logs) go to out_dir=DIR (default: runs/)")

    sp = add("leaderboard", "print and write leaderboards (Markdown, CSV, HTML, PNG) from the MLflow store", cmd_leaderboard,
             overrides=False)
    sp.add_argument("--experiment", help="the suite/experiment name (default: all)")
    sp.add_argument("--dataset")
    sp.add_argument("--backbone")
    sp.add_argument("--budget", help="e.g. seconds=240.0")
    sp.add_argument("--sort", default=HEADLINE, help=f"metric to sort rows by (default {HEADLINE})")
    sp.add_argument("--out", default="results", help="output folder (default: results/)")
    sp.add_argument("--tracking-uri", metavar="URI", help=STORE_HELP)
    sp.add_argument("--replot", metavar="CSV", help="only redraw the PNGs of a written leaderboard.csv, beside it "
                                                     "(no store needed)")

    sp = add("compare", "compare two run sets (runs CSVs, commit:SHA or experiment:NAME); exit 1 on a regression",
             cmd_compare, overrides=False)
    sp.add_argument("a", help="baseline: a runs.csv, commit:SHA or experiment:NAME")
    sp.add_argument("b", help="candidate: a runs.csv, commit:SHA or experiment:NAME")
    sp.add_argument("--metric", action="append", help=f"metric(s) to compare (default: {' and '.join(HEADLINE_METRICS)})")
    sp.add_argument("--tolerance", type=float, default=1.0, help="smallest drop (in metric units) called a regression")
    sp.add_argument("--tracking-uri", metavar="URI", help=STORE_HELP)

    sp = add("check", "CI performance gate: run the CI suite and compare with the committed baseline (exit 1 on failure)",
             cmd_check, overrides=False)
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="overrides for every run (e.g. data.data_dir=PATH)")
    sp.add_argument("--suite", default="ci", help="suite name or YAML (default: ci)")
    sp.add_argument("--methods", help="comma-separated subset of the suite's methods")
    sp.add_argument("--seeds", help="comma-separated seeds (default: the suite's)")
    sp.add_argument("--metric", default=HEADLINE, help=f"the gated metric (default {HEADLINE})")
    sp.add_argument("--baseline", metavar="CSV", help="the baseline (default: results/ci/baseline.csv of this folder, "
                                                      "else of the sslbench checkout)")
    sp.add_argument("--update-baseline", action="store_true", help="write the baseline from this run's seeds")
    sp.add_argument("--k", type=float, default=3.0, help="band = max(k x seed std, --min-band)")
    sp.add_argument("--min-band", type=float, default=1.0)

    sp = add("methods", "list every registered method: family, what it needs, paper and venue (NAME: one method's "
                        "card)", cmd_methods, overrides=False)
    sp.add_argument("name", nargs="?", metavar="NAME", help="one method's full card: paper, venue, needs, paper "
                                                             "defaults, what each preset overrides")
    sp.add_argument("--verbose", "-v", action="store_true",
                    help="also list each method's paper defaults and which preset overrides which of them")

    sp = add("export", "write a checkpoint's encoder for downstream use: a plain state dict (timm-loadable where timm "
                       "builds the backbone) + a JSON of model name, input size and normalisation", cmd_export,
             overrides=False)
    sp.add_argument("checkpoint", help="a checkpoint.pt written by 'sslbench pretrain'")
    sp.add_argument("--out", metavar="DIR", help="where to write encoder.pth + encoder.json (default: export/ beside "
                                                 "the checkpoint)")

    sp = add("sweep", "expand a suite into run specs (methods x grid x seeds, content-hashed ids) and run them on an "
                      "executor; resubmitting skips finished runs and resumes interrupted ones", cmd_sweep,
             overrides=False, epilog=_suites_help())
    sp.add_argument("suite", nargs="?", default="default", help="a suite YAML path or a built-in suite name")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help="overrides applied to every run")
    sp.add_argument("--dry-run", action="store_true", help="print the specs (and, for slurm, the sbatch script); run nothing")
    sp.add_argument("--executor", default="inprocess", choices=["inprocess", "local", "slurm"],
                    help="inprocess (default: one after another here), local (submitit: a process per run), "
                         "slurm (submitit: one array job)")
    sp.add_argument("--max-parallel", type=int, default=1, help="runs at once (local: processes; slurm: the array's %%N)")
    sp.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="sweep a config key over values (repeatable; "
                                                                         "every combination), e.g. budget.value=60,240")
    sp.add_argument("--seeds", help="comma-separated seeds, replacing the suite's")
    sp.add_argument("--methods", help="comma-separated methods (or 'all'), replacing the suite's list")
    sp.add_argument("--specs-out", metavar="JSONL", help="also write the specs, one JSON per line")
    sp.add_argument("--tables", "--out", dest="out", default="results", metavar="DIR",
                    help="where the leaderboard tables are written when the sweep has finished (default: results/)")
    sp.add_argument("--no-wait", action="store_true", help="slurm: submit and return (rerun the same command later: "
                                                            "finished runs are skipped)")
    g = sp.add_argument_group("slurm (with --executor slurm)")
    g.add_argument("--partition")
    g.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per run (DDP across them; default 1)")
    g.add_argument("--nodes", type=int, default=1, help="nodes per run (default 1)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem-gb", type=int)
    g.add_argument("--time-min", type=int, default=240, help="time limit per run in minutes (requeued from its "
                                                             "checkpoint when it runs out; default 240)")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--setup", action="append", metavar="LINE", help="a shell line before each run (repeatable), "
                                                                   "e.g. 'source ~/sslbench/.venv/bin/activate'")

    sp = add("evolve", "search a method's loss weights with CMA-ES (Optuna), each candidate a short training scored "
                       "without labels, then train the final runs with the best weights and evaluate them "
                       "(Evolving Losses; method evolving_loss)", cmd_evolve, overrides=False,
             epilog="The run: a suite (its runs, seeds and random-init rows) or, without one, the key=value overrides as "
                    "for 'sslbench pretrain'.\nOne search per configuration (seeds aside), at its first seed; every seed's "
                    "final run uses the best weights.\nFiles: out_dir/<experiment>/evolve-<run>-<id>/ (optuna.journal, "
                    "best.json, a folder per trial); MLflow: one run for the search, a child run per candidate.\n"
                    "--resume: finished trials are kept, a trial killed mid-training is retried from its checkpoint, "
                    "finished final runs are skipped.\n\n" + _suites_help())
    sp.add_argument("suite", nargs="?", default=None, help="a suite YAML path or a built-in suite name (e.g. clips_cpu); "
                                                           "none: the run the overrides describe")
    sp.add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)
    sp.add_argument("--trials", type=int, default=16, help="candidates in all, the first generation included, finished "
                                                          "ones counted across resumes (default 16)")
    sp.add_argument("--trial-budget", default="steps=100", metavar="KIND=VALUE",
                    help="each candidate's training budget, e.g. steps=100 or seconds=30 (default steps=100)")
    sp.add_argument("--timeout", type=float, metavar="SECONDS", help="also stop starting candidates once the finished "
                                                                     "ones took this many seconds in all")
    sp.add_argument("--fitness", default="zipf", choices=["zipf", "knn_holdout"],
                    help="zipf: the paper's label-free Zipf matching of k-means clusters (default); knn_holdout: kNN "
                         "accuracy on a TRAIN hold-out (uses TRAIN labels; the final runs are marked label-using)")
    sp.add_argument("--fitness-clips", type=int, default=1000, help="TRAIN clips a candidate is scored on (default 1000)")
    sp.add_argument("--clusters", type=int, default=10, help="k-means clusters of the zipf fitness (default 10)")
    sp.add_argument("--zipf-s", type=float, default=1.0, help="the exponent s of Zipf's law q(i) ~ 1/i^s (default 1)")
    sp.add_argument("--popsize", type=int, help="CMA-ES's population (default: its own, 4 + 3 ln(weights))")
    sp.add_argument("--sigma0", type=float, default=0.3, help="CMA-ES's initial step size in units of a weight's "
                                                             "[0, 1] range (default 0.3)")
    sp.add_argument("--no-screen", action="store_true", help="no screening generation (each weight alone); CMA-ES "
                                                             "starts at the config's weights")
    sp.add_argument("--seeds", help="comma-separated seeds of the final runs (the first is the search's), replacing "
                                    "the suite's or the config's seed")
    sp.add_argument("--resume", action="store_true", help="continue the search and the final runs")
    sp.add_argument("--search-only", action="store_true", help="stop after the search (best.json); train nothing else")
    sp.add_argument("--tables", "--out", dest="out", default="results", metavar="DIR",
                    help="where the leaderboard tables are written (default: results/)")

    sp = add("server", "start a tracking server for a team (MLflow): a database (SQLite by default, or PostgreSQL/MySQL "
                       "through MLflow) and an artifact root; clients set MLFLOW_TRACKING_URI or tracking.uri=http://HOST:PORT",
             cmd_server, overrides=False)
    sp.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface; default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--backend-store-uri", metavar="URI", help="the database: sqlite:///PATH.db (default: "
                                                               "results/mlflow.db) or postgresql://USER:PASS@HOST/DB")
    sp.add_argument("--tracking-uri", metavar="URI", help=argparse.SUPPRESS)
    sp.add_argument("--artifacts-destination", metavar="DIR_OR_URI", help="where the server stores artifacts it receives "
                                                                          "(default: mlartifacts/ beside a SQLite database)")
    sp.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    sp.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until Ctrl-C)")
    sp.add_argument("--start-timeout", type=float, default=60)

    sp = add("rl", "train an Atari agent (a data-efficient DQN) with CURL as its auxiliary loss, budgeted in environment "
                   "steps; log episode returns to MLflow; report the mean return of the last episodes and an "
                   "evaluation return", cmd_rl, epilog=_rl_keys_help())
    sp.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. game=breakout seed=1 env_steps=20000 curl_weight=0 agent.lr=1e-4")
    sp.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint (an episode end)")

    sp = add("rl-table", "the agent runs' returns (sslbench rl): one row per configuration, mean ± 95% CI over seeds "
                         "of the last episodes' and the evaluation return; printed and written under results/",
             cmd_rl_table, overrides=False)
    sp.add_argument("--experiment", default="rl", help="the experiment of the agent runs (default: rl)")
    sp.add_argument("--out", default="results", help="output folder (default: results/)")
    sp.add_argument("--tracking-uri", metavar="URI", help=STORE_HELP)

    sp = add("ui", "start the MLflow UI on 127.0.0.1 against the same store (Ctrl-C stops it)", cmd_ui, overrides=False)
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--tracking-uri", metavar="URI", help=STORE_HELP)
    sp.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: run until Ctrl-C)")
    sp.add_argument("--start-timeout", type=float, default=60)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    argv = _one_flag_style(list(sys.argv[1:] if argv is None else argv))
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "fn", None) in (cmd_run, cmd_sweep, cmd_evolve) and args.suite and "=" in args.suite:
        # argparse fills the optional suite positional with the first free token: an override is never a suite
        args.overrides = [args.suite, *(args.overrides or [])]
        args.suite = None if args.fn is cmd_evolve else "default"
    # key=value overrides may come after options (argparse stops collecting positionals there)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    if args.fn in (cmd_run, cmd_pretrain, cmd_eval, cmd_check, cmd_sweep, cmd_evolve, cmd_rl):
        from harness.tracking.provenance import git_info

        git_info()  # pin the commit this process's code came from, before any long work
    interrupts.install()   # SIGTERM (a scheduler, `kill`) and Ctrl-C: runs end KILLED, the last checkpoint is kept
    try:
        return args.fn(args)
    except SSLBenchError as e:
        print(f"sslbench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = {cmd_pretrain: "rerun with --resume to continue from the last checkpoint",
               cmd_run: "rerun with --resume to skip finished runs and continue the interrupted one",
               cmd_check: "rerun 'sslbench check' (the gate always trains its suite from the start)",
               cmd_evolve: "rerun with --resume: finished trials and runs are kept, the interrupted one continues",
               cmd_rl: "rerun with --resume to continue from the last checkpoint (an episode end)",
               cmd_sweep: "rerun the same 'sslbench sweep' command: finished runs are skipped, interrupted ones "
                          "resume from their checkpoints"}.get(
                   args.fn, "nothing was left half-written")
        lead = "\n" if sys.stderr.isatty() else ""   # a progress bar may be mid-line on a terminal
        print(f"{lead}sslbench: interrupted; {how}", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in FILESYSTEM_ERRORS:
            raise
        where = f" ({e.filename})" if e.filename else ""
        print(f"sslbench: error: {e.strerror}{where}; free space or choose a writable folder "
              "(out_dir=..., --out, tracking.uri=...)", file=sys.stderr)
        return 2
    except Exception as e:
        if not type(e).__module__.startswith(("mlflow", "sqlalchemy")):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
        print(f"sslbench: error: the tracking store failed ({type(e).__name__}: {first}); check tracking.uri, "
              "the server or the disk", file=sys.stderr)
        return 2


def _one_flag_style(argv: list[str]) -> list[str]:
    """One spelling of a setting on every command: ``key=value`` (``tracking.uri=URI``). The older
    ``--tracking-uri URI`` is accepted everywhere as an alias; on the commands that take no other
    config keys (leaderboard, compare, ui) ``tracking.uri=URI`` is read as that option."""
    if not argv:
        return argv
    takes_keys = argv[0] in ("pretrain", "eval", "run", "check", "sweep", "evolve", "rl")
    out, i = [argv[0]], 1
    while i < len(argv):
        a, value = argv[i], None
        if a == "--tracking-uri" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif a.startswith(("--tracking-uri=", "tracking.uri=")):
            value, i = a.split("=", 1)[1], i + 1
        else:
            out.append(a)
            i += 1
            continue
        out += [f"tracking.uri={value}"] if takes_keys else ["--tracking-uri", value]
    return out


FILESYSTEM_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
                     errno.EEXIST, errno.EFBIG}


if __name__ == "__main__":
    sys.exit(main())
