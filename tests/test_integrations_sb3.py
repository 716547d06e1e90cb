"""ossgym.integrations.sb3: the SB3 VecEnv over the native vector env, action masks, the episode limit,
and the Game2048-v0 baselines."""

import gymnasium
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

import ossgym  # noqa: F401,E402
from ossgym.evaluation import game2048_policy, play_game2048  # noqa: E402
from ossgym.integrations.sb3 import DEFAULT_MAX_EPISODE_STEPS, Game2048VecEnv, make_env  # noqa: E402


def test_vecenv_follows_single_envs_step_for_step():
    n = 3
    venv = Game2048VecEnv(num_envs=n, seed=7, max_episode_steps=None)
    obs = venv.reset()
    singles = [gymnasium.make("Game2048-v0") for _ in range(n)]
    sobs = [e.reset(seed=7 + i)[0] for i, e in enumerate(singles)]
    np.testing.assert_array_equal(obs, np.stack(sobs))
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(400):
        actions = rng.integers(0, 4, n)
        obs, rewards, dones, infos = venv.step(actions)
        assert rewards.dtype == np.float32 and dones.dtype == np.bool_
        for i, e in enumerate(singles):
            o, r, term, trunc, info = e.step(int(actions[i]))
            assert rewards[i] == r and dones[i] == (term or trunc)
            if dones[i]:
                ended += 1
                np.testing.assert_array_equal(infos[i]["terminal_observation"], o)
                assert infos[i]["score"] == info["score"] and not infos[i]["TimeLimit.truncated"]
            else:
                np.testing.assert_array_equal(obs[i], o)
                np.testing.assert_array_equal(venv.action_masks()[i], info["action_mask"])
                np.testing.assert_array_equal(venv.env_method("action_masks")[i], info["action_mask"])
        if ended:
            break  # after an autoreset the vector env's new game differs from a fresh single env's seed
    assert ended, "no game ended in 400 random moves"


def test_default_episode_limit_truncates():
    assert make_env().spec.max_episode_steps == DEFAULT_MAX_EPISODE_STEPS
    venv = Game2048VecEnv(num_envs=2, seed=0, max_episode_steps=5)
    venv.reset()
    for t in range(5):
        obs, _, dones, infos = venv.step(np.zeros(2, dtype=np.int64))  # "up" forever: illegal no-ops soon
    assert dones.all() and all(i["TimeLimit.truncated"] for i in infos)
    assert obs.shape == (2, 4, 4) and (obs > 0).sum(axis=(1, 2)).tolist() == [2, 2]  # fresh games


def test_sb3_checker_and_ppo_learn_a_few_steps():
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_checker import check_env
    from stable_baselines3.common.vec_env import VecMonitor

    check_env(make_env(), warn=True)
    venv = VecMonitor(Game2048VecEnv(num_envs=4, seed=0, max_episode_steps=64))
    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(128)
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (4,)


def test_maskable_ppo_uses_the_action_masks():
    sb3_contrib = pytest.importorskip("sb3_contrib")
    from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported

    venv = Game2048VecEnv(num_envs=4, seed=1, max_episode_steps=64)
    assert is_masking_supported(venv)
    venv.reset()
    model = sb3_contrib.MaskablePPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    model.learn(128)
    obs = venv.reset()
    masks = get_action_masks(venv)
    for _ in range(20):
        action, _ = model.predict(obs, action_masks=masks)
        assert masks[np.arange(4), action].all()  # never an illegal move
        obs, _, _, infos = venv.step(action)
        assert not any(i.get("illegal_move") for i in infos)
        masks = get_action_masks(venv)
    # the single env too (DummyVecEnv finds Game2048Env.action_masks through the wrappers)
    from stable_baselines3.common.vec_env import DummyVecEnv

    dummy = DummyVecEnv([make_env])
    dummy.reset()
    assert get_action_masks(dummy).shape == (1, 4)


def test_baselines_are_deterministic_and_ordered():
    seeds = range(6)
    means = {}
    for name in ("random", "greedy", "corner", "expectimax"):
        a, b = play_game2048(name, seeds), play_game2048(name, seeds)
        assert a == b
        means[name] = np.mean([g["score"] for g in a])
    assert means["random"] < means["corner"] < means["expectimax"]
    assert means["greedy"] < means["expectimax"]
    board = np.zeros((4, 4), dtype=np.uint8)
    board[3, 0] = board[3, 1] = 1
    assert game2048_policy("greedy")(board, np.ones(4, bool)) in (1, 3)  # merging 2+2 is right or left
