"""GRPO over ossgym envs with TRL: rewards, rollout, dataset, run config, env bridge, warm start, run, report.

Modules (each holds what its name says; run.py's docstring walks through one GRPO step):

- ``rewards``    TRL reward functions from a scorer, one per reward component, one scoring per batch
- ``dataset``    the rows a run samples (chat prompt, evaluation seed, reasoning effort)
- ``rollout``    TRL's ``rollout_func`` over a generate function (the fast engine inside a GRPO step)
- ``generation`` that generate function over the gpt-oss agent
- ``env``        an ossgym code env seen by GRPO: scorer, component names, prompts, dataset
- ``config``     ``GRPORunConfig``: the options of a run, each with its help text and checks
- ``warm_start`` the supervised warm start that lets the tiny random model sample among completions
- ``run``        ``run_training``: one whole run (log, plot, report, checkpoints, exports)
- ``report``     the per-step log, the plot and the text report
- ``demo``       ``make demo``
- ``logprobs``   per-token log-probabilities in chunks, outside the trainer

The names below import without torch (the ``ossgym train`` parser stays light); the run, warm start and
generation modules import torch when imported. ``agents/`` and ``envs/`` never import this package.
"""

from ossgym.training.config import GRPORunConfig, check_env_id
from ossgym.training.dataset import build_dataset
from ossgym.training.rewards import RAW_COMPLETION_FIELD, ComponentReward, completion_text, make_reward_funcs
from ossgym.training.rollout import GenerateFn, RolloutSample, make_rollout_func

__all__ = [
    "GRPORunConfig", "check_env_id", "build_dataset", "RAW_COMPLETION_FIELD", "ComponentReward", "completion_text",
    "make_reward_funcs", "GenerateFn", "RolloutSample", "make_rollout_func",
]
