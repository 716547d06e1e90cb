"""GptOss2048-v0 through its public surfaces (gymnasium.make, step, score, score_batch).

Every completion runs in a real sandbox worker (a module-scoped SandboxPool(2)); the caller-side driver and
judge alone (forged replies, budgets) are tested in tests/test_strategy2048_judge.py. Small configurations (2 or 3 games) keep the suite fast where the
default of 8 games adds nothing.
"""

from __future__ import annotations

import math

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ossgym  # noqa: F401  (registers the environments)
from session_fake import run_local
from ossgym.envs.code.base import ScoreResult, score, score_batch
from ossgym.envs.code.references import REFERENCES_2048, as_completion
from ossgym.envs.code.strategy2048 import GptOss2048Env, Strategy2048Config, Strategy2048Task
from ossgym.envs.game2048.engine import KEY_TO_ACTION, Game2048
from ossgym.errors import ConfigError
from ossgym.sandbox import Outcome, SandboxPool, SandboxResult

SMALL = {"num_games": 3}


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2) as p:
        yield p


@pytest.fixture(scope="module")
def small_task():
    return Strategy2048Task(Strategy2048Config(**SMALL))


def make(pool, **kw) -> GptOss2048Env:
    env = gymnasium.make("GptOss2048-v0", pool=pool, **kw)
    return env.unwrapped


def ref(name: str, style: str = "raw") -> str:
    return as_completion(REFERENCES_2048[name], style)


def code(src: str, style: str = "raw") -> str:
    return as_completion(src.strip() + "\n", style)


def assert_sums(r: ScoreResult) -> None:
    assert math.isclose(sum(r.components.values()), r.reward, abs_tol=1e-12)
    assert list(r.components) == list(Strategy2048Task.component_names)


def replay(seed: int, moves: str, size: int = 4) -> Game2048:
    game = Game2048(size=size, rng=np.random.default_rng(seed))
    for key in moves:
        game.step(KEY_TO_ACTION[key])
    return game


# --- Gymnasium surface ----------------------------------------------------------------------------------------

def test_check_env_and_spaces(pool):
    env = make(pool, **SMALL)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert isinstance(obs, str) and "def strategy(board)" in obs
    assert [m["role"] for m in info["messages"]] == ["system", "user"]
    assert obs == "\n\n".join(m["content"] for m in info["messages"])
    for text in ("", "  \n\t", "éλ中文🙂 ```", ref("corner")):
        assert env.action_space.contains(text)
    assert not env.action_space.contains(b"bytes")


def test_prompt_states_the_contract(pool):
    obs, _ = make(pool).reset(seed=0)
    for needle in ('"W"', '"A"', '"S"', '"D"', "4x4", "2048", "math", "bisect", "0.05 s", "8 games"):
        assert needle in obs, needle



@pytest.mark.parametrize("max_stalled", [0, 20])
def test_prompt_states_how_many_stalled_moves_end_a_game(max_stalled):
    # The number the prompt gives must be the one the harness plays by (it ends a game on the move that
    # makes the run longer than max_stalled_moves).
    task = Strategy2048Task(Strategy2048Config(num_games=1, max_stalled_moves=max_stalled))
    _, driver, _ = run_local(task, lambda board: "W", 3)
    (game,) = driver.games
    assert game.end == "stalled"
    stalled = game.stalled
    said = f"{stalled} such moves in a row end the game." if stalled > 1 else "such a move ends the game."
    assert said in task.instructions()

# --- determinism and GRPO groups -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["invalid_output", "constant_w", "random", "greedy_merge", "corner"])
def test_same_seed_and_completion_same_reward(pool, name):
    rewards = []
    for _ in range(2):
        env = make(pool)  # defaults: 8 games
        env.reset(seed=123)
        _, reward, terminated, truncated, info = env.step(ref(name))
        assert terminated and not truncated
        assert all(g["end"] != "budget" for g in info["details"]["games"])  # not cut by the time budget
        rewards.append((reward, info["reward_components"], info["details"]["games"]))
    assert rewards[0] == rewards[1]


