"""``ossgym train``: GRPO of a gpt-oss agent on an ossgym code env, with a log, a plot, a report and exports.

:func:`run_training` runs one GRPO job (TRL's ``GRPOTrainer`` through :mod:`ossgym.agents.grpo`) and writes to
its output folder: ``log.jsonl`` (one record per step: every reward component, reward, loss, KL, completion
length, seconds in generation, scoring and the whole step), ``rewards.png``, ``report.txt``, Trainer
checkpoints (``checkpoint-N``: adapter, optimizer, state), ``adapter/`` (the LoRA adapter, loadable with
peft) and ``merged/`` (the adapter merged into the base model, saved in bf16, with the tokenizer).
:func:`add_train_parser` adds the ``train`` subcommand to the ``ossgym`` command line; :func:`run_demo` is
``make demo``: a short run of the bundled tiny agent on GptOss2048-v0 on CPU.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ossgym.errors import OssGymError

if TYPE_CHECKING:
    from ossgym.agents.agent import GptOssAgent
    from ossgym.agents.grpo import GRPORunConfig

logger = logging.getLogger(__name__)

LOG_FILE, PLOT_FILE, REPORT_FILE = "log.jsonl", "rewards.png", "report.txt"
ADAPTER_DIR, MERGED_DIR = "adapter", "merged"


@dataclass
class TrainResult:
    """What a run wrote and measured."""

    output_dir: Path
    records: list[dict]  # the log.jsonl records, one per step
    component_names: tuple[str, ...]
    report: str
    generation_backend: str  # "fast", "reference" (the agent's own loop) or "trl"
    wall_s: float
    checkpoints: list[Path] = field(default_factory=list)
    adapter_dir: Path | None = None
    merged_dir: Path | None = None

    @property
    def log_path(self) -> Path:
        """The per-step JSONL log."""
        return self.output_dir / LOG_FILE

    @property
    def plot_path(self) -> Path:
        """The PNG plot of the reward components over steps."""
        return self.output_dir / PLOT_FILE


# ----------------------------------------------------------------------------------------------------------
# Per-step log and progress bar
# ----------------------------------------------------------------------------------------------------------


def _step_record(step: int, logs: dict, components: Sequence[str], timings: dict) -> dict:
    def get(key: str) -> float | None:
        value = logs.get(key)
        return None if value is None else float(value)

    return {
        "step": step,
        "reward": get("reward"),
        "reward_std": get("reward_std"),
        "frac_reward_zero_std": get("frac_reward_zero_std"),  # groups whose completions all scored alike
        "components": {name: get(f"rewards/{name}/mean") for name in components},
        "loss": get("loss"),
        "kl": get("kl"),  # TRL computes it only when beta > 0; null otherwise
        "completion_length": get("completions/mean_length"),
        "generation_s": get("timing/generation_s"),
        "scoring_s": get("timing/scoring_s"),
        "optimizer_s": timings.get("optimizer_s"),
        "step_s": timings.get("step_s"),
        "peak_gpu_memory_gib": timings.get("peak_gpu_memory_gib"),  # null on CPU
        "learning_rate": get("learning_rate"),
    }


def _make_callback(path: Path, components: Sequence[str], records: list[dict], progress: bool):
    """A TrainerCallback that appends a JSONL record per logged step and drives a tqdm bar."""
    import torch
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class RunLog(TrainerCallback):
        def __init__(self) -> None:
            self.bar = None
            self.marks: dict[str, float] = {}
            self.timings: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kwargs):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")
            self.bar = tqdm(total=state.max_steps, desc="GRPO", unit="step", disable=not progress)

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.marks["step"] = time.perf_counter()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.marks["optimizer"] = time.perf_counter()

        def on_optimizer_step(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.timings["optimizer_s"] = time.perf_counter() - self.marks["optimizer"]

        def on_step_end(self, args, state, control, **kwargs):
            self.timings["step_s"] = time.perf_counter() - self.marks["step"]
            if cuda:
                self.timings["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs or "reward" not in logs:
                return  # the end-of-training summary, not a step
            record = _step_record(state.global_step, logs, components, self.timings)
            records.append(record)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            self.bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{record['loss']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return RunLog()


# ----------------------------------------------------------------------------------------------------------
# Plot and report
# ----------------------------------------------------------------------------------------------------------


def plot_rewards(records: Sequence[dict], component_names: Sequence[str], path: Path | str, title: str = "") -> Path:
    """Write a PNG of every reward component (and the total reward) over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in component_names:
        values = [r["components"].get(name) for r in records]
        ax.plot(steps, [float("nan") if v is None else v for v in values], marker=".", label=name)
    ax.plot(steps, [r["reward"] for r in records], color="black", linewidth=2, label="reward (sum)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean over the step's completions")
    ax.set_title(title or "reward components")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _mean(values: Sequence[float | None]) -> float | None:
    valid = [v for v in values if v is not None]
    return sum(valid) / len(valid) if valid else None


