"""Atari frames with the game's RAM state per frame (``data.name=atari``), and the Atari environment
the agent loop (``harness.rl``) plays: one place for both.

The environment (:func:`make_env`) is Gymnasium's ``ALE/<Game>-v5`` (the Arcade Learning Environment;
``ale-py`` ships the ROMs) with the emulator's frame skip off and sticky actions off
(``repeat_action_probability=0``, the Atari 100k setting of CURL's benchmark), wrapped in
Gymnasium's ``AtariPreprocessing``: frame skip 4 with a max over the last two frames, up to 30
no-op actions at reset, 84x84 grayscale (OpenCV area resize). Episodes end at game over or at
108,000 frames. :class:`FrameStack` stacks the last 4 frames (at reset the first frame fills the
stack), so an observation is uint8 (4, 84, 84); the dataset and the agent stack the same way.
Episode ``k`` of a stream starts with ``reset(seed=...)`` of a seed derived from (stream seed, k),
so an episode is a pure function of its seed and its actions.

The dataset (:func:`load_atari`): frame stacks of one game played by a seeded *random policy*
(uniform over the game's actions except NOOP, AtariARI's ``random_agent`` collection), each with
the game's state variables read from the console RAM after the step -- the RAM byte addresses per
game of the AtariARI benchmark (Anand et al., 2019, "Unsupervised State Representation Learning in
Atari", arXiv:1906.08226; :data:`RAM_ANNOTATIONS`, transcribed from the benchmark's
``ram_annotations.py``; a list of addresses is one variable per byte, ``name_0``, ``name_1``, ...).
TRAIN and TEST are different episodes (disjoint episode seeds), and a TEST stack identical to a
TRAIN stack (a start screen, say) is dropped (AtariARI does the same). Labels: none (one class);
the evaluation is the ``state_probe`` protocol on ``state_train`` / ``state_test``. Generation is
deterministic in (game, counts, seed, ale-py version) and cached as a compressed ``.npz`` named by
a hash of those, holding a sha256 of its contents that is checked on every load.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import zipfile
from collections import deque
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import DataError, did_you_mean
from harness.data.dataset import ImageDataset

STACK = 4              # frames per observation
SIZE = 84              # side of a preprocessed frame
FRAME_SKIP = 4
NOOP_MAX = 30
MAX_EPISODE_FRAMES = 108_000
DEFAULT_TRAIN, DEFAULT_TEST = 10_000, 2_000
FORMAT = 1             # bump when the generation changes (names the cache files)

# AtariARI's state variables: game -> {variable: RAM byte address, or a list of addresses (one variable each)}.
# Game names are ale-py's ROM ids.
RAM_ANNOTATIONS: dict[str, dict[str, int | list[int]]] = {
    "asteroids": dict(enemy_asteroids_y=[3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 16, 17, 18, 19],
                      enemy_asteroids_x=[21, 22, 23, 24, 25, 26, 27, 30, 31, 32, 33, 34, 35, 36, 37],
                      player_x=73, player_y=74, num_lives_direction=60, player_score_high=61, player_score_low=62,
                      player_missile_x1=83, player_missile_x2=84, player_missile_y1=86, player_missile_y2=87,
                      player_missile1_direction=89, player_missile2_direction=90),
    "battle_zone": dict(blue_tank_facing_direction=46, blue_tank_size_y=47, blue_tank_x=48, blue_tank2_facing_direction=52,
                        blue_tank2_size_y=53, blue_tank2_x=54, num_lives=58, missile_y=105, compass_needles_angle=84,
                        angle_of_tank=4, left_tread_position=59, right_tread_position=60, crosshairs_color=108, score=29),
    "berzerk": dict(player_x=19, player_y=11, player_direction=14, player_missile_x=22, player_missile_y=23,
                    player_missile_direction=21, robot_missile_direction=26, robot_missile_x=29, robot_missile_y=30,
                    num_lives=90, robots_killed_count=91, game_level=92, enemy_evilOtto_x=46, enemy_evilOtto_y=89,
                    enemy_robots_x=list(range(65, 73)), enemy_robots_y=list(range(56, 65)), player_score=[93, 94, 95]),
    "bowling": dict(ball_x=30, ball_y=41, player_x=29, player_y=40, frame_number_display=36,
                    pin_existence=list(range(57, 67)), score=33),
    "boxing": dict(player_x=32, player_y=34, enemy_x=33, enemy_y=35, enemy_score=19, clock=17, player_score=18),
    "breakout": dict(ball_x=99, ball_y=101, player_x=72, blocks_hit_count=77, block_bit_map=list(range(30)), score=84),
    "demon_attack": dict(level=62, player_x=22, enemy_x1=17, enemy_x2=18, enemy_x3=19, missile_y=21, enemy_y1=69,
                         enemy_y2=70, enemy_y3=71, num_lives=114),
    "freeway": dict(player_y=14, score=103, enemy_car_x=list(range(108, 118))),
    "frostbite": dict(top_row_iceflow_x=34, second_row_iceflow_x=33, third_row_iceflow_x=32, fourth_row_iceflow_x=31,
                      enemy_bear_x=104, num_lives=76, igloo_blocks_count=77, enemy_x=[84, 85, 86, 87], player_x=102,
                      player_y=100, player_direction=4, score=[72, 73, 74]),
    "hero": dict(player_x=27, player_y=31, power_meter=43, room_number=28, level_number=117, dynamite_count=50,
                 score=[56, 57]),
    "montezuma_revenge": dict(room_number=3, player_x=42, player_y=43, player_direction=52, enemy_skull_x=47,
                              enemy_skull_y=46, key_monster_x=44, key_monster_y=45, level=57, num_lives=58,
                              items_in_inventory_count=61, room_state=62, score_0=19, score_1=20, score_2=21),
    "ms_pacman": dict(enemy_sue_x=6, enemy_inky_x=7, enemy_pinky_x=8, enemy_blinky_x=9, enemy_sue_y=12, enemy_inky_y=13,
                      enemy_pinky_y=14, enemy_blinky_y=15, player_x=10, player_y=16, fruit_x=11, fruit_y=17,
                      ghosts_count=19, player_direction=56, dots_eaten_count=119, player_score=120, num_lives=123),
    "pitfall": dict(player_x=97, player_y=105, enemy_logs_x=98, enemy_scorpion_x=99, bottom_of_rope_y=18, clock_sec=89,
                    clock_min=88),
    "pong": dict(player_y=51, player_x=46, enemy_y=50, enemy_x=45, ball_x=49, ball_y=54, enemy_score=13, player_score=14),
    "private_eye": dict(player_x=63, player_y=86, room_number=92, clock=[67, 69], player_direction=58, score=[73, 74],
                        dove_x=48, dove_y=39),
    "qbert": dict(player_x=43, player_y=67, player_column=35, red_enemy_column=69, green_enemy_column=105,
                  score=[89, 90, 91], tile_color=[21, 52, 54, 83, 85, 87, 98, 100, 102, 104, 1, 3, 5, 7, 9, 32, 34, 36,
                                                  38, 40, 42]),
    "riverraid": dict(player_x=51, missile_x=117, missile_y=50, fuel_meter_high=55, fuel_meter_low=56),
    "seaquest": dict(enemy_obstacle_x=[30, 31, 32, 33], player_x=70, player_y=97, diver_or_enemy_missile_x=[71, 72, 73, 74],
                     player_direction=86, player_missile_direction=87, oxygen_meter_value=102, player_missile_x=103,
                     score=[57, 58], num_lives=59, divers_collected_count=62),
    "skiing": dict(player_x=25, clock_m=104, clock_s=105, clock_ms=106, score=107, object_y=list(range(87, 94))),
    "space_invaders": dict(invaders_left_count=17, player_score=104, num_lives=73, player_x=28, enemies_x=26, missiles_y=9,
                           enemies_y=24),
    "tennis": dict(enemy_x=27, enemy_y=25, enemy_score=70, ball_x=16, ball_y=17, player_x=26, player_y=24,
                   player_score=69),
    "venture": dict(sprite0_y=20, sprite1_y=21, sprite2_y=22, sprite3_y=23, sprite4_y=24, sprite5_y=25, sprite0_x=79,
                    sprite1_x=80, sprite2_x=81, sprite3_x=82, sprite4_x=83, sprite5_x=84, player_x=85, player_y=26,
                    current_room=90, num_lives=70, score_1_2=71, score_3_4=72),
    "video_pinball": dict(ball_x=67, ball_y=68, player_left_paddle_y=98, player_right_paddle_y=102, score_1=48, score_2=50),
    "yars_revenge": dict(player_x=32, player_y=31, player_missile_x=38, player_missile_y=37, enemy_x=43, enemy_y=42,
                         enemy_missile_x=47, enemy_missile_y=46),
}


def state_variables(game: str) -> dict[str, int]:
    """The game's state variables as {name: RAM address}, lists expanded to ``name_0``, ``name_1``, ..."""
    out: dict[str, int] = {}
    for name, addr in annotations(game).items():
        if isinstance(addr, list):
            out.update({f"{name}_{i}": a for i, a in enumerate(addr)})
        else:
            out[name] = addr
    return out


