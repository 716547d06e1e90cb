"""The Ray scoring backend (ossgym.sandbox.ray_backend.RayPool) on a local Ray instance, and its use in training
(EnvRewards(scoring="ray"), score_batch(scoring="ray"), run_training with config.scoring="ray").

One Ray instance for the whole module (Ray start-up is heavy), started by the module's RayPool (2 actors x 1
sandbox slot), which owns it and shuts it down; it has 4 logical CPUs, so the tests' other RayPools (2 slots)
fit beside it. Those find Ray running, so they must leave it running when they close.
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
from ossgym.training.env import EnvRewards  # noqa: E402

SORT_SOURCE = "def sort_numbers(xs):\n    return sorted(xs)\n"
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def pools():
    assert not ray.is_initialized()
    root = os.path.dirname(HERE)
    path = os.pathsep.join([root, HERE, os.path.join(root, "examples")])  # the custom task lives in examples/
    local = SandboxPool(2)
    remote = RayPool(actors=2, workers_per_actor=1, max_attempts=2, num_cpus=4,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
    remote.info()  # both actors placed: the CPUs Ray reports free from now on leave them out
    try:
        yield local, remote
    finally:
        try:
            remote.close()
            assert not ray.is_initialized(), "the pool that started Ray did not shut it down"
        finally:
            local.close()
            if ray.is_initialized():
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
    from ossgym.sandbox.ray_backend import scoring_pool

    assert scoring_pool("local") is None  # pool=None: the process's default pool
    with pytest.raises(ConfigError, match="not one of"):
        scoring_pool("dask")
    with pytest.raises(ConfigError, match="need scoring='ray'"):
        scoring_pool("local", ray_address="auto")


def test_batch_much_larger_than_the_cap_is_submitted_within_it(pools, monkeypatch):
    """16 jobs at max_in_flight=1: counted at Ray's own calls (each ``actor.run.remote`` submitted, each ref
    ``ray.wait`` handed back), never more than one evaluation is outstanding, and every job is scored."""
    _, remote = pools
    submitted, answered, outstanding = set(), set(), []

    class Run:
        def __init__(self, method):
            self.method = method

        def remote(self, *args):
            ref = self.method.remote(*args)
            submitted.add(ref)
            outstanding.append(len(submitted - answered))
            return ref

    class Handle:
        def __init__(self, handle):
            self.handle, self.run = handle, Run(handle.run)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    real_wait = ray.wait

    def wait(refs, **kwargs):
        ready, rest = real_wait(refs, **kwargs)
        answered.update(ready)
        return ready, rest

    monkeypatch.setattr(ray, "wait", wait)
    for slot in remote._slots:
        monkeypatch.setattr(slot, "handle", Handle(slot.handle))
    monkeypatch.setattr(remote, "max_in_flight", 1)
    task = SortTask(SortConfig()).sandbox_task(1)
    drivers = [SortDriver(s) for s in range(16)]
    results = remote.run_batch([(SORT_SOURCE, task, d) for d in drivers])
    assert [r.outcome for r in results] == [Outcome.OK] * 16
    assert all(d.passed == d.cases for d in drivers)
    assert len(submitted) == 16 and max(outstanding) == 1


def _components(results):
    return [dict(r.components) for r in results]


def test_env_rewards_on_ray_match_local_for_the_2048_references(pools):
    """EnvRewards(scoring="ray") and score_batch(scoring="ray") give GptOss2048-v0's reference completions
    (one group of one seed, another seed, a completion without code) exactly the local rewards."""
    refs = [as_completion(REFERENCES_2048[name]) for name in ("constant_w", "greedy_merge", "corner")]
    completions, seeds = refs + [refs[1], "no code here"], [11, 11, 11, 12, 11]
    options = {"num_games": 2, "max_moves": 60}
    local = EnvRewards("GptOss2048-v0", options)
    assert local.pool is None
    expected = local.scorer(completions, seeds)
    assert len({e["score"] for e in expected[:3]}) == 3  # the references differ, so equality means something
    with EnvRewards("GptOss2048-v0", options, scoring="ray") as on_ray:
        pool = on_ray.pool
        assert isinstance(pool, RayPool) and os.getpid() not in {i["pid"] for i in pool.info()}
        assert (pool.actors, pool.workers_per_actor) == (1, 2)  # sized from Ray's free CPUs: 4 - the module's 2
        assert on_ray.scorer(completions, seeds) == expected
        funcs = on_ray.reward_funcs()
        got = {f.__name__: f(prompts=[[]] * 5, completions=completions, seed=seeds) for f in funcs}
        assert got == {name: [e[name] for e in expected] for name in on_ray.component_names}
        assert pool.peak_in_flight >= 1
    assert pool._closed and ray.is_initialized()  # closed; Ray (not its to stop) still running
    task = local.env.task
    assert _components(score_batch(task, completions, seeds, scoring="ray")) == expected


def test_env_rewards_on_ray_match_local_for_the_matmul_references(pools):
    """GptOssMatmul-v0 references: every component but the measured speed is identical on Ray; a wrong
    completion's speed (the floor: no timing) is identical too, a correct one's is a measured ratio."""
    from ossgym.envs.code.matmul.references import MATMUL_CORRECT, MATMUL_INCORRECT

    completions = [as_completion(MATMUL_CORRECT["zip"]), as_completion(MATMUL_CORRECT["naive"]),
                   as_completion(MATMUL_INCORRECT["off_by_one"])]
    seeds = [3, 3, 3]
    options = {"speed_trials": 2}
    expected = EnvRewards("GptOssMatmul-v0", options).scorer(completions, seeds)
    with EnvRewards("GptOssMatmul-v0", options, scoring="ray") as on_ray:
        got = on_ray.scorer(completions, seeds)
    without_speed = [{k: v for k, v in c.items() if k != "speed"} for c in got]
    assert without_speed == [{k: v for k, v in c.items() if k != "speed"} for c in expected]
    assert expected[2]["correctness"] < expected[0]["correctness"] == expected[1]["correctness"]
    assert got[2]["speed"] == expected[2]["speed"]


class _AgentThatStops:
    """Stands in for the agent: the run stops (Ctrl-C) at the first thing it asks of it."""

    @property
    def model(self):
        raise KeyboardInterrupt


def test_run_training_closes_its_ray_pool_when_the_run_stops(pools, monkeypatch, tmp_path):
    """Rank 1 of a 2-process run (WORLD_SIZE=2) on the cluster at "auto" (here: the module's Ray, already
    running in this process) takes half the cluster's CPUs for its pool, and closes it when the run stops."""
    from ossgym.training import GRPORunConfig, run as run_module

    built = []

    class Recorded(EnvRewards):
        def __post_init__(self):
            super().__post_init__()
            built.append(self)

    monkeypatch.setattr(run_module, "EnvRewards", Recorded)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    config = GRPORunConfig(env_kwargs={"num_games": 1}, scoring="ray", ray_address="auto", output_dir=str(tmp_path),
                           steps=1, group_size=2)
    with pytest.raises(KeyboardInterrupt):
        run_module.run_training(config, agent=_AgentThatStops())
    (env,) = built
    assert env.scoring == "ray" and isinstance(env.pool, RayPool) and env.pool._closed
    assert (env.pool.actors, env.pool.workers_per_actor) == (1, 2)  # the module's 4 CPUs // 2 ranks
    assert ray.is_initialized()  # the run found Ray running (the module's): it leaves it running