def test_reset_seed_fixes_the_games_of_every_completion(pool):
    env = make(pool, **SMALL)
    env.reset(seed=5)
    seed5 = env.eval_seed
    details = [env.score(ref(name)).details["games"] for name in ("random", "corner", "constant_w")]
    game_seeds = [[g["seed"] for g in d] for d in details]
    assert game_seeds[0] == game_seeds[1] == game_seeds[2] and len(set(game_seeds[0])) == 3
    env2 = make(pool, **SMALL)
    env2.reset(seed=5)
    assert env2.eval_seed == seed5
    env2.reset(seed=6)
    assert env2.eval_seed != seed5
    other = [g["seed"] for g in env2.score(ref("random")).details["games"]]
    assert not set(other) & set(game_seeds[0])
    # the same games: the reported game records replay to the same start boards for every completion
    starts = {tuple(map(tuple, replay(s, "").tiles())) for s in game_seeds[0]}
    assert len(starts) >= 2


def test_eval_seed_option_and_pure_score(pool):
    env = make(pool, **SMALL)
    env.reset(options={"eval_seed": 77})
    assert env.eval_seed == 77
    a = env.score(ref("corner"))
    b = env.score(ref("corner"), seed=77)
    assert (a.reward, a.components, a.details["games"], a.feedback) == (b.reward, b.components, b.details["games"],
                                                                         b.feedback)
    assert env.eval_seed == 77 and env._turn == 0  # scoring does not move the episode


# --- extraction through the env --------------------------------------------------------------------------------

def test_harmony_raw_decoded_and_plain_score_the_same(pool):
    env = make(pool, **SMALL)
    env.reset(seed=1)
    results = [env.score(ref("corner", style)) for style in ("raw", "decoded", "plain")]
    assert results[0].reward == results[1].reward == results[2].reward
    assert results[0].components == results[1].components == results[2].components
    assert results[0].outcome == "ok" and results[0].components["format"] == 0.5


def test_last_block_that_defines_strategy_counts(pool):
    env = make(pool, **SMALL)
    env.reset(seed=2)
    corner, const = REFERENCES_2048["corner"].rstrip(), REFERENCES_2048["constant_w"].rstrip()
    helper = "def helper(board):\n    return 'D'\n"
    first_corner = (f"<|channel|>final<|message|>Try:\n```python\n{corner}\n```\nBetter:\n```python\n{const}\n```\n"
                    f"and a helper:\n```python\n{helper}```<|return|>")
    last_corner = f"<|channel|>final<|message|>```python\n{const}\n```\n```py\n{corner}\n```<|return|>"
    r_const, r_corner = env.score(ref("constant_w")), env.score(ref("corner"))
    assert env.score(first_corner).components == r_const.components
    assert env.score(last_corner).components == r_corner.components
    assert r_corner.reward > r_const.reward


def test_code_only_in_analysis_is_no_code(pool):
    env = make(pool, **SMALL)
    env.reset(seed=0)
    src = REFERENCES_2048["corner"].rstrip()
    raw = f"<|channel|>analysis<|message|>```python\n{src}\n```<|end|><|start|>assistant<|channel|>final<|message|>Done.<|return|>"
    decoded = f"analysis```python\n{src}\n```assistantfinalDone."
    truncated = f"<|channel|>analysis<|message|>```python\n{src}\n```"
    for text in (raw, decoded, truncated):
        r = env.score(text)
        assert r.outcome == "no_code", text[:40]
        assert r.components["format"] == -1.0 and r.components["policy"] == 0.0
        assert r.reward == -1.0
        assert_sums(r)
    assert "reasoning" in env.score(truncated).feedback


