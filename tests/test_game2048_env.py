"""Game2048-v0, its native vector env, rendering and terminal play."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode

import ossgym  # noqa: F401  (registers the environments)
from ossgym.envs.game2048 import engine as E
from ossgym.envs.game2048.env import Game2048Env
from ossgym.envs.game2048.play import QUIT, key_to_action, run_session
from ossgym.envs.game2048.render import image_shape, render_ansi, render_rgb
from ossgym.envs.game2048.vector import Game2048VectorEnv
from ossgym.errors import ConfigError

ONE_ROW = [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]  # a 2 in the top-left corner


@pytest.mark.parametrize("kwargs", [
    {}, {"one_hot": True}, {"size": 3}, {"size": 6, "reward_mode": "log2"},
    {"render_mode": "ansi", "illegal_move": "penalize"}, {"render_mode": "rgb_array", "illegal_move": "terminate"},
])
def test_check_env(kwargs):
    env = gym.make("Game2048-v0", **kwargs)
    check_env(env.unwrapped, skip_render_check=False)


def test_make_with_namespace_and_spaces():
    env = gym.make("ossgym:Game2048-v0")
    assert isinstance(env.unwrapped, Game2048Env)
    assert env.action_space == gym.spaces.Discrete(4)
    assert env.observation_space == gym.spaces.Box(0, 15, (4, 4), np.uint8)
    obs, info = env.reset(seed=0)
    assert obs.shape == (4, 4) and obs.dtype == np.uint8 and (obs > 0).sum() == 2
    assert set(info) == {"action_mask", "score", "max_tile"}
    assert info["action_mask"].dtype == np.bool_ and info["score"] == 0 and info["max_tile"] in (2, 4)


def rollout(env, seed, steps=300, action_seed=0):
    obs, info = env.reset(seed=seed)
    pick = np.random.default_rng(action_seed)
    frames = [(obs.copy(), 0.0, False, info["score"])]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(int(pick.integers(4)))
        frames.append((obs.copy(), reward, terminated, info["score"]))
        if terminated:
            obs, info = env.reset()
            frames.append((obs.copy(), 0.0, False, info["score"]))
    return frames


def same_frames(a, b):
    return len(a) == len(b) and all(np.array_equal(x[0], y[0]) and x[1:] == y[1:] for x, y in zip(a, b))


def test_determinism_under_seeds():
    env = gym.make("Game2048-v0")
    a, b, c = rollout(env, 7), rollout(env, 7), rollout(env, 8)
    assert same_frames(a, b)
    assert not same_frames(a, c)
    assert any(f[2] for f in a)  # the run crossed a game end and a reset without seed


def test_rewards_add_up_to_the_score_and_obs_matches_the_game():
    env = gym.make("Game2048-v0")
    obs, info = env.reset(seed=3)
    total = 0.0
    terminated = False
    steps = 0
    while not terminated:
        legal = np.flatnonzero(info["action_mask"])
        prev = obs
        obs, reward, terminated, truncated, info = env.step(int(legal[steps % len(legal)]))
        assert obs is not prev and obs.flags.writeable
        assert np.array_equal(obs, env.unwrapped.game.board)
        assert info["max_tile"] == 1 << int(obs.max())
        assert not truncated and not info["illegal_move"]
        total += reward
        steps += 1
    assert total == info["score"] > 0
    assert not info["action_mask"].any()


@pytest.mark.parametrize("mode, reward, terminated", [("noop", 0.0, False), ("penalize", -2.5, False),
                                                      ("terminate", 0.0, True)])
def test_illegal_move_modes(mode, reward, terminated):
    env = gym.make("Game2048-v0", illegal_move=mode, illegal_penalty=2.5)
    obs, info = env.reset(seed=0, options={"board": ONE_ROW, "score": 12})
    assert np.array_equal(obs, ONE_ROW) and info["score"] == 12
    assert info["action_mask"].tolist() == [False, True, True, False]
    obs2, r, term, trunc, info = env.step(E.LEFT)
    assert np.array_equal(obs2, ONE_ROW) and info["illegal_move"]
    assert (r, term, trunc) == (reward, terminated, False)
    assert info["score"] == 12
    if not terminated:  # a legal move still works after it
        obs3, r, term, _, info = env.step(E.RIGHT)
        assert obs3[0, 3] == 1 and (obs3 > 0).sum() == 2 and not info["illegal_move"]


def test_default_illegal_mode_is_noop_and_bad_config_is_refused():
    assert Game2048Env().config.illegal_move == "noop"
    for kwargs in ({"illegal_move": "explode"}, {"reward_mode": "x"}, {"size": 2}, {"illegal_penalty": -1},
                   {"one_hot": 1}):
        with pytest.raises(ConfigError):
            Game2048Env(**kwargs)
    with pytest.raises(ConfigError):
        Game2048VectorEnv(num_envs=0)


def test_unknown_options_are_refused_at_make_naming_the_closest():
    with pytest.raises(ConfigError) as e:
        gym.make("Game2048-v0", sise=4)
    assert e.value.field == "sise" and "Did you mean size?" in str(e.value)
    with pytest.raises(ConfigError) as e:
        gym.make_vec("Game2048-v0", num_envs=2, illegal_moves="noop")  # the native vector env
    assert e.value.field == "illegal_moves" and "Did you mean illegal_move?" in str(e.value)
    with pytest.raises(ConfigError) as e:
        gym.make("Game2048-v0", one_hot="yes")
    assert e.value.field == "one_hot"
    env = gym.make("Game2048-v0")
    with pytest.raises(ConfigError) as e:
        env.reset(seed=0, options={"bord": ONE_ROW})
    assert e.value.field == "bord" and "Did you mean board?" in str(e.value)
    vec = gym.make_vec("Game2048-v0", num_envs=2)
    with pytest.raises(ConfigError) as e:
        vec.reset(seed=0, options={"mask": [True, False]})
    assert e.value.field == "mask" and "reset_mask" in str(e.value)


def test_one_hot_and_log2_reward():
    env = gym.make("Game2048-v0", one_hot=True, reward_mode="log2")
    board = [[1, 1, 0, 0], [2, 2, 2, 2], [0, 0, 0, 0], [0, 0, 0, 0]]
    obs, _ = env.reset(seed=0, options={"board": board})
    assert obs.shape == (4, 4, 16) and obs.dtype == np.uint8
    assert (obs.sum(axis=-1) == 1).all() and np.array_equal(obs.argmax(axis=-1), board)
    assert env.observation_space.contains(obs)
    obs, reward, *_ = env.step(E.LEFT)  # gains 4 + 8 + 8 = 20
    assert reward == pytest.approx(np.log2(20))
    assert obs[0, 0, 2] == 1 and obs[1, 0, 3] == 1 and obs[1, 1, 3] == 1


def test_render_modes():
    env = gym.make("Game2048-v0", render_mode="rgb_array")
    env.reset(seed=1, options={"board": [[1, 2, 3, 11], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 15]]})
    img = env.render()
    assert img.dtype == np.uint8 and img.shape == image_shape(4) == (500, 444, 3)
    env.step(E.DOWN)
    assert not np.array_equal(img, env.render())  # a different board gives a different picture
    assert render_rgb(np.zeros((6, 6), np.uint8)).shape == image_shape(6)
    text = gym.make("Game2048-v0", render_mode="ansi")
    text.reset(seed=1, options={"board": [[1, 2, 3, 11], [0] * 4, [0] * 4, [0] * 4], "score": 77})
    out = text.render()
    assert isinstance(out, str) and "\x1b[" in out and "2048" in out and "score 77" in out
    plain = render_ansi(np.array([[1, 0, 0], [0, 11, 0], [0, 0, 3]]), color=False)
    assert plain.splitlines()[1].split() == [".", "2048", "."]


# ---------------------------------------------------------------------------------------------------
# The vector env


def compare_vector_with_sync(n, steps, mode, **kwargs):
    vec = gym.make_vec("Game2048-v0", num_envs=n, vectorization_mode="vector_entry_point",
                       autoreset_mode=mode, **kwargs)
    ref = gym.make_vec("Game2048-v0", num_envs=n, vectorization_mode="sync",
                       vector_kwargs={"autoreset_mode": mode}, **kwargs)
    o1, i1 = vec.reset(seed=11)
    o2, i2 = ref.reset(seed=11)
    assert np.array_equal(o1, o2) and o1.dtype == o2.dtype
    assert all(np.array_equal(i1[k], i2[k]) for k in i2)
    pick = np.random.default_rng(0)
    ends = 0
    for t in range(steps):
        actions = pick.integers(0, 4, n)
        r1, r2 = vec.step(actions), ref.step(actions)
        for x, y in zip(r1[:4], r2[:4]):
            assert np.array_equal(x, y) and x.dtype == y.dtype, t
        assert set(r1[4]) == set(r2[4]), t
        for k, v in r2[4].items():
            if k == "final_obs":
                assert all((p is None and q is None) or np.array_equal(p, q) for p, q in zip(r1[4][k], v))
            elif k == "final_info":
                assert set(r1[4][k]) == set(v) and all(np.array_equal(r1[4][k][j], v[j]) for j in v)
            else:
                assert np.array_equal(r1[4][k], v) and r1[4][k].dtype == v.dtype, (t, k)
        ends += int((r2[2] | r2[3]).sum())
    assert ends >= 3  # autoreset happened


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("kwargs", [{}, {"illegal_move": "terminate", "one_hot": True},
                                    {"illegal_move": "penalize", "reward_mode": "log2", "max_episode_steps": 40},
                                    {"size": 3}])
def test_vector_env_equals_single_envs(mode, kwargs):
    compare_vector_with_sync(4, 500, mode, **kwargs)


def test_make_vec_uses_the_native_vector_env():
    vec = gym.make_vec("Game2048-v0", num_envs=3)
    assert isinstance(vec.unwrapped, Game2048VectorEnv)
    assert vec.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert vec.observation_space.shape == (3, 4, 4) and vec.action_space.shape == (3,)
    obs, info = vec.reset(seed=[5, None, 7])
    assert obs.shape == (3, 4, 4) and info["action_mask"].shape == (3, 4)
    single, _ = gym.make("Game2048-v0").reset(seed=7)
    assert np.array_equal(obs[2], single)


def test_vector_env_next_step_autoreset_by_hand():
    """An env that ended ignores its next action and restarts, as a single env's reset() would."""
    vec = Game2048VectorEnv(num_envs=2, illegal_move="terminate")
    seed = next(s for s in range(100) if not vec.reset(seed=s)[1]["action_mask"][1].all())
    mask = vec.reset(seed=seed)[1]["action_mask"]
    single = Game2048Env(illegal_move="terminate")
    single.reset(seed=seed + 1)
    illegal = int(np.flatnonzero(~mask[1])[0])
    legal0 = int(np.flatnonzero(mask[0])[0])
    obs, rew, term, trunc, info = vec.step(np.array([legal0, illegal]))
    assert term[1] and not trunc[1]
    _, _, t_single, _, _ = single.step(illegal)
    assert t_single
    obs, rew, term, trunc, info = vec.step(np.array([int(np.flatnonzero(info["action_mask"][0])[0]), 1]))
    reset_obs, _ = single.reset()
    assert np.array_equal(obs[1], reset_obs) and rew[1] == 0 and not term[1] and not trunc[1]
    assert not info["_illegal_move"][1] and info["_illegal_move"][0]


