"""The ossgym command line.

  ossgym list     the registered ossgym environments
  ossgym demo     a short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 (CPU, under a minute)
  ossgym train    GRPO-train a gpt-oss agent (LoRA) on an ossgym code env (flags, or a YAML --config)
  ossgym eval     score a checkpoint on a code env and place it in the env's reference ladder
  ossgym serve    serve an ossgym env as an OpenEnv environment (HTTP and WebSocket, localhost)
  ossgym play     play 2048 in the terminal

Run "ossgym COMMAND --help" for the options of a command; --log-level and --version go before COMMAND.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ossgym import __version__
from ossgym.errors import ConfigError, OssGymError
from ossgym.options import check_keys, option_help, option_of

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _parse_key_value(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with a JSON value (``num_games=4``, ``warmup_ratio=0.1``), or the text itself."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. num_games=4)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _error(command: str, exc: Exception) -> int:
    print(f"ossgym {command}: error: {exc}", file=sys.stderr)
    return 2


# ----------------------------------------------------------------------------------------------------------
# ossgym train
# ----------------------------------------------------------------------------------------------------------

_CLI_SKIP = {"env_kwargs", "env_id", "grpo"}  # given as --env, --env-option and --grpo-option


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand (one option per GRPORunConfig field) to an argparse subparsers object.

    Flags default to "not given" (argparse.SUPPRESS): :func:`config_from_args` takes a field from the flag,
    else from the ``--config`` file, else the field's default.
    """
    from ossgym.training.config import GRPORunConfig

    parser = subparsers.add_parser(
        "train", help="GRPO-train a gpt-oss agent (LoRA) on an ossgym code env",
        description="GRPO-train a gpt-oss agent (LoRA) on an ossgym code env; writes log.jsonl, rewards.png, "
        "report.txt, checkpoints, the adapter and a merged bf16 model to --output-dir. Options come from the "
        "flags, then the --config file, then the defaults.",
    )
    parser.add_argument("--config", default=None, metavar="RUN.YAML",
                        help="a YAML file of GRPORunConfig fields (env_id, steps, ..., env_kwargs: {...}, grpo: "
                        "{...}); flags given as well override it")
    parser.add_argument("--env", dest="env_id", default=argparse.SUPPRESS,
                        help=option_help(_field(GRPORunConfig, "env_id")))
    parser.add_argument("--env-option", dest="env_options", action="append", default=argparse.SUPPRESS,
                        type=_parse_key_value, metavar="KEY=VALUE",
                        help="an env option (JSON value), e.g. num_games=4; repeatable")
    parser.add_argument("--grpo-option", dest="grpo_options", action="append", default=argparse.SUPPRESS,
                        type=_parse_key_value, metavar="KEY=VALUE",
                        help="any other trl.GRPOConfig field (JSON value), e.g. lr_scheduler_type=cosine; repeatable")
    for f in dataclasses.fields(GRPORunConfig):
        meta = option_of(f)
        if f.name in _CLI_SKIP or meta is None or not meta.cli:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = option_help(f).replace("%", "%%")
        if meta.kind is bool:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS,
                                action=argparse.BooleanOptionalAction, help=help_text)
        elif meta.kind is tuple:
            parser.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, metavar="A,B",
                                help=f"comma-separated: {help_text}")
        else:
            parser.add_argument(flag, dest=f.name, type=meta.kind, default=argparse.SUPPRESS, help=help_text,
                                metavar=meta.kind.__name__.upper() if meta.choices is None
                                else "{" + ",".join(meta.choices) + "}")
    parser.add_argument("--merged-export", default=True, action=argparse.BooleanOptionalAction,
                        help="also save the adapter merged into the base model in bf16")
    parser.add_argument("--progress", default=True, action=argparse.BooleanOptionalAction, help="show a progress bar")
    parser.set_defaults(func=_train_command)
    return parser


