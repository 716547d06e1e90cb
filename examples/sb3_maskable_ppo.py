"""MaskablePPO (sb3-contrib) on Game2048-v0: the policy only ever picks legal moves (env.action_masks()).

    pip install 'ossgym[sb3]'
    python examples/sb3_maskable_ppo.py --timesteps 200000 --num-envs 16
"""

from __future__ import annotations

import argparse

import numpy as np
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import VecMonitor

from ossgym.integrations.sb3 import Game2048VecEnv

try:
    from sb3_ppo import play
except ImportError:  # run as examples.sb3_maskable_ppo
    from examples.sb3_ppo import play


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timesteps", type=int, default=200_000, help="environment steps to train for")
    ap.add_argument("--num-envs", type=int, default=16, help="boards stepped together")
    ap.add_argument("--n-steps", type=int, default=128, help="rollout length per env and update")
    ap.add_argument("--eval-games", type=int, default=20, help="games played by the trained policy")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    env = VecMonitor(Game2048VecEnv(num_envs=args.num_envs, seed=args.seed, one_hot=True, reward_mode="log2"))
    model = MaskablePPO("MlpPolicy", env, n_steps=args.n_steps, batch_size=min(256, args.n_steps * args.num_envs),
                        seed=args.seed, device="cpu", verbose=0)
    model.learn(args.timesteps)

    scores = play(model, args.eval_games, args.seed + 10_000, masked=True)
    print(f"MaskablePPO after {args.timesteps} steps: mean score {np.mean(scores):.0f} over {len(scores)} games "
          f"(docs/baselines.md: random 995, corner 3658)")
    return {"scores": scores}


if __name__ == "__main__":
    main()
