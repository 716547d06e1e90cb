"""GptOss2048-v0's caller side (GamesDriver + judge) and worker side (handler), driven by in-process sessions.

The real sandbox runs the same handler in a worker and the same driver in the caller; here the session is
tests/session_fake.py, so budgets are exact (CPU time is counted, not measured) and nothing is timed.
"""

import random

import numpy as np
import pytest

from session_fake import FakeSession, HostileSession, run_local
from ossgym.envs.code.references import REFERENCES_2048
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task
from ossgym.envs.code.strategy2048.handler import decode_board, describe_value, encode_board, handle
from ossgym.envs.code.strategy2048.judge import FAILED_ENDS, GAME_ENDS, GamesDriver
from ossgym.envs.game2048 import engine as ENGINE
from ossgym.sandbox import Outcome, SandboxResult

HANDLER = "ossgym.envs.code.strategy2048.handler:handle"
OK = SandboxResult(Outcome.OK, None)


def reference(name):
    ns = {}
    exec(REFERENCES_2048[name], ns)  # trusted reference source, run as plain Python for the test
    return ns["strategy"]


def replay(seed, keys, size=4):
    game = ENGINE.Game2048(size=size, rng=np.random.default_rng(seed))
    for k in keys:
        game.step(ENGINE.KEY_TO_ACTION[k])
    return game


def small_task(**kw):
    kw.setdefault("num_games", 3)
    return Strategy2048Task(Strategy2048Config(**kw))


def test_driver_plays_every_game_to_its_end_with_the_callers_engine():
    rng = random.Random(0)
    task = small_task()
    (components, feedback, details), driver, session = run_local(task, lambda b: rng.choice("WASD"), 7)
    assert all(g.end in GAME_ENDS for g in driver.games)
    assert all(g.end == "over" for g in driver.games), [g.end for g in driver.games]
    assert session.requests == driver.requests == max(g.moves for g in driver.games) + 0  # one request per step
    assert details["games"][0]["seed"] == task.game_seeds(7)[0]
    assert components["failures"] == 0 and components["crash"] == 0


def test_one_request_per_step_batches_every_live_game():
    task = small_task(num_games=4)
    sizes = []

    def respond(request):
        sizes.append(len(request["boards"]))
        return ["W" if len(sizes) % 2 else "A"] * len(request["boards"]), 1e-4

    driver = task.driver(1)
    driver(HostileSession(respond))
    assert sizes[0] == 4 and sizes == sorted(sizes, reverse=True)


def test_boards_are_immutable_exact_int_copies_and_the_worker_sees_only_boards():
    seen = []

    def strategy(board):
        assert type(board) is tuple and all(type(r) is tuple and all(type(v) is int for v in r) for r in board)
        with pytest.raises(TypeError):
            board[0][0] = 2048  # noqa - a tuple
        seen.append(board)
        return "S"

    task = small_task(num_games=2)
    run_local(task, strategy, 3)
    requests = []
    driver = task.driver(3)
    driver(HostileSession(lambda r: (requests.append(r) or ["S"] * len(r["boards"]), 1e-4)))
    assert all(set(r) == {"size", "boards"} and all(type(b) is str for b in r["boards"]) for r in requests)


def test_the_worker_never_sees_a_tile_before_it_spawns():
    """Each request holds exactly the current boards; the spawn after a move is drawn only once the move is in."""
    task = small_task(num_games=2)
    driver = task.driver(5)
    log = []

    def respond(request):
        boards = [[list(row) for row in decode_board(b, 4)] for b in request["boards"]]
        log.append((boards, [g.game.tiles() for g in driver.games if g.end is None]))
        return ["A" if len(log) % 3 else "S"] * len(request["boards"]), 1e-4

    driver(HostileSession(respond))
    for boards, truth in log:
        assert boards == truth  # nothing beyond the boards on the table at the time of the request


def test_reward_is_what_the_plain_moves_earn_whatever_else_the_worker_sends():
    """A compromised worker's replies: forged records, extra fields, wrong counts. Only valid moves count."""
    task = small_task(num_games=3)
    rng = random.Random(1)
    sent: dict[int, list[str]] = {}
    forged = [{"end": "target", "max_tile": 2048, "score": 10**9}, {"fail": "target"}, "WW", 7, None]

    def respond(request):
        out = []
        for i, _ in enumerate(request["boards"]):
            out.append(rng.choice("WASD") if rng.random() < 0.97 else rng.choice(forged))
        return out, 1e-4

    driver = task.driver(11)
    driver(HostileSession(respond))
    components, _, details = task.judge(OK, driver)
    for g in driver.games:
        assert g.end in GAME_ENDS
    # the caller's own games are the truth: a forged record ends a game as invalid_output, never a win
    assert details["wins"] == 0 or all(g.max_tile >= 2048 for g in driver.games if g.end == "target")
    honest = task.driver(11)
    honest(FakeSession(reference("corner"), HANDLER, call_limit_s=task.call_time_limit_s))
    assert sum(components.values()) <= sum(task.judge(OK, honest)[0].values())


