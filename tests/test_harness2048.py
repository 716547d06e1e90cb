"""The trusted 2048 harness, driven by a fake sandbox ctx (the real sandbox calls the same function)."""

import copy
import random

import numpy as np
import pytest

from fake_sandbox_ctx import FakeCtx, assert_plain
from ossgym.envs.code.harness2048 import GAME_ENDS, describe_value, harness, make_payload
from ossgym.envs.game2048 import engine as ENGINE



def replay(seed: int, moves: str, size: int = 4):
    """What the trusted caller does: replay the moves with its own engine and generator."""
    game = ENGINE.Game2048(size=size, rng=np.random.default_rng(seed))
    for key in moves:
        game.step(ENGINE.KEY_TO_ACTION[key])
    return game


def run(fn, seeds=(1, 2), ctx_kwargs=None, **payload_kwargs):
    ctx = FakeCtx(fn, **(ctx_kwargs or {}))
    out = harness(fn, make_payload(list(seeds), **payload_kwargs), ctx)
    assert_plain(out)
    assert set(out) == {"games"}
    for g in out["games"]:
        assert g["end"] in GAME_ENDS and set(g["moves"]) <= set("WASD")
    return out, ctx


def test_random_strategy_plays_full_games_that_replay_exactly():
    rng = random.Random(0)
    out, ctx = run(lambda board: rng.choice("WASD"), seeds=(3, 4, 5), max_stalled_moves=100)
    assert [g["seed"] for g in out["games"]] == [3, 4, 5]
    for g in out["games"]:
        assert g["end"] == "over" and len(g["moves"]) > 20
        assert replay(g["seed"], g["moves"]).is_over()
    assert len(ctx.checkpoints) == 3
    assert [len(c["games"]) for c in ctx.checkpoints] == [1, 2, 3]
    assert ctx.checkpoints[-1]["games"] == out["games"]


def test_same_seed_and_strategy_give_same_moves():
    def corner(board):
        return "S" if board[0][0] % 3 else "A"

    a, _ = run(corner, seeds=(9,))
    b, _ = run(corner, seeds=(9,))
    assert a["games"][0]["moves"] == b["games"][0]["moves"]


def test_board_is_a_deeply_immutable_copy_of_exact_ints():
    seen = []

    def strategy(board):
        assert type(board) is tuple and len(board) == 4
        assert all(type(r) is tuple and len(r) == 4 for r in board)
        assert all(type(v) is int for r in board for v in r)
        seen.append(board)
        return "WASD"[len(seen) % 4]

    out, _ = run(strategy, seeds=(7,), max_moves=30)
    assert out["games"][0]["end"] in ("move_limit", "over")
    assert len({id(b) for b in seen}) == len(seen)  # fresh object every move
    # the copy shows the real game: replaying the first k moves gives board k
    moves = out["games"][0]["moves"]
    for k in (0, 5, len(seen) - 1):
        assert tuple(map(tuple, replay(7, moves[:k]).tiles())) == seen[k]


def test_mutating_the_board_is_an_error_not_a_cheat():
    def strategy(board):
        board[0][0] = 2048  # tuples: TypeError
        return "W"

    out, _ = run(strategy, seeds=(1,))
    g = out["games"][0]
    assert g["end"] == "error" and g["error_type"] == "TypeError" and g["moves"] == ""
    assert "does not support item assignment" in g["detail"] and g["traceback"]


