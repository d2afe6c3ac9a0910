"""SIGKILL mid-run, then --resume, for the masked-image-modelling methods of issue 16 (SimMIM, DeepMIM,
LocalMIM): the resumed run ends with an uninterrupted run's weights (mask tokens, every decoder)."""

from test_kills_pretext import kill_then_resume
from test_methods_mim import MIM, run_cfg


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    kill_then_resume(tmp_path, MIM, run_cfg)
