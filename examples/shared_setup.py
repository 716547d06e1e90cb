"""The set-up the SB3 examples share with each other, and the TRL examples with each other (not an example).

SB3 (sb3_ppo.py, sb3_maskable_ppo.py): the command line, training on the native vector env, and games played
by the trained policy. TRL (trl_grpo_reward_functions.py, trl_multiturn.py): the command line, the model and
tokenizer, the GRPOConfig of a short run, and the train-then-log step. Each dependency is imported where it is
used, so an SB3 example does not need TRL and the other way round.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


# -- Stable-Baselines3 --------------------------------------------------------------------------------------
def sb3_options(doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line of an SB3 example (``doc``: its docstring, shown by ``--help``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=200_000, help="environment steps to train for")
    ap.add_argument("--num-envs", type=int, default=16, help="boards stepped together")
    ap.add_argument("--n-steps", type=int, default=128, help="rollout length per env and update")
    ap.add_argument("--eval-games", type=int, default=20, help="games played by the trained policy")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def sb3_train_and_play(algorithm: Any, args: argparse.Namespace, masked: bool = False) -> dict:
    """Train ``algorithm`` (an SB3 class: PPO, MaskablePPO) on Game2048-v0 boards stepped at once, then play
    ``args.eval_games`` games with it (``masked``: give the policy the legal moves); returns their scores."""
    from stable_baselines3.common.vec_env import VecMonitor

    from ossgym.integrations.sb3 import Game2048VecEnv

    env = VecMonitor(Game2048VecEnv(num_envs=args.num_envs, seed=args.seed, one_hot=True, reward_mode="log2"))
    model = algorithm("MlpPolicy", env, n_steps=args.n_steps, batch_size=min(256, args.n_steps * args.num_envs),
                      seed=args.seed, device="cpu", verbose=0)
    model.learn(args.timesteps)

    scores = play(model, args.eval_games, args.seed + 10_000, masked)
    print(f"{algorithm.__name__} after {args.timesteps} steps: mean score {np.mean(scores):.0f} over "
          f"{len(scores)} games (docs/baselines.md: random 995, corner 3658)")
    return {"scores": scores}


def play(model: Any, games: int, seed: int, masked: bool = False) -> list[int]:
    """Play ``games`` games with the trained policy; returns their scores."""
    from ossgym.integrations.sb3 import Game2048VecEnv

    env = Game2048VecEnv(num_envs=games, seed=seed, one_hot=True, reward_mode="log2", max_episode_steps=2000)
    obs = env.reset()
    scores: list[int | None] = [None] * games
    while any(s is None for s in scores):
        kwargs = {"action_masks": env.action_masks()} if masked else {}
        action, _ = model.predict(obs, deterministic=False, **kwargs)
        obs, _, dones, infos = env.step(action)
        for i in np.flatnonzero(dones):
            if scores[i] is None:
                scores[i] = infos[i]["score"]
    return [int(s) for s in scores]


# -- TRL ----------------------------------------------------------------------------------------------------
def trl_options(doc: str, output_dir: str) -> argparse.ArgumentParser:
    """The command line of a TRL example (an example adds its own options, then parses)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny', a local folder or a hub id of a gpt-oss model")
    ap.add_argument("--env-id", default="GptOss2048-v0")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=1)
    ap.add_argument("--num-generations", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=16)
    ap.add_argument("--output-dir", default=output_dir)
    return ap


def load(model: str) -> tuple[Any, Any]:
    """(model, tokenizer) of ``"tiny"`` (the embedded tiny gpt-oss) or a gpt-oss checkpoint, padded on the left."""
    from ossgym.agents.agent import GptOssAgent

    agent = GptOssAgent.tiny() if model == "tiny" else GptOssAgent.from_pretrained(model)
    agent.tokenizer.padding_side = "left"
    return agent.model, agent.tokenizer


def trl_config(args: argparse.Namespace) -> Any:
    """The GRPOConfig of a short run from the options (the router aux loss off: ``grpo_config``)."""
    from ossgym.integrations.trl import grpo_config

    return grpo_config(output_dir=args.output_dir, max_steps=args.max_steps, report_to="none",
                       per_device_train_batch_size=args.num_generations, num_generations=args.num_generations,
                       max_completion_length=args.max_completion_length, logging_steps=1,
                       use_cpu=args.model == "tiny", gradient_checkpointing=False, save_strategy="no")


def train_and_log(trainer: Any) -> dict:
    """Run ``trainer`` and print the last logged rewards; returns every log entry that has a reward."""
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    print(logs[-1])
    return {"logs": logs}