def _split_names(value: Any) -> Any:
    """A tuple field given as text: comma-separated names (as on the command line)."""
    return tuple(v.strip() for v in value.split(",") if v.strip()) if isinstance(value, str) else value


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The GRPORunConfig fields of a YAML run file; ConfigError names an unknown key (with the closest field).

    Tuple fields also take comma-separated text; numbers written as text (YAML reads ``1e-5`` as a string)
    are read as the field's type.
    """
    from ossgym.training.config import GRPORunConfig

    path = Path(path)
    try:
        import yaml
    except ImportError:
        raise ConfigError("config", "reading a YAML run file needs PyYAML", "pip install pyyaml (or 'ossgym[train]').") from None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("config", f"cannot read {str(path)!r} ({exc.strerror})", "Pass the path of a YAML file.") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"{str(path)!r} is not valid YAML ({exc})", "Fix the file's syntax.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{str(path)!r} holds a {type(data).__name__}, not a mapping of fields",
                          "Write one 'field: value' per line, e.g. 'steps: 20'.")
    fields = {f.name: f for f in dataclasses.fields(GRPORunConfig)}
    check_keys(data, fields, "GRPORunConfig (the fields of ossgym train --config)")
    values: dict[str, Any] = {}
    for key, value in data.items():
        kind = option_of(fields[key]).kind
        if kind is tuple:
            value = _split_names(value)
        elif kind in (int, float) and isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                pass  # check_options names the field and what it accepts
        values[key] = value
    return values


def config_from_args(args: argparse.Namespace) -> "GRPORunConfig":
    """The GRPORunConfig of parsed ``train`` arguments: each field from its flag, else the ``--config`` file,
    else its default (ConfigError names the bad field)."""
    from ossgym.training.config import GRPORunConfig

    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    for f in dataclasses.fields(GRPORunConfig):
        if f.name in _CLI_SKIP - {"env_id"} or not option_of(f).cli or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        values[f.name] = _split_names(value) if option_of(f).kind is tuple else value
    for name, given in (("env_kwargs", "env_options"), ("grpo", "grpo_options")):  # a flag overrides one key
        if getattr(args, given, None):
            base = values.get(name, {})
            if not isinstance(base, dict):
                raise ConfigError(name, f"must be a mapping, got {base!r}", f"Write it as '{name}: {{key: value}}'.")
            values[name] = {**base, **dict(getattr(args, given))}
    return GRPORunConfig(**values)


def _train_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        from ossgym.training.run import run_training

        result = run_training(config, export_merged=args.merged_export, progress=args.progress)
    except OssGymError as exc:  # ConfigError names the field; ModelError says what is wrong with the model
        return _error("train", exc)
    print(result.report)
    return 0


# ----------------------------------------------------------------------------------------------------------
# ossgym list, eval, serve
# ----------------------------------------------------------------------------------------------------------


def _plain(text: str) -> str:
    """A docstring line without its reStructuredText markup."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def env_descriptions() -> dict[str, str]:
    """``{env id: one-line description}`` of every registered ossgym environment (its class docstring)."""
    import gymnasium
    from gymnasium.envs.registration import load_env_creator

    import ossgym  # noqa: F401  (registers the environments)

    out = {}
    for env_id, spec in sorted(gymnasium.registry.items()):
        entry = spec.entry_point
        if not (isinstance(entry, str) and entry.startswith("ossgym.")):
            continue
        doc = (load_env_creator(entry).__doc__ or "").strip().splitlines()
        line = _plain(doc[0]) if doc else ""
        line = line.split(": ", 1)[1] if line.startswith(f"{env_id}: ") else line
        out[env_id] = line[:1].upper() + line[1:]
    return out


