"""MaskablePPO (sb3-contrib) on Game2048-v0: the policy only ever picks legal moves (env.action_masks()).

    pip install 'ossgym[sb3]'
    python examples/sb3_maskable_ppo.py --timesteps 200000 --num-envs 16

The training and the evaluation games are in shared_setup.py (``sb3_train_and_play``), shared with sb3_ppo.py.
"""

from __future__ import annotations

from sb3_contrib import MaskablePPO

from shared_setup import sb3_options, sb3_train_and_play  # examples/shared_setup.py, next to this file


def main(argv: list[str] | None = None) -> dict:
    return sb3_train_and_play(MaskablePPO, sb3_options(__doc__, argv), masked=True)


if __name__ == "__main__":
    main()
