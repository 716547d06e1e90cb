"""TRL's GRPOTrainer on GptOss2048-v0 with ossgym's reward functions (one per reward component).

    python examples/trl_grpo_reward_functions.py --model tiny --max-steps 1          # the tiny random model, CPU
    python examples/trl_grpo_reward_functions.py --model openai/gpt-oss-20b --max-steps 100

The dataset rows carry the evaluation seed; each reward function reads it from its column, and the
components of one completion are scored once (in the sandbox) and shared. The router aux loss is off
(``grpo_config``).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOTrainer  # noqa: E402

from ossgym.integrations.trl import grpo_config  # noqa: E402

try:
    from ossgym.training.env import EnvRewards
except ImportError:  # before the training/ layout
    from ossgym.agents.grpo_env import EnvRewards


def load(model: str):
    from ossgym.agents.agent import GptOssAgent

    agent = GptOssAgent.tiny() if model == "tiny" else GptOssAgent.from_pretrained(model)
    agent.tokenizer.padding_side = "left"
    return agent.model, agent.tokenizer


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny', a local folder or a hub id of a gpt-oss model")
    ap.add_argument("--env-id", default="GptOss2048-v0")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=1)
    ap.add_argument("--num-generations", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=16)
    ap.add_argument("--output-dir", default="grpo-out")
    args = ap.parse_args(argv)

    rewards = EnvRewards(args.env_id)
    model, tokenizer = load(args.model)
    config = grpo_config(output_dir=args.output_dir, max_steps=args.max_steps, report_to="none",
                         per_device_train_batch_size=args.num_generations, num_generations=args.num_generations,
                         max_completion_length=args.max_completion_length, logging_steps=1,
                         use_cpu=args.model == "tiny", gradient_checkpointing=False, save_strategy="no")
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=config,
                          reward_funcs=rewards.reward_funcs(), train_dataset=rewards.dataset(args.rows, seed=0))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    print(logs[-1])
    return {"logs": logs}


if __name__ == "__main__":
    main()
