"""TRL's multi-turn GRPO on GptOss2048-v0: the model calls a ``submit`` tool, reads the feedback, revises.

    python examples/trl_multiturn.py --model tiny --max-steps 1
    python examples/trl_multiturn.py --model openai/gpt-oss-20b --max-steps 100 --max-completion-length 4096

``ossgym.integrations.trl.CodeEnvironment`` is TRL's ``environment_factory``: its ``submit(code)`` scores the
code in the sandbox for the row's evaluation seed and returns the feedback as the tool result; the reward is
the last submission's. The options, the model and the GRPOConfig are in shared_setup.py, shared with
trl_grpo_reward_functions.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from trl import GRPOTrainer  # noqa: E402

from ossgym.integrations.trl import CodeEnvironment, dataset  # noqa: E402
from shared_setup import load, train_and_log, trl_config, trl_options  # noqa: E402  (next to this file)


def main(argv: list[str] | None = None) -> dict:
    ap = trl_options(__doc__, output_dir="grpo-multiturn-out")
    ap.add_argument("--max-submissions", type=int, default=3)
    args = ap.parse_args(argv)
    model, tokenizer = load(args.model)
    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=trl_config(args),
                          train_dataset=dataset(args.env_id, seeds=range(args.rows)),
                          environment_factory=CodeEnvironment.factory(args.env_id,
                                                                      max_submissions=args.max_submissions))
    return train_and_log(trainer)


if __name__ == "__main__":
    main()