def reward_table(records: Sequence[dict], component_names: Sequence[str], window: int | None = None) -> str:
    """A text table: each component's mean over the first and the last ``window`` steps, and the change."""
    if not records:
        return "(no steps logged)"
    window = window or max(1, len(records) // 3)
    first, last = records[:window], records[-window:]
    rows = [(name, [r["components"].get(name) for r in first], [r["components"].get(name) for r in last])
            for name in component_names]
    rows.append(("reward (sum)", [r["reward"] for r in first], [r["reward"] for r in last]))
    head = f"{'component':<14} {f'first {window}':>10} {f'last {window}':>10} {'change':>9}"
    lines = [head, "-" * len(head)]
    for name, a, b in rows:
        ma, mb = _mean(a), _mean(b)
        if ma is None or mb is None:
            lines.append(f"{name:<14} {'-':>10} {'-':>10} {'-':>9}")
        else:
            lines.append(f"{name:<14} {ma:>10.3f} {mb:>10.3f} {mb - ma:>+9.3f}")
    return "\n".join(lines)


def format_report(result: TrainResult, config: "GRPORunConfig", notes: Sequence[str] = ()) -> str:
    """The short text report of a run: setup, reward table, time split, where the outputs are."""
    recs = result.records
    total = lambda key: sum(r[key] for r in recs if r.get(key) is not None)  # noqa: E731
    lines = [
        f"GRPO on {config.env_id} {config.env_kwargs or ''}".rstrip(),
        f"model: {config.model or 'embedded tiny gpt-oss'}; LoRA rank {config.lora_rank} on "
        f"{', '.join(config.lora_targets + config.lora_target_parameters)}; generation: {result.generation_backend}",
        f"{len(recs)} steps x {config.prompts_per_step} prompt(s) x group {config.group_size}; "
        f"learning rate {config.learning_rate:g}; beta {config.beta:g}",
        *notes,
        "",
        reward_table(recs, result.component_names),
        "",
        f"time: {result.wall_s:.1f} s in all; generation {total('generation_s'):.1f} s, scoring "
        f"{total('scoring_s'):.1f} s, optimizer {total('optimizer_s'):.1f} s, steps {total('step_s'):.1f} s",
        f"groups with no reward spread (no learning signal): "
        f"{100 * (_mean([r.get('frac_reward_zero_std') for r in recs]) or 0):.0f}%",
        f"mean completion length: {_mean([r['completion_length'] for r in recs]) or 0:.1f} tokens; "
        f"last loss {recs[-1]['loss'] if recs else float('nan'):.4g}",
        f"outputs in {result.output_dir}: {LOG_FILE}, {PLOT_FILE}, "
        + ", ".join(p.name for p in [*result.checkpoints, result.adapter_dir, result.merged_dir] if p is not None),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------


def load_agent(config: "GRPORunConfig") -> "GptOssAgent":
    """The agent a run trains: the embedded tiny model (fp32, CPU) or ``config.model`` (bf16 on the GPU if any)."""
    import torch

    from ossgym.agents.agent import AgentConfig, GptOssAgent

    agent_config = AgentConfig(reasoning_effort=config.reasoning_effort, max_seq_len=config.max_seq_len,
                               use_fast_engine=config.generation == "fast")
    if config.model is None:
        return GptOssAgent.tiny(config=agent_config)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return GptOssAgent.from_pretrained(config.model, dtype=dtype, use_fast_engine=config.generation == "fast",
                                       config=agent_config)


def _export(trainer: Any, tokenizer: Any, output_dir: Path, merged: bool) -> tuple[Path, Path | None]:
    """Save the LoRA adapter, and (``merged``) the adapter merged into the base model, in bf16."""
    import torch

    adapter_dir = output_dir / ADAPTER_DIR
    model = trainer.model
    model.save_pretrained(adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    if not merged:
        return adapter_dir, None
    merged_dir = output_dir / MERGED_DIR
    base = model.merge_and_unload()  # folds the adapter into the base weights (in place)
    # a bf16 model (the GPU case) is saved as it is; a float32 one (the small CPU case) through a bf16 copy
    export = base if base.dtype == torch.bfloat16 else copy.deepcopy(base).to(torch.bfloat16)
    export.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    trainer.model = base
    return adapter_dir, merged_dir


def _time_trl_generation(trainer: Any) -> None:
    """Log ``timing/generation_s`` for TRL's own generation too (the ossgym rollout logs its own)."""
    generate = trainer._generate

    def timed(prompts: list):
        start = time.perf_counter()
        out = generate(prompts)
        trainer._log_metric("timing/generation_s", time.perf_counter() - start)
        return out

    trainer._generate = timed


def run_training(
    config: "GRPORunConfig",
    agent: "GptOssAgent | None" = None,
    prompt_fn: Callable[[int], list[dict]] | None = None,
    export_merged: bool = True,
    progress: bool = True,
    notes: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    **grpo_overrides: Any,
) -> TrainResult:
    """Run GRPO as ``config`` says and write the log, plot, report, checkpoints and exports.

    ``agent`` defaults to :func:`load_agent`; ``prompt_fn(seed)`` to the env's own chat messages;
    ``grpo_overrides`` set other ``trl.GRPOConfig`` fields; ``notes`` go into the report; ``callbacks`` are
    extra ``transformers.TrainerCallback`` objects.
    """
    import os
    import warnings

    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    from ossgym.agents.grpo import build_dataset, make_rollout_func
    from ossgym.agents.grpo_env import AgentGenerate, EnvRewards

    start = time.perf_counter()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    env = EnvRewards(config.env_id, config.env_kwargs, config.reasoning_effort)
    agent = agent if agent is not None else load_agent(config)
    agent.config = dataclasses.replace(agent.config, reasoning_effort=config.reasoning_effort)
    base_model = agent.model.get_base_model() if hasattr(agent.model, "get_base_model") else agent.model
    config.check_model_fits(int(base_model.config.max_position_embeddings))
    config.check_lora_targets(base_model)
    dataset = build_dataset(prompt_fn or env.prompt, config.num_dataset_rows, config.seed, config.reasoning_effort)
    distinct = {json.dumps(p, sort_keys=True): p for p in dataset["prompt"]}.values()
    config.check_prompt_length(max(len(agent.encode_prompt(p)) for p in distinct))
    generate = AgentGenerate(agent) if config.generation == "fast" else None
    cpu = not torch.cuda.is_available()
    overrides: dict[str, Any] = dict(
        use_cpu=cpu, bf16=not cpu, disable_tqdm=True, lr_scheduler_type="constant",
        save_strategy="steps", save_steps=config.save_steps or config.steps,
    )
    overrides.update(grpo_overrides)
    records: list[dict] = []
    callback = _make_callback(output_dir / LOG_FILE, env.component_names, records, progress)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # TRL's gradient_checkpointing field name
        trainer = GRPOTrainer(
            model=agent.model,
            reward_funcs=env.reward_funcs(),
            args=config.grpo_config(**overrides),
            train_dataset=dataset,
            processing_class=agent.tokenizer,
            peft_config=config.lora_config(),
            rollout_func=make_rollout_func(generate, max_prompt_length=config.max_prompt_length),
            callbacks=[callback, *callbacks],
        )
        if generate is None:
            _time_trl_generation(trainer)
        for cls in (PrinterCallback, ProgressCallback):  # our callback logs and shows progress instead
            trainer.remove_callback(cls)
        trainer.train()
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    adapter_dir, merged_dir = _export(trainer, agent.tokenizer, output_dir, export_merged)
    agent.model = trainer.model
    agent.reset_engine()
    backend = "trl" if generate is None else (generate.backend or "reference")
    result = TrainResult(output_dir=output_dir, records=records, component_names=env.component_names, report="",
                         generation_backend=backend, wall_s=time.perf_counter() - start, checkpoints=checkpoints,
                         adapter_dir=adapter_dir, merged_dir=merged_dir)
    plot_rewards(records, env.component_names, output_dir / PLOT_FILE,
                 title=f"GRPO on {config.env_id} ({config.model or 'tiny gpt-oss'})")
    result.report = format_report(result, config, notes)
    (output_dir / REPORT_FILE).write_text(result.report + "\n")
    logger.info("GRPO run done in %.1f s; outputs in %s", result.wall_s, output_dir)
    return result


# ----------------------------------------------------------------------------------------------------------
# Command line
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
    from ossgym.agents.grpo import GRPORunConfig

    parser = subparsers.add_parser(
        "train", help="GRPO-train a gpt-oss agent (LoRA) on an ossgym code env",
        description="GRPO-train a gpt-oss agent (LoRA) on an ossgym code env; writes log.jsonl, rewards.png, "
        "report.txt, checkpoints, the adapter and a merged bf16 model to --output-dir.",
    )
    parser.add_argument("--env", dest="env_id", default=GRPORunConfig.env_id, help="env id (default %(default)s)")
    parser.add_argument("--env-option", dest="env_options", action="append", default=[], type=_parse_env_option,
                        metavar="KEY=VALUE", help="an env option (JSON value), e.g. num_games=4; repeatable")
    for f in dataclasses.fields(GRPORunConfig):
        if f.name in _CLI_SKIP:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        help_text = f"default: {default!r}"
        if f.name == "model":
            parser.add_argument(flag, default=None, help="local folder or hub id of a gpt-oss checkpoint "
                                "(default: the embedded tiny gpt-oss)")
        elif isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, default=default, action=argparse.BooleanOptionalAction,
                                help=help_text)
        elif isinstance(default, tuple):
            parser.add_argument(flag, dest=f.name, default=",".join(default), metavar="A,B",
                                help=f"comma-separated; {help_text}")
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=default, help=help_text)
    parser.add_argument("--merged-export", default=True, action=argparse.BooleanOptionalAction,
                        help="also save the adapter merged into the base model in bf16")
    parser.add_argument("--progress", default=True, action=argparse.BooleanOptionalAction, help="show a progress bar")
    parser.set_defaults(func=_train_command)
    return parser


def config_from_args(args: argparse.Namespace) -> "GRPORunConfig":
    """The GRPORunConfig of parsed ``train`` arguments (ConfigError names the bad field)."""
    from ossgym.agents.grpo import GRPORunConfig

    values: dict[str, Any] = {}
    for f in dataclasses.fields(GRPORunConfig):
        if f.name in _CLI_SKIP:
            continue
        value = getattr(args, f.name)
        if isinstance(f.default, tuple):
            value = tuple(v.strip() for v in str(value).split(",") if v.strip())
        values[f.name] = value
    return GRPORunConfig(env_id=args.env_id, env_kwargs=dict(args.env_options), **values)


def _train_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(args)
        result = run_training(config, export_merged=args.merged_export, progress=args.progress)
    except OssGymError as exc:  # ConfigError names the field; ModelError says what is wrong with the model
        print(f"ossgym train: error: {exc}", file=sys.stderr)
        return 2
    print(result.report)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/train_grpo.py ...``: the ``train`` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="train_grpo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(["train", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


# ----------------------------------------------------------------------------------------------------------
# The demo
# ----------------------------------------------------------------------------------------------------------

DEMO_ENV_OPTIONS = {"num_games": 2}


def run_demo(output_dir: str | Path = "runs/demo", steps: int = 8, seed: int = 0) -> TrainResult:
    """``make demo``: GRPO of the bundled tiny agent on GptOss2048-v0 on CPU, after a supervised warm start.

    Prints the reward table and writes the plot (``rewards.png``) and the rest of a run's outputs.
    """
    import torch

    from ossgym.agents.grpo import GRPORunConfig
    from ossgym.agents.grpo_env import EnvRewards
    from ossgym.agents.warm_start import STRATEGY_2048_COMPLETIONS, supervised_warm_start

    torch.manual_seed(seed)
    # One intra-op thread: the tiny model's ops are small, and on a 2-core machine shared with the sandbox
    # workers, OpenMP threads waiting on each other made the run about 3x slower (measured: generation
    # 6.7 s -> 2.2 s per group).
    torch.set_num_threads(1)
    config = GRPORunConfig(
        env_id="GptOss2048-v0", env_kwargs=dict(DEMO_ENV_OPTIONS), steps=steps, group_size=8, prompts_per_step=1,
        max_prompt_length=1024, max_completion_length=32, max_seq_len=2048, learning_rate=3e-3, lora_rank=8,
        lora_alpha=16, gradient_checkpointing=False, num_dataset_rows=64, output_dir=str(output_dir), seed=seed,
    )
    agent = load_agent(config)
    env = EnvRewards(config.env_id, config.env_kwargs, config.reasoning_effort)
    t0 = time.perf_counter()
    losses = supervised_warm_start(agent, [env.prompt(seed)], STRATEGY_2048_COMPLETIONS)
    warm = (f"SUPERVISED WARM START (not RL): the LM head was fitted to {len(STRATEGY_2048_COMPLETIONS)} hand-written"
            f" completions of different quality (loss {losses[0]:.2f} -> {losses[-1]:.2f},"
            f" {time.perf_counter() - t0:.1f} s) so the random tiny model samples among them; GRPO then learns"
            " which of them pays.")
    print(warm)
    result = run_training(config, agent=agent, notes=[warm])
    print(result.report)
    return result
