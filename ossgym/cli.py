"""The ``ossgym`` command line: ``ossgym demo``, ``ossgym play``, ..."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    """Play one seeded Game2048-v0 episode with a simple policy and print the final board and score."""
    import gymnasium
    import numpy as np

    import ossgym  # noqa: F401  (registers the environments)

    env = gymnasium.make("Game2048-v0", render_mode="ansi")
    obs, info = env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    total, steps, terminated, truncated = 0.0, 0, False, False
    while not (terminated or truncated):
        legal = np.flatnonzero(info["action_mask"])
        action = int(rng.choice(legal))
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        steps += 1
    print(env.render())
    print(f"Game2048-v0, seed {args.seed}: {steps} moves, score {info['score']}, max tile {info['max_tile']}")
    env.close()
    return 0


def _play(args: argparse.Namespace) -> int:
    """Let a person play 2048 in the terminal."""
    from ossgym.envs.game2048.play import play

    return play(seed=args.seed, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ossgym`` command."""
    parser = argparse.ArgumentParser(prog="ossgym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the project's main job on embedded defaults")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    play = sub.add_parser("play", help="play 2048 in the terminal (W/A/S/D or arrow keys, Q quits)")
    play.add_argument("--seed", type=int, default=None)
    play.add_argument("--size", type=int, default=4)
    play.set_defaults(func=_play)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ossgym`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
