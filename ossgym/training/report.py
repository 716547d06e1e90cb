"""What a run writes while it runs: ``log.jsonl`` (one record per step), ``rewards.png`` and ``report.txt``.

:class:`RunLog` (a ``transformers.TrainerCallback``) appends a record per step (every reward component,
reward, loss, KL, completion length, and the seconds spent in generation, scoring, TRL's forward and
backward passes, the optimizer step and the whole step) and rewrites the plot and the report after every
step, so a run that is stopped still leaves all three. :func:`format_report` is the text report.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ossgym.training.config import GRPORunConfig

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

    @property
    def report_path(self) -> Path:
        """The text report."""
        return self.output_dir / REPORT_FILE


def step_record(step: int, logs: dict, components: Sequence[str], timings: dict) -> dict:
    """The log.jsonl record of one step, from TRL's logged metrics and the callback's own timings."""
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
        "forward_s": timings.get("forward_s"),  # TRL's training forward (compute_loss)
        "backward_s": timings.get("backward_s"),
        "optimizer_s": timings.get("optimizer_s"),
        "step_s": timings.get("step_s"),
        "peak_gpu_memory_gib": timings.get("peak_gpu_memory_gib"),  # null on CPU
        "learning_rate": get("learning_rate"),
        # rollout/training mismatch (training/long_context.py mismatch_metrics): |delta logp|, KL, the IS ratio
        "mismatch": {k.split("/", 1)[1]: float(v) for k, v in logs.items() if k.startswith("mismatch/")} or None,
    }


def make_run_log(path: Path, components: Sequence[str], records: list[dict], progress: bool,
                 on_step: Callable[[], None] | None = None):
    """A TrainerCallback that appends a JSONL record per logged step, calls ``on_step`` and drives a tqdm bar.

    Its ``timings`` dict is where the run's timers (:func:`time_forward_backward`) add their seconds.
    """
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
            self.timings.clear()
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
            record = step_record(state.global_step, logs, components, self.timings)
            records.append(record)
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if on_step is not None:
                on_step()
            self.bar.set_postfix(reward=f"{record['reward']:.3f}", loss=f"{record['loss']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    return RunLog()


def time_forward_backward(trainer: Any, timings: dict) -> None:
    """Add the seconds of TRL's training forward (``compute_loss``) and of the backward pass to ``timings``."""
    import torch

    compute_loss, backward = trainer.compute_loss, trainer.accelerator.backward
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def timed(fn: Callable, key: str) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sync()
                timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
        return wrapper

    trainer.compute_loss = timed(compute_loss, "forward_s")
    trainer.accelerator.backward = timed(backward, "backward_s")


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


def format_report(result: TrainResult, config: GRPORunConfig, notes: Sequence[str] = ()) -> str:
    """The short text report of a run: setup, reward table, time split, where the outputs are."""
    recs = result.records
    total = lambda key: sum(r[key] for r in recs if r.get(key) is not None)  # noqa: E731
    other = total("step_s") - sum(total(k) for k in ("generation_s", "scoring_s", "forward_s", "backward_s",
                                                     "optimizer_s"))
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
        f"time: {result.wall_s:.1f} s in all; steps {total('step_s'):.1f} s = generation {total('generation_s'):.1f} s"
        f" + scoring {total('scoring_s'):.1f} s + TRL forward {total('forward_s'):.1f} s + backward "
        f"{total('backward_s'):.1f} s + optimizer {total('optimizer_s'):.1f} s + other {other:.1f} s",
        f"groups with no reward spread (no learning signal): "
        f"{100 * (_mean([r.get('frac_reward_zero_std') for r in recs]) or 0):.0f}%",
        f"mean completion length: {_mean([r['completion_length'] for r in recs]) or 0:.1f} tokens; "
        f"last loss {recs[-1]['loss'] if recs else float('nan'):.4g}",
        f"outputs in {result.output_dir}: {LOG_FILE}, {PLOT_FILE}, "
        + ", ".join(p.name for p in [*result.checkpoints, result.adapter_dir, result.merged_dir] if p is not None),
    ]
    return "\n".join(lines)
