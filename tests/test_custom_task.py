"""The custom task of docs/custom_tasks.md (examples/custom_sorting/, written from the guide) runs as an env: scored
in a real worker, and registered with gymnasium (made there on the in-process stand-in: nothing is scored)."""

import gymnasium as gym

from custom_sorting import SortEnv
from ossgym.envs.code.references import as_completion
from session_fake import LocalPool

GOOD = "def sort_numbers(xs):\n    out = list(xs)\n    out.sort()\n    return out\n"
WRONG = "def sort_numbers(xs):\n    return list(xs)\n"


def pool():
    """The real sandbox pool: the guide's task runs its handler in a worker, as a user's would."""
    from ossgym.sandbox import SandboxPool

    return SandboxPool(1)


def test_custom_task_scores_good_and_wrong_answers():
    p = pool()
    try:
        env = SortEnv(pool=p)
        env.reset(seed=0)
        _, good, *_ , info = env.step(as_completion(GOOD))
        assert good == 0.5 + 0.5 + 1.0, info["feedback"]
        env.reset(seed=0)
        _, wrong, *_ , info = env.step(as_completion(WRONG))
        assert wrong == 1.0 and "not sorted" in info["feedback"]
        assert "Sandbox rules:" in env.task.instructions()
    finally:
        p.close()


def test_custom_task_registers_with_gymnasium():
    gym.register(id="SortNumbers-v0", entry_point="custom_sorting:SortEnv")
    env = gym.make("SortNumbers-v0", cases=3, pool=LocalPool())
    obs, info = env.reset(seed=1)
    assert "sort_numbers" in obs
