"""Atari frames as a dataset kind and the state-variable probe: a real ALE game (Pong), generated
deterministically and cached with a content hash, TRAIN and TEST from different episodes, the RAM
variables of the AtariARI annotations; the probe's F1 against a hand computation, its hold-out and
entropy rule, and its reading of features that do / do not carry a variable; one-line errors."""

import numpy as np
import pytest
import torch

from evals.config import EvalConfig
from evals.evaluate import check_fits
from evals.state_probe import block_holdout, entropy, state_probe, weighted_f1
from harness.core.errors import ConfigError, DataError
from harness.core.schema import DataConfig
from harness.data import atari
from harness.data.sources import load_dataset


@pytest.fixture(scope="module")
def pong(tmp_path_factory):
    return atari.load_atari("pong", 120, 60, 0, str(tmp_path_factory.mktemp("atari")))


def test_frames_and_ram_variables_of_a_real_game(pong):
    assert pong.x_train.shape == (120, 4, 84, 84) and pong.x_train.dtype == torch.uint8
    assert 0 < len(pong.x_test) <= 60 and pong.num_classes == 1
    assert set(pong.state_train) == set(atari.state_variables("pong")) == {
        "player_y", "player_x", "enemy_y", "enemy_x", "ball_x", "ball_y", "enemy_score", "player_score"}
    # the first sample is the reset observation: its stack is one frame repeated; later stacks move
    assert all(torch.equal(pong.x_train[0, 0], pong.x_train[0, i]) for i in range(4))
    assert torch.equal(pong.x_train[5, 1:], pong.x_train[6, :3])          # a stack shifts by one frame per step
    # the variables are the RAM bytes of the annotations, after the step of each sample (replayed here)
    env = atari.make_env("pong")
    seed = atari.episode_seed(atari._split_seeds(0)[0], 0)
    policy = np.random.default_rng(seed)
    env.reset(seed=seed)
    for _ in range(10):
        env.step(int(policy.integers(1, env.action_space.n)))
    ram = atari.ram(env)
    env.close()
    assert all(int(pong.state_train[v][10]) == int(ram[a]) for v, a in atari.state_variables("pong").items())


def test_generation_is_deterministic_cached_and_checked(pong, tmp_path):
    path = atari.cache_path("pong", 120, 60, 0, str(tmp_path))
    again = atari.load_atari("pong", 120, 60, 0, str(tmp_path))            # generated afresh in another folder
    assert path.exists() and again.fingerprint() == pong.fingerprint()
    cached = atari.load_atari("pong", 120, 60, 0, str(tmp_path))
    assert cached.fingerprint() == pong.fingerprint()
    with np.load(path) as z:                                               # a tampered cache is not believed
        arrays = {k: z[k] for k in z.files}
    arrays["x_train"][0, 0, 0, 0] ^= 1
    np.savez_compressed(path, **arrays)
    assert atari.load_atari("pong", 120, 60, 0, str(tmp_path)).fingerprint() == pong.fingerprint()
    other = atari.load_atari("pong", 120, 60, 1, str(tmp_path))            # another seed: other episodes
    assert other.fingerprint() != pong.fingerprint()


def test_train_and_test_are_different_episodes(pong):
    s_train, s_test = atari._split_seeds(0)
    assert len({atari._split_seeds(s)[i] for s in range(50) for i in (0, 1)}) == 100   # streams never shared
    assert s_train != s_test
    train = {bytes(x.numpy().tobytes()) for x in pong.x_train}
    assert not any(bytes(x.numpy().tobytes()) in train for x in pong.x_test)


def test_missing_or_unknown_game_is_one_line_listing_the_annotated_games(tmp_path):
    with pytest.raises(DataError, match="needs data.game=GAME.*pong") as e:
        load_dataset(DataConfig(name="atari", data_dir=str(tmp_path)))
    assert "\n" not in str(e.value) and "breakout" in str(e.value)
    with pytest.raises(DataError, match="no RAM annotations for the Atari game 'pongg' \\(did you mean 'pong'\\?\\)"):
        load_dataset(DataConfig(name="atari", game="pongg", data_dir=str(tmp_path)))
    with pytest.raises(DataError, match="unknown Atari game 'breakoutt'"):
        atari.env_id("breakoutt")