@pytest.mark.parametrize("text", ["", "I cannot do that.", "```text\ndef strategy(board):\n    return 'W'\n```"])
def test_missing_code(pool, text):
    env = make(pool, **SMALL)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(text)
    assert terminated and reward == -1.0 and info["outcome"] == "no_code"
    assert "```python" in info["feedback"]


def test_syntax_error_feedback_has_the_line(pool):
    env = make(pool, **SMALL)
    env.reset(seed=0)
    src = "import random\n\ndef strategy(board):\n    x = [1, 2\n    return 'W'\n"
    _, reward, _, _, info = env.step(code(src))
    assert info["outcome"] == "syntax_error"
    assert info["reward_components"]["format"] == -0.5 and info["reward_components"]["policy"] == 0.0
    assert reward == -0.5
    assert "line 4" in info["feedback"] or "line 5" in info["feedback"], info["feedback"]


def test_wrong_function_name(pool):
    env = make(pool, **SMALL)
    env.reset(seed=0)
    r = env.score(code("def play(board):\n    return 'W'\n"))
    assert r.outcome == "no_code" and r.reward == -1.0
    assert "`play`" in r.feedback and "`strategy`" in r.feedback


# --- typed outcomes -> components ------------------------------------------------------------------------------

def _score_all(task, pool, sources, seed=11):
    results = score_batch(task, [code(s) for s in sources], [seed] * len(sources), pool)
    for r in results:
        assert_sums(r)
    return results


def test_policy_violation(pool, small_task):
    (r,) = _score_all(small_task, pool, ["import os\n\ndef strategy(board):\n    return os.name and 'W'\n"])
    assert r.outcome == "policy_violation"
    assert r.components["format"] == 0.5 and r.components["policy"] == -1.0 and r.reward == -0.5
    assert "line 1" in r.feedback and "os" in r.feedback


def test_runtime_error_in_some_games_costs_those_games(pool, small_task):
    # Fails on the start board when its top row holds a tile (about half the games), else plays on.
    src = """
def strategy(board, seen={}):
    n = seen.get("calls", 0)
    seen["calls"] = n + 1
    if sum(sum(r) for r in board) <= 8 and sum(board[0]) != 0:
        return 1 // 0
    return "S" if n % 2 else "A"
"""
    task = Strategy2048Task(Strategy2048Config(num_games=8))
    (r,) = _score_all(task, pool, [src], seed=3)
    ends = [g["end"] for g in r.details["games"]]
    errors = ends.count("error")
    assert 0 < errors < 8, ends
    assert r.outcome == "ok" and r.components["crash"] == 0.0
    assert r.components["failures"] == -errors / 8
    assert "ZeroDivisionError" in r.feedback and "line 5" in r.feedback


INVALID_RETURNS = {
    "str_subclass": "def strategy(board):\n    class K(str):\n        pass\n    return K('W')\n",
    "lowercase": "def strategy(board):\n    return 'w'\n",
    "word": "def strategy(board):\n    return 'up'\n",
    "none": "def strategy(board):\n    pass\n",
    "int": "def strategy(board):\n    return 0\n",
    "list": "def strategy(board):\n    return ['W']\n",
    "bytes": "def strategy(board):\n    return b'W'\n",
    "two_keys": "def strategy(board):\n    return 'WA'\n",
}


def test_invalid_return_values_lose_the_game(pool, small_task):
    results = _score_all(small_task, pool, list(INVALID_RETURNS.values()))
    for name, r in zip(INVALID_RETURNS, results):
        assert r.outcome == "ok", name
        assert [g["end"] for g in r.details["games"]] == ["invalid_output"] * 3, name
        assert all(g["moves"] == 0 for g in r.details["games"]), name
        assert r.components["failures"] == -1.0 and r.components["score"] == 0.0, name
        assert "expected exactly one of the str" in r.feedback, name
    assert "str subclass" in results[0].feedback


