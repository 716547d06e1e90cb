"""The Ray scoring backend (ossgym.sandbox.ray_backend.RayPool) on a local Ray instance with 2 CPUs.

One Ray instance and one RayPool (2 actors x 1 sandbox slot) for the whole module: Ray start-up is heavy.
"""

import os
from dataclasses import dataclass

import gymnasium as gym
import pytest

ray = pytest.importorskip("ray")

import ossgym  # noqa: E402,F401 - registers the envs
from custom_sorting.env import SortConfig, SortTask  # noqa: E402
from custom_sorting.judge import SortDriver  # noqa: E402
from ossgym.envs.code.base import score_batch  # noqa: E402
from ossgym.envs.code.references import as_completion  # noqa: E402
from ossgym.envs.code.strategy2048.references import REFERENCES_2048  # noqa: E402
from ossgym.sandbox import Outcome, SandboxPool  # noqa: E402
from ossgym.sandbox.ray_backend import RayPool  # noqa: E402

SORT_SOURCE = "def sort_numbers(xs):\n    return sorted(xs)\n"
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def pools():
    root = os.path.dirname(HERE)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([root, HERE])}})
    local = SandboxPool(2)
    remote = RayPool(actors=2, workers_per_actor=1, max_attempts=2)
    try:
        yield local, remote
    finally:
        remote.close()
        local.close()
        ray.shutdown()


@dataclass
class KillOnce(SortDriver):
    """Kills the actor process it runs in the first time (a marker file says it did), then sorts honestly."""

    marker: str = ""

    def __call__(self, session):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().__call__(session)


@dataclass
class AlwaysKill(SortDriver):
    def __call__(self, session):
        os._exit(1)


def _rewards(results):
    return [(r.reward, r.components, r.outcome) for r in results]


def test_rewards_match_local_scoring(pools):
    """Reference completions of a custom task and of GptOss2048 get the same rewards on Ray as locally,
    with one GRPO-like group spread over both actors (the evaluation seed travels inside the driver)."""
    local, remote = pools
    sort_task = SortTask(SortConfig())
    completions = [as_completion(SORT_SOURCE), as_completion("def sort_numbers(xs):\n    return xs\n"), "no code"]
    seeds = [5, 5, 6]
    assert _rewards(score_batch(sort_task, completions, seeds, remote)) == \
        _rewards(score_batch(sort_task, completions, seeds, local))

    task = gym.make("GptOss2048-v0", num_games=2, max_moves=60).unwrapped.task
    refs = [as_completion(REFERENCES_2048[name]) for name in ("constant_w", "greedy_merge", "corner")]
    seeds = [11, 11, 12]
    on_ray = score_batch(task, refs, seeds, remote)
    assert _rewards(on_ray) == _rewards(score_batch(task, refs, seeds, local))
    assert all(r.outcome == "ok" for r in on_ray), [r.feedback for r in on_ray]
    assert len({info["pid"] for info in remote.info()}) == 2
    assert remote.peak_in_flight <= remote.max_in_flight == 2


def test_matmul_correctness_matches_local(pools):
    """Matmul references: correctness (the driver state shipped back, its paired baseline included) is the
    same on Ray; speed is a measured time and carries its documented noise, so it is only checked present."""
    local, remote = pools
    task = gym.make("GptOssMatmul-v0", speed_trials=2).unwrapped.task
    from ossgym.envs.code.matmul.references import MATMUL_CORRECT, MATMUL_INCORRECT

    comps = [as_completion(MATMUL_CORRECT["zip"]), as_completion(MATMUL_INCORRECT["off_by_one"])]
    a, b = score_batch(task, comps, [3, 3], remote), score_batch(task, comps, [3, 3], local)
    assert [r.components["correctness"] for r in a] == [r.components["correctness"] for r in b]
    assert [r.outcome for r in a] == [r.outcome for r in b]