def test_vector_render():
    vec = Game2048VectorEnv(num_envs=2, render_mode="rgb_array")
    vec.reset(seed=0)
    frames = vec.render()
    assert len(frames) == 2 and all(f.shape == image_shape(4) and f.dtype == np.uint8 for f in frames)
    text = Game2048VectorEnv(num_envs=2, render_mode="ansi")
    text.reset(seed=0)
    assert all(isinstance(f, str) and "score" in f for f in text.render())


# ---------------------------------------------------------------------------------------------------
# Terminal play


def test_keys():
    assert [key_to_action(k) for k in "wdsaWDSA"] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert [key_to_action(k) for k in ("\x1b[A", "\x1b[C", "\x1b[B", "\x1b[D")] == [0, 1, 2, 3]
    assert key_to_action("q") == QUIT and key_to_action("Q") == QUIT and key_to_action("x") is None


def test_run_session_plays_and_quits():
    game = E.Game2048(4, rng=np.random.default_rng(0))
    game.set_board(ONE_ROW)
    out: list[str] = []
    score = run_session(game, iter(["d", "x", "s", "q", "w"]), out.append, color=False)
    assert score == game.score and game.moves == 2
    assert "right: +0" in out[1] and "is not a move" in out[2] and out[-1].startswith("Quit.")


def test_play_needs_a_terminal():
    code = "from ossgym.envs.game2048.play import play; import sys; sys.exit(play(seed=1, size=4))"
    out = subprocess.run([sys.executable, "-c", code], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 2 and "interactive terminal" in out.stderr


@pytest.mark.timeout(60)
def test_play_in_a_pseudo_terminal():
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ossgym.cli", "play", "--seed", "3"], stdin=slave,
                            stdout=slave, stderr=slave, env={**os.environ, "PYTHONPATH": os.getcwd()})
    os.close(slave)
    try:
        out = b""
        while b"2048 (4x4)" not in out:  # the first frame is drawn after the terminal is in cbreak mode
            out += os.read(master, 65536)
        os.write(master, b"w\x1b[Cxq")
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = out.decode(errors="replace")
    assert "'x' is not a move" in text and "Quit. Score" in text and ("up:" in text or "up does not" in text)