def test_weighted_f1_matches_a_hand_computation():
    true = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    # class 0: tp 2, fp 0, fn 1 -> 4/5; class 1: tp 1, fp 1, fn 1 -> 1/2; class 2: tp 1, fp 1, fn 0 -> 2/3
    expected = (3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6
    assert abs(weighted_f1(pred, true) - expected) < 1e-12
    assert weighted_f1(torch.tensor([7, 7]), torch.tensor([3, 3])) == 0.0     # a value never predicted


def test_holdout_blocks_and_entropy_rule():
    held = block_holdout(1000, 0.1, seed=0, block=100)
    assert int(held.sum()) == 100 and held.view(10, 100).all(1).sum() == 1    # one whole block of consecutive samples
    assert torch.equal(held, block_holdout(1000, 0.1, seed=0, block=100))
    assert entropy(torch.zeros(50, dtype=torch.int64)) == 0.0
    assert abs(entropy(torch.tensor([0, 1] * 20)) - np.log(2)) < 1e-12


def test_probe_reads_a_variable_the_features_carry_and_not_one_they_do_not():
    g = torch.Generator().manual_seed(0)
    n, m = 1200, 400
    pos = torch.randint(0, 8, (n + m,), generator=g)
    noise = torch.randint(0, 8, (n + m,), generator=g)
    const = torch.full((n + m,), 5)
    feats = torch.cat([torch.nn.functional.one_hot(pos, 8).float(), torch.randn(n + m, 8, generator=g)], 1)
    st = {"pos": pos, "noise": noise, "const": const}
    out = state_probe(feats[:n], {k: v[:n] for k, v in st.items()}, feats[n:], {k: v[n:] for k, v in st.items()},
                      precision="fp32")
    assert out["state/f1/pos"] > 0.95 and out["state/acc/pos"] > 95
    assert out["state/f1/noise"] < 0.4
    assert out["eval/state_probe_skipped"] == "const"                      # entropy 0 < 0.6 nats
    assert abs(out["state/f1"] - (out["state/f1/pos"] + out["state/f1/noise"]) / 2) < 1e-12


def test_protocol_fits_only_datasets_with_state_variables(pong, synthetic):
    check_fits(EvalConfig(protocols=["state_probe"]), pong)
    with pytest.raises(ConfigError, match="no state variables"):
        check_fits(EvalConfig(protocols=["state_probe"]), synthetic)
    with pytest.raises(ConfigError, match=r"no classes for knn, linear; .*eval.protocols=\[state_probe\]"):
        check_fits(EvalConfig(protocols=["knn", "linear", "align_uniform"]), pong)


def test_probe_diagnostics_effective_rank_and_pre_activations(pong, capsys):
    from conftest import load_benchmark
    from harness.models.backbones import build_backbone

    diag = load_benchmark("state_probe_diagnostics")
    # k orthogonal directions of equal variance: effective rank k; one direction dominating: close to 1
    basis = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))[0]
    signs = torch.tensor([[1.0], [-1.0]]).repeat(4, 1)                       # (8, 1): mean zero
    f = torch.cat([signs * basis[i] for i in range(3)])                       # 3 directions, 8 rows each
    assert diag.effective_rank(f) == pytest.approx(3.0, rel=1e-6)
    g = torch.cat([signs * basis[0] * 100, signs * basis[1] * 0.01])
    assert diag.effective_rank(g) == pytest.approx(1.0, abs=1e-3)
    torch.manual_seed(0)
    enc = build_backbone("dqn_der", 4, 84)
    x = torch.randn(3, 4, 84, 84)
    pre = diag.pre_activation(enc)(x)
    assert torch.equal(enc(x), torch.relu(pre)) and (pre < 0).any()
    diag.main(["--random", "dqn_der", "--data-dir", str(pong.source).rsplit("/atari/", 1)[0],
               "--train-frames", "120", "--test-frames", "60"])
    out = capsys.readouterr().out
    assert "random init dqn_der (seed 0)" in out and "pre-ReLU" in out and "state F1" in out
