import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")  # tests pass their own store
if not os.environ["MLFLOW_TRACKING_URI"]:
    del os.environ["MLFLOW_TRACKING_URI"]

import tempfile  # noqa: E402

# the kernel trials' cache (harness.models.autotune): one per test session, never the user's ~/.cache
os.environ.setdefault("SSLBENCH_CACHE_DIR", tempfile.mkdtemp(prefix="sslbench-test-cache-"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

from harness.run.plugins import load_plugins  # noqa: E402

load_plugins()   # tests build methods by name (the CLI and harness.run do this themselves)

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
CIFAR_NPZ = os.path.abspath(os.path.join(SHARED, "cifar10.npz"))


@pytest.fixture
def synthetic():
    from harness.data.sources import synthetic as make

    return make(n_train=256, n_test=128, image_size=16, channels=3, num_classes=4)


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