def test_numpy_str_is_invalid_output():
    # numpy cannot be imported by a completion (policy); the handler still refuses numpy's str types.
    task = Strategy2048Task(Strategy2048Config(num_games=1))
    for value in (np.str_("W"), np.array(["W"])[0], np.bytes_(b"W")):
        from ossgym.envs.code.strategy2048.handler import handle

        class Ctx:
            def call(self, board, v=value):
                return v

        (item,) = handle(None, {"size": 4, "boards": ["0" * 16]}, Ctx())
        assert item["fail"] == "invalid_output"


def test_numpy_import_is_a_policy_violation(pool, small_task):
    (r,) = _score_all(small_task, pool, ["import numpy\n\ndef strategy(board):\n    return numpy.str_('W')\n"])
    assert r.outcome == "policy_violation" and r.components["policy"] == -1.0


def test_timeouts_and_endless_loops(pool, small_task):
    sources = {
        "loops_forever": "def strategy(board):\n    while True:\n        pass\n",
        "swallows": ("def strategy(board):\n    while True:\n        try:\n            while True:\n                pass\n"
                     "        except Exception:\n            pass\n"),
        # plays until a 16 appears, then takes too long on that move
        "slow_later": ("def strategy(board, n=[0]):\n    if max(max(r) for r in board) >= 16:\n        while True:\n"
                       "            pass\n    n.append(0)\n    return 'SADW'[len(n) % 4]\n"),
    }
    results = dict(zip(sources, _score_all(small_task, pool, list(sources.values()))))
    for name, r in results.items():
        assert r.outcome == "ok", (name, r.outcome, r.feedback)
        assert [g["end"] for g in r.details["games"]] == ["timeout"] * 3, name
        assert r.components["failures"] == -1.0 and r.components["crash"] == 0.0, name
    assert all(g["moves"] > 0 for g in results["slow_later"].details["games"])
    assert results["slow_later"].components["score"] > 0


def test_memory_blow_up_is_a_crash(pool, small_task):
    sources = ["def strategy(board):\n    x = [0] * (10 ** 10)\n    return 'W'\n",
               "def strategy(board):\n    x = 'a' * (2 ** 34)\n    return 'W'\n"]
    for r in _score_all(small_task, pool, sources):
        assert r.components["crash"] == -1.0, (r.outcome, r.feedback)
        # the worker is gone: every live game ends with it, as far as it got (here: at its first move)
        assert [g["end"] for g in r.details["games"]] == ["crash"] * 3
        assert "memory" in r.feedback.lower(), r.feedback


def test_never_raises_in_the_caller(pool, small_task):
    nasty = ["def strategy(board):\n    raise SystemExit(0)\n",
             "def strategy(board):\n    raise KeyboardInterrupt\n",
             "def strategy(board):\n    return strategy(board)\n",
             "def strategy(board):\n    print('x' * 10 ** 7)\n    return 'W'\n",
             "def strategy(board):\n    return 'W'\n" * 3]
    results = _score_all(small_task, pool, nasty)
    assert all(isinstance(r, ScoreResult) for r in results)
    assert all(r.reward < 1.0 for r in results[:3])


# --- the board cannot be changed ---------------------------------------------------------------------------------

def test_board_is_an_immutable_tuple_of_ints(pool, small_task):
    checks = """
def strategy(board):
    ok = type(board) is tuple and len(board) == 4
    for row in board:
        ok = ok and type(row) is tuple and len(row) == 4 and all(type(v) is int for v in row)
    return "S" if ok else "bad"
"""
    (r,) = _score_all(small_task, pool, [checks])
    assert "invalid_output" not in [g["end"] for g in r.details["games"]]


