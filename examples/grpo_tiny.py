"""GRPO of the embedded tiny gpt-oss on GptOss2048-v0 with TRL's GRPOTrainer called directly (CPU, offline).

The same step as ``ossgym train`` (see ossgym/training/run.py), without the run's log, plot and exports:
    python examples/grpo_tiny.py --steps 4
"""

import argparse
import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16

import torch
from trl import GRPOTrainer

from ossgym.agents.agent import GptOssAgent
from ossgym.training import GRPORunConfig, make_rollout_func
from ossgym.training.env import EnvRewards
from ossgym.training.generation import AgentGenerate
from ossgym.training.warm_start import STRATEGY_2048_COMPLETIONS, supervised_warm_start


def main(argv=None) -> list[float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=32)
    parser.add_argument("--output-dir", default="runs/example")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    # 1. The env: reward functions (one per component) and a dataset of (prompt, eval seed) rows.
    env = EnvRewards("GptOss2048-v0", {"num_games": 1})
    dataset = env.dataset(num_rows=16, seed=0)

    # 2. The policy: the tiny random gpt-oss, warm-started (supervised, not RL) so its samples differ in reward.
    agent = GptOssAgent.tiny()
    supervised_warm_start(agent, [env.prompt(dataset["seed"][0])], STRATEGY_2048_COMPLETIONS, steps=60)

    # 3. The run's options, mapped onto trl.GRPOConfig and peft.LoraConfig.
    config = GRPORunConfig(env_id="GptOss2048-v0", steps=args.steps, group_size=args.group_size,
                           max_completion_length=args.completion_tokens, max_prompt_length=1024,
                           max_seq_len=2048, learning_rate=3e-3, gradient_checkpointing=False,
                           output_dir=args.output_dir)
    grpo_args = config.grpo_config(use_cpu=True, bf16=False, lr_scheduler_type="constant", disable_tqdm=True)

    # 4. TRL drives the step: rollout_func samples each group on the agent's engine (with the current LoRA),
    #    the reward functions score it in the sandbox, TRL computes advantages, loss, backward and the update.
    trainer = GRPOTrainer(model=agent.model, reward_funcs=env.reward_funcs(), args=grpo_args,
                          train_dataset=dataset, processing_class=agent.tokenizer,
                          peft_config=config.lora_config(),
                          rollout_func=make_rollout_func(AgentGenerate(agent), config.max_prompt_length))
    trainer.train()

    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    print("reward per step:", " ".join(f"{r:.2f}" for r in rewards))
    return rewards


if __name__ == "__main__":
    main()