class SneakyStr(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class AlwaysEqual:
    def __eq__(self, other):
        return True

    def __hash__(self):
        return hash("W")


@pytest.mark.parametrize(
    "value, described",
    [
        ("w", "the str 'w'"),
        ("WA", "the str 'WA'"),
        ("", "the str ''"),
        ("up", "the str 'up'"),
        (0, "an int"),
        (None, "None"),
        (["W"], "a list"),
        (SneakyStr("W"), "str subclass"),
        (AlwaysEqual(), "another type"),
        (np.str_("W"), "str subclass"),
    ],
)
def test_invalid_returns_end_the_game_as_invalid_output(value, described):
    out, _ = run(lambda board: value, seeds=(1, 2))
    for g in out["games"]:
        assert g["end"] == "invalid_output" and g["moves"] == ""
        assert described in g["detail"] and "'W', 'A', 'S', 'D'" in g["detail"]


def test_describe_value_never_calls_untrusted_methods():
    class Loud:
        def __repr__(self):
            raise AssertionError("repr called")

        __str__ = __repr__

    assert describe_value(Loud()) == "an object of another type"
    assert describe_value("x" * 1000).endswith("...'")


def test_invalid_after_some_moves_keeps_the_moves():
    calls = []

    def strategy(board):
        calls.append(1)
        return "W" if len(calls) < 4 else 4

    out, _ = run(strategy, seeds=(1,), max_stalled_moves=100)
    assert out["games"][0]["moves"] == "WWW" and out["games"][0]["end"] == "invalid_output"


def test_error_ends_one_game_and_the_next_game_still_plays():
    state = {"n": 0}

    def strategy(board):
        state["n"] += 1
        if state["n"] == 3:
            raise ZeroDivisionError("boom")
        return "WASD"[state["n"] % 4]

    out, _ = run(strategy, seeds=(1, 2), max_moves=10)
    first, second = out["games"]
    assert (first["end"], first["error_type"], first["detail"], first["moves"]) == ("error", "ZeroDivisionError", "boom", "AS")
    assert second["end"] == "move_limit" and len(second["moves"]) == 10


def test_call_timeout_ends_the_game_as_timeout():
    holder = {}

    def strategy(board):
        holder["n"] = holder.get("n", 0) + 1
        if holder["n"] == 3:
            holder["ctx"].spend(1.0)
        return "WASD"[holder["n"] % 4]

    ctx = FakeCtx(strategy, call_limit_s=0.05)
    holder["ctx"] = ctx
    out = harness(strategy, make_payload([1, 2], max_moves=5), ctx)
    assert out["games"][0]["end"] == "timeout" and out["games"][0]["moves"] == "AS"
    assert out["games"][1]["end"] == "move_limit"


def test_stall_on_a_move_that_changes_nothing():
    out, _ = run(lambda board: "W", seeds=(1, 2, 3), max_stalled_moves=5)
    for g in out["games"]:
        assert g["end"] == "stalled"
        game = replay(g["seed"], g["moves"])
        # the last 6 moves changed nothing: replaying without them gives the same board
        assert g["moves"].endswith("W" * 6)
        before = replay(g["seed"], g["moves"][:-6])
        assert np.array_equal(before.board, game.board) and not game.is_over()


def test_move_limit():
    rng = random.Random(1)
    out, _ = run(lambda b: rng.choice("WASD"), seeds=(1,), max_moves=7)
    assert out["games"][0]["end"] == "move_limit" and len(out["games"][0]["moves"]) == 7


def test_budget_cuts_games_fairly_and_they_count_as_far_as_they_got():
    rng = random.Random(2)
    # each call costs 10 ms of fake time; 1 s total, 0.1 s reserve: 4 games share 0.9 s
    out, ctx = run(
        lambda b: rng.choice("WASD"),
        seeds=(1, 2, 3, 4),
        ctx_kwargs={"total_s": 1.0, "call_cost_s": 0.01},
        max_stalled_moves=100,
    )
    games = out["games"]
    assert len(games) == 4 and all(g["end"] == "budget" for g in games)
    assert all(20 <= len(g["moves"]) <= 23 for g in games), [len(g["moves"]) for g in games]
    assert ctx.time_left() >= 0.1 - 1e-9


def test_fast_games_leave_their_time_to_later_games():
    holder = {"n": 0}

    def strategy(board):
        holder["n"] += 1
        # game 1: only "W" (stalls quickly); game 2: cycle through all keys (never stalls)
        return "W" if not holder["ctx"].checkpoints else "WASD"[holder["n"] % 4]

    ctx = FakeCtx(strategy, total_s=1.0, call_cost_s=0.01)
    holder["ctx"] = ctx
    out = harness(strategy, make_payload([1, 2], max_stalled_moves=3), ctx)
    first, second = out["games"]
    assert first["end"] == "stalled" and len(first["moves"]) < 30
    assert second["end"] == "budget" and len(second["moves"]) > 45  # got more than half of 0.9 s


def test_no_time_left_gives_empty_budget_games():
    out, ctx = run(lambda b: "W", seeds=(1, 2), ctx_kwargs={"total_s": 0.05})
    assert [(g["moves"], g["end"]) for g in out["games"]] == [("", "budget"), ("", "budget")]
    assert ctx.calls == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"seeds": [1.0]},
        {"seeds": [-1]},
        {"size": 2},
        {"size": 9},
        {"max_moves": -1},
        {"game_time_s": 0.0},
        {"reserve_s": -1.0},
    ],
)
def test_bad_payload_is_rejected(bad):
    payload = make_payload([1])
    payload.update(bad)
    with pytest.raises(ValueError):
        harness(lambda b: "W", payload, FakeCtx(lambda b: "W"))


