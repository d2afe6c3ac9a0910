"""SIGKILL mid-run, then --resume, for the masked-image-modelling methods of issue 16 (BEiT, DeepMIM,
LocalMIM, SimMIM, Feature Distillation): the resumed run ends with an uninterrupted run's weights
(mask tokens, every decoder, the tokenizer; FD's teacher reloaded from its checkpoint)."""

from test_kills_pretext import kill_then_resume
from test_methods_mim import MIM, fd_cfg, run_cfg

from harness.data.sources import synthetic
from harness.train.config import resolve
from harness.train.trainer import Trainer


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    teacher_cfg = resolve({"method": "rotnet", "backbone": "cnn4", "data.name": "synthetic", "budget.kind": "steps",
                           "budget.value": 2, "optim.batch_size": 32, "train.progress": False,
                           "train.precision": "fp32"})
    teacher = str(Trainer(teacher_cfg, synthetic(n_train=64, n_test=16, image_size=16), tmp_path / "teacher").fit()
                  .checkpoint)

    def make_cfg(name, **kw):
        return fd_cfg(teacher, **kw) if name == "feature_distillation" else run_cfg(name, **kw)

    kill_then_resume(tmp_path, [*MIM, "feature_distillation"], make_cfg)
