import torch

from evals.finetune import finetune_eval
from harness.models.backbones import build_backbone


def test_finetune_learns_and_selects_on_train_only(synthetic):
    torch.manual_seed(0)
    enc = build_backbone("cnn4", 3, 16)
    x, y = synthetic.x_train, synthetic.y_train
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    out = finetune_eval(enc, x, y, synthetic.x_test, synthetic.y_test, 4, synthetic.mean, synthetic.std, steps=30,
                        batch_size=64, lrs=(0.01, 0.05), seed=0, precision="fp32")
    assert out["finetune/top1"] > 50.0 and out["finetune/lr"] in (0.01, 0.05)  # 4 classes: chance is 25%
    # the selection never sees test labels: garbage test labels give the same chosen LR and hold-out score
    bad = finetune_eval(enc, x, y, synthetic.x_test, torch.randint(0, 4, synthetic.y_test.shape), 4, synthetic.mean,
                        synthetic.std, steps=30, batch_size=64, lrs=(0.01, 0.05), seed=0, precision="fp32")
    assert bad["finetune/lr"] == out["finetune/lr"] and bad["finetune/holdout_top1"] == out["finetune/holdout_top1"]
    # the encoder passed in is not modified (fine-tuning works on a copy)
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())


def test_finetune_vit_uses_layer_decay(synthetic):
    from evals.finetune import _Classifier, _optimizer

    enc = build_backbone("vit_mini_p4", 3, 16)
    opt = _optimizer(_Classifier(enc, 4), 1e-3)
    scales = sorted({round(g["base_lr"] / 1e-3, 6) for g in opt.param_groups})
    assert len(scales) > 3 and scales[-1] == 1.0 and scales[0] < 0.2


def test_the_finetune_budget_follows_the_pretraining_budget_class_and_full_is_one_flag_away():
    from evals.budgets import CPU_CLASS, FINETUNE_BUDGETS, finetune_budget
    from evals.config import EvalConfig

    auto = EvalConfig()
    for kind, limit in CPU_CLASS.items():
        assert finetune_budget(auto, kind, limit) == FINETUNE_BUDGETS["cpu"]            # at the class's edge: cpu
        assert finetune_budget(auto, kind, limit * 1.01) == FINETUNE_BUDGETS["full"]    # past it: the full protocol
    assert finetune_budget(auto) == (300, 256)                                          # no budget known: full
    assert finetune_budget(EvalConfig(finetune="full"), "seconds", 30) == (300, 256)
    assert finetune_budget(EvalConfig(finetune="cpu", finetune_steps=7), "seconds", 1e6) == (7, 128)


def test_finetuning_says_how_long_it_will_take(synthetic, capsys):
    enc = build_backbone("cnn4", 3, 16)
    finetune_eval(enc, synthetic.x_train, synthetic.y_train, synthetic.x_test, synthetic.y_test, 4, synthetic.mean,
                  synthetic.std, steps=6, batch_size=32, lrs=(0.01, 0.05), seed=0, precision="fp32")
    err = capsys.readouterr().err
    assert err.count("expected here") == 1 and "3 fits (LRs 0.01, 0.05" in err and "x 6 steps of 32" in err
