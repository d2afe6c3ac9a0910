"""InstDisc (Wu et al., 2018): the memory bank's update by index and noise sampling, and a short
run whose bank changes exactly at the visited indices and comes back from the checkpoint."""

import math

import numpy as np
import pytest
import torch

import methods.instdisc  # noqa: F401  (registers the method)
from harness.core.errors import ConfigError
from harness.data.dataset import batch_indices
from harness.models.blocks import MemoryBank
from harness.train.build import load_trained_method
from harness.train.config import resolve
from harness.train.trainer import Trainer


def test_memory_bank_updates_by_index_with_momentum():
    bank = MemoryBank(5, 2)
    init = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
    bank.features.copy_(torch.tensor(init))
    # the first write to an entry replaces the random initial vector
    bank.update(torch.tensor([2]), torch.tensor([[0.0, 2.0]]), momentum=0.5)
    assert np.allclose(bank.features[2].numpy(), [0.0, 1.0]) and bank.filled.tolist() == [False, False, True, False, False]
    bank.features.copy_(torch.tensor(init))
    bank.filled[:] = True  # from here on every entry holds a feature: momentum updates
    bank.update(torch.tensor([1, 4]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), momentum=0.5)
    # hand: row 1: .5 (0, 1) + .5 (1, 0) = (.5, .5) -> (1, 1)/sqrt2; row 4: (.3, .4) + (0, .5) = (.3, .9) -> /sqrt(.9)
    got = bank.features.numpy()
    assert np.allclose(got[1], [1 / math.sqrt(2), 1 / math.sqrt(2)], atol=1e-6)
    assert np.allclose(got[4], np.array([0.3, 0.9]) / math.sqrt(0.9), atol=1e-6)
    assert np.allclose(got[[0, 2, 3]], init[[0, 2, 3]])
    bank.features.copy_(torch.tensor(init))
    bank.update(torch.tensor([3]), torch.tensor([[1.0, 0.0]]), momentum=0.75)
    # row 3: .75 (0, -1) + .25 (1, 0) = (.25, -.75) -> /sqrt(.625)
    assert np.allclose(bank.features[3].numpy(), np.array([0.25, -0.75]) / math.sqrt(0.625), atol=1e-6)
    assert np.allclose(bank.features.numpy()[[0, 1, 2, 4]], init[[0, 1, 2, 4]])


def test_memory_bank_samples_uniform_indices():
    bank = MemoryBank(7, 3)
    g = torch.Generator().manual_seed(0)
    idx = bank.sample(5000, g)
    assert idx.shape == (5000,) and idx.min() >= 0 and idx.max() < 7
    assert set(idx.tolist()) == set(range(7))
    assert bank.sample((4, 3), g).shape == (4, 3)
    assert torch.allclose(bank.features.norm(dim=1), torch.ones(7))


def test_instdisc_bank_updated_at_batch_indices_and_checkpointed(synthetic, tmp_path):
    from harness.run.plugins import get_method

    assert get_method("instdisc").family == "memory bank"
    cfg = resolve({"method": "instdisc", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 3, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                   "method_cfg.num_noise": 64, "method_cfg.proximal": 1.0})
    tr = Trainer(cfg, synthetic, tmp_path)
    m = tr.method
    assert m.bank.features.shape == (256, 128)
    before = m.bank.features.clone()
    res = tr.fit()
    assert res.steps == 3 and math.isfinite(res.final_loss) and res.final_loss > 0
    after = m.bank.features
    visited = torch.cat([batch_indices(256, 32, s, cfg.seed) for s in range(3)])
    changed = (after != before).any(dim=1)
    expected = torch.zeros(256, dtype=torch.bool)
    expected[visited] = True
    assert torch.equal(changed, expected), "the bank must change exactly at the visited indices"
    assert torch.allclose(after.norm(dim=1), torch.ones(256), atol=1e-5)
    assert torch.isfinite(m.log_z)
    loaded, _, _ = load_trained_method(res.checkpoint)
    assert torch.equal(loaded.bank.features, after)
    assert torch.equal(loaded.log_z, m.log_z)


