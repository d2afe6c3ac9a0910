"""Two-view contrastive losses (nce, debiased, hard_negatives, flatnce, align_uniform) against
hand computations, and a short run of each registered method."""

import math

import numpy as np
import pytest
import torch

import methods.contrastive_objectives  # noqa: F401  (registers the methods)
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer
from methods.losses import (
    align_uniform_loss,
    debiased_contrastive,
    flatnce,
    hard_negative_contrastive,
    nce_log_partition,
    nce_loss,
    nt_xent,
    pair_similarities,
)

# Two images, unit vectors: view 1 = v0, v1; view 2 = v2, v3 (v0's positive is v2, v1's is v3).
Z1 = np.array([[1.0, 0.0], [0.6, 0.8]])
Z2 = np.array([[0.8, 0.6], [0.0, 1.0]])
# hand: v0.v1 = .6, v0.v2 = .8, v0.v3 = 0, v1.v2 = .96, v1.v3 = .8, v2.v3 = .6
POS = np.array([0.8, 0.8, 0.8, 0.8])
NEG = np.array([[0.6, 0.0], [0.6, 0.96], [0.96, 0.6], [0.0, 0.6]])  # anchors 0..3, others in index order


def _t(a, grad=False):
    return torch.tensor(a, dtype=torch.float32, requires_grad=grad)


def test_pair_similarities_hand_values():
    pos, neg = pair_similarities(_t(2 * Z1), _t(Z2))  # scaling must not matter
    assert np.allclose(pos.numpy(), POS, atol=1e-6)
    assert np.allclose(neg.numpy(), NEG, atol=1e-6)


def _dcl_reference(tau, tau_plus, beta):
    out = []
    for i in range(4):
        ep = math.exp(POS[i] / tau)
        en = np.exp(NEG[i] / tau)
        w = np.exp(beta * NEG[i] / tau)
        w = w / w.mean()
        n = len(en)
        g = max((np.mean(w * en) - tau_plus * ep) / (1 - tau_plus), math.exp(-1 / tau))
        out.append(-math.log(ep / (ep + n * g)))
    return float(np.mean(out))


@pytest.mark.parametrize("tau,tau_plus", [(0.5, 0.1), (0.5, 0.5), (0.2, 0.0)])
def test_debiased_matches_hand_computation(tau, tau_plus):
    # tau_plus = 0.5 makes the bracket negative for anchor 0 (mean_neg 2.16 < 0.5 * e^1.6 = 2.48): the clamp
    got = debiased_contrastive(_t(Z1), _t(Z2), tau, tau_plus).item()
    assert abs(got - _dcl_reference(tau, tau_plus, 0.0)) < 1e-5


def test_debiased_without_prior_is_nt_xent():
    assert abs(debiased_contrastive(_t(Z1), _t(Z2), 0.5, 0.0).item() - nt_xent(_t(Z1), _t(Z2), 0.5).item()) < 1e-5


@pytest.mark.parametrize("beta", [1.0, 3.0])
def test_hard_negatives_matches_hand_computation(beta):
    got = hard_negative_contrastive(_t(Z1), _t(Z2), 0.5, beta, 0.1).item()
    assert abs(got - _dcl_reference(0.5, 0.1, beta)) < 1e-5
    # beta = 0: plain debiasing
    assert abs(hard_negative_contrastive(_t(Z1), _t(Z2), 0.5, 0.0, 0.1).item() - _dcl_reference(0.5, 0.1, 0.0)) < 1e-6


def test_flatnce_value_zero_gradient_of_logsumexp():
    tau = 0.2
    a, b = _t(Z1 * 1.5, grad=True), _t(Z2, grad=True)
    loss = flatnce(a, b, tau)
    assert abs(loss.item()) < 1e-7
    loss.backward()
    # reference: mean_i log sum_k exp((s-_ik - s+_i) / tau), built anchor by anchor
    a2, b2 = _t(Z1 * 1.5, grad=True), _t(Z2, grad=True)
    v = [x / x.norm() for x in [a2[0], a2[1], b2[0], b2[1]]]
    ref = 0
    for i in range(4):
        p = (i + 2) % 4
        terms = [(v[i] @ v[k] - v[i] @ v[p]) / tau for k in range(4) if k not in (i, p)]
        ref = ref + torch.logsumexp(torch.stack(terms), 0) / 4
    ref.backward()
    assert torch.allclose(a.grad, a2.grad, atol=1e-5) and torch.allclose(b.grad, b2.grad, atol=1e-5)
    # the reference's value from the hand similarities
    lse = np.mean([math.log(np.exp((NEG[i] - POS[i]) / tau).sum()) for i in range(4)])
    assert abs(ref.item() - lse) < 1e-5


def test_nce_loss_matches_hand_computation():
    pos = np.array([2.0, -1.0])
    noise = np.array([[0.5, -0.5, 1.0], [0.0, 2.0, -2.0]])
    n, log_z = 10, 1.3
    m = noise.shape[1]
    z = math.exp(log_z)

    def h(s):
        p = np.exp(s) / z
        return p / (p + m / n)

    expected = -np.mean(np.log(h(pos)) + np.log(1 - h(noise)).sum(1))
    got = nce_loss(_t(pos), _t(noise), log_z, n).item()
    assert abs(got - expected) < 1e-5
    # Wu et al.'s estimate of Z: n * mean exp(noise)
    assert abs(nce_log_partition(_t(noise), n).item() - math.log(n * np.exp(noise).mean())) < 1e-5


def test_align_uniform_loss_hand_values():
    # align: ||v0 - v2||^2 = ||v1 - v3||^2 = 2 - 2 * .8 = .4; uniform(z1) = -2 * (2 - 2 * .6) = -1.6 = uniform(z2)
    assert abs(align_uniform_loss(_t(3 * Z1), _t(Z2)).item() - (0.4 - 1.6)) < 1e-5
    assert abs(align_uniform_loss(_t(Z1), _t(Z2), lam=0.5).item() - (0.4 - 0.8)) < 1e-5
    # alpha = 1: mean ||x - y|| = sqrt(.4)
    assert abs(align_uniform_loss(_t(Z1), _t(Z2), alpha=1.0, lam=0.0).item() - math.sqrt(0.4)) < 1e-5


def _cfg(method, **kw):
    return resolve({"method": method, "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                    "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                    "optim.name": "sgd", "method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 32,
                    "method_cfg.blur": False, **kw})


@pytest.mark.parametrize("method", ["nce", "align_uniform", "debiased", "hard_negatives", "flatnce"])
def test_method_trains_three_steps(synthetic, tmp_path, method):
    from harness.run.plugins import get_method

    assert get_method(method).family == "contrastive"
    tr = Trainer(_cfg(method), synthetic, tmp_path)
    res = tr.fit()
    assert res.steps == 3 and math.isfinite(res.final_loss)
    if method == "flatnce":
        assert res.final_loss > 0  # the logged value is InfoNCE, not FlatNCE's constant 0
    if method == "nce":
        assert torch.isfinite(tr.method.log_z)
        loaded, _, _ = load_trained_method(res.checkpoint)
        assert torch.equal(loaded.log_z, tr.method.log_z)  # Z is fixed once and checkpointed
