"""The performance paths that a CPU can test: lightly's kNN as its own column, the cifar10_gpu suite
(lightly's benchmark settings), benchmarks/gpu_epoch.py on a CPU, and train.compile."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from evals.config import EvalConfig
from evals.evaluate import evaluate
from harness.data.dataset import ImageDataset
from harness.run.suites import load_suite, suite_configs

ROOT = Path(__file__).resolve().parents[1]


def _reference_knn(ftr, ytr, fte, yte, k, t, classes):
    ftr, fte = torch.nn.functional.normalize(ftr, dim=1), torch.nn.functional.normalize(fte, dim=1)
    s = fte @ ftr.T
    top, idx = s.topk(k, dim=1)
    votes = torch.zeros(len(fte), classes).scatter_add_(1, ytr[idx], (top / t).exp())
    return 100.0 * (votes.argmax(1) == yte).float().mean().item()


class _Identity(torch.nn.Module):
    num_features = 8

    def forward(self, x):
        return x.flatten(1)


def test_lightly_knn_is_k200_t01_on_the_same_features_in_its_own_column():
    g = torch.Generator().manual_seed(0)
    ytr, yte = torch.randint(0, 3, (400,), generator=g), torch.randint(0, 3, (90,), generator=g)
    centres = torch.randn(3, 8, generator=g)
    xtr = (centres[ytr] + 1.5 * torch.randn(400, 8, generator=g)).view(400, 2, 2, 2)
    xte = (centres[yte] + 1.5 * torch.randn(90, 8, generator=g)).view(90, 2, 2, 2)
    to_u8 = lambda x: ((x - xtr.min()) / (xtr.max() - xtr.min()) * 255).clamp(0, 255).round().to(torch.uint8)  # noqa: E731
    ds = ImageDataset("toy", to_u8(xtr), ytr, to_u8(xte), yte, 3, mean=(0.0, 0.0), std=(1.0, 1.0))
    cfg = EvalConfig(protocols=["knn", "knn_lightly"])
    m = evaluate(_Identity(), ds, cfg, device="cpu", precision="fp32", progress=False)
    f = lambda x: (x.float() / 255.0).flatten(1)  # noqa: E731 - the evaluator's input: [0, 1] pixels, mean 0 / std 1
    want = _reference_knn(f(ds.x_train), ytr, f(ds.x_test), yte, 200, 0.1, 3)
    assert m["knn_lightly/top1"] == pytest.approx(want, abs=1e-4)
    assert m["eval/knn_lightly_k"] == 200 and m["eval/knn_lightly_temperature"] == 0.1
    assert m["knn/top1@200"] == pytest.approx(_reference_knn(f(ds.x_train), ytr, f(ds.x_test), yte, 200, 0.07, 3), abs=1e-4)


def test_the_gpu_suite_has_lightlys_benchmark_settings():
    suite = load_suite("cifar10_gpu")
    cfgs = {c.method: c for c in suite_configs(suite, overrides={"data.data_dir": "x"}) if c.method != "random_init"}
    assert set(cfgs) == {"simclr", "byol", "moco_v2"}
    for c in cfgs.values():
        assert (c.backbone, c.optim.batch_size, c.budget.kind, c.budget.value) == ("resnet18_cifar", 512, "epochs", 200)
        assert c.optim.lr == pytest.approx(0.06 * 512 / 128) and c.optim.weight_decay == 5e-4 and c.optim.warmup == 0
        assert (c.train.device, c.train.precision, c.train.channels_last) == ("cuda", "bf16", "on")
        assert "knn_lightly" in c.eval.protocols and "knn" in c.eval.protocols
    assert cfgs["simclr"].method_cfg["temperature"] == 0.5 and cfgs["moco_v2"].method_cfg["queue_size"] == 8192


def test_gpu_epoch_benchmark_runs_on_a_cpu():
    out = subprocess.run([sys.executable, "benchmarks/gpu_epoch.py", "--device", "cpu", "--data", "synthetic", "--methods",
                          "simclr", "--batch", "8", "--steps", "1", "--warmup", "1", "--backbone", "cnn4"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPU: " in out.stdout and "s/epoch" in out.stdout and "evaluation: features of 768 images" in out.stdout


@pytest.mark.slow
def test_compiled_training_step_matches_eager(synthetic, tmp_path):
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    losses = {}
    for compile_ in (False, True):
        cfg = resolve({"method": "simclr", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
                       "budget.kind": "steps", "budget.value": 3, "train.precision": "fp32", "train.progress": False,
                       "train.compile": compile_, "method_cfg.proj_hidden": 32, "method_cfg.proj_dim": 16})
        got = []
        Trainer(cfg, synthetic, tmp_path / str(compile_), log_fn=lambda m, s, got=got: got.append(m["train/loss"])).fit()
        losses[compile_] = got
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_progressive_resizing_scales_every_view_by_stage_and_counts_in_the_identity(synthetic, tmp_path):
    from harness.core.errors import ConfigError
    from harness.core.identity import identity
    from harness.data.views import ViewRecipe
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    r = ViewRecipe.multi_crop(32, 16, 2).with_resolution([16, 24, 32], 32)
    assert [[s.size for s in r.at(p).specs] for p in (0.0, 0.4, 0.99, 1.0)] == \
        [[16, 16, 8, 8], [24, 24, 12, 12], [32, 32, 16, 16], [32, 32, 16, 16]]
    assert r.sizes() == [8, 12, 16, 24, 32] and r.at(1.0) is r
    base = {"method": "invaspread", "data.name": "synthetic", "backbone": "cnn4", "optim.batch_size": 32,
            "budget.kind": "steps", "budget.value": 4, "train.progress": False, "train.precision": "fp32"}
    seen = []
    t = Trainer(resolve({**base, "views.resolution": [8, 16]}), synthetic, tmp_path / "a")
    orig = t.method.training_step
    t.method.training_step = lambda batch, step: seen.append(batch.views.images[0].shape[-1]) or orig(batch, step)
    t.fit()
    assert seen == [8, 8, 16, 16]
    for bad, why in (({"method": "rotnet"}, "needs a method whose views"), ({"backbone": "vit_tiny_p4"}, "needs a method"),
                     ({"views.resolution": [8, 32]}, "goes above")):
        with pytest.raises(ConfigError, match=why):
            Trainer(resolve({**base, "views.resolution": [8, 16], **bad}), synthetic, tmp_path / "b")
    plain = {"method": "invaspread", "seed": "0", "views.background": "none", "train.compile": "False"}
    assert identity(plain) == identity({"method": "invaspread", "seed": "0"})       # options off: as before them
    assert identity({**plain, "views.resolution": "[16, 32]"}) != identity(plain)
    assert identity({**plain, "train.compile": "True"}) != identity(plain)
