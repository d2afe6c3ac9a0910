"""CMC (Tian, Krishnan & Isola, 2019; issue 17): the full-graph loss against a hand-computed case,
the Lab views and per-view encoders, the memory-bank objective against its formula, the banks
written exactly at the visited images and carried by the checkpoint, grayscale data refused with one
line (through the CLI), and a SIGKILLed run that resumes to the uninterrupted weights."""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.data.colour import rgb_to_lab
from harness.data.dataset import batch_indices
from harness.data.sources import synthetic
from harness.data.views import Views
from harness.method.contract import Batch, StepInfo
from harness.models.backbones import build_backbone
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.cmc import LAB_MEAN, LAB_STD, lab_views, with_input_channels
from methods.losses import cmc_loss

FASHION = Path("/usr/share/datasets/fashion-mnist")


def cmc_cfg(steps=3, **extra):
    over = {"method": "cmc", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps", "budget.value": steps,
            "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32", "method_cfg.num_negatives": 64}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


# ---------------------------------------------------------------------------- the loss
def test_cmc_loss_two_views_equals_hand_computation():
    """z1 = (e1, e2), z2 = ((.6, .8), (1, 0)), tau = 0.5; similarities z1_n . z2_k: [[.6, 1], [.8, 0]].
    L(V1, V2): anchors z1, rows of the matrix: -log softmax at the diagonal:
        n=0: log(1 + e^{(1 - .6)/.5}) = log(1 + e^.8);  n=1: log(1 + e^{(.8 - 0)/.5}) = log(1 + e^1.6)
    L(V2, V1): anchors z2, columns: k=0: (.6, .8) -> log(1 + e^.4);  k=1: (1, 0) -> log(1 + e^2)."""
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    v1_to_v2 = (math.log(1 + math.exp(0.8)) + math.log(1 + math.exp(1.6))) / 2
    v2_to_v1 = (math.log(1 + math.exp(0.4)) + math.log(1 + math.exp(2.0))) / 2
    assert cmc_loss([z1, z2], 0.5).item() == pytest.approx(v1_to_v2 + v2_to_v1, abs=1e-5)
    # both directions count: the loss is symmetric in the views, and not twice one direction
    assert cmc_loss([z2, z1], 0.5).item() == pytest.approx(v1_to_v2 + v2_to_v1, abs=1e-5)
    assert abs(v1_to_v2 - v2_to_v1) > 0.01


