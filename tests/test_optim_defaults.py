"""Paper defaults hold: a run with neither a preset nor an ``optim.*`` override gets its method's
declared optimiser (name, LR scaled by batch / 256, weight decay with biases and norms excluded,
momentum / betas / LARS trust coefficient), for every registered method."""

import pytest
import torch

from harness.data.domains import select_domains
from harness.data.sources import synthetic
from harness.run.plugins import get_method, methods
from harness.train.config import resolve
from harness.train.optim import LARS
from harness.train.trainer import Trainer

# shape-only overrides so every method builds quickly on 16 px data (none touches the optimiser)
SHAPE = {
    "mae": {"backbone": "vit_mini_p4"},
    "barlow_twins": {"method_cfg.proj_hidden": 64, "method_cfg.proj_dim": 64},
    "dino": {"method_cfg.out_dim": 256, "method_cfg.head_hidden": 64, "method_cfg.n_local": 2},
    "swav": {"method_cfg.n_prototypes": 16, "method_cfg.n_local": 2},
    "cpc_v2": {"method_cfg.patch_size": 0, "method_cfg.patch_stride": 0, "method_cfg.pred_steps": 1},
    "moco": {"method_cfg.queue_size": 64}, "moco_v2": {"method_cfg.queue_size": 64},
    "mp3": {"backbone": "vit_mini_p4"},
    "deepmim": {"backbone": "vit_mini_p4"}, "localmim": {"backbone": "vit_mini_p4"},
    "beit": {"backbone": "vit_mini_p4"}, "ibot": {"backbone": "vit_mini_p4", "method_cfg.out_dim": 256,
                                                  "method_cfg.n_local": 2},
    "qb_heat": {"backbone": "vit_mini_p4"}, "convmae": {"backbone": "convvit_mini"},
    "feature_distillation": {"backbone": "vit_mini_p4"},
    "simmim": {"backbone": "vit_mini_p4", "method_cfg.mask_patch": 8},
    "exemplar_cnn": {"method_cfg.num_classes": 32, "method_cfg.patch_size": 12},
    "context_prediction": {"method_cfg.view_size": 48},
    "jigsaw": {"method_cfg.view_size": 32, "method_cfg.num_permutations": 20, "method_cfg.head_hidden": 64},
    # CUT: its generator's encoder, two of synthetic's classes as its domains, networks for 16 px
    "cut": {"backbone": "cut_encoder_small", "data.domains": [["0", "1"], ["2", "3"]], "method_cfg.nce_layers": [0, 4, 8, 12],
            "method_cfg.d_layers": 2},
}
TYPES = {"sgd": torch.optim.SGD, "lars": LARS, "adamw": torch.optim.AdamW}


@pytest.fixture(scope="module")
def data():
    return synthetic(n_train=64, n_test=16, image_size=16)


def test_every_method_declares_an_optimiser():
    assert len(methods()) >= 21
    for name, entry in methods().items():
        assert entry.cls.optim.name in TYPES, name


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory):
    """A finished checkpoint for the method that distils one (feature_distillation)."""
    cfg = resolve({"method": "rotnet", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                   "budget.value": 1, "optim.batch_size": 32, "train.progress": False, "train.precision": "fp32"})
    return str(Trainer(cfg, data, tmp_path_factory.mktemp("teacher")).fit().checkpoint)


@pytest.mark.parametrize("name", sorted(methods()))
def test_a_run_without_preset_gets_the_declared_optimiser(name, data, teacher, tmp_path):
    declared = get_method(name).cls.optim
    batch = 32
    needs = {"method_cfg.teacher": teacher} if name == "feature_distillation" else {}
    if name == "clip":
        needs = {"data.captions": "templated"}   # it learns from captions (here: class-name templates)
    cfg = resolve({"method": name, "data.name": "synthetic", "optim.batch_size": batch, "train.progress": False,
                   "train.precision": "fp32", **SHAPE.get(name, {}), **needs})
    assert cfg.preset is None and cfg.optim.name is None and cfg.optim.lr is None
    if name == "evolving_loss":    # it learns from video clips (frames stacked on the channel axis)
        from harness.data.video import synthetic_clips

        cfg = resolve({"method": name, "data.name": "synthetic_clips", "backbone": "video_cnn_small",
                       "optim.batch_size": batch, "train.progress": False, "train.precision": "fp32"})
        data = synthetic_clips()
    tr = Trainer(cfg, select_domains(data, cfg.data.domains) if cfg.data.domains else data, tmp_path)
    opt = tr.optimizer
    assert type(opt) is TYPES[declared.name]
    assert tr.optim.name == declared.name
    assert tr.base_lr == pytest.approx(declared.base_lr * batch / 256)
    decayed = [g for g in opt.param_groups if g["weight_decay"] != 0]
    assert (decayed or not declared.weight_decay) and all(g["weight_decay"] == pytest.approx(declared.weight_decay) for g in decayed)
    # biases and norm weights: no weight decay (and no LARS trust ratio)
    flat = {id(p) for o in tr.optimizers for g in o.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(id(p) in flat for p in tr.method.parameters() if p.requires_grad and p.ndim <= 1)
    if declared.name == "lars":
        assert all(g["lars_exclude"] for g in opt.param_groups if any(p.ndim <= 1 for p in g["params"]))
        assert opt.defaults["eta"] == declared.lars_eta and opt.defaults["momentum"] == declared.momentum
    elif declared.name == "sgd":
        assert opt.defaults["momentum"] == declared.momentum
    else:
        assert tuple(opt.defaults["betas"]) == tuple(declared.betas)


def test_overrides_and_presets_still_win(data, tmp_path):
    base = {"method": "simclr", "data.name": "synthetic", "optim.batch_size": 32, "train.progress": False,
            "train.precision": "fp32"}
    tr = Trainer(resolve({**base, "optim.name": "adamw", "optim.lr": 0.01, "optim.betas": [0.8, 0.9]}), data, tmp_path / "a")
    assert type(tr.optimizer) is torch.optim.AdamW and tr.base_lr == 0.01
    assert tuple(tr.optimizer.defaults["betas"]) == (0.8, 0.9)
    assert tr.optimizer.param_groups[0]["weight_decay"] == pytest.approx(1e-6)   # still SimCLR's WD
    small = Trainer(resolve({**base, "preset": "small"}), data, tmp_path / "b")  # the preset's SGD 0.3, WD 5e-4
    assert type(small.optimizer) is torch.optim.SGD and small.base_lr == 0.3
    assert small.optimizer.param_groups[0]["weight_decay"] == pytest.approx(5e-4)