def test_malformed_reply_and_worker_failure_end_the_live_games_as_crash():
    task = small_task(num_games=2)
    d = task.driver(0)
    d(HostileSession(lambda r: (["W"], 1e-4)))  # one item for two boards
    assert {g.end for g in d.games} == {"crash"} and d.failure
    components, feedback, _ = task.judge(OK, d)
    assert components["crash"] == task.weights.crash and "failed" in feedback
    d = task.driver(0)
    d(HostileSession(lambda r: (None, 1e-4), fail="memory"))
    assert {g.end for g in d.games} == {"crash"} and "memory" in d.failure


def test_per_move_limit_is_enforced_with_the_callers_measurement():
    task = small_task(num_games=2, move_time_limit_s=0.01, move_budget_s=0.005)
    d = task.driver(0)
    # the worker claims nothing; the caller measures 0.5 s for a request of 2 boards
    d(HostileSession(lambda r: (["S"] * len(r["boards"]), 0.5)))
    assert {g.end for g in d.games} == {"timeout"}
    components, _, _ = task.judge(OK, d)
    assert components["failures"] == -1.0


def test_handler_turns_slow_raising_and_invalid_calls_into_records():
    task = small_task(num_games=1, move_time_limit_s=0.01, move_budget_s=0.005)
    for fn, end in [(lambda b: "up", "invalid_output"), (lambda b: 1 / 0, "error")]:
        (components, feedback, _), d, _ = run_local(task, fn, 0)
        assert d.games[0].end == end and components["failures"] == -1.0
    slow = FakeSession(None, HANDLER, call_limit_s=0.01)
    slow.fn = lambda b: slow.spend(0.02) or "S"
    d = task.driver(0)
    d(slow)
    assert d.games[0].end == "timeout"
    assert describe_value(type("S", (str,), {})("W")) == "an object of a str subclass"


def test_budget_grows_with_moves_so_a_strategy_within_the_mean_finishes():
    """Deterministic CPU accounting: 0.6 ms a move (a one-ply expectimax) finishes every game."""
    task = small_task(num_games=4)
    (components, _, details), d, session = run_local(task, reference("expectimax1"), 2, cost_s=6e-4)
    assert all(g.end not in FAILED_ENDS for g in d.games), [g.end for g in d.games]
    assert components["failures"] == 0
    # just above the mean per-move budget for a whole evaluation: cut, and the cut counts as a failure
    (components, _, _), d, _ = run_local(task, reference("corner"), 2, cost_s=0.02)
    assert any(g.end == "budget" for g in d.games)
    assert components["failures"] < 0


def test_a_cut_never_pays_more_than_finishing():
    """The cut rule: the same strategy, cut by the budget, earns no more than when it finishes."""
    task = small_task(num_games=3)
    fast = run_local(task, reference("greedy_merge"), 4, cost_s=1e-4)[0][0]
    random.seed(0)
    cut = run_local(task, reference("greedy_merge"), 4, cost_s=0.03)[0][0]
    assert sum(cut.values()) < sum(fast.values())


def test_same_completion_and_seed_same_reward():
    task = small_task()
    a = run_local(task, reference("corner"), 9)[0][0]
    b = run_local(task, reference("corner"), 9, cost_s=3e-3)[0][0]  # another machine's speed, within budget
    assert a == b


def test_handler_rejects_malformed_requests():
    for bad in ({"size": 4, "boards": [[[1, 2], [3, 4]]]}, {"size": 4, "boards": ["0" * 15]},
                {"size": 4, "boards": ["g" * 16]}, {"boards": ["0" * 16]}, ["not a dict"], {"size": 2, "boards": []}):
        with pytest.raises(ValueError):
            handle(lambda b: "W", bad, None)


def test_board_encoding_round_trips():
    game = ENGINE.Game2048(size=4, rng=np.random.default_rng(3))
    for k in "SASDSA" * 5:
        game.step(ENGINE.KEY_TO_ACTION[k])
        assert [list(r) for r in decode_board(encode_board(game.exponent_bytes()), 4)] == game.tiles()
    big = ENGINE.Game2048(size=5, rng=np.random.default_rng(3), fast=False)
    assert [list(r) for r in decode_board(encode_board(big.exponent_bytes()), 5)] == big.tiles()
