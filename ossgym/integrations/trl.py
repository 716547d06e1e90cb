"""TRL (1.16) multi-turn GRPO on ossgym's code envs: an ``environment_factory`` whose tool submits code.

::

    from trl import GRPOTrainer
    from ossgym.integrations.trl import CodeEnvironment, dataset, grpo_config

    trainer = GRPOTrainer(model=model, args=grpo_config(output_dir="out", max_steps=10),
                          train_dataset=dataset("GptOss2048-v0", seeds=range(64)),
                          environment_factory=CodeEnvironment.factory("GptOss2048-v0"))

TRL's contract (``trl/trainer/grpo_trainer.py``): the factory is called with no argument, once per
concurrent rollout (instances are pooled and reused); ``reset(**row)`` gets the dataset row's columns
before every rollout and may return text appended to the last user message; every public method is a tool
(its docstring and type hints become the schema) whose return value is the tool message; ``get_reward()``
scores the finished rollout. Here the one tool is :meth:`CodeEnvironment.submit`: the code is scored in the
sandbox for the row's evaluation seed and the feedback is the tool result, so the model can revise. The
reward is that of the last submission (as the multi-turn code envs pay: the episode return is the score of
the last attempt), or the no-code score when nothing was submitted.

The MoE router's load-balancing loss: TRL adds it for gpt-oss unless ``router_aux_loss_coef=0``
(GRPOConfig) — GptOssConfig declares 0.001 and TRL uses the model's value by default. :func:`grpo_config`
sets it to 0 (ossgym's default: LoRA on a frozen router gains nothing from it) and
:func:`disable_router_aux_loss` turns it off on a model for code that builds its own GRPOConfig.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable

import gymnasium

__all__ = ["CodeEnvironment", "dataset", "grpo_config", "disable_router_aux_loss"]


class CodeEnvironment:
    """One rollout's environment for TRL's ``environment_factory``: the ``submit`` tool scores code."""

    def __init__(self, env_id: str = "GptOss2048-v0", max_submissions: int = 3, **env_kwargs: Any):
        import ossgym  # noqa: F401

        self.env_id = env_id
        self.max_submissions = max_submissions
        self._env = gymnasium.make(env_id, **env_kwargs).unwrapped
        self._seed = 0
        self._result = None
        self.submissions = 0

    @classmethod
    def factory(cls, env_id: str = "GptOss2048-v0", **kwargs: Any) -> Callable[[], "CodeEnvironment"]:
        """A zero-argument factory (what ``environment_factory=`` takes) for ``env_id`` with these options."""

        def make() -> CodeEnvironment:
            return cls(env_id, **kwargs)

        make.__name__ = f"{cls.__name__}({env_id})"
        return make

    def reset(self, eval_seed: int | None = None, **row: Any) -> str | None:
        """Start a rollout for the row's evaluation seed (``eval_seed`` column; 0 without one)."""
        self._seed = int(eval_seed) if eval_seed is not None else 0
        self._env.reset(options={"eval_seed": self._seed})
        self._result = None
        self.submissions = 0
        return (f"\n\nSubmit your code with the `submit` tool (up to {self.max_submissions} times); "
                "each submission is scored and you get the feedback.")

    def submit(self, code: str) -> str:
        """Submit a complete solution; it is run in the sandbox and scored, and the feedback is returned.

        Args:
            code: The complete Python source of the solution (the required function at the top level).
        """
        if self.submissions >= self.max_submissions:
            return f"No more submissions ({self.max_submissions} used); the last one counts."
        self.submissions += 1
        completion = code if "```" in code else f"```python\n{code}\n```"
        self._result = self._env.score(completion, seed=self._seed)
        return f"reward {self._result.reward:.3f} ({self._result.outcome}). {self._result.feedback}"

    def get_reward(self) -> float:
        """The reward of the rollout: the last submission's, or the no-code score when there was none."""
        if self._result is None:
            return float(self._env.score("", seed=self._seed).reward)
        return float(self._result.reward)

    @property
    def last_components(self) -> dict[str, float]:
        """Reward components of the last submission (empty before one)."""
        return dict(self._result.components) if self._result is not None else {}


def dataset(env_id: str = "GptOss2048-v0", seeds: Iterable[int] = range(64), **env_kwargs: Any):
    """A ``datasets.Dataset`` of the env's prompt (chat messages) with one ``eval_seed`` per row."""
    import datasets

    import ossgym  # noqa: F401

    env = gymnasium.make(env_id, **env_kwargs).unwrapped
    rows = []
    for s in seeds:
        _, info = env.reset(options={"eval_seed": int(s)})
        rows.append({"prompt": info["messages"], "eval_seed": int(s)})
    env.close()
    return datasets.Dataset.from_list(rows)


def grpo_config(**kwargs: Any):
    """``trl.GRPOConfig(**kwargs)`` with ``router_aux_loss_coef=0.0`` unless given."""
    from trl import GRPOConfig

    kwargs.setdefault("router_aux_loss_coef", 0.0)
    return GRPOConfig(**kwargs)


def disable_router_aux_loss(model: Any) -> Any:
    """Turn off the MoE load-balancing loss on ``model`` (``router_aux_loss_coef=0``, no router logits)."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if hasattr(cfg, "router_aux_loss_coef"):
        cfg.router_aux_loss_coef = 0.0
    if hasattr(cfg, "output_router_logits"):
        cfg.output_router_logits = False
    return model