def test_other_board_sizes():
    rng = random.Random(3)
    out, _ = run(lambda b: rng.choice("WASD") if len(b) == 5 else 0, seeds=(1,), size=5, max_stalled_moves=100)
    g = out["games"][0]
    assert g["end"] == "over" and replay(1, g["moves"], size=5).is_over()


def test_per_game_time_limit():
    rng = random.Random(4)
    out, _ = run(
        lambda b: rng.choice("WASD"),
        seeds=(1, 2),
        ctx_kwargs={"total_s": 100.0, "call_cost_s": 0.01},
        game_time_s=0.1,
        max_stalled_moves=100,
    )
    assert [g["end"] for g in out["games"]] == ["budget", "budget"]
    assert all(10 <= len(g["moves"]) <= 11 for g in out["games"])


def test_bad_payload_is_a_config_error():
    from ossgym.errors import ConfigError

    with pytest.raises(ConfigError, match="size"):
        make_payload([1], size=2)


def test_replay_result_recomputes_outcomes_from_moves_only():
    from ossgym.envs.code.harness2048 import replay_result

    rng = random.Random(5)
    payload = make_payload([1, 2, 3], max_stalled_moves=100)
    fn = lambda b: rng.choice("WASD")  # noqa: E731
    out = harness(fn, payload, FakeCtx(fn))
    games = replay_result(out, payload)
    assert [g.seed for g in games] == [1, 2, 3]
    for g, rec in zip(games, out["games"]):
        direct = replay(rec["seed"], rec["moves"])
        assert (g.moves, g.score, g.max_tile, g.over, g.end) == (len(rec["moves"]), direct.score, direct.max_tile, True, "over")

    forged = copy.deepcopy(out)
    forged["games"][0]["score"] = 10**9  # extra fields are ignored
    forged["games"][1]["moves"] = forged["games"][1]["moves"] + "X"  # bad letter: the record counts as no moves
    forged["games"][2]["seed"] = 99  # a record for another seed
    replayed = replay_result(forged, payload)
    assert replayed[0] == games[0]
    assert (replayed[1].end, replayed[1].moves) == ("bad_record", 0)
    assert (replayed[2].end, replayed[2].moves) == ("bad_record", 0)


def test_replay_result_of_partial_or_missing_results():
    from ossgym.envs.code.harness2048 import replay_result

    payload = make_payload([1, 2])
    out = harness(lambda b: "W", payload, FakeCtx(lambda b: "W"))
    partial = {"games": out["games"][:1]}
    games = replay_result(partial, payload)
    assert games[0].moves == len(out["games"][0]["moves"]) and games[1].end == "missing" and games[1].moves == 0
    for nothing in (None, {}, {"games": "x"}, [1, 2]):
        assert [g.end for g in replay_result(nothing, payload)] == ["missing", "missing"]
