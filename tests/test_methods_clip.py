"""CLIP (issue 17): the symmetric loss on a hand-computed case, the logit-scale clamp, the text tower and
its tokenizer, zero-shot evaluation (and its absence for methods without a text tower), grayscale
data, the label-using marking of templated runs, and SIGKILL + resume without retraining the tokenizer."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evals.config import EvalConfig
from evals.evaluate import evaluate
from harness.data.sources import FASHION_DIR, synthetic
from harness.models.text import BPETokenizer, TextTransformer
from harness.run.naming import LABELS_TAG, run_tags, uses_labels
from harness.train.config import resolve, to_dict
from harness.train.trainer import Trainer
from methods.losses import clip_loss

TINY = {"method_cfg.embed_dim": 32, "method_cfg.text_width": 32, "method_cfg.text_layers": 2,
        "method_cfg.text_heads": 4, "method_cfg.context_length": 16, "method_cfg.vocab_size": 320}


def run_cfg(steps=4, **extra):
    over = {"method": "clip", "backbone": "cnn4", "data.name": "synthetic", "data.captions": "templated",
            "budget.kind": "steps", "budget.value": steps, "optim.batch_size": 32, "train.progress": False,
            "train.precision": "fp32", **TINY}
    over.update({k.replace("__", "."): v for k, v in extra.items()})
    return resolve(over)


# ---------------------------------------------------------------------------- the loss
def test_symmetric_loss_equals_the_hand_computed_case():
    image = torch.tensor([[3.0, 0.0], [0.0, 0.5]])        # normalised: [1, 0], [0, 1]
    text = torch.tensor([[2.0, 0.0], [0.6, 0.8]])         # normalised: [1, 0], [0.6, 0.8]
    # scale exp(log 2) = 2: logits = 2 * I T^T = [[2, 1.2], [0, 1.6]]
    rows = [-math.log(math.exp(2) / (math.exp(2) + math.exp(1.2))), -math.log(math.exp(1.6) / (1 + math.exp(1.6)))]
    cols = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))]
    want = (sum(rows) / 2 + sum(cols) / 2) / 2
    got = clip_loss(image, text, torch.tensor(math.log(2.0)))
    assert got.item() == pytest.approx(want, abs=1e-6)
    # not symmetric in its arguments' roles unless the similarities are: swapping image and text transposes
    assert clip_loss(text, image, torch.tensor(math.log(2.0))).item() == pytest.approx(want, abs=1e-6)


def test_logit_scale_is_clamped_at_100(tmp_path):
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    t = torch.tensor(math.log(1000.0), requires_grad=True)
    clamped = clip_loss(img, txt, t, max_logit_scale=100.0)
    assert clamped.item() == pytest.approx(clip_loss(img, txt, torch.tensor(math.log(100.0))).item(), abs=1e-5)
    clamped.backward()
    assert t.grad.item() == 0.0                           # clipped: the temperature gets no push beyond 100
    free = torch.tensor(math.log(10.0), requires_grad=True)
    clip_loss(img, txt, free).backward()
    assert free.grad.item() != 0.0
    # the method: starts at 1 / 0.07, and on_step_end clamps the parameter itself to log(100)
    tr = Trainer(run_cfg(), synthetic(n_train=64, n_test=16, image_size=16), tmp_path)
    m = tr.method
    assert m.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        m.logit_scale.fill_(math.log(500.0))
    m.on_step_end(None)
    assert m.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-6)


# ---------------------------------------------------------------------------- tokenizer and text tower
def test_tokenizer_is_deterministic_and_round_trips_through_a_buffer():
    texts = ["a photo of a cat.", "a photo of a dog.", "Two dogs in the snow"]
    a, b = BPETokenizer.train(texts, 300), BPETokenizer.train(texts, 300)
    assert a.to_json() == b.to_json() and a.vocab_size <= 300
    buf = a.to_buffer()
    assert buf.dtype == torch.uint8 and BPETokenizer.from_buffer(buf).to_json() == a.to_json()
    tok = a.encode(["a photo of a cat.", "an unseen ZEBRA " * 10], context=8)
    assert tok.shape == (2, 8) and tok[:, 0].tolist() == [a.sot_id] * 2
    row0 = tok[0].tolist()
    assert a.eot_id in row0 and row0[row0.index(a.eot_id) + 1:] == [a.pad_id] * (7 - row0.index(a.eot_id))
    assert tok[1, -1].item() == a.eot_id                  # cut to the context, the <eot> kept
    assert tok[0].tolist() == a.encode(["A PHOTO of a cat."], 8)[0].tolist()   # lower-cased as CLIP's


def test_text_tower_reads_the_eot_token_causally():
    torch.manual_seed(0)
    tower = TextTransformer(vocab_size=50, context_length=8, width=16, layers=2, heads=4, out_dim=12, eot_id=2).eval()
    x = torch.tensor([[1, 7, 9, 2, 0, 0, 0, 0], [1, 7, 9, 2, 0, 11, 12, 13], [1, 7, 9, 5, 6, 4, 3, 2]])
    y = tower(x)                                         # row 2 is longer: rows 0 and 1 run with their padding
    assert y.shape == (3, 12) and torch.allclose(y[0], y[1], atol=1e-6)   # after the <eot>: never seen (causal)
    assert torch.allclose(tower(x[:1, :4]), y[:1], atol=1e-5)              # alone, cut at its <eot>: the same
    z = x.clone()
    z[1, 2] = 8                                          # a token before the <eot> changes its feature
    assert not torch.allclose(tower(z)[1], y[1], atol=1e-4)


# ---------------------------------------------------------------------------- training, zero-shot
def test_clip_learns_zero_shot_on_grayscale_and_other_methods_skip_zero_shot(tmp_path):
    ds = synthetic(n_train=256, n_test=128, image_size=16, channels=1, num_classes=4)
    tr = Trainer(run_cfg(steps=30, **{"optim.name": "adamw", "optim.lr": 2e-3}), ds, tmp_path)
    result = tr.fit(stop_after=30)
    assert tr.method.tokenizer_trainings == 1 and tr.method.tokenizer_json.numel() > 0
    assert math.isfinite(result.final_loss)
    ecfg = EvalConfig(protocols=["knn", "zero_shot"], knn_k=[10])
    out = evaluate(tr.method.encoder(), ds, ecfg, progress=False, zero_shot=tr.method.zero_shot_classifier)
    assert out["eval/zero_shot_class_names"] == "class indices"
    assert out["zero_shot/top1"] > 50.0, out                # 4 classes: chance is 25%
    # a method without a text tower: the protocol reports nothing, and fails nothing
    from harness.method.contract import Method

    assert Method.zero_shot_classifier(tr.method, ["a"]) is None
    plain = evaluate(tr.method.encoder(), ds, ecfg, progress=False)
    assert not any(k.startswith(("zero_shot", "eval/zero_shot")) for k in plain) and "knn/top1@10" in plain


@pytest.mark.skipif(not FASHION_DIR.exists(), reason="Fashion-MNIST is not installed")
def test_clip_runs_on_fashion_mnist_templated(tmp_path):
    from harness.data.sources import load_dataset

    cfg = run_cfg(steps=2, **{"data.name": "fashion_mnist", "data.train_subset": 64, "data.test_subset": 32})
    ds = load_dataset(cfg.data)
    tr = Trainer(cfg, ds, tmp_path)
    assert tr.fit(stop_after=2).steps == 2
    assert tr.method._captions.of(0) == [f"a photo of a {ds.class_names[int(ds.y_train[0])]}."]
    assert tr.method.zero_shot_classifier(ds.class_names)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_templated_runs_are_label_using_and_file_runs_are_not(tmp_path):
    assert uses_labels(run_cfg()) and run_tags(run_cfg(), "cpu")[LABELS_TAG] == "true"
    f = tmp_path / "c.csv"
    f.write_text("index,caption\n" + "".join(f"{i},an image\n" for i in range(64)))
    assert not uses_labels(run_cfg(**{"data.captions": str(f)})) and LABELS_TAG not in run_tags(run_cfg(**{"data.captions": str(f)}), "cpu")
    assert uses_labels(resolve({"method": "supervised"})) and not uses_labels(resolve({"method": "simclr"}))
    # a leaderboard row of a label-using run says so
    import pandas as pd

    from harness.report.leaderboard import build

    runs = pd.DataFrame([{"run_id": r, "params.method": m, "params.backbone": "cnn4", "params.data.name": "synthetic",
                          "params.budget.kind": "steps", "params.budget.value": "4", "params.seed": "0",
                          "params.data.captions": cap, "metrics.knn/top1@20": 50.0, "tags.sslbench.uses_labels": tag}
                         for r, m, cap, tag in (("a", "clip", "templated", "true"), ("b", "clip", "c.csv", None),
                                                ("c", "simclr", None, None))])
    rows = set(build(runs)[0].frame["method"])
    assert any(r.startswith("clip [") and r.endswith("(labels)") for r in rows), rows
    assert sum(r.endswith("(labels)") for r in rows) == 1 and "simclr" in rows


def test_checkpoint_is_weights_only_and_evaluates_zero_shot_without_the_captions(tmp_path):
    ds = synthetic(n_train=64, n_test=32, image_size=16)
    tr = Trainer(run_cfg(steps=3), ds, tmp_path / "run")
    tr.fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["model"]["tokenizer_json"].dtype == torch.uint8
    from harness.train.build import load_trained_method

    method, _, _ = load_trained_method(tmp_path / "run" / "checkpoint.pt")
    assert method._captions is None and method.tokenizer().to_json() == tr.method.tokenizer().to_json()
    names = [f"class {i}" for i in range(4)]
    x = torch.randn(5, 3, 16, 16)
    tr.method.eval()
    assert torch.allclose(method.zero_shot_classifier(names)(x), tr.method.zero_shot_classifier(names)(x), atol=1e-5)


# ---------------------------------------------------------------------------- SIGKILL, resume
DRIVER = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from harness.run.plugins import load_plugins
load_plugins()
from harness.data.sources import synthetic
from harness.train.config import from_dict
from harness.train.trainer import Trainer
Trainer(from_dict(json.loads(sys.argv[1])), synthetic(n_train=64, n_test=16, image_size=16), sys.argv[2]).fit()
"""