def test_mutating_the_board_is_an_error_not_an_advantage(pool, small_task):
    attempts = [
        "def strategy(board):\n    board[3][0] = 2048\n    return 'S'\n",
        "def strategy(board):\n    board[0] = (2048, 2048, 2048, 2048)\n    return 'S'\n",
        "def strategy(board):\n    board.append((2048,))\n    return 'S'\n",
        # mutating its own copy changes nothing the env reads
        "def strategy(board):\n    rows = [list(r) for r in board]\n    rows[3][0] = 2048\n    return 'S'\n",
    ]
    honest = "def strategy(board):\n    return 'S'\n"
    *results, base = _score_all(small_task, pool, attempts + [honest])
    for r in results[:3]:
        assert [g["end"] for g in r.details["games"]] == ["error"] * 3
        assert r.reward < base.reward
    assert results[3].components == base.components


# --- multi-turn ------------------------------------------------------------------------------------------------

def test_multi_turn_rewards_are_differences(pool):
    env = make(pool, max_turns=3, **SMALL)
    obs0, _ = env.reset(seed=9)
    attempts = [code("def strategy(board):\n    return 'up'\n"), ref("corner"), ref("constant_w")]
    total, scores = 0.0, []
    for turn, completion in enumerate(attempts, start=1):
        obs, reward, terminated, truncated, info = env.step(completion)
        assert math.isclose(sum(info["reward_components"].values()), reward, abs_tol=1e-12)
        assert math.isclose(sum(info["attempt_components"].values()), info["attempt_reward"], abs_tol=1e-12)
        scores.append(info["attempt_reward"])
        total += reward
        assert terminated == (turn == 3) and not truncated
        assert info["feedback"] in obs and f"Feedback on your attempt {turn}" in obs
        assert info["messages"][-1]["content"] in obs
        assert obs.startswith(obs0)
    assert math.isclose(total, scores[-1], abs_tol=1e-9)
    assert scores[1] > scores[0] and scores[2] < scores[1]  # a worse revision is paid negatively
    assert "expected exactly one of the str" in obs  # the first attempt's feedback is still in the prompt
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(ref("corner"))
    obs, _ = env.reset(seed=9)
    assert obs == obs0
    _, reward, terminated, _, _ = env.step(ref("corner"))
    assert not terminated and math.isclose(reward, scores[1])


def test_single_turn_step_after_end_raises(pool):
    env = make(pool, **SMALL)
    env.reset(seed=0)
    env.step("")
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step("")


# --- score_batch -----------------------------------------------------------------------------------------------

def test_score_batch_equals_step_and_keeps_order(pool):
    env = make(pool, **SMALL)
    names = ["corner", "invalid_output", "random", "constant_w", "greedy_merge"]
    completions = [ref(n) for n in names] + ["no code here", code("import os\ndef strategy(b):\n    return 'W'\n")]
    seeds = [4, 4, 5, 4, 6, 4, 4]
    batch = env.score_batch(completions, seeds)
    for completion, seed, r in zip(completions, seeds, batch):
        assert_sums(r)
        env.reset(options={"eval_seed": seed})
        _, reward, _, _, info = env.step(completion)
        assert reward == r.reward and info["attempt_components"] == r.components
        assert info["details"].get("games") == r.details.get("games")
    assert [r.outcome for r in batch][-2:] == ["no_code", "policy_violation"]
    assert batch[0].reward > batch[1].reward  # order kept: corner first, invalid second
    one = score(env.task, completions[2], 5, pool)
    assert one.reward == batch[2].reward


def test_score_batch_seed_count_must_match(pool, small_task):
    with pytest.raises(ConfigError) as e:
        score_batch(small_task, ["a", "b"], [1], pool)
    assert e.value.field == "seeds"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_text_gets_a_result_whose_components_sum(pool, text):
    task = Strategy2048Task(Strategy2048Config(num_games=1))
    r = score(task, text, 0, pool)
    assert_sums(r)
    assert r.outcome in {"no_code"} | {o.value for o in Outcome}
    if r.outcome == "no_code":
        assert r.reward == -1.0 and r.feedback


