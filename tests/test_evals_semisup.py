"""SimCLR v2's semi-supervised protocol: the distillation loss equals its formula, and the
teacher -> student pipeline learns from a label fraction without ever selecting on test labels."""

import math

import torch

from evals.finetune import distillation_loss
from evals.semisup import semisup_eval
from harness.models.backbones import build_backbone


def test_distillation_loss_equals_formula_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    # P_T rows: (1/2, 1/2) and (3/4, 1/4); log P_S rows: (1 - log(e + 1), -log(e + 1)), (-log(1 + e^2), -log(1 + e^-2))
    l1 = -(0.5 * (1 - math.log(math.e + 1)) + 0.5 * -math.log(math.e + 1))
    l2 = -(0.75 * (-math.log(1 + math.e ** 2)) + 0.25 * -math.log(1 + math.e ** -2))
    assert abs(distillation_loss(s, t).item() - (l1 + l2) / 2) < 1e-6
    # tau = 2 halves every logit before both softmaxes
    assert abs(distillation_loss(s, t, 2.0).item() - distillation_loss(s / 2, t / 2).item()) < 1e-6


def test_semisup_teacher_and_student_learn_without_test_labels(synthetic):
    torch.manual_seed(0)
    enc = build_backbone("cnn4", 3, 16)
    kw = dict(label_fraction=0.25, steps=25, batch_size=64, seed=0, precision="fp32")
    out = semisup_eval(enc, synthetic.x_train, synthetic.y_train, synthetic.x_test, synthetic.y_test, 4,
                       synthetic.mean, synthetic.std, **kw)
    assert out["semisup@25%/teacher_top1"] > 40.0 and out["semisup@25%/top1"] > 40.0  # 4 classes: chance 25%
    bad = semisup_eval(enc, synthetic.x_train, synthetic.y_train, synthetic.x_test,
                       torch.randint(0, 4, synthetic.y_test.shape), 4, synthetic.mean, synthetic.std, **kw)
    assert bad["semisup@25%/lr"] == out["semisup@25%/lr"]
    assert bad["semisup@25%/holdout_top1"] == out["semisup@25%/holdout_top1"]