def test_actor_killed_mid_batch_reruns_elsewhere_and_a_killer_job_ends_crashed(pools, tmp_path):
    """One job kills its actor once (re-run on another actor: same result as locally); one kills every actor
    it runs on (bounded retries, then ``crashed``); every other job gets its ordinary typed result."""
    local, remote = pools
    task = SortTask(SortConfig()).sandbox_task(1)
    drivers = [SortDriver(seed) for seed in range(5)]
    drivers.insert(2, KillOnce(99, marker=str(tmp_path / "killed")))
    drivers.append(AlwaysKill(7))
    jobs = [(SORT_SOURCE, task, d) for d in drivers]
    before = remote.replacements
    results = remote.run_batch(jobs)
    assert len(results) == len(jobs)
    assert [r.outcome for r in results[:-1]] == [Outcome.OK] * (len(jobs) - 1)
    assert all(d.passed == d.cases and d.failure is None for d in drivers[:-1])  # caller's drivers updated
    assert results[-1].outcome is Outcome.CRASHED and "killed its scoring actor 2 times" in results[-1].message
    assert remote.replacements > before
    # and the pool still scores afterwards, the same as locally
    again = [SortDriver(3), SortDriver(3)]
    local_driver = SortDriver(3)
    local.run(SORT_SOURCE, task, local_driver)
    assert [r.outcome for r in remote.run_batch([(SORT_SOURCE, task, d) for d in again])] == [Outcome.OK] * 2
    assert [d.passed for d in again] == [local_driver.passed] * 2


@dataclass
class Hang(SortDriver):
    def __call__(self, session):
        import time

        time.sleep(10_000)


def test_a_job_that_hangs_its_actor_ends_crashed(pools):
    """A driver stuck past its task's liveness limit (+ stuck_after_s) gets its actor killed, like a death:
    bounded re-runs, then ``crashed``; the honest job beside it is scored."""
    import dataclasses

    _, remote = pools
    task = dataclasses.replace(SortTask(SortConfig()).sandbox_task(1), total_timeout_s=1.0)
    saved = remote.stuck_after_s, remote.max_attempts
    remote.stuck_after_s, remote.max_attempts = 8.0, 1  # 8 s: room for a fresh actor's start-up
    try:
        honest = SortDriver(4)
        results = remote.run_batch([(SORT_SOURCE, task, Hang(1)), (SORT_SOURCE, task, honest)])
    finally:
        remote.stuck_after_s, remote.max_attempts = saved
    assert results[0].outcome is Outcome.CRASHED and results[1].outcome is Outcome.OK
    assert honest.passed == honest.cases


def test_hard_cap_on_evaluations_in_flight(pools):
    """With max_in_flight=1 the 2 actors never hold more than one evaluation between them."""
    _, remote = pools
    task = SortTask(SortConfig()).sandbox_task(1)
    cap, remote.max_in_flight, remote.peak_in_flight = remote.max_in_flight, 1, 0
    try:
        drivers = [SortDriver(s) for s in range(3)]
        assert [r.outcome for r in remote.run_batch([(SORT_SOURCE, task, d) for d in drivers])] == [Outcome.OK] * 3
        assert remote.peak_in_flight == 1
    finally:
        remote.max_in_flight = cap


def test_unpicklable_driver_is_a_config_error(pools):
    from ossgym.errors import ConfigError
    import threading

    _, remote = pools
    lock = threading.Lock()
    with pytest.raises(ConfigError, match="cannot be pickled"):
        remote.run_batch([(SORT_SOURCE, SortTask(SortConfig()).sandbox_task(1), lambda s: lock)])


def test_scoring_pool_option():
    from ossgym.errors import ConfigError
    from ossgym.sandbox import default_pool
    from ossgym.sandbox.ray_backend import scoring_pool

    assert scoring_pool("local") is default_pool()
    with pytest.raises(ConfigError, match="not one of"):
        scoring_pool("dask")
    with pytest.raises(ConfigError, match="need scoring='ray'"):
        scoring_pool("local", ray_address="auto")
