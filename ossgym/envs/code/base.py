"""What every code-as-action environment shares: the task interface, scoring and the Gymnasium env.

Scoring one completion (the data flow of shared/DESIGN.md):

1. :func:`~ossgym.envs.code.extract.extract_code` finds the answer code (final channel only).
2. The sandbox pool runs it: static policy, restricted compile, the task's trusted harness in a worker.
3. The task's trusted :meth:`CodeTask.judge` turns the plain results into reward components
   (re-deriving the outcome itself: replaying games, checking products against its own reference).

Every completion gets a :class:`ScoreResult`, whatever it contains; nothing the completion does can raise
in the caller. The components always sum to the reward.
"""

from __future__ import annotations

import hashlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np

from ossgym.envs.code.extract import Extraction, extract_code
from ossgym.envs.code.spaces import CompletionSpace
from ossgym.errors import ConfigError
from ossgym.harmony import REASONING_EFFORTS
from ossgym.sandbox import Outcome, SandboxPool, SandboxResult, SandboxTask, default_pool

logger = logging.getLogger(__name__)

_MAX_SEED = 2**63


def derived_seed(namespace: str, kind: str, seed: int) -> int:
    """A seed for one use (``kind``) of an evaluation seed; one-way, so one use reveals nothing about another."""
    digest = hashlib.sha256(f"{namespace}:{kind}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class FormatWeights:
    """Reward components every code task shares (format and policy).

    ========================= ======= ==============================================================
    field                     default meaning
    ========================= ======= ==============================================================
    format_ok                 0.5     a compilable definition of the required function was found
    format_syntax_error       -0.5    the required function was found but does not compile
    format_missing            -1.0    no code defining the required function in the final answer
    policy_ok                 0.5     the sandbox's static policy passed
    policy_violation          -1.0    the policy refused the code (forbidden import, dunder, ...)
    crash                     -1.0    the whole evaluation failed (memory, crash, total timeout
                                      with nothing reported, invalid output)
    ========================= ======= ==============================================================
    """

    format_ok: float = 0.5
    format_syntax_error: float = -0.5
    format_missing: float = -1.0
    policy_ok: float = 0.5
    policy_violation: float = -1.0
    crash: float = -1.0


@dataclass(frozen=True)
class ScoreResult:
    """The score of one completion: the reward, its named components (which sum to it) and feedback."""

    reward: float
    components: dict[str, float]
    feedback: str
    outcome: str  # "no_code", or a sandbox Outcome value ("ok", "policy_violation", "syntax_error", ...)
    details: dict = field(default_factory=dict)


class CodeTask(ABC):
    """One code task: the prompt, how the sandbox runs an answer, and how trusted code judges the results."""

    entrypoint: str
    #: every component this task reports, in a fixed order (format and policy first)
    component_names: tuple[str, ...]
    weights: FormatWeights
    #: "module:function" of the trusted harness run in the sandbox worker
    harness: str
    #: namespace of the seeds derived from an evaluation seed (distinct per task)
    seed_namespace: str
    #: the options; every task's config has ``allowed_imports``, ``time_budget_s`` and ``memory_mb``
    config: Any
    #: CPU seconds one call of the untrusted function may take
    call_time_limit_s: float

    @abstractmethod
    def instructions(self) -> str:
        """The system/developer instructions of the task (what to write, the rules)."""

    @abstractmethod
    def user_prompt(self) -> str:
        """The user turn of the task."""

    def sandbox_task(self, seed: int) -> SandboxTask:
        """The sandbox task: this task's harness and limits, and a ``random`` seed derived one-way from ``seed``."""
        c = self.config
        return SandboxTask(
            entrypoint=self.entrypoint,
            harness=self.harness,
            allowed_imports=c.allowed_imports,
            call_timeout_s=self.call_time_limit_s,
            total_timeout_s=c.time_budget_s,
            memory_mb=c.memory_mb,
            seed=self.derived_seed("random", seed),
        )

    def derived_seed(self, kind: str, seed: int) -> int:
        """The seed of one use (``kind``) of evaluation seed ``seed`` in this task."""
        return derived_seed(self.seed_namespace, kind, seed)

    @abstractmethod
    def payload(self, seed: int) -> Any:
        """The plain data the harness gets for evaluation seed ``seed``."""

    @abstractmethod
    def judge(self, result: SandboxResult, payload: Any) -> tuple[dict[str, float], str, dict]:
        """Trusted scoring of a sandbox result: (task components, feedback, details as plain data).

        Called for every sandbox outcome except policy violations and syntax errors; a result that is not
        OK may still carry the harness's last checkpoint in ``result.value``.
        """

    def zero_components(self) -> dict[str, float]:
        """All components at zero, in order."""
        return {name: 0.0 for name in self.component_names}


def messages(task: CodeTask, feedback: Sequence[str] = ()) -> list[dict]:
    """The task as chat messages (system + user; earlier attempts' feedback appended to the user turn).

    The reasoning effort is not part of them: the chat template renders it (``info["reasoning_effort"]``).
    """
    user = task.user_prompt()
    for turn, text in enumerate(feedback, start=1):
        user += f"\n\nFeedback on your attempt {turn}:\n{text}\n\nWrite an improved answer."
    return [
        {"role": "system", "content": task.instructions()},
        {"role": "user", "content": user},
    ]


def _finish(components: dict[str, float], feedback: str, outcome: str, details: dict | None = None) -> ScoreResult:
    reward = float(sum(components.values()))
    return ScoreResult(reward=reward, components=dict(components), feedback=feedback.strip(), outcome=outcome,
                       details=details or {})


def _format_failure(task: CodeTask, extraction: Extraction) -> ScoreResult:
    components = task.zero_components()
    components["format"] = task.weights.format_missing
    return _finish(components, extraction.feedback, "no_code", {"extraction": extraction.status})


def _judged(task: CodeTask, result: SandboxResult, payload: Any, extraction: Extraction) -> ScoreResult:
    w = task.weights
    components = task.zero_components()
    if result.outcome is Outcome.SYNTAX_ERROR:
        components["format"] = w.format_syntax_error
        return _finish(components, f"Your code does not compile: {result.message}", result.outcome.value)
    components["format"] = w.format_ok
    if result.outcome is Outcome.POLICY_VIOLATION:
        components["policy"] = w.policy_violation
        lines = "\n".join(f"- {v}" for v in result.violations) or f"- {result.message}"
        return _finish(components, f"Your code breaks the sandbox rules:\n{lines}", result.outcome.value)
    components["policy"] = w.policy_ok
    task_components, feedback, details = task.judge(result, payload)
    components.update(task_components)
    details = {**details, "extraction": extraction.status, "wall_time_s": result.wall_time_s}
    return _finish(components, feedback, result.outcome.value, details)


def score_batch(
    task: CodeTask,
    completions: Sequence[str],
    seeds: Sequence[int],
    pool: SandboxPool | None = None,
) -> list[ScoreResult]:
    """Score many completions (each with its evaluation seed) in parallel through the sandbox pool."""
    if len(completions) != len(seeds):
        raise ConfigError("seeds", f"got {len(seeds)} seeds for {len(completions)} completions",
                          "Pass one evaluation seed per completion.")
    pool = pool or default_pool()
    results: list[ScoreResult | None] = [None] * len(completions)
    jobs: list[tuple[int, str, Any, SandboxTask, Extraction]] = []
    for i, (completion, seed) in enumerate(zip(completions, seeds)):
        if type(completion) is not str:
            completion = "" if completion is None else str(completion)
        extraction = extract_code(completion, task.entrypoint)
        if not extraction.ok:
            results[i] = _format_failure(task, extraction)
            continue
        seed = int(seed) % _MAX_SEED
        jobs.append((i, extraction.source, task.payload(seed), task.sandbox_task(seed), extraction))
    if jobs:
        sandbox_results = pool.evaluate_batch([(source, payload, st) for _, source, payload, st, _ in jobs])
        for (i, _source, payload, _st, extraction), result in zip(jobs, sandbox_results):
            results[i] = _judged(task, result, payload, extraction)
    return results  # type: ignore[return-value]


def score(task: CodeTask, completion: str, seed: int, pool: SandboxPool | None = None) -> ScoreResult:
    """Score one completion for evaluation seed ``seed``."""
    return score_batch(task, [completion], [seed], pool)[0]


class CodeEnv(gym.Env[str, str]):
    """Base of the code-as-action envs; the subclasses' docstrings are their specs.

    Observation: the task prompt (a ``str``: instructions and user turn as plain text). ``info["messages"]``
    holds the same task as chat messages (system + user) for chat templates, with
    ``info["reasoning_effort"]``. Action: the whole completion text (any Unicode, empty allowed).

    Turns: with ``max_turns=1`` (default) the episode ends after one step. With ``max_turns=K`` the next
    observation and messages carry the feedback on every earlier attempt and the model may revise, up to
    K attempts. The reward of turn t is ``score_t - score_{t-1}`` (``score_0 = 0``), so the episode return
    equals the score of the last attempt and a revision pays exactly what it improves;
    ``info["reward_components"]`` holds the same differences per component (they sum to the reward) and
    ``info["attempt_reward"]`` / ``info["attempt_components"]`` the attempt's own score.

    ``info`` after ``step`` also carries ``feedback`` (what was wrong, with line numbers; how the run went),
    ``outcome`` (the typed sandbox outcome, or ``"no_code"``), ``details`` and ``eval_seed``.
    Evaluation seeds come from the env's generator at ``reset``: the same reset seed gives every
    completion the same evaluation (the same games, the same matrices), as GRPO groups need.
    """

    metadata = {"render_modes": ["ansi"]}

    #: the task's options dataclass (its fields are the env's keyword options) and the task built from it
    config_class: type
    task_class: type[CodeTask]

    def __init__(
        self,
        max_turns: int = 1,
        reasoning_effort: str = "low",
        render_mode: str | None = None,
        pool: SandboxPool | None = None,
        **options: Any,
    ):
        try:
            config = self.config_class(**options)
        except TypeError as exc:
            raise ConfigError("options", str(exc),
                              f"Valid options: {sorted(self.config_class.__dataclass_fields__)}.") from None
        task = self.task_class(config)
        if type(max_turns) is not int or max_turns < 1:
            raise ConfigError("max_turns", f"must be an int >= 1, got {max_turns!r}", "Pass max_turns=1 for single-turn.")
        if reasoning_effort not in REASONING_EFFORTS:
            raise ConfigError("reasoning_effort", f"{reasoning_effort!r} is not one of {REASONING_EFFORTS}",
                              "Pass 'low', 'medium' or 'high'.")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError("render_mode", f"{render_mode!r} is not supported", "Pass None or 'ansi'.")
        self.task = task
        self.max_turns = max_turns
        self.reasoning_effort = reasoning_effort
        self.render_mode = render_mode
        self._pool = pool
        self.observation_space = CompletionSpace()
        self.action_space = CompletionSpace()
        self._eval_seed = 0
        self._feedback: list[str] = []
        self._last_components: dict[str, float] = task.zero_components()
        self._last: ScoreResult | None = None
        self._turn = 0

    @property
    def eval_seed(self) -> int:
        """The evaluation seed of the current episode (drawn from the env's generator at reset)."""
        return self._eval_seed

    def score(self, completion: str, seed: int | None = None) -> ScoreResult:
        """Score a completion (pure: the env's state does not change); ``seed`` defaults to the episode's."""
        return score(self.task, completion, self._eval_seed if seed is None else seed, self._pool)

    def score_batch(self, completions: Sequence[str], seeds: Sequence[int]) -> list[ScoreResult]:
        """Score many completions in parallel through the sandbox pool (pure)."""
        return score_batch(self.task, completions, seeds, self._pool)

    def _observation(self) -> tuple[str, dict]:
        msgs = messages(self.task, self._feedback)
        text = "\n\n".join(m["content"] for m in msgs)
        info = {"messages": msgs, "reasoning_effort": self.reasoning_effort, "eval_seed": self._eval_seed,
                "turn": self._turn}
        return text, info

    def reset(self, *, seed: int | None = None, options: Mapping | None = None) -> tuple[str, dict]:
        """Start an episode. ``options["eval_seed"]`` fixes the evaluation seed directly."""
        super().reset(seed=seed)
        options = dict(options or {})
        if "eval_seed" in options:
            eval_seed = options.pop("eval_seed")
            if type(eval_seed) is not int or eval_seed < 0:
                raise ConfigError("options['eval_seed']", f"must be an int >= 0, got {eval_seed!r}", "Pass e.g. 1234.")
            self._eval_seed = eval_seed % _MAX_SEED
        else:
            self._eval_seed = int(self.np_random.integers(_MAX_SEED))
        if options:
            raise ConfigError("options", f"unknown keys {sorted(options)}", "The only option is 'eval_seed'.")
        self._feedback, self._turn, self._last = [], 0, None
        self._last_components = self.task.zero_components()
        return self._observation()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Score the completion; see the class docstring for rewards across turns."""
        if self._turn >= self.max_turns:
            raise gym.error.ResetNeeded("The episode is over: call reset() before step().")
        result = self.score(action)
        self._turn += 1
        components = {k: result.components[k] - self._last_components.get(k, 0.0) for k in result.components}
        reward = float(sum(components.values()))
        self._last_components, self._last = dict(result.components), result
        self._feedback.append(result.feedback)
        terminated = self._turn >= self.max_turns
        obs, info = self._observation()
        info.update(
            reward_components=components,
            attempt_reward=result.reward,
            attempt_components=dict(result.components),
            feedback=result.feedback,
            outcome=result.outcome,
            details=result.details,
        )
        return obs, reward, terminated, False, info

    def render(self) -> str | None:
        """``ansi``: the last attempt's score and feedback as text."""
        if self.render_mode != "ansi":
            return None
        if self._last is None:
            return f"{type(self).__name__}: no attempt yet (eval seed {self._eval_seed})"
        parts = ", ".join(f"{k} {v:+.3f}" for k, v in self._last.components.items())
        return f"reward {self._last.reward:+.3f} ({parts})\n{self._last.feedback}"
