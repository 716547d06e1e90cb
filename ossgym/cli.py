"""The ``ossgym`` command line: ``ossgym demo``, ``ossgym play``, ..."""

from __future__ import annotations

import argparse
import sys

from ossgym.train import add_train_parser


def _demo(args: argparse.Namespace) -> int:
    """The project's main job on embedded defaults: a short GRPO run of the tiny agent on GptOss2048-v0 (CPU)."""
    from ossgym.train import run_demo

    run_demo(output_dir=args.output_dir, steps=args.steps, seed=args.seed)
    return 0


def _play(args: argparse.Namespace) -> int:
    """Let a person play 2048 in the terminal."""
    from ossgym.envs.game2048.play import play

    return play(seed=args.seed, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ossgym`` command."""
    parser = argparse.ArgumentParser(prog="ossgym", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="a short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 (CPU)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--steps", type=int, default=8)
    demo.add_argument("--output-dir", default="runs/demo")
    demo.set_defaults(func=_demo)
    play = sub.add_parser("play", help="play 2048 in the terminal (W/A/S/D or arrow keys, Q quits)")
    play.add_argument("--seed", type=int, default=None)
    play.add_argument("--size", type=int, default=4)
    play.set_defaults(func=_play)
    add_train_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ossgym`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
