"""TRL's multi-turn GRPO on GptOss2048-v0: the model calls a ``submit`` tool, reads the feedback, revises.

    python examples/trl_multiturn.py --model tiny --max-steps 1
    python examples/trl_multiturn.py --model openai/gpt-oss-20b --max-steps 100 --max-completion-length 4096

``ossgym.integrations.trl.CodeEnvironment`` is TRL's ``environment_factory``: its ``submit(code)`` scores the
code in the sandbox for the row's evaluation seed and returns the feedback as the tool result; the reward is
the last submission's.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOTrainer  # noqa: E402

from ossgym.integrations.trl import CodeEnvironment, dataset, grpo_config  # noqa: E402

try:
    from trl_grpo_reward_functions import load
except ImportError:  # run as examples.trl_multiturn
    from examples.trl_grpo_reward_functions import load


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny", help="'tiny', a local folder or a hub id of a gpt-oss model")
    ap.add_argument("--env-id", default="GptOss2048-v0")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--max-steps", type=int, default=1)
    ap.add_argument("--num-generations", type=int, default=2)
    ap.add_argument("--max-completion-length", type=int, default=16)
    ap.add_argument("--max-submissions", type=int, default=3)
    ap.add_argument("--output-dir", default="grpo-multiturn-out")
    args = ap.parse_args(argv)

    model, tokenizer = load(args.model)
    config = grpo_config(output_dir=args.output_dir, max_steps=args.max_steps, report_to="none",
                         per_device_train_batch_size=args.num_generations, num_generations=args.num_generations,
                         max_completion_length=args.max_completion_length, logging_steps=1,
                         use_cpu=args.model == "tiny", gradient_checkpointing=False, save_strategy="no")
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=config,
                          train_dataset=dataset(args.env_id, seeds=range(args.rows)),
                          environment_factory=CodeEnvironment.factory(args.env_id,
                                                                      max_submissions=args.max_submissions))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    print(logs[-1])
    return {"logs": logs}


if __name__ == "__main__":
    main()
