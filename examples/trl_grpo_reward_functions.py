"""TRL's GRPOTrainer on GptOss2048-v0 with ossgym's reward functions (one per reward component).

    python examples/trl_grpo_reward_functions.py --model tiny --max-steps 1          # the tiny random model, CPU
    python examples/trl_grpo_reward_functions.py --model openai/gpt-oss-20b --max-steps 100

The dataset rows carry the evaluation seed; each reward function reads it from its column, and the
components of one completion are scored once (in the sandbox) and shared. The router aux loss is off
(``grpo_config``). The options, the model and the GRPOConfig are in shared_setup.py, shared with
trl_multiturn.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOTrainer  # noqa: E402

from ossgym.training.env import EnvRewards  # noqa: E402
from shared_setup import load, train_and_log, trl_config, trl_options  # noqa: E402  (next to this file)


def main(argv: list[str] | None = None) -> dict:
    args = trl_options(__doc__, output_dir="grpo-out").parse_args(argv)
    rewards = EnvRewards(args.env_id)
    model, tokenizer = load(args.model)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=trl_config(args),
                          reward_funcs=rewards.reward_funcs(), train_dataset=rewards.dataset(args.rows, seed=0))
    return train_and_log(trainer)


if __name__ == "__main__":
    main()
