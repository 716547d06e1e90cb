"""What every code-as-action environment shares: the task interface, scoring and the Gymnasium env.

Scoring one completion (the data flow of shared/DESIGN.md):

1. :func:`~ossgym.envs.code.extract.extract_code` finds the answer code (final channel only).
2. The sandbox pool loads it in a fresh worker (static policy, restricted compile) beside the task's
   trusted worker-side handler, and runs the task's caller-side driver against that worker's session:
   the driver holds every secret and every clock (game states and spawn generators, inputs and expected
   outputs, CPU budgets read from outside the worker) and sends the worker only plain requests.
3. The task's trusted :meth:`CodeTask.judge` turns the driver's own state into reward components.

Every completion gets a :class:`ScoreResult`, whatever it contains; nothing the completion does can raise
in the caller. The components always sum to the reward.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from ossgym.envs.code.extract import MAX_COMPLETION_BYTES, Extraction, extract_code
from ossgym.envs.code.spaces import CompletionSpace
from ossgym.errors import ConfigError, SandboxError
from ossgym.harmony import REASONING_EFFORTS, parse_harmony
from ossgym.options import check_keys, check_options, option
from ossgym.sandbox import DEFAULT_IMPORTS, Outcome, SandboxPool, SandboxResult, SandboxTask, default_pool
from ossgym.sandbox.policy import FORBIDDEN_NAMES, FRAME_ATTRIBUTES, check_policy
from ossgym.sandbox.task import VETTED_IMPORTS

logger = logging.getLogger(__name__)

_MAX_SEED = 2**63


def derived_seed(namespace: str, kind: str, seed: int) -> int:
    """A seed for one use (``kind``) of an evaluation seed; one-way, so one use reveals nothing about another."""
    digest = hashlib.sha256(f"{namespace}:{kind}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def make_sandbox_task(*, handler: str, **fields: Any) -> SandboxTask:
    """A SandboxTask naming the task's worker-side handler (one place that knows the sandbox's field name)."""
    key = "handler" if "handler" in SandboxTask.__dataclass_fields__ else "harness"
    return SandboxTask(**{key: handler}, **fields)


@dataclass(frozen=True)
class Reply:
    """A session reply as the drivers read it: ``ok`` and a plain ``value``, or a failure ``kind``/``message``."""

    ok: bool
    value: Any = None
    kind: str = ""  # "timeout", "memory", "crash", "error", "invalid" ... when not ok
    message: str = ""


def read_reply(reply: Any) -> Reply:
    """Normalise a sandbox session reply (whatever its class) into a :class:`Reply`; never raises."""
    try:
        ok = getattr(reply, "ok", False) is True
        if ok:
            return Reply(True, getattr(reply, "value", None))
        kind = getattr(reply, "kind", None) or getattr(reply, "outcome", None) or "error"
        kind = getattr(kind, "value", kind)
        message = getattr(reply, "message", "")
        return Reply(False, None, str(kind)[:40], message[:2000] if type(message) is str else "")
    except Exception as exc:  # noqa: BLE001 - a reply object is the sandbox's, but stay total
        return Reply(False, None, "invalid", f"unreadable reply ({type(exc).__name__})")


def session_cpu(session: Any, name: str) -> float:
    """The caller-measured CPU seconds ``session.<name>`` (``cpu_s`` or ``last_cpu_s``), as a float."""
    v = getattr(session, name)
    return float(v)


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

    format_ok: float = option(0.5, "a compilable definition of the required function was found")
    format_syntax_error: float = option(-0.5, "the required function was found but does not compile")
    format_missing: float = option(-1.0, "no code defining the required function in the final answer")
    policy_ok: float = option(0.5, "the sandbox's static policy passed")
    policy_violation: float = option(-1.0, "the policy refused the code")
    crash: float = option(-1.0, "the whole evaluation failed (memory, crash, timeout, invalid output)")

    def __post_init__(self) -> None:
        check_options(self)


@dataclass(frozen=True)
class ScoreResult:
    """The score of one completion: the reward, its named components (which sum to it) and feedback."""

    reward: float
    components: dict[str, float]
    feedback: str
    outcome: str  # "no_code", or a sandbox Outcome value ("ok", "policy_violation", "syntax_error", ...)
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TaskConfig:
    """Options every code task shares (each task's config subclasses it and adds its own fields).

    ================ ============ ==================================================================
    field            default      meaning
    ================ ============ ==================================================================
    allowed_imports  math, ...    modules the code may import (a subset of the sandbox's vetted set)
    memory_mb        512          memory the evaluation may add in the worker
    liveness_wall_s  120.0        wall seconds after which a stuck worker is killed; never a budget
                                  (budgets are CPU time measured by the caller, see each task)
    weights          FormatWeights  the format/policy/crash components
    ================ ============ ==================================================================

    Fields are declared with :func:`ossgym.options.option` and checked on construction (so a bad option
    fails at ``gymnasium.make``); a subclass declares its own the same way and calls
    ``super().__post_init__()`` first.
    """

    allowed_imports: frozenset[str] = option(
        DEFAULT_IMPORTS, "modules the code may import", choices=sorted(VETTED_IMPORTS),
        fix=f"Pass a list or set of module names the sandbox vetted: {', '.join(sorted(VETTED_IMPORTS))}.")
    memory_mb: int = option(512, "memory (MB) the evaluation may add in the worker", min=16, max=1 << 16)
    liveness_wall_s: float = option(120.0, "wall seconds after which a stuck worker is killed (never a budget)",
                                    min=1.0, max=3600.0)
    weights: FormatWeights = option(default_factory=FormatWeights, help="the format, policy and crash components")

    def __post_init__(self) -> None:
        check_options(self)


def check_seconds(config: Any, *names: str, low: float = 0.0, high: float = 3600.0) -> None:
    """Validate config fields holding seconds: numbers (not bool) in (low, high] (for fields declared without
    :func:`ossgym.options.option`; an option declares ``min=low, min_open=True, max=high`` instead)."""
    for name in names:
        v = getattr(config, name)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not low < v <= high:
            raise ConfigError(name, f"must be seconds in ({low:g}, {high:g}], got {v!r}",
                              f"See the options table of {type(config).__name__}.")


def _probe(source: str, entrypoint: str, imports: frozenset[str]) -> bool:
    """True when the sandbox policy accepts ``source`` (used to state the rules from the policy itself)."""
    probe_task = make_sandbox_task(entrypoint=entrypoint, handler="ossgym.sandbox.testing:call_once",
                                   allowed_imports=imports)
    return not check_policy(source, probe_task)


def sandbox_rules(entrypoint: str, allowed_imports: frozenset[str]) -> str:
    """The prompt's paragraph of sandbox rules, generated from the policy (its names, and probes of it)."""
    imports = ", ".join(sorted(allowed_imports)) or "nothing"
    forbidden = sorted(n for n in FORBIDDEN_NAMES if hasattr(builtins, n) and not n[0].isupper())
    exceptions = sorted(n for n in FORBIDDEN_NAMES if hasattr(builtins, n) and n[0].isupper())
    modules = sorted(n for n in FORBIDDEN_NAMES if not hasattr(builtins, n) and n != "printed")
    helper_top = _probe(f"def helper():\n    return 1\n\ndef {entrypoint}(x):\n    return helper()\n",
                        entrypoint, allowed_imports)
    private_ok = _probe(f"def {entrypoint}(x):\n    _y = x\n    for _ in range(2):\n        pass\n    return _y\n",
                        entrypoint, allowed_imports)
    lines = [f"Sandbox rules: you may import only {imports}; there is no {', '.join(modules)}."]
    if helper_top:
        lines.append(f"Helpers may be defined at the top level beside `{entrypoint}`.")
    else:
        lines.append(f"Helper functions go inside `{entrypoint}`; nothing but imports and `{entrypoint}` at the"
                     " top level (state kept across calls can live in a default-argument dict).")
    if private_ok:
        lines.append("Local names may start with `_` (e.g. `for _ in range(4)`), but no dunder names and no"
                     " attribute starting with `_`.")
    else:
        lines.append("No names and no attributes that start with an underscore.")
    lines.append(f"Not available: {', '.join(forbidden)}; getattr and hasattr only with a literal attribute name;"
                 f" no frame, code or generator internals ({', '.join(sorted(FRAME_ATTRIBUTES)[:4])}, ...).")
    lines.append(f"No bare `except:`, no {', '.join(exceptions)}; no return/break/continue inside `finally`;"
                 " no `match`, no async code. Printing is ignored.")
    return " ".join(lines)


class CodeTask(ABC):
    """One code task: the prompt, the worker-side handler, and the caller-side driver and judge.

    Scoring is caller-driven (shared/DESIGN.md, invariant 2). The sandbox loads the untrusted code in a
    worker beside the task's trusted ``handler`` ("module:function", run as ``handle(fn, request, ctx)``
    for every request). :meth:`driver` builds a caller-side object that holds every secret and every
    clock of one evaluation (game states and spawn generators, test inputs and expected outputs, the CPU
    budget), sends the worker plain requests through a session and re-checks every plain reply.
    :meth:`judge` turns the driver's own state (never a value the worker reported) into reward components.
    A task may also ask for trusted :meth:`baseline` runs (e.g. a reference timed through the same
    machinery), one per evaluation seed of a batch.
    """

    entrypoint: str
    #: every component this task reports, in a fixed order (format and policy first)
    component_names: tuple[str, ...]
    #: "module:function" of the trusted worker-side handler
    handler: str
    #: namespace of the seeds derived from an evaluation seed (distinct per task)
    seed_namespace: str
    #: the options (a :class:`TaskConfig` subclass)
    config: TaskConfig
    #: CPU seconds one call of the untrusted function may take (enforced in the worker for feedback and
    #: re-enforced by the driver with the caller's own measurement)
    call_time_limit_s: float

    def __init__(self, config: TaskConfig):
        self.config = config

    @property
    def weights(self) -> FormatWeights:
        """The format, policy and crash weights (``config.weights``)."""
        return self.config.weights

    @abstractmethod
    def instructions(self) -> str:
        """The system/developer instructions of the task (what to write, the rules)."""

    @abstractmethod
    def user_prompt(self) -> str:
        """The user turn of the task."""

    def rules(self) -> str:
        """The sandbox rules paragraph of the prompt, generated from the policy."""
        return sandbox_rules(self.entrypoint, self.config.allowed_imports)

    def sandbox_task(self, seed: int) -> SandboxTask:
        """The sandbox task: this task's handler and limits, and a ``random`` seed derived one-way from ``seed``."""
        c = self.config
        return make_sandbox_task(
            entrypoint=self.entrypoint,
            handler=self.handler,
            allowed_imports=c.allowed_imports,
            call_timeout_s=self.call_time_limit_s,
            total_timeout_s=c.liveness_wall_s,
            memory_mb=c.memory_mb,
            seed=self.derived_seed("random", seed),
        )

    def derived_seed(self, kind: str, seed: int) -> int:
        """The seed of one use (``kind``) of evaluation seed ``seed`` in this task."""
        return derived_seed(self.seed_namespace, kind, seed)

    @abstractmethod
    def driver(self, seed: int) -> Callable[[Any], Any]:
        """A fresh caller-side driver for evaluation seed ``seed``: ``driver(session)`` runs the evaluation."""

    #: run :meth:`baseline` once per completion, beside it (paired timings), instead of once per seed
    baseline_per_completion: bool = False

    def baseline(self, seed: int) -> tuple[str, Callable[[Any], Any]] | None:
        """A trusted (source, driver) to run beside the completions of seed ``seed``, or None (default)."""
        return None

    @abstractmethod
    def judge(self, result: SandboxResult, driver: Any, baseline: Any = None) -> tuple[dict[str, float], str, dict]:
        """Trusted scoring: (task components, feedback, details as plain data) from the driver's own state.

        Called for every sandbox outcome except policy violations and syntax errors (``result`` says how
        the session ended); ``baseline`` is the driver of :meth:`baseline`'s run for the same seed.
        """

    def zero_components(self) -> dict[str, float]:
        """All components at zero, in order."""
        return {name: 0.0 for name in self.component_names}


def messages(task: CodeTask, attempts: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """The task as chat messages: system + user, then per earlier attempt an assistant turn (the attempt's
    answer) and a user turn (the feedback on it), as chat templates, TRL, verifiers and OpenEnv expect.

    ``attempts`` are ``(completion, feedback)`` pairs. An assistant turn holds the completion's answer (the
    final channel of Harmony output, the whole text otherwise; reasoning is dropped, as gpt-oss's own
    template drops it from earlier turns), or ``""`` when it had none. The reasoning effort is not part of
    the messages: the chat template renders it (``info["reasoning_effort"]``).
    """
    out = [
        {"role": "system", "content": task.instructions()},
        {"role": "user", "content": task.user_prompt()},
    ]
    for turn, (completion, feedback) in enumerate(attempts, start=1):
        out.append({"role": "assistant", "content": attempt_answer(completion)})
        out.append({"role": "user", "content": f"Feedback on your attempt {turn}:\n{feedback}\n\n"
                                               "Write an improved answer."})
    return out


def attempt_answer(completion: str) -> str:
    """The answer part of a completion as an earlier assistant turn shows it (size-capped; see :func:`messages`)."""
    if type(completion) is not str or len(completion.encode("utf-8", "replace")) > MAX_COMPLETION_BYTES:
        return ""
    return parse_harmony(completion).answer or ""


def _finish(components: dict[str, float], feedback: str, outcome: str, details: dict | None = None) -> ScoreResult:
    reward = float(sum(components.values()))
    return ScoreResult(reward=reward, components=dict(components), feedback=feedback.strip(), outcome=outcome,
                       details=details or {})


def _format_failure(task: CodeTask, extraction: Extraction) -> ScoreResult:
    components = task.zero_components()
    components["format"] = task.weights.format_missing
    return _finish(components, extraction.feedback, "no_code", {"extraction": extraction.status})


def _judged(task: CodeTask, result: SandboxResult, driver: Any, baseline: Any, extraction: Extraction) -> ScoreResult:
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
    task_components, feedback, details = task.judge(result, driver, baseline)
    components.update(task_components)
    details = {**details, "extraction": extraction.status, "wall_time_s": result.wall_time_s}
    return _finish(components, feedback, result.outcome.value, details)


def run_drivers(pool: SandboxPool, jobs: Sequence[tuple[str, SandboxTask, Callable[[Any], Any]]]) -> list[SandboxResult]:
    """Run caller-side drivers against fresh workers, concurrently (``pool.run_batch``), results in order."""
    run_batch = getattr(pool, "run_batch", None)
    if run_batch is None:
        raise SandboxError("this sandbox pool has no caller-driven sessions (SandboxPool.run_batch); the code "
                           "tasks need the sandbox's Session API (shared/PLAN.md): update ossgym.sandbox")
    return list(run_batch(list(jobs)))


def score_batch(
    task: CodeTask,
    completions: Sequence[str],
    seeds: Sequence[int],
    pool: SandboxPool | None = None,
    *,
    scoring: str = "local",
    ray_address: str | None = None,
) -> list[ScoreResult]:
    """Score many completions (each with its evaluation seed) in parallel through the sandbox pool.

    Each completion gets a fresh caller-side driver and a fresh worker; a task with a :meth:`~CodeTask.baseline`
    also gets one trusted baseline run per distinct seed, in the same batch (so under the same load).
    ``scoring="ray"`` (instead of ``pool``) scores this batch on a RayPool started for it and closed after
    (``ray_address``: a cluster; None: a local Ray instance); for many batches make the pool once
    (``ossgym.sandbox.ray_backend.scoring_pool``) and pass it as ``pool``.
    """
    if len(completions) != len(seeds):
        raise ConfigError("seeds", f"got {len(seeds)} seeds for {len(completions)} completions",
                          "Pass one evaluation seed per completion.")
    if scoring != "local" or ray_address is not None:
        if pool is not None:
            raise ConfigError("scoring", "is given together with pool=", "Pass pool= or scoring=, not both.")
        from ossgym.sandbox.ray_backend import scoring_pool

        with scoring_pool(scoring, ray_address=ray_address) as ray_pool:
            return score_batch(task, completions, seeds, ray_pool)
    pool = pool or default_pool()
    results: list[ScoreResult | None] = [None] * len(completions)
    jobs: list[tuple[str, SandboxTask, Callable[[Any], Any]]] = []
    owners: list[tuple[int, int, Any, Extraction]] = []  # (completion index, seed, driver, extraction)
    for i, (completion, seed) in enumerate(zip(completions, seeds)):
        if type(completion) is not str:
            completion = "" if completion is None else str(completion)
        extraction = extract_code(completion, task.entrypoint)
        if not extraction.ok:
            results[i] = _format_failure(task, extraction)
            continue
        seed = int(seed) % _MAX_SEED
        driver = task.driver(seed)
        jobs.append((extraction.source, task.sandbox_task(seed), driver))
        owners.append((i, seed, driver, extraction))
    # Baselines: one per distinct seed, or (``baseline_per_completion``) one per completion, queued right
    # after it so the two run side by side and see the same load (their timings are paired).
    baselines: dict[Any, Any] = {}
    ordered: list[tuple[str, SandboxTask, Callable[[Any], Any]]] = []
    slots: list[int] = []
    for k, (job, (i, seed, _driver, _ex)) in enumerate(zip(jobs, owners)):
        slots.append(len(ordered))
        ordered.append(job)
        key = i if task.baseline_per_completion else seed
        if key not in baselines:
            base = task.baseline(seed)
            baselines[key] = None if base is None else base[1]
            if base is not None:
                ordered.append((base[0], task.sandbox_task(seed), base[1]))
    if ordered:
        sandbox_results = run_drivers(pool, ordered)
        for slot, (i, seed, driver, extraction) in zip(slots, owners):
            key = i if task.baseline_per_completion else seed
            results[i] = _judged(task, sandbox_results[slot], driver, baselines.get(key), extraction)
    return results  # type: ignore[return-value]


def score(task: CodeTask, completion: str, seed: int, pool: SandboxPool | None = None) -> ScoreResult:
    """Score one completion for evaluation seed ``seed``."""
    return score_batch(task, [completion], [seed], pool)[0]


class CodeEnv(gym.Env[str, str]):
    """Base of the code-as-action envs; the subclasses' docstrings are their specs.

    Observation: the task prompt (a ``str``: the contents of ``info["messages"]`` as plain text, joined by
    blank lines). ``info["messages"]`` holds the same as chat messages for chat templates (system + user at
    ``reset``), with ``info["reasoning_effort"]``. Action: the whole completion text (any Unicode, empty
    allowed).

    Turns: with ``max_turns=1`` (default) the episode ends after one step. With ``max_turns=K`` the model
    may revise, up to K attempts: after each step the messages go on as a chat, an assistant turn with the
    attempt's answer (its final channel; see :func:`messages`) and a user turn with the feedback on it. The reward of turn t is ``score_t - score_{t-1}`` (``score_0 = 0``), so the episode return
    equals the score of the last attempt and a revision pays exactly what it improves;
    ``info["reward_components"]`` holds the same differences per component (they sum to the reward) and
    ``info["attempt_reward"]`` / ``info["attempt_components"]`` the attempt's own score.

    ``info`` after ``step`` also carries ``feedback`` (what was wrong, with line numbers; how the run went),
    ``outcome`` (the typed sandbox outcome, or ``"no_code"``), ``details`` and ``eval_seed``.
    Evaluation seeds come from the env's generator at ``reset``: the same reset seed gives every
    completion the same evaluation (the same games, the same matrices), as GRPO groups need.

    Threads: ``step`` and ``reset`` hold the env's lock, so concurrent steps are serialised and a
    ``max_turns=K`` episode accepts exactly K of them (the rest raise ``ResetNeeded``); for parallel
    scoring use :meth:`score_batch`, which is pure.

    Pools: with ``pool=None`` the env scores through the process-wide :func:`~ossgym.sandbox.default_pool`
    (closed at interpreter exit). A pool passed in belongs to the caller: ``env.close()`` does not close it
    (it may serve other envs); close it yourself, e.g. ``with SandboxPool() as pool: env = make(..., pool=pool)``.
    After ``close()`` the env refuses to step.

    Vectorised: ``gymnasium.make_vec(env_id, num_envs=N, vectorization_mode="async",
    vector_kwargs={"shared_memory": False})`` runs N envs in subprocesses (text observations cannot live in
    shared memory); ``score_batch`` on one env already scores a batch in parallel sandbox workers.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

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
        fields = [f.name for f in dataclasses.fields(self.config_class) if f.init]
        check_keys(options, [*fields, "max_turns", "reasoning_effort", "render_mode", "pool"], type(self).__name__)
        config = self.config_class(**options)
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
        self._attempts: list[tuple[str, str]] = []  # (completion, feedback) of this episode's steps
        self._last_components: dict[str, float] = task.zero_components()
        self._last: ScoreResult | None = None
        self._turn = 0
        self._lock = threading.Lock()
        self._closed = False

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
        msgs = messages(self.task, self._attempts)
        text = "\n\n".join(m["content"] for m in msgs)
        info = {"messages": msgs, "reasoning_effort": self.reasoning_effort, "eval_seed": self._eval_seed,
                "turn": self._turn}
        return text, info

    def reset(self, *, seed: int | None = None, options: Mapping | None = None) -> tuple[str, dict]:
        """Start an episode. ``options["eval_seed"]`` fixes the evaluation seed directly."""
        with self._lock:
            return self._reset(seed, options)

    def _reset(self, seed: int | None, options: Mapping | None) -> tuple[str, dict]:
        super().reset(seed=seed)
        options = dict(options or {})
        if "eval_seed" in options:
            eval_seed = options.pop("eval_seed")
            if type(eval_seed) is not int or eval_seed < 0:
                raise ConfigError("options['eval_seed']", f"must be an int >= 0, got {eval_seed!r}", "Pass e.g. 1234.")
            self._eval_seed = eval_seed % _MAX_SEED
        else:
            self._eval_seed = int(self.np_random.integers(_MAX_SEED))
        check_keys(options, ("eval_seed",), f"{type(self).__name__}.reset")
        self._attempts, self._turn, self._last = [], 0, None
        self._last_components = self.task.zero_components()
        return self._observation()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        """Score the completion; see the class docstring for rewards across turns."""
        with self._lock:
            return self._step(action)

    def close(self) -> None:
        """Release the env (a pool passed in stays open: it is the caller's; see the class docstring)."""
        with self._lock:
            self._closed = True
        super().close()

    def _step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._closed:
            raise gym.error.Error("This env is closed; make a new one.")
        if self._turn >= self.max_turns:
            raise gym.error.ResetNeeded("The episode is over: call reset() before step().")
        result = self.score(action)
        self._turn += 1
        components = {k: result.components[k] - self._last_components.get(k, 0.0) for k in result.components}
        reward = float(sum(components.values()))
        self._last_components, self._last = dict(result.components), result
        self._attempts.append((action, result.feedback))
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