def _list(args: argparse.Namespace) -> int:
    descriptions = env_descriptions()
    width = max(map(len, descriptions))
    for env_id, text in descriptions.items():
        print(f"{env_id:<{width}}  {text}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ossgym.evaluation import eval_command

    try:
        return eval_command(args)
    except OssGymError as exc:
        return _error("eval", exc)


def _serve(args: argparse.Namespace) -> int:
    """Check the env id and options, then serve the env over OpenEnv's protocol until interrupted."""
    import gymnasium

    from ossgym.training.config import check_env_id

    env_kwargs = dict(args.env_options)
    try:
        check_env_id(args.env_id)
        gymnasium.make(args.env_id, **env_kwargs).close()  # a bad option fails here, not in the first session
        from ossgym.integrations import openenv
    except (OssGymError, ImportError) as exc:  # ImportError: without ossgym[openenv]
        return _error("serve", exc)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving on %s: anyone who can reach port %d can step the env (and run code in its sandbox)",
            args.host, args.port)
    print(f"serving {args.env_id} on http://{args.host}:{args.port} (OpenEnv HTTP and WebSocket; Ctrl-C stops)")
    openenv.serve(args.env_id, host=args.host, port=args.port, max_concurrent_envs=args.max_concurrent_envs,
                  **env_kwargs)
    return 0


# ----------------------------------------------------------------------------------------------------------
# ossgym demo, ossgym play
# ----------------------------------------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    """The project's main job on embedded defaults: a short GRPO run of the tiny agent on GptOss2048-v0 (CPU)."""
    import os

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
    parser.add_argument("--version", action="version", version=f"ossgym {__version__}")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=None,
                        help="level of the log messages shown [default: info for demo, warning otherwise]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    listing = sub.add_parser("list", help="the registered ossgym environments, one line each",
                             description="List the registered ossgym environment ids with a one-line description.")
    listing.set_defaults(func=_list)
    demo = sub.add_parser("demo", help="a short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 (CPU)",
                          description="A short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0 on CPU, after a "
                          "supervised warm start; writes log.jsonl, rewards.png and report.txt after every step.")
    demo.add_argument("--seed", type=int, default=0, help="seed of the run [default: %(default)s]")
    demo.add_argument("--steps", type=int, default=8, help="GRPO steps [default: %(default)s]")
    demo.add_argument("--output-dir", default="runs/demo", help="where the outputs go [default: %(default)s]")
    demo.set_defaults(func=_demo, default_log_level="info")
    add_train_parser(sub)
    from ossgym.evaluation import EVAL_DESCRIPTION, add_eval_arguments

    evaluate = sub.add_parser("eval", help="score a checkpoint on a code env, placed in its reference ladder",
                              description=EVAL_DESCRIPTION)
    add_eval_arguments(evaluate).set_defaults(func=_eval)
    serve = sub.add_parser("serve", help="serve an ossgym env as an OpenEnv environment (localhost)",
                           description="Serve ENV_ID as an OpenEnv environment: HTTP and WebSocket, concurrent "
                           "sessions (needs 'ossgym[openenv]'). Binds to localhost unless --host says otherwise.")
    serve.add_argument("env_id", metavar="ENV_ID", help="a registered ossgym env id (see ossgym list)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind [default: %(default)s]")
    serve.add_argument("--port", type=int, default=8000, help="port [default: %(default)s]")
    serve.add_argument("--max-concurrent-envs", type=int, default=8,
                       help="sessions served at once [default: %(default)s]")
    serve.add_argument("--env-option", dest="env_options", action="append", default=[], type=_parse_key_value,
                       metavar="KEY=VALUE", help="an env option (JSON value), e.g. num_games=4; repeatable")
    serve.set_defaults(func=_serve)
    play = sub.add_parser("play", help="play 2048 in the terminal (W/A/S/D or arrow keys, Q quits)")
    play.add_argument("--seed", type=int, default=None, help="seed of the game [default: random]")
    play.add_argument("--size", type=int, default=4, help="board size [default: %(default)s]")
    play.set_defaults(func=_play)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ossgym`` console script."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_level or getattr(args, "default_log_level", "warning"))
    return args.func(args)


def train_main(argv: Sequence[str] | None = None) -> int:
    """``ossgym train`` on its own (``python scripts/train_grpo.py ...``)."""
    return main(["train", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
