"""The translation protocol (issue 18): SSIM and Sobel edges on hand cases, the domain classifier's verdict
on a translation that works (a shift that moves domain A's blob onto domain B's place) and on the identity,
the sample grid, nothing for methods without a generator, and the grid logged with a CUT run."""

import math

import pytest
import torch
import torch.nn as nn
from PIL import Image

from evals.config import EvalConfig
from evals.evaluate import evaluate
from evals.translation import GRID_NAME, sobel_edges, ssim, translation_eval
from harness.data.domains import domains_of, select_domains
from harness.data.sources import synthetic
from harness.models.backbones import build_backbone


def test_ssim_of_identical_edge_maps_is_one_and_lower_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 24, 24, generator=g)
    e = sobel_edges(x)
    assert e.shape == (3, 1, 24, 24) and float(e.min()) >= 0 and float(e.max()) <= 1
    assert torch.equal(ssim(e, e), torch.ones(3))
    other = sobel_edges(torch.rand(3, 3, 24, 24, generator=g))
    assert bool((ssim(e, other) < 0.5).all())
    # Sobel: a constant image has no edges; a vertical step of height 1 has magnitude 4 / (4 sqrt 2) at the step
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    edges = sobel_edges(step)
    assert float(sobel_edges(torch.full((1, 3, 8, 8), 0.3)).abs().max()) == 0.0
    assert edges[0, 0, 3, 3].item() == pytest.approx(4 / (4 * math.sqrt(2))) and edges[0, 0, 3, 0].item() == 0.0
    # SSIM by hand on a 3x3 window of a 3x3 map (one position): with window 3 and sigma -> large, a mean
    a, b = torch.arange(9.0).view(1, 1, 3, 3) / 8, torch.arange(9.0).flip(0).view(1, 1, 3, 3) / 8
    mu_a = mu_b = 0.5
    var = sum((v / 8 - 0.5) ** 2 for v in range(9)) / 9
    cov = sum((v / 8 - 0.5) * ((8 - v) / 8 - 0.5) for v in range(9)) / 9
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (2 * var + c2))
    assert ssim(a, b, window=3, sigma=1e6).item() == pytest.approx(want, abs=1e-5)


class Shift(nn.Module):
    """Rolls images right by ``px`` (normalised in, normalised out): on the synthetic blobs, class 0's blob lands
    where class 1's is."""

    def __init__(self, px: int):
        super().__init__()
        self.px = px

    def forward(self, x):
        return torch.roll(x, self.px, dims=3)


def test_the_protocol_on_a_tiny_case(tmp_path):
    ds = select_domains(synthetic(n_train=256, n_test=64, image_size=16), ["0", "1"])
    d = domains_of(ds)
    works = translation_eval(Shift(4), ds, d, steps=60, grid=3, seed=0, artifact_dir=tmp_path)
    assert works["translation/classifier_acc"] > 90
    assert works["translation/input_to_target"] < 10 and works["translation/to_target"] > 90, works
    assert works["translation/edge_ssim"] < 0.5          # a shift moves every edge (noise included)
    same = translation_eval(nn.Identity(), ds, d, steps=60, grid=3, seed=0)
    assert same["translation/to_target"] == same["translation/input_to_target"] == works["translation/input_to_target"]
    assert same["translation/edge_ssim"] == pytest.approx(1.0)
    assert same["translation/edge_ssim_random"] == works["translation/edge_ssim_random"] < 0.5
    with Image.open(tmp_path / GRID_NAME) as im:          # 2 rows x 3 tiles of 16 px enlarged x4, 2 px gaps
        assert im.size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2) and im.mode == "RGB"


def test_nothing_for_an_encoder_without_a_generator():
    ds = select_domains(synthetic(n_train=64, n_test=32, image_size=16), ["0", "1"])
    enc = build_backbone("cnn4", 3, 16)
    out = evaluate(enc, ds, EvalConfig(protocols=["knn", "translation"], knn_k=[5]), progress=False)
    assert "knn/top1@5" in out and not any(k.startswith("translation/") for k in out)
    # its settings are logged all the same: a random-init floor shares its table with the generator's rows
    assert out["eval/translation_steps"] == 600 and "eval/translation_classifier" in out
    out = evaluate(enc, ds, EvalConfig(protocols=["translation"], translation_steps=5), progress=False,
                   translator=lambda: Shift(4))
    assert out["translation/to_target"] >= 0 and out["eval/translation_steps"] == 5


def test_a_cut_run_logs_the_translation_metrics_and_grid(tmp_path):
    from test_methods_cut import run_cfg

    from harness.run.pretrain import pretrain
    from harness.tracking.store import client

    cfg = run_cfg(steps=2, **{"eval.protocols": ["knn", "translation"], "eval.knn_k": [5], "eval.translation_steps": 5,
                              "eval.translation_grid": 2, "out_dir": str(tmp_path / "runs"),
                              "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    ds = select_domains(synthetic(n_train=64, n_test=16, image_size=16), ["0", "1"])
    state = pretrain(cfg, dataset=ds)
    assert "translation/to_target" in state["metrics"] and "knn/top1@5" in state["metrics"]
    c, _ = client(cfg.tracking.uri)
    run = c.get_run(state["run_id"])
    assert run.data.tags.get("sslbench.uses_labels") == "true" and run.data.params["domains.mode"] == "classes"
    assert "translation/edge_ssim" in run.data.metrics
    assert GRID_NAME in [a.path for a in c.list_artifacts(state["run_id"])]
    # the random-init floor of the same encoder (no generator: no translation metric) shares the table
    from harness.report.leaderboard import build
    from harness.run.evaluate import random_init
    from harness.tracking.query import fetch_runs

    random_init(cfg, "cut_encoder_small", ds)
    tables = build(fetch_runs([cfg.tracking.experiment], uri=cfg.tracking.uri))
    assert len(tables) == 1, [(t.dataset, t.protocol) for t in tables]
    rows = dict(zip(tables[0].frame["method"], tables[0].frame["translation/to_target/mean"]))
    assert set(rows) == {"cut (labels)", "random_init"} and math.isnan(rows["random_init"]), rows
