"""Kernel choices by measurement (harness.models.autotune): a timed trial on the run's own shapes,
cached per machine, applied per convolution geometry, logged, and kept by a resumed run."""

import json
import time

import pytest
import torch

from harness.core.device import bf16_supported
from harness.models.autotune import ChoiceCache, KernelPlan, conv_geometries, machine_key, wgrad_trial
from harness.models.backbones import build_backbone
from harness.models.conv_wgrad import GemmWgradConv2d, geometry_key, use_gemm_wgrad
from harness.models.kernels import prepare_for_training

CPU = torch.device("cpu")


def _cnn4():
    torch.manual_seed(0)
    return build_backbone("cnn4", in_chans=3, img_size=16)


def test_machine_key_names_the_cpu_torch_onednn_and_threads():
    key = machine_key()
    assert torch.__version__ in key and "oneDNN" in key and f"{torch.get_num_threads()} threads" in key


def test_geometries_are_the_layers_inputs_and_the_model_is_left_as_it_was():
    model = _cnn4()
    use_gemm_wgrad(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    geos = conv_geometries(model, 3, [16, 8])
    convs = [m for m in model.modules() if isinstance(m, GemmWgradConv2d)]
    # every conv at each input size (16 px and 8 px inputs halve the maps stage by stage)
    assert (3, convs[0].out_channels, 3, 3, 1, 1, 1, 1, 16, 16) in geos and (3, convs[0].out_channels, 3, 3, 1, 1, 1, 1, 8, 8) in geos
    assert len(geos) == len(set(geos)) == 2 * len(convs)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_trial_times_both_kernels_and_picks_the_faster():
    res = wgrad_trial((16, 32, 3, 3, 1, 1, 1, 1, 8, 8), batch=4)
    assert res["native_ms"] > 0 and res["gemm_ms"] > 0
    assert res["choice"] == ("gemm" if res["gemm_ms"] < 0.95 * res["native_ms"] else "native")


@pytest.mark.skipif(not bf16_supported(CPU), reason="the GEMM weight gradient is a bf16 path")
def test_cached_choices_decide_per_geometry_and_the_layers_follow_them(tmp_path):
    cache = ChoiceCache(tmp_path)
    probe = _cnn4()
    use_gemm_wgrad(probe)
    geos = conv_geometries(probe, 3, [16])
    # the cache says: GEMM for the last geometry only (as if this machine had measured it so)
    for i, geo in enumerate(geos):
        saved = {"native_ms": 2.0, "gemm_ms": 1.0 if i == len(geos) - 1 else 3.0,
                 "choice": "gemm" if i == len(geos) - 1 else "native"}
        assert cache.get_or_measure(f"wgrad {geometry_key(geo)} b8", lambda saved=saved: saved) == (saved, True)
    model = _cnn4()
    plan = prepare_for_training(model, True, CPU, "bf16", "on", "auto", trial_model=model, channels=3, sizes=(16,),
                                batch=8, cache=cache)
    assert plan.mode == "measured" and plan.source == "cache" and plan.channels_last
    assert plan.conv_wgrad == {geometry_key(g): ("gemm" if i == len(geos) - 1 else "native") for i, g in enumerate(geos)}
    assert plan.summary().startswith("gemm on 1/")
    used = []
    orig = GemmWgradConv2d._eligible

    def spy(self, x):
        out = orig(self, x)
        used.append(out)
        return out

    GemmWgradConv2d._eligible = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(torch.randn(8, 3, 16, 16).contiguous(memory_format=torch.channels_last)).sum().backward()
    finally:
        GemmWgradConv2d._eligible = orig
    assert used == [False] * (len(geos) - 1) + [True]


@pytest.mark.skipif(not bf16_supported(CPU), reason="the GEMM weight gradient is a bf16 path")
def test_a_fresh_machine_measures_once_then_reads_its_cache(tmp_path):
    cache = ChoiceCache(tmp_path)
    model = _cnn4()
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    stats = bn.running_mean.clone()
    first = prepare_for_training(model, True, CPU, "bf16", "auto", "auto", trial_model=model, channels=3, sizes=(16,),
                                 batch=8, cache=cache)
    assert first.source == "measured" and "memory_format" in first.timings
    assert torch.equal(bn.running_mean, stats), "the trials leave the model's statistics as they were"
    stored = json.loads(cache.path.read_text())[machine_key()]
    assert sum(k.startswith("wgrad ") for k in stored) == len(conv_geometries(model, 3, [16]))
    again = prepare_for_training(_cnn4(), True, CPU, "bf16", "auto", "auto", trial_model=_cnn4(), channels=3,
                                 sizes=(16,), batch=8, cache=cache)
    assert again.source == "cache" and again.to_state() == first.to_state()


def test_forced_settings_and_a_checkpoint_plan_are_applied_as_they_are(tmp_path):
    cache = ChoiceCache(tmp_path)
    model = _cnn4()
    plan = prepare_for_training(model, True, CPU, "bf16", "off", "auto", trial_model=model, channels=3, sizes=(16,),
                                batch=8, cache=cache)
    assert not plan.channels_last and plan.mode == "native" and not cache.path.exists()
    saved = KernelPlan(True, {"32->64 k3x3 s1 p1 @8x8": "gemm"}, "measured").to_state()
    again = prepare_for_training(model, True, CPU, "bf16", plan=KernelPlan.from_state(saved))
    assert again.source == "checkpoint" and again.to_state() == saved
    assert all(m.wgrad_choices == saved["conv_wgrad"] for m in model.modules() if isinstance(m, GemmWgradConv2d))
    conv = next(m for m in model.modules() if isinstance(m, GemmWgradConv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()


def test_a_corrupt_or_unwritable_cache_is_measured_again_not_an_error(tmp_path):
    cache = ChoiceCache(tmp_path)
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text("{not json")
    assert cache.get("anything") is None
    assert cache.get_or_measure("k", lambda: {"choice": "native"}) == ({"choice": "native"}, True)   # measured again
    assert cache.get("k") == {"choice": "native"}
    ro = ChoiceCache(tmp_path / "file")
    (tmp_path / "file").write_text("a file where the folder should be")
    assert ro.get_or_measure("k", lambda: {"choice": "gemm"}) == ({"choice": "gemm"}, True)   # silently not cached
    assert ro.get("k") is None


def test_knn_auto_on_a_cpu_times_both_exact_searches_once_and_keeps_their_neighbours(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    from evals.knn import resolve_backend, search

    monkeypatch.setenv("SSLBENCH_CACHE_DIR", str(tmp_path))
    g = torch.Generator().manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(3000, 32, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(300, 32, generator=g), dim=1)
    choice = resolve_backend("auto", "flat", "cpu", q, db, 20)
    (entry,) = json.loads((tmp_path / "kernel_choices.json").read_text())[machine_key()].values()
    assert entry["choice"] == choice == ("faiss" if entry["faiss_s"] < 0.95 * entry["torch_s"] else "torch")
    assert entry["rows"] == 3000 and entry["queries"] == 300
    assert resolve_backend("auto", "flat", "cpu", q, db, 20) == choice       # from the cache
    s_auto, i_auto = search(q, db, 20, "auto")
    s_torch, i_torch = search(q, db, 20, "torch")
    assert torch.equal(i_auto, i_torch) and torch.allclose(s_auto, s_torch, atol=1e-5)


def test_runs_starting_together_measure_once_and_agree(tmp_path):
    """The trial runs under the cache's lock: a second run waits and reads the first one's result instead
    of timing against its load (the kill tests' resumed runs must get the killed runs' kernels)."""
    import threading

    calls, results = [], []

    def trial():
        calls.append(1)
        time.sleep(0.2)
        return {"choice": "on" if len(calls) == 1 else "off"}

    def run():
        results.append(ChoiceCache(tmp_path).get_or_measure("memfmt k", trial))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(now for _, now in results) == [False, False, False, True]
    assert all(res == {"choice": "on"} for res, _ in results)
    (tmp_path / "file").write_text("a file where the folder should be")
    assert ChoiceCache(tmp_path / "file").get_or_measure("k", lambda: {"choice": "x"}) == ({"choice": "x"}, True)
    full = ChoiceCache(tmp_path / "full")                  # the write fails after the trial (a full disk)
    def no_space(key, value):
        raise OSError(28, "No space left on device")
    full._write = no_space
    calls.clear()
    assert full.get_or_measure("k", trial) == ({"choice": "on"}, True) and len(calls) == 1


def test_attention_choice_is_measured_kept_in_the_plan_and_applied_to_the_step(tmp_path):
    from torch.profiler import profile

    from harness.models.autotune import attention_shape, attention_trial

    vit = build_backbone("vit_mini_p4", 3, 32)
    assert attention_shape(vit, 32, 8) == (8, vit.blocks[0].attn.num_heads, 65, 128 // vit.blocks[0].attn.num_heads)
    assert attention_shape(build_backbone("cnn4", 3, 32), 32, 8) is None
    res = attention_trial((2, 2, 5, 8), bf16=False)
    assert res["choice"] in ("flash", "math") and res["flash_ms"] > 0 and res["math_ms"] > 0
    # the choice travels with a checkpoint; a checkpoint from before the choice ran the default kernel
    assert KernelPlan.from_state(KernelPlan(attention="math").to_state()).attention == "math"
    assert KernelPlan.from_state({"channels_last": False}).attention == "flash"
    # forced choices, and auto on a ViT: a trial, cached
    cache = ChoiceCache(tmp_path)
    forced = prepare_for_training(vit, False, CPU, "fp32", attention="math", trial_model=vit, sizes=(32,), batch=4,
                                  cache=cache)
    assert forced.attention == "math" and "attention" not in forced.timings
    auto = prepare_for_training(vit, False, CPU, "fp32", trial_model=vit, sizes=(32,), batch=4, cache=cache)
    assert auto.attention == auto.timings["attention"]["choice"] and auto.source == "measured"
    assert prepare_for_training(vit, False, CPU, "fp32", trial_model=vit, sizes=(32,), batch=4, cache=cache).source == "cache"

    q, k, v = (torch.randn(2, 2, 5, 8, requires_grad=True) for _ in range(3))

    def kernels(plan):
        with profile() as p, plan.attention_context():
            torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
        return {e.key for e in p.key_averages()}

    assert any("flash" in name for name in kernels(KernelPlan(attention="flash")))
    assert not any("flash" in name for name in kernels(KernelPlan(attention="math")))


def test_the_attention_choice_is_logged_and_splits_records_only_when_it_is_not_the_default(tmp_path):
    from harness.core.identity import identity_fields
    from harness.data.sources import synthetic
    from harness.train.config import resolve
    from harness.train.trainer import Trainer

    ds = synthetic(n_train=32, n_test=8, image_size=16)
    base = {"method": "mae", "backbone": "vit_mini_p4", "data.name": "synthetic", "budget.kind": "steps",
            "budget.value": 1, "optim.batch_size": 16, "train.progress": False, "train.precision": "fp32"}
    params = {}
    for att in ("flash", "math"):
        t = Trainer(resolve({**base, "train.attention": att}), ds, tmp_path / att)
        assert t.kernels.attention == att
        params[att] = t.run_params()
    assert "train.resolved.attention" not in params["flash"]            # as every record before the choice
    assert params["math"]["train.resolved.attention"] == "math"
    assert identity_fields({**params["math"], "train.attention": "math"}) != identity_fields(params["flash"])
    assert "train.attention" not in identity_fields({**params["flash"], "train.attention": "flash"})


def test_the_attention_option_at_its_default_leaves_run_names_as_they_were():
    from harness.run.naming import run_name
    from harness.train.config import resolve

    base = {"method": "simclr", "backbone": "cnn4", "data.name": "synthetic"}
    name = run_name(resolve(base))
    assert run_name(resolve({**base, "train.attention": "auto"})) == name
    assert run_name(resolve({**base, "train.attention": "math"})) != name
