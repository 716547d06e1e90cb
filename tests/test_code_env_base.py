"""What every code env shares: the step lock, close() and user-passed pools, the shared config, the rules
paragraph generated from the sandbox policy. Scored through tests/session_fake.LocalPool (no worker)."""

import threading

import gymnasium as gym
import pytest

from session_fake import LocalPool
from ossgym.envs.code.base import TaskConfig, sandbox_rules
from ossgym.envs.code.references import REFERENCES_2048, as_completion
from ossgym.envs.code.strategy2048 import GptOss2048Env
from ossgym.errors import ConfigError
from ossgym.sandbox import check_policy
from ossgym.sandbox.policy import FORBIDDEN_NAMES

CONSTANT = as_completion(REFERENCES_2048["constant_w"])


def test_four_threads_on_one_env_with_two_turns_get_exactly_two_steps():
    env = GptOss2048Env(max_turns=2, num_games=1, pool=LocalPool(delay_s=0.05))
    env.reset(seed=0)
    accepted, refused = [], []
    barrier = threading.Barrier(4)

    def go():
        barrier.wait()
        try:
            accepted.append(env.step(CONSTANT))
        except gym.error.ResetNeeded:
            refused.append(1)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 2 and len(refused) == 2
    assert sorted(info["turn"] for *_, info in accepted) == [1, 2]
    assert sum(r for _, r, *_ in accepted) == pytest.approx(accepted[-1][4]["attempt_reward"])


def test_close_leaves_a_user_pool_open_and_the_env_refuses_to_step():
    pool = LocalPool()
    env = GptOss2048Env(num_games=1, pool=pool)
    env.reset(seed=1)
    env.close()
    assert not pool.closed  # the caller's pool: it may serve other envs
    with pytest.raises(gym.error.Error):
        env.step(CONSTANT)
    other = GptOss2048Env(num_games=1, pool=pool)  # the pool still works for another env
    other.reset(seed=1)
    assert other.step(CONSTANT)[1] > 0


def test_shared_config_validates_imports_and_memory():
    with pytest.raises(ConfigError):
        TaskConfig(allowed_imports=frozenset({"os"}))
    with pytest.raises(ConfigError):
        TaskConfig(memory_mb=1)
    with pytest.raises(ConfigError):
        GptOss2048Env(allowed_imports=frozenset({"socket"}))


def test_rules_paragraph_is_generated_from_the_policy():
    imports = frozenset({"math", "random"})
    text = sandbox_rules("strategy", imports)
    assert "import only math, random" in text
    import builtins

    for name in FORBIDDEN_NAMES:
        if hasattr(builtins, name):
            assert name in text, name
    # what the paragraph says about '_' names matches what the policy does
    from ossgym.envs.code.base import make_sandbox_task

    task = make_sandbox_task(entrypoint="strategy", handler="ossgym.sandbox.testing:call_once", allowed_imports=imports)
    private_ok = not check_policy("def strategy(b):\n    _x = 1\n    return _x\n", task)
    assert ("Local names may start with `_`" in text) == private_ok
    env_text = GptOss2048Env().task.instructions()
    assert sandbox_rules("strategy", GptOss2048Env().task.config.allowed_imports) in env_text