def annotations(game: str | None) -> dict[str, int | list[int]]:
    """The game's AtariARI annotations; a missing or unknown game is a one-line error listing the annotated games."""
    games = ", ".join(sorted(RAM_ANNOTATIONS))
    if not game:
        raise DataError(f"dataset 'atari' needs data.game=GAME, one of the games with RAM annotations (AtariARI): {games}")
    if game not in RAM_ANNOTATIONS:
        raise DataError(f"no RAM annotations for the Atari game '{game}'{did_you_mean(game, RAM_ANNOTATIONS)}; "
                        f"games with annotations (AtariARI): {games}")
    return RAM_ANNOTATIONS[game]


# ----------------------------------------------------------------------------- the environment


def _ale():
    try:
        import ale_py
        import gymnasium as gym
    except ImportError:
        raise DataError("Atari needs gymnasium and ale-py (the ROMs ship in its wheel): pip install 'sslbench[rl]'") from None
    gym.register_envs(ale_py)
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)   # no banner on every environment
    return gym, ale_py


def ale_version() -> str:
    return _ale()[1].__version__


def rom_ids() -> list[str]:
    """Every game ale-py has a ROM for (its snake_case ids: pong, breakout, space_invaders, ...)."""
    _ale()
    from ale_py import roms

    return sorted(roms.get_all_rom_ids())


