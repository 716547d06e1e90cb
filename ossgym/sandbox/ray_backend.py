"""Scoring on a Ray cluster: Ray actors that each hold a :class:`~ossgym.sandbox.SandboxPool` on their node.

:class:`RayPool` is a drop-in for the ``pool=`` of the code envs and reward functions: it has the caller-driven
scoring contract of ``SandboxPool`` (``run_batch(jobs) -> list[SandboxResult]``, ``run``, ``close``)::

    from ossgym.sandbox.ray_backend import RayPool
    with RayPool(actors=2, workers_per_actor=1) as pool:        # no address: starts a local Ray instance
        env = gymnasium.make("GptOss2048-v0", pool=pool)
        scorer = EnvScorer("GptOss2048-v0", pool=pool)            # (training) the same pool object

or by the ``scoring=`` option: ``score_batch(..., scoring="ray")``, ``EnvRewards(env_id, scoring="ray",
ray_address=None)``, ``ossgym train --scoring ray [--ray-address ADDR]`` (:func:`scoring_pool` makes the pool).

How a job runs. A job is ``(source, task, driver)``; the driver is a caller-side object holding the
evaluation's state (games, generators, inputs, expected outputs), all derived from the evaluation seed in the
caller. The job -- driver included -- is pickled to an actor, the actor runs ``pool.run(source, task, driver)``
against its node-local sandbox pool, and sends back ``(SandboxResult, driver after the run)``. The caller then
copies the returned driver's state into ITS driver object (same ``__dict__``), so the judge that holds the
caller's driver reads exactly what a local run would have left there. Drivers are therefore shipped, not
rebuilt from (config, seed): a driver must be picklable and keep its state in attributes (a plain function
is fine too; state captured by a closure is not copied back). The seed travels inside the driver, so a
completion scores the same on any actor and node (up to the documented timing noise of measured speeds).

Back-pressure. At most ``workers_per_actor`` jobs are in flight on an actor (its sandbox slots), and at most
``max_in_flight`` in all: jobs wait in the caller, not in Ray's queues, so Ray never holds more evaluations
than there are sandbox slots and the cap is hard.

Faults. A job whose actor dies (the process, or its node) is re-run on another actor; a replacement actor is
started in the dead one's place (Ray places it; on a cluster, on a live node). Jobs that were on an actor
beside others when it died are re-run ALONE on an actor ("suspects"), so a later death is attributable: a job
that kills ``max_attempts`` actors it ran on alone ends as ``Outcome.CRASHED``; no job is retried for ever and
the batch always returns one typed result per job. An exception raised by trusted caller code (the driver)
is re-raised, as ``SandboxPool.run`` would.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ossgym.errors import ConfigError, SandboxError
from ossgym.sandbox.result import Outcome, SandboxResult

log = logging.getLogger(__name__)

__all__ = ["SCORING_BACKENDS", "RayPool", "adopt_state", "check_picklable", "scoring_pool"]

SCORING_BACKENDS = ("local", "ray")

Job = tuple[str, Any, Callable[[Any], object]]


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("scoring", "'ray' needs Ray, which is not installed",
                          "pip install 'ossgym[ray]' (or pip install ray), or use scoring='local'") from None
    return ray


def check_picklable(obj: object, what: str = "driver") -> None:
    """Raise a ConfigError naming ``what`` when ``obj`` cannot be shipped to a Ray actor (cloudpickle)."""
    ray = _ray()
    try:
        ray.cloudpickle.dumps(obj)
    except Exception as e:  # noqa: BLE001 - any pickling failure is a config error of the caller
        raise ConfigError(what, f"{type(obj).__name__} cannot be pickled for a Ray actor ({e})",
                          "keep the driver's state in picklable attributes (see ossgym.sandbox.ray_backend)") from None


def adopt_state(local: object, remote: object) -> None:
    """Copy the state of ``remote`` (the driver after its run on an actor) into ``local`` (the caller's object)."""
    if local is remote or type(local) is not type(remote):
        return
    if hasattr(local, "__dict__"):
        local.__dict__.clear()
        local.__dict__.update(remote.__dict__)
    for cls in type(local).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name in ("__dict__", "__weakref__"):
                continue
            if hasattr(remote, name):
                object.__setattr__(local, name, getattr(remote, name))


class _ScoringActor:
    """One actor: a SandboxPool on its node; runs shipped drivers against it (threaded: one job per slot)."""

    def __init__(self, workers: int, pool_options: dict) -> None:
        from ossgym.sandbox.pool import SandboxPool

        self.pool = SandboxPool(workers, **pool_options)

    def run(self, source: str, task: Any, driver: Callable[[Any], object]) -> tuple[SandboxResult, Any]:
        result = self.pool.run(source, task, driver)
        return result, driver

    def info(self) -> dict:
        import socket

        return {"pid": os.getpid(), "node": socket.gethostname(), "workers": self.pool.workers}

    def close(self) -> None:
        self.pool.close()


@dataclass
class _Slot:
    handle: Any
    index: int
    running: int = 0
    solo: bool = False  # running one suspect job alone
    refs: set = field(default_factory=set)


@dataclass
class _Pending:
    index: int
    job: Job
    suspect: bool = False
    solo_deaths: int = 0
    deadline: float = 0.0


class RayPool:
    """The caller-driven scoring contract of SandboxPool (``run_batch``/``run``/``close``) on Ray actors.

    ``actors`` actors each hold a ``SandboxPool(workers_per_actor)`` and reserve ``actor_cpus`` CPUs
    (default ``workers_per_actor``: one core per sandbox slot, so Ray places actors by free cores). Left
    out, they are sized from the CPUs Ray has free when the pool starts (F): ``workers_per_actor`` = F //
    ``actors``, or min(F, 8) when ``actors`` is left out too (several driver processes per node: see
    docs/scaling.md), and ``actors`` = F // ``workers_per_actor``; so the free cores of a cluster are used.
    ``ranks=N`` says the pool is one of N alike (one per process of a data-parallel run, each scoring its
    own completions): F is then the cluster's CPUs // N, the same for every rank whenever it starts.
    ``max_in_flight`` caps evaluations in flight over all actors (default: all slots). ``address`` is a Ray
    cluster address (``"auto"``, ``"ray://host:10001"``); with None and no Ray running in this process, a
    local Ray instance is started (``num_cpus`` CPUs; this pool shuts it down on ``close``).
    ``runtime_env`` is passed to the actors; by default, for a local instance, actors import the same
    ossgym as the caller (its directory is put first on PYTHONPATH). ``max_attempts``: how many actors a
    job may kill, running alone, before it ends as ``crashed``. ``pool_options`` go to each actor's
    SandboxPool (``require_isolation``, ``compromised_for_tests``). ``spread=True`` asks Ray to spread the
    actors over the nodes (``scheduling_strategy="SPREAD"``) rather than pack them. ``stuck_after_s``: a job
    still unanswered this long past its task's liveness limit (``total_timeout_s``; an actor that cannot be
    placed, a hung node) has its actor killed, which re-runs it like any actor death: a batch never hangs.
    """

    def __init__(self, actors: int | None = None, *, workers_per_actor: int | None = None,
                 actor_cpus: float | None = None, max_in_flight: int | None = None, address: str | None = None,
                 num_cpus: int | None = None, runtime_env: dict | None = None, max_attempts: int = 2,
                 max_replacements: int | None = None, spread: bool = False, stuck_after_s: float = 300.0,
                 ranks: int = 1, **pool_options: Any) -> None:
        for name, value, example in (("actors", actors, 2), ("workers_per_actor", workers_per_actor, 8),
                                     ("max_in_flight", max_in_flight, 16), ("ranks", ranks, 4)):
            if value is not None and (type(value) is not int or value < 1):
                raise ConfigError(name, f"{value!r} is not a positive int", f"use e.g. {example}, or leave it out")
        if type(max_attempts) is not int or max_attempts < 1:
            raise ConfigError("max_attempts", f"{max_attempts!r} is not a positive int", "use e.g. 2")
        bad = set(pool_options) - {"require_isolation", "compromised_for_tests"}
        if bad:
            raise ConfigError("pool_options", f"unknown SandboxPool options {sorted(bad)}",
                              "use require_isolation= or compromised_for_tests=")
        ray = _ray()
        self.stuck_after_s = float(stuck_after_s)
        self.replacements = 0
        self.retries = 0
        self.peak_in_flight = 0
        self._pool_options = pool_options
        self._owns_ray = False
        if not ray.is_initialized():
            if address is None:
                # the checkout holding this ossgym (ossgym/sandbox/ray_backend.py -> its parent of ossgym/)
                root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
                if runtime_env is None:
                    paths = [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
                    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}
                ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING, runtime_env=runtime_env)
                self._owns_ray = True
            else:
                ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
        if actors is None or workers_per_actor is None:
            if ranks == 1:
                free = max(1, int(ray.available_resources().get("CPU", 1)))
            else:
                free = max(1, int(ray.cluster_resources().get("CPU", 1)) // ranks)
            if workers_per_actor is None:
                workers_per_actor = max(1, free // actors) if actors else min(free, 8)
            if actors is None:
                actors = max(1, free // workers_per_actor)
        self.workers = actors * workers_per_actor  # evaluations that can run at once (SandboxPool's meaning)
        self.actors, self.workers_per_actor, self.max_attempts = actors, workers_per_actor, max_attempts
        self.max_in_flight = self.workers if max_in_flight is None else max_in_flight
        self.max_replacements = 4 * actors if max_replacements is None else max_replacements
        self._actor_cls = ray.remote(_ScoringActor).options(
            num_cpus=workers_per_actor if actor_cpus is None else actor_cpus,
            max_concurrency=workers_per_actor, max_restarts=0, max_task_retries=0,
            **({"scheduling_strategy": "SPREAD"} if spread else {}),
            **({"runtime_env": runtime_env} if runtime_env is not None and not self._owns_ray else {}))
        self._slots = [self._start(i) for i in range(actors)]
        self._lock = threading.Lock()  # one batch at a time (batches from several threads queue here)
        self._closed = False

    def _start(self, index: int) -> _Slot:
        return _Slot(self._actor_cls.remote(self.workers_per_actor, self._pool_options), index)

    def info(self) -> list[dict]:
        """Each actor's pid, node and sandbox slots."""
        ray = _ray()
        return ray.get([s.handle.info.remote() for s in self._slots])

    # --- the scoring contract ------------------------------------------------------------------------
    def run(self, source: str, task: Any, driver: Callable[[Any], object]) -> SandboxResult:
        """One job on an actor; the caller's ``driver`` is left in the state the run put it in."""
        return self.run_batch([(source, task, driver)])[0]

    def run_batch(self, jobs: Sequence[Job]) -> list[SandboxResult]:
        """Run ``(source, task, driver)`` jobs across the actors; one typed result per job, in order, and
        every caller-side driver updated with its state after the run. Thread-safe: concurrent batches take
        turns (each one uses every actor)."""
        with self._lock:
            return self._run_batch(jobs)

    def _run_batch(self, jobs: Sequence[Job]) -> list[SandboxResult]:
        if self._closed:
            raise SandboxError("this RayPool is closed; create a new RayPool")
        ray = _ray()
        jobs = list(jobs)
        for _, _, driver in jobs:
            check_picklable(driver)
        results: list[SandboxResult | None] = [None] * len(jobs)
        todo: deque[_Pending] = deque(_Pending(i, job) for i, job in enumerate(jobs))
        in_flight: dict[Any, tuple[_Pending, _Slot]] = {}
        while todo or in_flight:
            self._dispatch(todo, in_flight)
            if not in_flight:  # nothing could be placed: no actor left
                for p in todo:
                    results[p.index] = _crashed("no scoring actor is left (all died; replacements used up)",
                                                p.solo_deaths)
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=5.0)
            if not ready:
                self._kill_stuck(in_flight)
                continue
            for ref in ready:
                pending, slot = in_flight.pop(ref)
                slot.running -= 1
                slot.refs.discard(ref)
                try:
                    result, remote_driver = ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the trusted driver raised: as SandboxPool.run would
                    for other in list(in_flight):
                        try:
                            ray.cancel(other, force=False)
                        except Exception:  # noqa: BLE001 - best effort
                            pass
                    raise e.as_instanceof_cause() from None
                except ray.exceptions.RayError as e:  # the actor, its worker process or its node died
                    # (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError, OutOfMemoryError...)
                    results[pending.index] = self._actor_died(slot, pending, todo, e)
                    continue
                adopt_state(pending.job[2], remote_driver)
                if pending.suspect or pending.solo_deaths:
                    result.metadata.setdefault("ray_retries", pending.solo_deaths + int(pending.suspect))
                if slot.solo:
                    slot.solo = False
                results[pending.index] = result
        return results  # type: ignore[return-value]

    def _dispatch(self, todo: deque[_Pending], in_flight: dict) -> None:
        """Place waiting jobs on actors with free slots (least loaded first), within the hard cap."""
        while todo and len(in_flight) < self.max_in_flight:
            pending = todo[0]
            if pending.suspect:
                free = [s for s in self._slots if s.running == 0]
            else:
                free = [s for s in self._slots if not s.solo and s.running < self.workers_per_actor]
            if not free:
                # a suspect waits for an idle actor; an ordinary job behind a waiting suspect may still go
                nxt = next((p for p in todo if not p.suspect), None) if pending.suspect else None
                if nxt is None:
                    return
                free = [s for s in self._slots if not s.solo and s.running < self.workers_per_actor]
                if not free:
                    return
                todo.remove(nxt)
                pending = nxt
            else:
                todo.popleft()
            slot = min(free, key=lambda s: s.running)
            source, task, driver = pending.job
            ref = slot.handle.run.remote(source, task, driver)
            slot.running += 1
            slot.solo = pending.suspect
            slot.refs.add(ref)
            pending.deadline = time.monotonic() + float(getattr(task, "total_timeout_s", 0.0)) + self.stuck_after_s
            in_flight[ref] = (pending, slot)
            self.peak_in_flight = max(self.peak_in_flight, len(in_flight))

    def _kill_stuck(self, in_flight: dict) -> None:
        """Kill the actor of every job past its deadline (its call then fails as an actor death)."""
        ray = _ray()
        now = time.monotonic()
        for pending, slot in list(in_flight.values()):
            if now > pending.deadline and slot in self._slots:
                log.warning("scoring actor %d: a job is %.0fs past its liveness limit; killing the actor",
                            slot.index, self.stuck_after_s)
                ray.kill(slot.handle, no_restart=True)
                pending.deadline = float("inf")

    def _actor_died(self, slot: _Slot, pending: _Pending, todo: deque[_Pending], error: Exception
                    ) -> SandboxResult | None:
        """Replace the dead actor (once, bounded) and re-queue its job; a ``crashed`` result once the job
        has killed ``max_attempts`` actors running alone."""
        if slot in self._slots:
            log.warning("scoring actor %d died (%s); its jobs run elsewhere", slot.index, type(error).__name__)
            self._slots.remove(slot)
            try:  # it may be alive after all (a lost object): free its CPUs for the replacement
                _ray().kill(slot.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            if self.replacements < self.max_replacements:
                self.replacements += 1
                self._slots.append(self._start(slot.index))
            else:
                log.warning("no replacement for scoring actor %d: %d replacements used", slot.index,
                            self.replacements)
        if slot.solo:  # it ran alone: the death is this job's
            pending.solo_deaths += 1
        else:  # beside others: any of them may have done it; from now on it runs alone
            pending.suspect = True
        if pending.solo_deaths >= self.max_attempts:
            return _crashed(f"the job killed its scoring actor {pending.solo_deaths} times, running alone "
                            f"({type(error).__name__})", pending.solo_deaths)
        self.retries += 1
        todo.appendleft(pending)
        return None

    # --- lifecycle -------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the actors (their sandbox pools die with them); a Ray instance this pool started is shut down."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        ray = _ray()
        for s in self._slots:
            try:
                ray.kill(s.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self._slots = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    def __deepcopy__(self, memo: dict) -> RayPool:
        """A pool is a shared service, not data (gymnasium's check_env deep-copies env kwargs)."""
        return self

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _crashed(message: str, attempts: int) -> SandboxResult:
    return SandboxResult(Outcome.CRASHED, None, message, metadata={"ray_retries": attempts})


def scoring_pool(scoring: str = "local", *, ray_address: str | None = None, **options: Any) -> RayPool | None:
    """The pool for a ``scoring=`` option: ``"local"`` -> None (the process's default SandboxPool, which every
    ``pool=None`` uses; ``ray_address`` and ``options`` must be left out), ``"ray"`` -> a new :class:`RayPool`
    (``ray_address``: a cluster, e.g. ``"auto"``, or None for a local Ray instance; ``options`` go to RayPool).
    Pass the result as ``pool=`` to an env, ``score_batch`` or ``EnvScorer``; close a RayPool when done."""
    if scoring == "local":
        if ray_address is not None or options:
            raise ConfigError("scoring", "ray_address and Ray options need scoring='ray'",
                              "pass scoring='ray', or leave ray_address out")
        return None
    if scoring == "ray":
        return RayPool(address=ray_address, **options)
    raise ConfigError("scoring", f"{scoring!r} is not one of {SCORING_BACKENDS}", "use 'local' or 'ray'")