def test_sigkill_then_resume_equals_uninterrupted_and_keeps_the_tokenizer(tmp_path):
    # file captions with two per image: the resumed run must draw the same caption per step, too
    f = tmp_path / "c.jsonl"
    f.write_text("".join(json.dumps({"index": i, "caption": f"image {i % 7} {w}"}) + "\n"
                         for i in range(64) for w in ("left", "right")))
    steps = 12
    cfg = run_cfg(steps=steps, **{"data.captions": str(f), "train.checkpoint_every_steps": 1})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(to_dict(cfg)), str(tmp_path / "killed"),
                             str(torch.get_num_threads())], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "killed" / "checkpoint.pt"
    deadline, step = time.time() + 240, -1
    while time.time() < deadline and proc.poll() is None:
        try:
            step = torch.load(ckpt, weights_only=True)["step"]
        except Exception:  # noqa: BLE001  (not written yet, or being replaced)
            step = -1
        if step >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(ckpt, weights_only=True)
    assert 2 <= saved["step"] < steps and not saved["finished"], proc.stderr.read()[-500:]
    ds = synthetic(n_train=64, n_test=16, image_size=16)
    full = Trainer(cfg, ds, tmp_path / "full")
    full.fit()
    resumed = Trainer(cfg, ds, tmp_path / "killed")
    resumed.fit(resume=True)
    assert resumed.step == full.step == steps
    assert resumed.method.tokenizer_trainings == 0           # read from the checkpoint, never retrained
    assert torch.equal(resumed.method.tokenizer_json, saved["model"]["tokenizer_json"])
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert set(a) == set(b) and not [k for k in a if not torch.equal(a[k], b[k])]
    assert Path(ckpt).exists()
