"""The shared evaluator: feature extraction + cache, kNN, linear probes, alignment/uniformity.

Evaluators take an encoder (any ``nn.Module`` mapping images to (N, D) features, e.g. a plain
timm model) and a dataset, and return plain metrics with stable names.
"""

from evals.align_uniform import align_loss, align_uniform_eval, uniform_loss
from evals.features import FeatureCache, cached_features, extract_features, weights_hash
from evals.knn import knn_eval
from evals.linear import label_fraction_subset, lbfgs_probe, linear_probe, select_hparams, stratified_split
from evals.runner import evaluate, report

__all__ = [
    "FeatureCache", "align_loss", "align_uniform_eval", "cached_features", "evaluate", "extract_features", "knn_eval",
    "label_fraction_subset", "lbfgs_probe", "linear_probe", "report", "select_hparams", "stratified_split",
    "uniform_loss", "weights_hash",
]
