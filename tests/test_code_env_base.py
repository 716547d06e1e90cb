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


@pytest.mark.parametrize("kwargs, field", [
    ({"allowed_imports": "math"}, "allowed_imports"), ({"allowed_imports": ["math", 3]}, "allowed_imports"),
    ({"memory_mb": 512.0}, "memory_mb"), ({"liveness_wall_s": True}, "liveness_wall_s"),
    ({"weights": {"crash": -1.0}}, "weights"),
])
def test_shared_options_are_checked_by_their_declarations(kwargs, field):
    with pytest.raises(ConfigError) as e:
        TaskConfig(**kwargs)
    assert e.value.field == field


def test_shared_options_normalise_lists_and_weights_are_checked():
    from ossgym.envs.code.base import FormatWeights

    config = TaskConfig(allowed_imports=["math", "random", "math"])
    assert config.allowed_imports == frozenset({"math", "random"})
    assert TaskConfig(allowed_imports=("heapq",)) == TaskConfig(allowed_imports={"heapq"})
    with pytest.raises(ConfigError) as e:
        FormatWeights(crash=float("nan"))
    assert e.value.field == "crash"


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


# --- chat-native turns, metadata, vectorisation ----------------------------------------------------------------

FINAL = "Here is my answer.\n\n```python\ndef strategy(board):\n    return 'W'\n```"
HARMONY_ATTEMPT = ("<|channel|>analysis<|message|>secret plan: ```python\ndef strategy(b):\n    return 'S'\n```"
                   f"<|end|><|start|>assistant<|channel|>final<|message|>{FINAL}<|return|>")


def test_turns_are_chat_messages_assistant_attempts_and_user_feedback():
    env = GptOss2048Env(max_turns=3, num_games=1, pool=LocalPool())
    obs0, info0 = env.reset(seed=2)
    first = info0["messages"]
    assert [m["role"] for m in first] == ["system", "user"]
    attempts = [HARMONY_ATTEMPT, "no code at all"]
    for turn, attempt in enumerate(attempts, start=1):
        obs, _, terminated, _, info = env.step(attempt)
        msgs = info["messages"]
        assert not terminated
        assert [m["role"] for m in msgs] == ["system", "user"] + ["assistant", "user"] * turn
        assert msgs[:2] == first  # the task itself never changes
        assert msgs[-1]["content"].startswith(f"Feedback on your attempt {turn}:\n{info['feedback']}")
        assert obs == "\n\n".join(m["content"] for m in msgs) and obs.startswith(obs0)
    # an earlier attempt is shown as its answer (the final channel): no reasoning, no Harmony tokens
    assert msgs[2]["content"] == FINAL and "secret plan" not in obs and "<|" not in obs
    assert msgs[4]["content"] == "no code at all"  # plain text is the answer as a whole
    env.reset(seed=2)
    assert env.step("")[4]["messages"][2]["content"] == ""  # nothing to show for an empty attempt


def test_openenv_sessions_carry_the_same_chat():
    openenv = pytest.importorskip("ossgym.integrations.openenv")
    server_env = openenv.OssgymEnvironment("GptOss2048-v0", max_turns=2, num_games=1, pool=LocalPool())
    local = GptOss2048Env(max_turns=2, num_games=1, pool=LocalPool())
    r = server_env.reset(eval_seed=5)
    _, info = local.reset(options={"eval_seed": 5})
    assert r.messages == info["messages"]
    r = server_env.step(openenv.OssgymAction(completion=HARMONY_ATTEMPT))
    assert r.messages == local.step(HARMONY_ATTEMPT)[4]["messages"]
    assert [m["role"] for m in r.messages] == ["system", "user", "assistant", "user"]


def test_check_env_finds_nothing_to_warn_about():
    import warnings

    from gymnasium.utils.env_checker import check_env

    env = GptOss2048Env(num_games=1, render_mode="ansi", pool=LocalPool())
    assert env.metadata["render_fps"] > 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=False)
    assert not [str(w.message) for w in caught if "fps" in str(w.message)]


def test_async_make_vec_without_shared_memory():
    """Text observations cannot live in shared memory: ``vector_kwargs={"shared_memory": False}``."""
    envs = gym.make_vec("GptOss2048-v0", num_envs=2, vectorization_mode="async",
                        vector_kwargs={"shared_memory": False}, num_games=1)
    try:
        obs, info = envs.reset(seed=[4, 4])
        assert len(obs) == 2 and obs[0] == obs[1] and "strategy(board)" in obs[0]
        assert info["eval_seed"][0] == info["eval_seed"][1]  # the same reset seed: the same evaluation
        _, rewards, terminated, _, info = envs.step((CONSTANT, "no code here"))
        assert rewards[0] > 0 and rewards[1] == -1.0 and list(terminated) == [True, True]
        assert list(info["outcome"]) == ["ok", "no_code"]
    finally:
        envs.close()


def test_gptoss_chat_template_renders_the_turns_as_harmony_messages():
    pytest.importorskip("trl")
    from transformers.utils.chat_template_utils import render_jinja_template

    from ossgym.agents.gptoss.tokenizer import gptoss_chat_template

    env = GptOss2048Env(max_turns=2, num_games=1, pool=LocalPool())
    env.reset(seed=0)
    info = env.step(HARMONY_ATTEMPT)[4]
    (text,), _ = render_jinja_template([info["messages"]], chat_template=gptoss_chat_template(),
                                        add_generation_prompt=True, reasoning_effort="low")
    tail = (f"<|start|>assistant<|channel|>final<|message|>{FINAL}<|end|>"
            f"<|start|>user<|message|>{info['messages'][-1]['content']}<|end|><|start|>assistant")
    assert text.endswith(tail) and "secret plan" not in text
