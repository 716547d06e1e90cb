"""``make demo``: a short GRPO run of the embedded tiny gpt-oss on GptOss2048-v0, on CPU, after a warm start.

:func:`run_demo` is library code: it logs, never prints and sets no environment variable; ``ossgym demo``
(cli.py) prints the report and where the outputs are.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ossgym.training.config import GRPORunConfig
from ossgym.training.report import TrainResult
from ossgym.training.run import load_agent, run_training

logger = logging.getLogger(__name__)

DEMO_ENV_OPTIONS = {"num_games": 2}
# The tiny random model does not read its prompt, and TRL's CPU training forward and backward scored every prompt
# position through the 201,088-row LM head (measured with the env's ~530-token task prompt: forward 37 s +
# backward 138 s of a 181 s step; generation 4.7 s, scoring 0.5 s). run_training now scores only the completion
# positions on CPU (training/cpu_head.py); a one-line prompt still keeps generation's prefill and the body's
# forward small. The completions are scored by the env exactly as always.
DEMO_PROMPT = [{"role": "user", "content": "Write strategy(board) for 2048 in a ```python block."}]


def run_demo(output_dir: str | Path = "runs/demo", steps: int = 8, seed: int = 0) -> TrainResult:
    """``make demo``: GRPO of the bundled tiny agent on GptOss2048-v0 on CPU, after a supervised warm start.

    Writes the log, plot (``rewards.png``), report and the rest of a run's outputs to ``output_dir``.
    """
    import torch

    from ossgym.training.warm_start import STRATEGY_2048_COMPLETIONS, supervised_warm_start

    torch.manual_seed(seed)
    # One intra-op thread: the tiny model's ops are small, and on a 2-core machine shared with the sandbox
    # workers, OpenMP threads waiting on each other made the run about 3x slower (measured: generation
    # 6.7 s -> 2.2 s per group).
    torch.set_num_threads(1)
    config = GRPORunConfig(
        env_id="GptOss2048-v0", env_kwargs=dict(DEMO_ENV_OPTIONS), steps=steps, group_size=8, prompts_per_step=1,
        max_prompt_length=1024, max_completion_length=32, max_seq_len=2048, learning_rate=0.07, lora_rank=8,
        lora_alpha=16, gradient_checkpointing=False, num_dataset_rows=64, output_dir=str(output_dir), seed=seed,
        optim="sgd",
    )
    agent = load_agent(config)
    t0 = time.perf_counter()
    losses = supervised_warm_start(agent, [DEMO_PROMPT], STRATEGY_2048_COMPLETIONS)
    warm = (f"SUPERVISED WARM START (not RL): the LM head was fitted to {len(STRATEGY_2048_COMPLETIONS)} hand-written"
            f" completions of different quality (loss {losses[0]:.2f} -> {losses[-1]:.2f},"
            f" {time.perf_counter() - t0:.1f} s) so the random tiny model samples among them; GRPO then learns"
            " which of them pays.")
    logger.info(warm)
    note = ("prompt: a one-line task (the tiny model does not read prompts; it keeps each step small); the"
            " completions are scored by the env as always; optimizer: SGD")
    # SGD (TRL clips each step's gradient norm at 1, so a step moves the LoRA by at most the learning rate): Adam's
    # first steps move every weight by the learning rate whatever its gradient, and scrambled the warm start
    # (tests/test_train.py::test_grpo_learns_which_strategy_block_pays has the measurements)
    return run_training(config, agent=agent, prompt_fn=lambda _seed: DEMO_PROMPT, notes=[warm, note])