def env_id(game: str) -> str:
    """``pong`` -> ``ALE/Pong-v5``; an unknown game is a one-line error."""
    ids = rom_ids()
    if game not in ids:
        raise DataError(f"unknown Atari game '{game}'{did_you_mean(game, ids)}; ale-py has ROMs for {len(ids)} games "
                        f"(its ROM ids, e.g. pong, breakout, space_invaders, ms_pacman)")
    return "ALE/" + "".join(w.capitalize() for w in game.split("_")) + "-v5"


def make_env(game: str):
    """``ALE/<Game>-v5`` with sticky actions off, preprocessed to 84x84 grayscale frames at frame skip 4
    (single frames: stack them with :class:`FrameStack`). Seed it per episode with ``reset(seed=...)``."""
    gym, _ = _ale()
    from gymnasium.wrappers import AtariPreprocessing

    env = gym.make(env_id(game), frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                   max_num_frames_per_episode=MAX_EPISODE_FRAMES, disable_env_checker=True)
    return AtariPreprocessing(env, noop_max=NOOP_MAX, frame_skip=FRAME_SKIP, screen_size=SIZE,
                              terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)


def episode_seed(stream_seed: int, episode: int) -> int:
    """The reset seed of episode ``episode`` of a stream (a 31-bit hash of both: distinct streams, distinct episodes)."""
    h = hashlib.sha256(f"{stream_seed}:{episode}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


class FrameStack:
    """The last :data:`STACK` frames as one uint8 (STACK, 84, 84) observation; at reset the first
    frame fills the stack."""

    def __init__(self, n: int = STACK):
        self.frames: deque[np.ndarray] = deque(maxlen=n)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        for _ in range(self.frames.maxlen):
            self.frames.append(frame)
        return self.observation()

    def push(self, frame: np.ndarray) -> np.ndarray:
        self.frames.append(frame)
        return self.observation()

    def observation(self) -> np.ndarray:
        return np.stack(self.frames)


def ram(env) -> np.ndarray:
    return env.unwrapped.ale.getRAM()


# ----------------------------------------------------------------------------- the dataset


def collect(game: str, count: int, stream_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frame stacks (uint8 (count, 4, 84, 84)) and the RAM after each (uint8 (count, 128)),
    from episodes 0, 1, ... of the stream ``stream_seed`` played by the seeded random policy (uniform over
    the actions except NOOP, as AtariARI's random agent); the reset observation of each episode included."""
    env = make_env(game)
    n_actions = env.action_space.n
    obs = np.empty((count, STACK, SIZE, SIZE), np.uint8)
    rams = np.empty((count, 128), np.uint8)
    i, episode, stack = 0, 0, FrameStack()
    try:
        while i < count:
            seed = episode_seed(stream_seed, episode)
            policy = np.random.default_rng(seed)
            frame, _ = env.reset(seed=seed)
            obs[i], rams[i] = stack.reset(frame), ram(env)
            i += 1
            done = False
            while not done and i < count:
                action = int(policy.integers(1, n_actions)) if n_actions > 1 else 0
                frame, _, terminated, truncated, _ = env.step(action)
                obs[i], rams[i] = stack.push(frame), ram(env)
                i += 1
                done = terminated or truncated
            episode += 1
    finally:
        env.close()
    return obs, rams


def _split_seeds(seed: int) -> tuple[int, int]:
    """The episode-stream seeds of TRAIN and TEST: disjoint streams, so never one episode in both."""
    return 2 * seed, 2 * seed + 1


def _content_hash(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode() + str(arrays[k].shape).encode() + str(arrays[k].dtype).encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def cache_path(game: str, train: int, test: int, seed: int, data_dir: str | None) -> Path:
    root = Path(data_dir).expanduser() if data_dir else Path(os.environ.get("SSLBENCH_DATA_DIR", "~/.cache/sslbench/data")).expanduser()
    key = f"{FORMAT}:{game}:{train}:{test}:{seed}:{ale_version()}"
    return root / "atari" / f"{game}-{train}-{test}-seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"


def generate(game: str, train: int, test: int, seed: int) -> dict[str, np.ndarray]:
    """TRAIN and TEST frame stacks and RAM of ``game`` (deterministic in the arguments and ale-py's version)."""
    s_train, s_test = _split_seeds(seed)
    x_tr, ram_tr = collect(game, train, s_train)
    x_te, ram_te = collect(game, test, s_test)
    seen = {hashlib.blake2b(x.tobytes(), digest_size=16).digest() for x in x_tr}
    keep = np.array([hashlib.blake2b(x.tobytes(), digest_size=16).digest() not in seen for x in x_te], dtype=bool)
    return {"x_train": x_tr, "ram_train": ram_tr, "x_test": x_te[keep], "ram_test": ram_te[keep]}


def _load_cached(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("x_train", "ram_train", "x_test", "ram_test")}
            digest = str(z["sha256"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if _content_hash(arrays) == digest else None


def _save_cached(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, sha256=np.array(_content_hash(arrays)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_atari(game: str | None, train_frames: int | None = None, test_frames: int | None = None,
               seed: int | None = None, data_dir: str | None = None) -> ImageDataset:
    """The ``atari`` dataset: generated on first use, then read from the cache (checked by its sha256)."""
    variables = state_variables(game)      # a missing or unannotated game fails before anything runs
    train = int(train_frames or DEFAULT_TRAIN)
    test = int(test_frames or DEFAULT_TEST)
    seed = int(seed or 0)
    path = cache_path(game, train, test, seed, data_dir)
    arrays = _load_cached(path) if path.exists() else None
    if arrays is None:
        why = "its contents do not match their hash" if path.exists() else "not cached yet"
        print(f"sslbench: atari {game}: generating {train} train / {test} test frame stacks (random policy, "
              f"seed {seed}; {why}) -> {path}", file=sys.stderr)
        arrays = generate(game, train, test, seed)
        try:
            _save_cached(path, arrays)
        except OSError as e:
            print(f"sslbench: warning: could not cache the atari frames at {path} ({e.strerror or e}); "
                  "they will be generated again next time", file=sys.stderr)
    if len(arrays["x_test"]) == 0:
        raise DataError(f"atari {game}: every test frame stack also appears in TRAIN; raise data.test_frames")

    def states(r: np.ndarray) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(r[:, addr].astype(np.int64)) for name, addr in variables.items()}

    x_tr, x_te = torch.from_numpy(arrays["x_train"]), torch.from_numpy(arrays["x_test"])
    return ImageDataset(f"atari-{game}", x_tr, torch.zeros(len(x_tr), dtype=torch.int64), x_te,
                        torch.zeros(len(x_te), dtype=torch.int64), 1, ["frame"], source=str(path),
                        state_train=states(arrays["ram_train"]), state_test=states(arrays["ram_test"]))
