"""PPO (Stable-Baselines3) on Game2048-v0, all boards stepped at once by the native vector env.

    pip install 'ossgym[sb3]'
    python examples/sb3_ppo.py --timesteps 200000 --num-envs 16

The training and the evaluation games are in shared_setup.py (``sb3_train_and_play``), shared with
sb3_maskable_ppo.py.
"""

from __future__ import annotations

from stable_baselines3 import PPO

from shared_setup import sb3_options, sb3_train_and_play  # examples/shared_setup.py, next to this file


def main(argv: list[str] | None = None) -> dict:
    return sb3_train_and_play(PPO, sb3_options(__doc__, argv))


if __name__ == "__main__":
    main()
