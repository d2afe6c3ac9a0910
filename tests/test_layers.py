"""The layer rules of docs/ARCHITECTURE.md hold: no import cycle between modules, imports run down
the layer stack of .importlinter, dynamic imports only in the plugin loader, and only the
plugin loader imports the built-in methods. Each check is also shown to fail on a planted breach."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import import_graph as ig

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_LOADER = "harness.run.plugins"


def problems(root: Path) -> list[str]:
    g = ig.build(root)
    out = [f"import cycle: {' -> '.join(ig.one_cycle(g, c))}" for c in ig.cycles(g)]
    out += ig.layer_violations(g, ig.layers(ROOT / ".importlinter"))
    out += [f"dynamic import outside the plugin loader: {m}: {', '.join(calls)}"
            for m, calls in sorted(g.dynamic.items()) if m != PLUGIN_LOADER]
    out += [f"{m} imports {t}: only {PLUGIN_LOADER} imports the built-in methods"
            for m, ts in sorted(g.edges.items()) if m.startswith("harness") and m != PLUGIN_LOADER
            for t in sorted(ts) if t == "methods" or t.startswith("methods.")]
    out += [f"{m} imports mlflow: only harness.tracking does" for m, ext in sorted(g.external.items())
            if "mlflow" in ext and not m.startswith("harness.tracking")]
    return out


def test_the_project_keeps_its_layer_rules():
    assert problems(ROOT) == []


def test_the_graph_sees_the_real_structure():
    g = ig.build(ROOT)
    assert "harness.core.errors" in g.edges["harness.core.config"]
    assert "harness.run.plugins" in g.edges["harness.run.pretrain"]
    assert "methods" in g.edges["harness.run.plugins"]
    assert "mlflow" in g.external["harness.tracking.store"] and "torch" in g.external["harness.core.device"]
    assert len(g.modules) > 60


@pytest.fixture
def tree(tmp_path):
    """A copy of the three packages to plant breaches in."""
    for pkg in ig.PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _plant(tree: Path, rel: str, line: str) -> None:
    p = tree / rel
    p.write_text(p.read_text() + "\n" + line + "\n")


@pytest.mark.parametrize("rel, line, expected", [
    # a back-import that closes a circle: core.errors <- ... <- run.pretrain
    ("harness/core/errors.py", "def _late():\n    from harness.run.pretrain import pretrain  # noqa", "import cycle"),
    # an upward import without a cycle: the evaluator reaching into the trainer
    ("evals/knn.py", "from harness.train.trainer import Trainer  # noqa", "evals.knn imports harness.train.trainer"),
    # siblings that must stay independent
    ("methods/simclr.py", "import evals.knn  # noqa", "methods.simclr imports evals.knn"),
    ("harness/report/compare.py", "from harness.run.suites import run_suite  # noqa", "harness.report may not import harness.run"),
    # a dynamic import that dodges the rules
    ("harness/train/build.py", "import importlib\nimportlib.import_module('methods')", "dynamic import outside the plugin loader"),
    ("harness/run/suites.py", "import methods.simclr  # noqa", "only harness.run.plugins imports the built-in methods"),
    ("harness/report/render.py", "def _f():\n    import mlflow  # noqa", "harness.report.render imports mlflow"),
])
def test_a_planted_breach_is_caught(tree, rel, line, expected):
    _plant(tree, rel, line)
    found = problems(tree)
    assert any(expected in p for p in found), found


def test_lint_imports_contracts_are_kept():
    """The import-linter contracts themselves (indirect imports too, and 'only tracking imports mlflow')."""
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    r = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "broken" in r.stdout and "0 broken" in r.stdout


def test_the_architecture_document_covers_the_code():
    """docs/ARCHITECTURE.md names every sub-package of harness/ and every protocol of the table, and
    nothing in the repository cites a document that is not in it."""
    from evals.protocols import PROTOCOLS

    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for pkg in sorted(p.name for p in (ROOT / "harness").iterdir() if (p / "__init__.py").exists()):
        assert f"harness.{pkg}" in doc, pkg
    for name in PROTOCOLS:
        assert f"| `{name}` |" in doc, name
    cited = {"DESIGN.md", "docs/ARCHITECTURE.md", "results/README.md"}
    for path in [ROOT / "README.md", *ROOT.glob("harness/**/*.py"), *ROOT.glob("evals/*.py"), *ROOT.glob("methods/*.py")]:
        text = path.read_text()
        for name in cited:
            if name in text:
                assert (ROOT / name).exists(), f"{path.relative_to(ROOT)} cites {name}, which is not in the repository"