def test_cmc_loss_full_graph_sums_every_pair():
    g = torch.Generator().manual_seed(0)
    z = [F.normalize(torch.randn(5, 3, generator=g), dim=1) for _ in range(3)]
    pairs = cmc_loss([z[0], z[1]], 0.2) + cmc_loss([z[0], z[2]], 0.2) + cmc_loss([z[1], z[2]], 0.2)
    assert cmc_loss(z, 0.2).item() == pytest.approx(pairs.item(), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 views"):
        cmc_loss(z[:1], 0.2)


# ---------------------------------------------------------------------------- views and encoders
def test_lab_views_normalise_with_the_authors_ranges():
    rgb = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    lab = rgb_to_lab(rgb)
    got = lab_views(rgb)
    for c in range(3):
        assert torch.allclose(got[:, c], (lab[:, c] - LAB_MEAN[c]) / LAB_STD[c], atol=1e-6)
    white = lab_views(torch.ones(1, 3, 1, 1))
    assert white[0, 0].item() == pytest.approx(1.0, abs=1e-4)                        # L = 100 -> 1
    assert white[0, 1].item() == pytest.approx(-6.025 / 92.208, abs=1e-3)            # a = 0
    assert LAB_MEAN[1] == pytest.approx(6.025) and LAB_STD[2] == pytest.approx(101.1675)


@pytest.mark.parametrize("name", ["cnn4", "vit_mini_p4"])
def test_with_input_channels_changes_only_the_first_convolution(name):
    torch.manual_seed(0)
    bb = build_backbone(name, 3, 16)
    first = next(m for m in bb.modules() if isinstance(m, torch.nn.Conv2d))
    w3 = first.weight.detach().clone()
    for c in (1, 2):
        net = with_input_channels(bb, c, 16)
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.in_channels == c and conv.out_channels == first.out_channels
        assert torch.allclose(conv.weight, w3[:, :c] * math.sqrt(3 / c))
        rest = [k for k in bb.state_dict() if not k.startswith(("features.0.", "patch_embed.proj."))]
        assert rest and all(torch.equal(net.state_dict()[k], bb.state_dict()[k]) for k in rest)
        assert net(torch.zeros(2, c, 16, 16)).shape == (2, bb.num_features)
    assert first.in_channels == 3 and torch.equal(first.weight, w3)          # the original is untouched


def test_each_view_has_its_encoder_and_encoder_scores_the_concatenation(synthetic, tmp_path):
    m = Trainer(cmc_cfg(), synthetic, tmp_path).method
    convs = [next(x for x in e.modules() if isinstance(x, torch.nn.Conv2d)) for e in m.encoders()]
    assert [c.in_channels for c in convs] == [1, 2] and m.backbone is m.encoders()[0]
    m.eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        lab = lab_views(synthetic_denorm(m, x))
        by_hand = torch.cat([m.backbone(lab[:, :1]), m.view_encoders[0](lab[:, 1:])], dim=1)
        enc = m.encoder()
        assert enc.num_features == 2 * 256 and torch.allclose(enc(x), by_hand, atol=1e-5)
        proj = m.projector()(x)
        assert proj.shape == (3, 256) and torch.allclose(proj[:, :128].norm(dim=1), torch.ones(3), atol=1e-5)
    only_l = Trainer(cmc_cfg(method_cfg__scored="L"), synthetic, tmp_path / "l").method
    only_l.eval()
    with torch.no_grad():
        lab = lab_views(synthetic_denorm(only_l, x))
        assert torch.allclose(only_l.encoder()(x), only_l.backbone(lab[:, :1]), atol=1e-5)


def synthetic_denorm(m, x):
    return m.info.denormalize(x).clamp(0, 1)


@pytest.mark.parametrize("key, value, fragment", [
    ("method_cfg.views", ["L", "ab", "a"], "disjoint Lab channels"),
    ("method_cfg.views", ["L"], "at least 2 views"),
    ("method_cfg.scored", "a", "scored = concat or one of the views"),
    ("method_cfg.views", ["L", "rgb"], "valid choices: L, ab, a, b"),
    ("method_cfg.negatives", "queue", "valid choices: bank, batch"),
    ("method_cfg.temperature", 0.0, "method_cfg.temperature"),
    ("method_cfg.bank_momentum", 1.0, "method_cfg.bank_momentum"),
])
def test_config_checks_name_the_problem(synthetic, tmp_path, key, value, fragment):
    with pytest.raises(ConfigError, match=fragment):
        Trainer(cmc_cfg(**{key.replace(".", "__"): value}), synthetic, tmp_path)


# ---------------------------------------------------------------------------- the memory bank
def test_bank_softmax_loss_equals_formula(synthetic, tmp_path):
    """negatives=bank, loss=softmax: for each direction (i, j), i != j,
    L_ij = -1/B sum_b log( e^{f_i^b . p_j^b / t} / (e^{f_i^b . p_j^b / t} + sum_k e^{f_i^b . m_j^k / t}) )
    with p_j^b = bank_j[idx_b] (or f_j^b on an image's first visit), m_j^k = bank_j[k] for the K drawn
    indices (one draw, shared by the banks); L = L_12 + L_21."""
    t, k = 0.5, 16
    m = Trainer(cmc_cfg(method_cfg__loss="softmax", method_cfg__temperature=t, method_cfg__num_negatives=k),
                synthetic, tmp_path).method
    m.eval()
    idx = torch.tensor([3, 0, 7, 100])
    for bank in m.banks:
        bank.filled[[3, 7]] = True       # 0 and 100: first visit
    x = torch.randn(4, 3, 16, 16)
    step = StepInfo(0, 0.0, 1, torch.Generator().manual_seed(5))
    out = m.training_step(Batch(views=Views(images=[x], boxes=[], flipped=[]), indices=idx), step)
    noise = torch.randint(0, 256, (k,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        f = [v.double().numpy() for v in m.embed(x)]
    banks = [b.features.double().numpy() for b in m.banks]
    expected = 0.0
    for i, j in ((0, 1), (1, 0)):
        for b, n in enumerate(idx.tolist()):
            p = f[j][b] if n in (0, 100) else banks[j][n]
            s = np.concatenate([[f[i][b] @ p], banks[j][noise.numpy()] @ f[i][b]]) / t
            expected += -(s[0] - math.log(np.exp(s).sum())) / 4
    assert out["loss"].item() == pytest.approx(expected, abs=1e-4)
    assert set(out) >= {"loss_L_ab", "loss_ab_L", "pos_sim"}


def test_banks_written_at_visited_indices_and_checkpointed(synthetic, tmp_path):
    cfg = cmc_cfg(steps=3)                        # the paper's defaults: bank, NCE
    tr = Trainer(cfg, synthetic, tmp_path)
    m = tr.method
    assert [b.features.shape for b in m.banks] == [(256, 128)] * 2
    before = [b.features.clone() for b in m.banks]
    res = tr.fit()
    assert res.steps == 3 and math.isfinite(res.final_loss)
    visited = torch.cat([batch_indices(256, 32, s, cfg.seed) for s in range(3)])
    expected = torch.zeros(256, dtype=torch.bool)
    expected[visited] = True
    for b, old in zip(m.banks, before):
        assert torch.equal((b.features != old).any(dim=1), expected), "a bank must change exactly at the visited images"
        assert torch.equal(b.filled, expected)
    assert not torch.equal(m.banks[0].features[visited], m.banks[1].features[visited])   # one bank per view
    assert m.directions() == [(0, 1), (1, 0)] and m.log_z.shape == (2,) and torch.isfinite(m.log_z).all()  # Z per direction
    assert m.log_z[0] != m.log_z[1]
    loaded, _, _ = load_trained_method(res.checkpoint)
    assert all(torch.equal(a.features, b.features) for a, b in zip(loaded.banks, m.banks))
    assert torch.equal(loaded.log_z, m.log_z)


def test_in_batch_and_three_view_runs_train(synthetic, tmp_path):
    batch = Trainer(cmc_cfg(steps=1, method_cfg__negatives="batch"), synthetic, tmp_path / "b")
    assert not hasattr(batch.method, "banks")
    assert math.isfinite(batch.fit().final_loss)
    m = batch.method.eval()
    x = torch.randn(4, 3, 16, 16)
    out = m.training_step(Batch(views=Views(images=[x], boxes=[], flipped=[]), indices=torch.arange(4)), None)
    with torch.no_grad():
        assert out["loss"].item() == pytest.approx(cmc_loss(m.embed(x), m.cfg.temperature).item(), rel=1e-6)
    three = Trainer(cmc_cfg(steps=1, method_cfg__views=["L", "a", "b"], method_cfg__negatives="batch"),
                    synthetic, tmp_path / "3")
    assert [next(x for x in e.modules() if isinstance(x, torch.nn.Conv2d)).in_channels
            for e in three.method.encoders()] == [1, 1, 1]
    assert math.isfinite(three.fit().final_loss) and three.method.encoder().num_features == 3 * 256


def test_bank_init_features_fills_every_entry_before_step_one(synthetic, tmp_path):
    tr = Trainer(cmc_cfg(steps=1, method_cfg__bank_init="features", method_cfg__loss="softmax"), synthetic, tmp_path)
    assert tr.method.wants_prepare_pass() and not tr.method.banks[0].filled.any()
    tr.fit(stop_after=0)
    assert all(b.filled.all() for b in tr.method.banks)


# ---------------------------------------------------------------------------- requirements
def test_grayscale_refused_before_training():
    ds = synthetic(n_train=64, n_test=16, image_size=16, channels=1)
    with pytest.raises(ConfigError, match="'cmc' needs colour images; dataset 'synthetic' has 1 channel"):
        Trainer(cmc_cfg(), ds, "unused")


def test_cli_refuses_fashion_mnist_with_one_line(tmp_path):
    if FASHION.is_dir():
        data = ["data.name=fashion_mnist", f"data.data_dir={FASHION}"]
        name = "fashion_mnist"
    else:   # no Fashion-MNIST here: an .npz of 1-channel images stands in for it
        rng = np.random.default_rng(0)
        npz = tmp_path / "gray.npz"
        np.savez(npz, x_train=rng.integers(0, 256, (32, 1, 16, 16), dtype=np.uint8), y_train=np.arange(32) % 4,
                 x_test=rng.integers(0, 256, (16, 1, 16, 16), dtype=np.uint8), y_test=np.arange(16) % 4)
        data, name = ["data.name=npz", f"data.data_dir={npz}"], "gray"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    r = subprocess.run([sys.executable, "-m", "harness.cli", "pretrain", "method=cmc", *data, "backbone=cnn4",
                        "budget.kind=steps", "budget.value=2", f"out_dir={tmp_path / 'runs'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("sslbench: error:"), r.stderr
    assert f"method 'cmc' needs colour images; dataset '{name}' has 1 channel" in lines[0]
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))          # refused before any training


# ---------------------------------------------------------------------------- SIGKILL + resume
@pytest.mark.slow   # 20-35 s on 2 busy cores: a fresh process, then two 30-step runs here
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    from test_kills_pretext import kill_then_resume

    modes = {"cmc_bank": {}}   # the paper's defaults: the most state to resume (two banks, their fill flags, log Z)

    def make(name, steps, **extra):
        over = {"method": "cmc", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                "budget.value": steps, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                "method_cfg.num_negatives": 32, **modes[name]}
        over.update({k.replace("__", "."): v for k, v in extra.items()})
        return resolve(over)

    kill_then_resume(tmp_path, sorted(modes), make)
