"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against hand computations, the
image-size refusal, and short runs whose queue and prototypes behave and come back from the
checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.swav  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.data.sources import synthetic as make_synthetic
from harness.models.blocks import sinkhorn_knopp
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import swav_loss


def test_sinkhorn_knopp_symmetric_case_by_hand():
    # exp(S / eps) = [[e, 1], [1, e]] already has equal row and column sums: the codes are
    # its rows normalised, whatever the number of iterations
    e = math.e
    q = sinkhorn_knopp(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), epsilon=1.0, iterations=3)
    assert torch.allclose(q, torch.tensor([[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]]), atol=1e-6)


def test_sinkhorn_knopp_matches_scaling_vectors_and_equipartitions():
    rng = np.random.default_rng(0)
    s = rng.uniform(-1, 1, size=(6, 3))       # B = 6 samples, K = 3 prototypes
    eps, iters = 0.5, 3
    # the scaling-vector form: P = exp(S / eps) (K x B), alternately r_k = 1/K / sum_b P_kb u_b ...
    p = np.exp(s.T / eps)
    p = p / p.sum()
    r, c = np.ones(3), np.ones(6)
    for _ in range(iters):
        r = (1 / 3) / (p * c[None, :]).sum(axis=1)
        c = (1 / 6) / (p * r[:, None]).sum(axis=0)
    want = (r[:, None] * p * c[None, :] * 6).T
    got = sinkhorn_knopp(torch.tensor(s), epsilon=eps, iterations=iters).double().numpy()
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-6)                 # each sample: a distribution
    many = sinkhorn_knopp(torch.tensor(s), epsilon=eps, iterations=200).numpy()
    assert np.allclose(many.sum(axis=0), 6 / 3, atol=1e-4)              # each prototype: B/K of the mass


def test_sinkhorn_knopp_small_epsilon_stays_finite_and_matches_float64():
    # eps = 0.01 on scores spanning [-1, 1]: exp(S / eps) spans e^200, beyond float32; the
    # log-domain iterations must still give the float64 scaling-vector answer
    rng = np.random.default_rng(1)
    s = rng.uniform(-1, 1, size=(64, 10))
    eps, iters = 0.01, 3
    p = np.exp((s.T - s.max()) / eps)          # float64 holds e^-200
    r, c = np.ones(10), np.ones(64)
    for _ in range(iters):
        r = (1 / 10) / (p * c[None, :]).sum(axis=1)
        c = (1 / 64) / (p * r[:, None]).sum(axis=0)
    want = (r[:, None] * p * c[None, :] * 64).T
    got = sinkhorn_knopp(torch.tensor(s, dtype=torch.float32), epsilon=eps, iterations=iters).double().numpy()
    assert np.isfinite(got).all()
    assert np.allclose(got, want, atol=1e-4)


def test_swav_loss_matches_hand_computation():
    # codes of the 2 global crops, scores of 3 crops, K = 2, tau = 1
    codes = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.25, 0.75]])]
    scores = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[math.log(4.0), 0.0]])]
    # p: crop 0 (1/2, 1/2), crop 1 (1/4, 3/4), crop 2 (4/5, 1/5); pairs (0,1), (0,2), (1,0), (1,2)
    terms = [-math.log(1 / 4), -math.log(4 / 5),
             -(0.25 * math.log(1 / 2) + 0.75 * math.log(1 / 2)), -(0.25 * math.log(4 / 5) + 0.75 * math.log(1 / 5))]
    assert abs(swav_loss(codes, scores, 1.0).item() - np.mean(terms)) < 1e-6


def _cfg(**kw):
    return resolve({"method": "swav", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "optim.name": "sgd", "optim.lr": 0.05, "method_cfg.n_prototypes": 20, "method_cfg.proj_hidden": 64,
                    "method_cfg.proj_dim": 16, "method_cfg.n_local": 2, "method_cfg.blur": False, **kw})


def test_swav_refuses_images_too_small_for_multi_crop(tmp_path):
    with pytest.raises(ConfigError, match="at least 16 px"):
        Trainer(_cfg(), make_synthetic(n_train=64, n_test=16, image_size=8), tmp_path)


def test_swav_trains_queue_and_prototypes_checkpointed(synthetic, tmp_path):
    cfg = _cfg(**{"method_cfg.queue_size": 32, "method_cfg.queue_start": 0.0, "method_cfg.freeze_prototypes": 0.0})
    logged = []
    tr = Trainer(cfg, synthetic, tmp_path, log_fn=lambda metrics, step: logged.append(metrics))
    m = tr.method
    assert [s.size for s in tr.recipe.specs] == [16, 16, 8, 8]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    res = tr.fit()
    assert math.isfinite(res.final_loss) and 0.0 < res.final_loss < 2 * math.log(20) + 5
    after = m.state_dict()
    assert int(after["queued"]) == 32 and logged[-1]["train/queue_used"] == 1.0   # full after step 1, used after
    for i in range(2):
        assert not torch.equal(before[f"queues.{i}.keys"], after[f"queues.{i}.keys"])
        assert torch.allclose(after[f"queues.{i}.keys"].norm(dim=1), torch.ones(32), atol=1e-5)
    w = after["prototypes.weight"]
    assert not torch.equal(before["prototypes.weight"], w)
    assert torch.allclose(w.norm(dim=1), torch.ones(20), atol=1e-5)                # normalised each step
    loaded, _, _ = load_trained_method(res.checkpoint)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, after[k]), k


def test_swav_prototypes_frozen_early(synthetic, tmp_path):
    tr = Trainer(_cfg(**{"budget.value": 2, "method_cfg.freeze_prototypes": 1.0}), synthetic, tmp_path)
    w0 = tr.method.prototypes.weight.detach().clone()
    tr.fit()
    assert torch.allclose(tr.method.prototypes.weight, w0, atol=1e-6)   # weight decay only, undone by normalising
    assert not hasattr(tr.method, "queues")
