from harness.train.config import resolve
from harness.train.trainer import Trainer


def test_supervised_baseline_uses_labels_and_learns(synthetic, tmp_path):
    import methods.supervised  # noqa: F401

    cfg = resolve({"method": "supervised", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 15, "optim.batch_size": 64, "train.progress": False, "train.precision": "fp32"})
    accs = []
    tr = Trainer(cfg, synthetic, tmp_path, log_fn=lambda m, s: accs.append(m.get("train/train_acc")))
    r = tr.fit()
    assert r.final_loss < 1.2 and accs[-1] > 0.5  # 4 classes: chance is 0.25
