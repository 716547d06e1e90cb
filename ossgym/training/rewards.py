"""TRL reward functions from an ossgym scorer: one function per reward component, one scoring per batch.

A *scorer* is any callable ``score_batch(completions: list[str], seeds: list[int]) -> list[dict[str, float]]``
(component name -> value; an env's components sum to its reward). :func:`make_reward_funcs` turns it into
one TRL reward function per component, so TRL logs each (``rewards/<name>/mean``) and sums them.

TRL 1.16 calls the k functions one after another on the same batch as ``f(prompts=..., completions=...,
completion_ids=..., **kw)``, where ``kw`` holds every dataset column but ``prompt`` (one value per
completion: the ``seed`` column here), ``trainer_state``, ``log_metric`` and every extra field the rollout
returned (ours: ``raw_completion``, the text decoded WITH special tokens, which the functions prefer over
TRL's decode without them). A function returns one float (or None: not applicable) per completion.

Using them with TRL alone (no other ossgym part)::

    from trl import GRPOConfig, GRPOTrainer
    from ossgym.training import build_dataset, make_reward_funcs

    def score_batch(completions, seeds):          # your scorer, e.g. an env's score_batch
        return [{"format": float("def " in c), "length": -len(c) / 1000} for c in completions]

    dataset = build_dataset(lambda seed: [{"role": "user", "content": "Write a function."}],
                            num_rows=64, seed=0, reasoning_effort="low")
    trainer = GRPOTrainer(model="my/model", args=GRPOConfig(output_dir="out", num_generations=8),
                          reward_funcs=make_reward_funcs(score_batch, ["format", "length"]),
                          train_dataset=dataset)
    trainer.train()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ossgym.errors import ConfigError

Scorer = Callable[[list[str], list[int]], list[dict[str, float]]]
RAW_COMPLETION_FIELD = "raw_completion"  # per-completion text with special tokens, added by the rollout


def completion_text(completion: str | Sequence[Mapping[str, Any]]) -> str:
    """The text to score from a TRL completion: a plain string, or the last assistant message's content."""
    if isinstance(completion, str):
        return completion
    for message in reversed(list(completion)):
        if message.get("role", "assistant") == "assistant":
            content = message.get("content") or ""
            if isinstance(content, list):  # content blocks: keep the text parts
                content = "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
            return content
    return ""


class _BatchScoreCache:
    """Scores one batch once and hands the result to every component's reward function.

    TRL calls the k reward functions one after another with the same completions and seeds. The first
    call scores the batch (the expensive part: sandboxed runs, game replays) and keeps the result keyed by
    the exact batch (texts, seeds and the trainer step); the other k-1 calls find it and only pick their
    component. Only the latest batch is kept, so memory stays flat, and a different batch (the next step,
    an eval batch) is always rescored.
    """

    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._value: list[dict[str, float]] | None = None
        self.calls = 0  # how many times the scorer actually ran (tests and logs read it)

    def __getstate__(self) -> dict:  # pickles the scorer only; the lock and the cached batch stay behind
        return {"scorer": self.scorer}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["scorer"])

    def get(self, texts: list[str], seeds: list[int], step: int | None, log_metric: Callable | None):
        key = (step, tuple(texts), tuple(seeds))
        with self._lock:
            if key != self._key:
                start = time.perf_counter()
                value = list(self.scorer(texts, seeds))
                elapsed = time.perf_counter() - start
                if len(value) != len(texts):
                    raise ValueError(f"scorer returned {len(value)} results for {len(texts)} completions")
                self._key, self._value = key, value
                self.calls += 1
                if log_metric is not None:
                    log_metric("timing/scoring_s", elapsed)
            return self._value


class ComponentReward:
    """A TRL reward function for one reward component; its ``__name__`` is the component name.

    Scores the ``raw_completion`` field when the ossgym rollout supplied it (the text with its special
    tokens, so a Harmony parser sees the real channels), else the completions TRL decoded. A class
    instance rather than a closure so that it pickles whenever the scorer does.
    """

    def __init__(self, cache: _BatchScoreCache, component: str, seed_column: str = "seed"):
        self.cache, self.component, self.seed_column = cache, component, seed_column
        self.__name__ = component

    def __call__(self, prompts: list | None = None, completions: list | None = None, **kwargs) -> list[float | None]:
        raw = kwargs.get(RAW_COMPLETION_FIELD)
        texts = list(raw) if raw is not None else [completion_text(c) for c in completions or []]
        if self.seed_column not in kwargs:
            raise KeyError(
                f"reward function {self.__name__!r} needs the dataset column {self.seed_column!r} (one seed per row,"
                f" so the completions of a group are scored on the same tasks); build the dataset with "
                f"ossgym.training.build_dataset and keep GRPOConfig.remove_unused_columns=False"
            )
        seeds = [int(s) for s in kwargs[self.seed_column]]
        trainer_state = kwargs.get("trainer_state")
        step = getattr(trainer_state, "global_step", None)
        results = self.cache.get(texts, seeds, step, kwargs.get("log_metric"))
        try:  # None (component not applicable to that completion) passes through: TRL ignores it
            return [None if r[self.component] is None else float(r[self.component]) for r in results]
        except KeyError:
            raise KeyError(
                f"the scorer's results have no component {self.component!r} (they have {sorted(results[0])})"
            ) from None

    def __repr__(self) -> str:
        return f"ComponentReward({self.component!r})"


def make_reward_funcs(
    scorer: Scorer, component_names: Sequence[str], seed_column: str = "seed"
) -> list[ComponentReward]:
    """One TRL reward function per component of ``scorer``, sharing one scoring of each batch.

    Each function takes the seeds from the dataset column ``seed_column``, accepts plain-string and
    conversational completions, and returns that component's values; TRL sums them (reward weights 1).
    """
    names = list(component_names)
    if not names:
        raise ConfigError("component_names", "is empty", "Name every component the scorer returns.")
    if len(set(names)) != len(names):
        raise ConfigError("component_names", f"has duplicates: {names}", "Name each component once.")
    cache = _BatchScoreCache(scorer)
    return [ComponentReward(cache, name, seed_column) for name in names]
