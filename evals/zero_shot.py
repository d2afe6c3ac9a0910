"""Zero-shot classification (CLIP; Radford et al., 2021, sec. 3.1): no training on the labels at all.

The method's text tower embeds a prompt per class name (``a photo of a {class}.``, averaged over the
method's templates); each test image is assigned the class whose prompt embedding is nearest in
cosine similarity to the image embedding. The method provides the classifier through its
``zero_shot_classifier(class_names)`` hook (``harness.method.contract.Method``); a method without a
text tower returns None and the protocol reports nothing for it. Class names are the dataset's
(``harness.data.captions.class_names``: ``class 0``, ... for a dataset that has none, as its
templated captions say). Reported: ``zero_shot/top1`` and ``zero_shot/top5`` (percent) on TEST.
"""

from __future__ import annotations

import torch
from torch import nn

from evals.features import extract_features
from evals.linear import topk_accuracy


def zero_shot_eval(classifier: nn.Module, x_test, y_test: torch.Tensor, mean, std, batch_size: int = 512,
                   device: str | torch.device = "cpu", precision: str = "auto", progress: bool = True) -> dict[str, float]:
    """Top-1 / top-5 of ``classifier`` (images -> class scores) on the test images."""
    device = torch.device(device)
    classifier = classifier.to(device)
    scores = extract_features(classifier, x_test, mean, std, batch_size=batch_size, device=device, precision=precision,
                              progress=progress, desc="zero-shot")
    top1, top5 = topk_accuracy(scores, torch.as_tensor(y_test))
    return {"zero_shot/top1": top1, "zero_shot/top5": top5}
