"""SimCLR v2's semi-supervised protocol (Chen et al., 2020b, "Big Self-Supervised Models are Strong
Semi-Supervised Learners"), stages 2 and 3, as an evaluation protocol for any encoder:

1. **Fine-tune** the pretrained encoder plus a linear head on a stratified, seeded label fraction
   (1% / 10%) of TRAIN (``evals.finetune``: crop + flip views, LR chosen on a hold-out of the
   labelled subset, refit on all of it). This is the *teacher*.
2. **Distil** into a *student* of the same architecture (self-distillation) on ALL training
   images without their labels: the teacher's softened predictions on each augmented view are
   the targets,

       L = -1/N sum_i sum_y P_T(y | x_i; tau) log P_S(y | x_i; tau),  P(y | x; tau) = softmax(f(x) / tau)

   with tau = 1 (the paper's choice when only unlabelled examples enter the loss). The student
   starts from the pretrained encoder (the same starting point as the teacher; at minute-scale
   budgets a from-scratch student would not converge) and uses the teacher's chosen LR and the
   same number of steps.

Reported: ``semisup@{p}%/teacher_top1`` and ``semisup@{p}%/top1`` (the student), top-5, the LR.
Deviation from the paper: the teacher fine-tunes the encoder only; SimCLR v2 fine-tunes from the
middle layer of its 3-layer projection head, which an encoder-agnostic evaluator does not have.
Nothing is selected on TEST: test images are only scored, once per model.
"""

from __future__ import annotations

import torch

from evals.finetune import _topk, predict, select_and_fit, train_classifier
from harness.core.device import resolve_precision


def semisup_eval(encoder, x_train, y_train, x_test, y_test, num_classes: int, mean, std, label_fraction: float,
                 steps: int = 300, batch_size: int = 256, holdout_fraction: float = 0.1, temperature: float = 1.0,
                 seed: int = 0, device="cpu", precision: str = "auto", progress: bool = False) -> dict[str, float]:
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    prefix = f"semisup@{label_fraction * 100:g}%"
    teacher, lr, scores, _ = select_and_fit(encoder, x_train, y_train, num_classes, mean, std, steps, batch_size, None,
                                            holdout_fraction, label_fraction, seed, device, precision, progress,
                                            prefix=f"{prefix} teacher")
    student = train_classifier(encoder, x_train, None, num_classes, mean, std, lr, steps, batch_size, seed + 1, device,
                               precision, progress, desc=f"{prefix} distil", teacher=teacher, temperature=temperature)
    y_test = torch.as_tensor(y_test).long()
    t_logits = predict(teacher, x_test, mean, std, device, precision)
    s_logits = predict(student, x_test, mean, std, device, precision)
    return {f"{prefix}/teacher_top1": _topk(t_logits, y_test, 1), f"{prefix}/top1": _topk(s_logits, y_test, 1),
            f"{prefix}/top5": _topk(s_logits, y_test, 5), f"{prefix}/lr": float(lr),
            f"{prefix}/holdout_top1": float(scores[lr]), f"{prefix}/temperature": float(temperature)}
