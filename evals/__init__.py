"""The shared evaluator: feature extraction + cache, kNN, linear probes, fine-tuning, the
semi-supervised protocol, alignment/uniformity; one protocol table (``evals.protocols``).

Evaluators take an encoder (any ``nn.Module`` mapping images to (N, D) features, e.g. a plain
timm model) and a dataset, and return plain metrics with stable names. ``evals`` sits above the
harness layers it uses (core, data, models) and never imports ``methods``.
"""
