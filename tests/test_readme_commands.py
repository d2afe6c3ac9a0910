"""The README's "Reproduce the committed tables" and "Benchmark your own data" commands stay true:
every line parses with the real CLI parser, names a real suite and real methods, and every run it
would start resolves to a valid config (nothing is trained here)."""

import re
import shlex
from pathlib import Path

import pytest

from harness.cli import _one_flag_style, build_parser, cmd_check, cmd_evolve, cmd_run
from harness.core.config import parse_overrides
from harness.run.suites import load_suite, suite_configs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _commands(heading: str) -> list[list[str]]:
    section = README.split(heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    lines = [ln.split("#", 1)[0].strip() for b in blocks for ln in b.splitlines()]
    return [shlex.split(ln)[1:] for ln in lines if ln.startswith("sslbench ")]


def _resolve(argv: list[str]) -> int:
    """Parse as `sslbench` does and build every run config the command would start; returns the count."""
    args, extra = build_parser().parse_known_args(_one_flag_style(argv))
    args.overrides = list(getattr(args, "overrides", None) or []) + extra
    if args.fn is cmd_run and args.suite and "=" in args.suite:
        args.overrides, args.suite = [args.suite, *args.overrides], "default"
    if args.fn not in (cmd_run, cmd_check, cmd_evolve) or (args.fn is cmd_evolve and (not args.suite or "=" in args.suite)):
        return 0
    spec = dict(load_suite(args.suite).__dict__)
    if args.seeds:
        spec["seeds"] = [int(s) for s in args.seeds.split(",")]
    if getattr(args, "methods", None):
        spec["methods"] = args.methods.split(",")
    return len(suite_configs(load_suite(spec), parse_overrides(args.overrides)))


@pytest.mark.parametrize("heading", ["## Reproduce the committed tables", "### Benchmark your own data"])
def test_readme_commands_parse_and_resolve(heading):
    cmds = _commands(heading)
    assert len(cmds) >= 4
    assert all(_resolve(c) >= 0 for c in cmds)
    assert sum(_resolve(c) for c in cmds) > 0


def test_every_committed_table_has_its_command():
    cmds = [" ".join(c) for c in _commands("## Reproduce the committed tables")]
    suites = {c.split()[1] for c in cmds if c.split()[0] in ("run", "evolve")}
    suites |= {"rl_breakout" for c in cmds if c.startswith("rl-table")}   # the agent returns (sslbench rl)
    for folder in (ROOT / "results" / "reference").iterdir():
        name = folder.name.replace("fashion_mnist_pretext", "fashion_mnist_all").replace("fashion_mnist_mim", "fashion_mnist_all")
        name = name.replace("cifar10_cpu_pretext", "cifar10_cpu").replace("cifar10_multimodal", "cifar10_cpu")
        name = name.replace("cifar10_background", "cifar10_cpu").replace("fashion_mnist_multimodal", "fashion_mnist_all")
        name = name.replace("cifar10_10min_rerun", "cifar10_10min")     # the same suite, measured again
        name = name.replace("mim_cifar10_960s", "mim_cifar10_cpu")      # the same suite at budget.value=960 (and iBOT at 1920)
        name = name.replace("mim_cifar10_240s", "mim_cifar10_cpu")      # the same suite, three seeds at the suite budget
        assert name in suites, f"results/reference/{folder.name} has no command in the README"