# --- configuration errors --------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"size": 2}, "size"),
        ({"size": 9}, "size"),
        ({"size": 4.0}, "size"),
        ({"target": 100}, "target"),
        ({"target": 4}, "target"),
        ({"num_games": 0}, "num_games"),
        ({"max_moves": -1}, "max_moves"),
        ({"max_stalled_moves": -1}, "max_stalled_moves"),
        ({"move_time_limit_s": 0}, "move_time_limit_s"),
        ({"move_time_limit_s": "fast"}, "move_time_limit_s"),
        ({"time_budget_s": 0}, "time_budget_s"),
        ({"time_budget_s": 1e9}, "time_budget_s"),
        ({"move_budget_s": 0.5}, "move_budget_s"),  # above the per-move limit
        ({"bogus_option": 1}, "bogus_option"),
        ({"num_game": 3}, "num_game"),
        ({"allowed_imports": "math"}, "allowed_imports"),  # a str, not a list of names
        ({"allowed_imports": ["math", "os"]}, "allowed_imports"),  # os is not vetted
        ({"tile_weight": -1.0}, "tile_weight"),
        ({"win_weight": float("nan")}, "win_weight"),
        ({"liveness_wall_s": 0}, "liveness_wall_s"),
        ({"memory_mb": 8}, "memory_mb"),
        ({"max_turns": 0}, "max_turns"),
        ({"max_turns": 1.5}, "max_turns"),
        ({"reasoning_effort": "max"}, "reasoning_effort"),
        ({"render_mode": "human"}, "render_mode"),
        ({"allowed_imports": frozenset({"os"})}, "allowed_imports"),
        ({"num_games": 10**6}, "num_games"),
    ],
)
def test_bad_options_raise_config_error_naming_the_field(pool, kwargs, field):
    with pytest.raises(ConfigError) as e:
        gymnasium.make("GptOss2048-v0", pool=pool, **kwargs)  # at make, not at the first step
    assert e.value.field == field, str(e.value)
    assert field in str(e.value)


def test_an_unknown_option_names_the_closest_ones(pool):
    with pytest.raises(ConfigError) as e:
        gymnasium.make("GptOss2048-v0", pool=pool, num_game=3)
    assert "Did you mean num_games?" in str(e.value) and "max_turns" in str(e.value)
    with pytest.raises(ConfigError) as e:
        gymnasium.make("GptOss2048-v0", pool=pool, allowed_imports=["math", "os", "sys"])
    assert "'os', 'sys'" in str(e.value) and "statistics" in e.value.fix  # the vetted modules are listed


def test_allowed_imports_take_any_list_of_vetted_names(pool):
    env = gymnasium.make("GptOss2048-v0", pool=pool, allowed_imports=["math", "time"]).unwrapped
    assert env.task.config.allowed_imports == frozenset({"math", "time"})
    assert env.task.sandbox_task(0).allowed_imports == frozenset({"math", "time"})
    assert "you may import only math, time" in env.reset(seed=0)[0]


@pytest.mark.parametrize("options, field", [({"eval_seed": -1}, "options['eval_seed']"),
                                            ({"eval_seed": "7"}, "options['eval_seed']"),
                                            ({"seed": 1}, "seed")])
def test_bad_reset_options(pool, options, field):
    env = make(pool, **SMALL)
    with pytest.raises(ConfigError) as e:
        env.reset(options=options)
    assert e.value.field == field


def test_render_ansi(pool):
    env = make(pool, render_mode="ansi", **SMALL)
    env.reset(seed=0)
    assert "no attempt" in env.render()
    env.step(ref("corner"))
    assert env.render().startswith("reward +")


# --- the caller's engine tables ------------------------------------------------------------------------------

def test_the_caller_builds_the_engine_tables_once():
    # The 4x4 tables are built when the judge module is imported (in the caller, where the games now run),
    # not inside any evaluation's budget.
    from ossgym.envs.game2048 import engine

    import ossgym.envs.code.strategy2048.judge  # noqa: F401

    assert engine.tables() is engine.tables()