def test_instdisc_exact_softmax_loss_equals_formula(synthetic, tmp_path):
    """loss=softmax: L = -1/B sum_i log( exp(v_i.f_i/t) / sum_j exp(v_j.f_i/t) ) over the whole bank,
    with v_i = f_i (own logit 1/t) for an image whose bank entry was never written."""
    cfg = resolve({"method": "instdisc", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 1, "optim.batch_size": 8, "train.progress": False, "train.precision": "fp32",
                   "method_cfg.loss": "softmax", "method_cfg.temperature": 0.5})
    m = Trainer(cfg, synthetic, tmp_path).method
    from harness.data.views import Views
    from harness.method.contract import Batch

    x = torch.randn(4, synthetic.channels, synthetic.image_size, synthetic.image_size)
    idx = torch.tensor([3, 0, 7, 100])
    m.bank.filled[[3, 7]] = True   # 0 and 100: first visit
    m.eval()
    out = m.training_step(Batch(views=Views(images=[x], boxes=[], flipped=[]), indices=idx), step=None)
    with torch.no_grad():
        f = torch.nn.functional.normalize(m.projector_head(m.backbone(x)).float(), dim=1).numpy().astype(np.float64)
    bank = m.bank.features.numpy().astype(np.float64)
    expected = 0.0
    for b, i in enumerate(idx.tolist()):
        s = bank @ f[b] / 0.5
        if i in (0, 100):
            s[i] = f[b] @ f[b] / 0.5
        expected += -(s[i] - math.log(np.exp(s).sum()))
    assert abs(out["loss"].item() - expected / 4) < 1e-4


def test_instdisc_rejects_unknown_loss(synthetic, tmp_path):
    cfg = resolve({"method": "instdisc", "backbone": "cnn4", "data.name": "synthetic", "method_cfg.loss": "nce2"})
    with pytest.raises(ConfigError, match="'method_cfg.loss'.*valid choices: nce, softmax"):
        Trainer(cfg, synthetic, tmp_path)


def test_instdisc_bank_init_features_fills_bank_with_initial_network(synthetic, tmp_path):
    """bank_init=features: before step 1 one pass of the initial network over the training set
    (the trainer's prepare pass, views from its own seeded generator) writes every entry."""
    from harness.train.trainer import _step_seed

    cfg = resolve({"method": "instdisc", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 2, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32",
                   "method_cfg.loss": "softmax", "method_cfg.bank_init": "features"})
    tr = Trainer(cfg, synthetic, tmp_path)
    m = tr.method
    assert m.wants_prepare_pass() and not m.bank.filled.any()
    tr.fit(stop_after=0)                      # the pass only: the network is still the initial one
    assert m.bank.filled.all()
    gen = torch.Generator().manual_seed(_step_seed(cfg.seed, 2**40, 0))
    x = synthetic.x_train
    expected = []
    with torch.no_grad():
        for lo in range(0, len(x), 32):
            views = tr.recipe(x[lo:lo + 32], gen, synthetic.mean, synthetic.std)
            expected.append(m._embed(views.images[0].contiguous(memory_format=torch.channels_last)))
    assert torch.allclose(m.bank.features, torch.cat(expected), atol=1e-5)
    # the paper's default keeps the random initial bank and runs no pass
    cfg2 = resolve({"method": "instdisc", "backbone": "cnn4", "data.name": "synthetic", "optim.batch_size": 32,
                    "train.progress": False, "budget.kind": "steps", "budget.value": 1})
    assert not Trainer(cfg2, synthetic, tmp_path / "b").method.wants_prepare_pass()


@pytest.mark.parametrize("key, value", [("method_cfg.temperature", 0.0), ("method_cfg.num_noise", 0),
                                        ("method_cfg.bank_momentum", 1.0), ("method_cfg.bank_init", "feature")])
def test_instdisc_config_checks_name_the_key(synthetic, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key):
        Trainer(resolve({"method": "instdisc", "backbone": "cnn4", "data.name": "synthetic", key: value}),
                synthetic, tmp_path)
