"""The ossgym command line.

  ossgym demo     a short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 (CPU, about three minutes)
  ossgym train    GRPO-train a gpt-oss agent (LoRA) on an ossgym code env
  ossgym play     play 2048 in the terminal

Run "ossgym COMMAND --help" for the options of a command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from typing import Any

from ossgym.errors import OssGymError
from ossgym.options import option_help, option_of


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


# ----------------------------------------------------------------------------------------------------------
# ossgym train
# ----------------------------------------------------------------------------------------------------------

_CLI_SKIP = {"env_kwargs", "env_id"}  # given as --env and --env-option


def _parse_env_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. num_games=4)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (one option per GRPORunConfig field) to an argparse subparsers object."""
    from ossgym.training.config import GRPORunConfig

    parser = subparsers.add_parser(
        "train", help="GRPO-train a gpt-oss agent (LoRA) on an ossgym code env",
        description="GRPO-train a gpt-oss agent (LoRA) on an ossgym code env; writes log.jsonl, rewards.png, "
        "report.txt, checkpoints, the adapter and a merged bf16 model to --output-dir.",
    )
    parser.add_argument("--env", dest="env_id", default=GRPORunConfig.env_id,
                        help=option_help(_field(GRPORunConfig, "env_id")))
    parser.add_argument("--env-option", dest="env_options", action="append", default=[], type=_parse_env_option,
                        metavar="KEY=VALUE", help="an env option (JSON value), e.g. num_games=4; repeatable")
    for f in dataclasses.fields(GRPORunConfig):
        meta = option_of(f)
        if f.name in _CLI_SKIP or meta is None or not meta.cli:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = option_help(f).replace("%", "%%")
        if meta.kind is bool:
            parser.add_argument(flag, dest=f.name, default=default, action=argparse.BooleanOptionalAction,
                                help=help_text)
        elif meta.kind is tuple:
            parser.add_argument(flag, dest=f.name, default=",".join(default), metavar="A,B",
                                help=f"comma-separated: {help_text}")
        else:
            parser.add_argument(flag, dest=f.name, type=meta.kind, default=default, help=help_text,
                                metavar=meta.kind.__name__.upper() if meta.choices is None
                                else "{" + ",".join(meta.choices) + "}")
    parser.add_argument("--merged-export", default=True, action=argparse.BooleanOptionalAction,
                        help="also save the adapter merged into the base model in bf16")
    parser.add_argument("--progress", default=True, action=argparse.BooleanOptionalAction, help="show a progress bar")
    parser.set_defaults(func=_train_command)
    return parser


def config_from_args(args: argparse.Namespace) -> "GRPORunConfig":
    """The GRPORunConfig of parsed ``train`` arguments (ConfigError names the bad field)."""
    from ossgym.training.config import GRPORunConfig

    values: dict[str, Any] = {}
    for f in dataclasses.fields(GRPORunConfig):
        if f.name in _CLI_SKIP or not option_of(f).cli:
            continue
        value = getattr(args, f.name)
        if option_of(f).kind is tuple:
            value = tuple(v.strip() for v in str(value).split(",") if v.strip())
        values[f.name] = value
    return GRPORunConfig(env_id=args.env_id, env_kwargs=dict(args.env_options), **values)


def _train_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        from ossgym.training.run import run_training

        result = run_training(config, export_merged=args.merged_export, progress=args.progress)
    except OssGymError as exc:  # ConfigError names the field; ModelError says what is wrong with the model
        print(f"ossgym train: error: {exc}", file=sys.stderr)
        return 2
    print(result.report)
    return 0



# ----------------------------------------------------------------------------------------------------------
# ossgym demo, ossgym play
# ----------------------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """The project's main job on embedded defaults: a short GRPO run of the tiny agent on GptOss2048-v0 (CPU)."""
    import logging
    import os

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "transformers", "trl", "peft", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from ossgym.training.demo import run_demo

    try:
        result = run_demo(output_dir=args.output_dir, steps=args.steps, seed=args.seed)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the log, plot and report of the steps so far are in {args.output_dir}/", file=sys.stderr)
        return 130
    print(result.report)
    print(f"\nplot: {result.plot_path}\nreport: {result.report_path}\nlog: {result.log_path}")
    return 0


def _play(args: argparse.Namespace) -> int:
    """Let a person play 2048 in the terminal."""
    from ossgym.envs.game2048.play import play

    return play(seed=args.seed, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ossgym`` command."""
    parser = argparse.ArgumentParser(prog="ossgym", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="a short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 (CPU)",
                          description="A short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 on CPU, after a "
                          "supervised warm start; writes log.jsonl, rewards.png and report.txt after every step.")
    demo.add_argument("--seed", type=int, default=0, help="seed of the run [default: %(default)s]")
    demo.add_argument("--steps", type=int, default=8, help="GRPO steps [default: %(default)s]")
    demo.add_argument("--output-dir", default="runs/demo", help="where the outputs go [default: %(default)s]")
    demo.set_defaults(func=_demo)
    play = sub.add_parser("play", help="play 2048 in the terminal (W/A/S/D or arrow keys, Q quits)")
    play.add_argument("--seed", type=int, default=None, help="seed of the game [default: random]")
    play.add_argument("--size", type=int, default=4, help="board size [default: %(default)s]")
    play.set_defaults(func=_play)
    add_train_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ossgym`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ossgym train`` on its own (``python scripts/train_grpo.py ...``)."""
    return main(["train", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
