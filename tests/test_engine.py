"""The 2048 engine (bitboard fast path, generic path, batched engine) against a plain reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossgym.envs.game2048 import engine as E
from ossgym.errors import ConfigError

CAP = 32768  # the largest tile; two of them do not merge


# ---------------------------------------------------------------------------------------------------
# The reference: tile values (not exponents), lists of lists, every direction by rotating to "left".


def ref_slide_left(row: list[int]) -> tuple[list[int], int]:
    tiles = [v for v in row if v != 0]
    out, gain, i = [], 0, 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1] and tiles[i] < CAP:
            out.append(tiles[i] * 2)
            gain += tiles[i] * 2
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (len(row) - len(out)), gain


def ref_transpose(b):
    return [list(col) for col in zip(*b)]


def ref_move(board: list[list[int]], action: int) -> tuple[list[list[int]], int]:
    """Move a board of tile values: up/down through the transpose, right through reversed rows."""
    b = [list(r) for r in board]
    if action in (E.UP, E.DOWN):
        b = ref_transpose(b)
    if action in (E.RIGHT, E.DOWN):
        b = [r[::-1] for r in b]
    moved = [ref_slide_left(r) for r in b]
    out = [r for r, _ in moved]
    gain = sum(g for _, g in moved)
    if action in (E.RIGHT, E.DOWN):
        out = [r[::-1] for r in out]
    if action in (E.UP, E.DOWN):
        out = ref_transpose(out)
    return out, gain


def ref_over(board) -> bool:
    return all(ref_move(board, a)[0] == board for a in range(4))


def values(exps) -> list[list[int]]:
    return [[(1 << int(e)) if e else 0 for e in row] for row in np.asarray(exps)]


def boards_strategy(size: int):
    cell = st.one_of(st.integers(0, 3), st.integers(0, 15), st.just(0))
    return st.lists(st.lists(cell, min_size=size, max_size=size), min_size=size, max_size=size)


def random_boards(rng: np.random.Generator, n: int, size: int = 4) -> np.ndarray:
    """Boards with many empties and equal neighbours, plus some high tiles."""
    low = rng.integers(0, 4, size=(n, size, size))
    high = rng.integers(0, 16, size=(n, size, size))
    return np.where(rng.random((n, size, size)) < 0.2, high, low).astype(np.uint8)


def spawned_cell(before_values, after_values):
    """The one cell that differs, which must have been empty and now hold a 2 or a 4."""
    diff = [(r, c) for r in range(len(before_values)) for c in range(len(before_values))
            if before_values[r][c] != after_values[r][c]]
    assert len(diff) == 1, diff
    r, c = diff[0]
    assert before_values[r][c] == 0 and after_values[r][c] in (2, 4)
    return r, c


# ---------------------------------------------------------------------------------------------------
# The line rule and the tables


@pytest.mark.parametrize("line, moved, gain", [
    ([1, 1, 1, 0], [2, 1, 0, 0], 4),
    ([1, 1, 1, 1], [2, 2, 0, 0], 8),
    ([0, 2, 0, 2], [3, 0, 0, 0], 8),
    ([2, 1, 1, 0], [2, 2, 0, 0], 4),
    ([15, 15, 0, 0], [15, 15, 0, 0], 0),
    ([14, 14, 15, 0], [15, 15, 0, 0], 32768),
    ([3, 0, 0, 0], [3, 0, 0, 0], 0),
])
def test_merge_line_examples(line, moved, gain):
    assert E.merge_line(line) == (moved, gain)


def test_every_row_and_column_against_reference():
    """All 65536 rows, placed as row 1 and as column 2 of a board, for all four moves."""
    rows = np.arange(1 << 16, dtype=np.int64)
    cells = np.stack([(rows >> (4 * i)) & 0xF for i in range(4)], axis=1).astype(np.uint8)
    as_row = np.zeros((1 << 16, 4, 4), dtype=np.uint8)
    as_row[:, 1, :] = cells
    as_col = np.zeros((1 << 16, 4, 4), dtype=np.uint8)
    as_col[:, :, 2] = cells
    for boards, actions in ((as_row, (E.LEFT, E.RIGHT)), (as_col, (E.UP, E.DOWN))):
        bits = E.encode(boards)
        for a in actions:
            moved, gains = E.move(bits, np.full(len(bits), a))
            got = E.decode(moved)
            for i in range(0, 1 << 16, 7):  # every 7th row through the slow reference, all through the line rule
                want, g = ref_move(values(boards[i]), a)
                assert values(got[i]) == want and gains[i] == g, (i, a)
            line = cells if a in (E.LEFT, E.UP) else cells[:, ::-1]
            want_lines = [E.merge_line(x) for x in line.tolist()]
            got_lines = got[:, 1, :] if boards is as_row else got[:, :, 2]
            if a in (E.RIGHT, E.DOWN):
                got_lines = got_lines[:, ::-1]
            assert got_lines.tolist() == [m for m, _ in want_lines]
            assert gains.tolist() == [g for _, g in want_lines]


def test_encode_decode_transpose():
    rng = np.random.default_rng(0)
    boards = rng.integers(0, 16, size=(500, 4, 4)).astype(np.uint8)
    bits = E.encode(boards)
    assert bits.dtype == np.uint64
    assert np.array_equal(E.decode(bits), boards)
    assert np.array_equal(E.decode(E.transpose(bits)), boards.transpose(0, 2, 1))
    assert all(E.transpose_int(int(b)) == int(t) for b, t in zip(bits, E.transpose(bits)))
    assert np.array_equal(E.max_exponent(bits), boards.reshape(500, 16).max(axis=1))
    with pytest.raises(ValueError):
        E.encode(np.full((4, 4), 16))


# ---------------------------------------------------------------------------------------------------
# Moves, score gains, legality, terminal detection: batched engine and Game2048 (both paths)


@settings(max_examples=150, deadline=None)
@given(boards=st.lists(boards_strategy(4), min_size=1, max_size=20), data=st.data())
def test_batched_engine_matches_reference(boards, data):
    arr = np.array(boards, dtype=np.uint8)
    actions = np.array(data.draw(st.lists(st.integers(0, 3), min_size=len(arr), max_size=len(arr))))
    bits = E.encode(arr)
    moved, gains = E.move(bits, actions)
    mask = E.legal_mask(bits)
    over = E.is_over(bits)
    for i, b in enumerate(arr):
        want, g = ref_move(values(b), int(actions[i]))
        assert values(E.decode(moved[i])) == want
        assert gains[i] == g
        assert mask[i].tolist() == [ref_move(values(b), a)[0] != values(b) for a in range(4)]
        assert bool(over[i]) == ref_over(values(b))


@pytest.mark.parametrize("size", [3, 4, 5, 6, 8])
@pytest.mark.parametrize("fast", [True, False])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_game_step_matches_reference(size, fast, data):
    board = data.draw(boards_strategy(size))
    action = data.draw(st.integers(0, 3))
    game = E.Game2048(size, rng=np.random.default_rng(data.draw(st.integers(0, 1000))), fast=fast)
    game.set_board(board, score=10)
    before = values(board)
    assert game.legal_mask().tolist() == [ref_move(before, a)[0] != before for a in range(4)]
    assert game.is_over() == ref_over(before)
    want, g = ref_move(before, action)
    gain, changed = game.step(action)
    assert changed == (want != before)
    assert gain == (g if changed else 0)
    assert game.score == 10 + gain
    after = game.tiles()
    if changed:
        spawned_cell(want, after)  # the moved board plus exactly one new 2 or 4 in an empty cell
    else:
        assert after == before  # no move, no tile
    assert game.board.dtype == np.uint8 and game.board.shape == (size, size)
    assert game.max_tile == max(max(r) for r in after)


def test_actions_and_keys():
    assert (E.UP, E.RIGHT, E.DOWN, E.LEFT) == (0, 1, 2, 3)
    assert E.KEYS == "WDSA"
    assert all(E.KEY_TO_ACTION[k] == i for i, k in enumerate(E.KEYS))
    game = E.Game2048(4, rng=np.random.default_rng(0))
    for bad in (4, -1, 1.5, "w"):
        with pytest.raises((ValueError, TypeError)):
            game.step(bad)


def test_bad_config_raises_config_error():
    with pytest.raises(ConfigError, match="size"):
        E.Game2048(9, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="rng"):
        E.Game2048(4, rng=None)


def test_largest_tile_does_not_merge_and_full_board_of_them_is_over():
    game = E.Game2048(4, rng=np.random.default_rng(0))
    game.set_board([[15, 15, 0, 0], [14, 14, 0, 0], [0] * 4, [0] * 4])
    gain, changed = game.step(E.LEFT)
    assert changed and gain == 32768
    assert game.board[0, :2].tolist() == [15, 15] and game.board[1, 0] == 15
    game.set_board(np.full((4, 4), 15))
    assert game.is_over() and not game.legal_mask().any()
    assert game.step(E.UP) == (0, False)


# ---------------------------------------------------------------------------------------------------
# Randomness: spawn rule, determinism, fast == generic, batched == single


def test_start_tiles_follow_the_documented_draw_rule():
    for seed in range(20):
        game = E.Game2048(4, rng=np.random.default_rng(seed))
        draws = np.random.default_rng(seed).random(E.SPAWN_BLOCK)
        expected = np.zeros(16, dtype=np.uint8)
        for t in range(2):
            u, v = draws[2 * t], draws[2 * t + 1]
            empty = np.flatnonzero(expected == 0)
            expected[empty[min(int(u * len(empty)), len(empty) - 1)]] = 2 if v < 0.1 else 1
        assert np.array_equal(game.board.reshape(-1), expected)


@pytest.mark.parametrize("size", [3, 4, 6])
def test_same_seed_same_game_and_illegal_moves_draw_nothing(size):
    def play(seed, insert_illegal):
        game = E.Game2048(size, rng=np.random.default_rng(seed))
        pick = np.random.default_rng(seed + 1000)
        boards = [game.board]
        while not game.is_over() and len(boards) < 400:
            mask = game.legal_mask()
            if insert_illegal and not mask.all():
                assert game.step(int(np.flatnonzero(~mask)[0])) == (0, False)
            game.step(int(pick.choice(np.flatnonzero(mask))))
            boards.append(game.board)
        return np.stack(boards), game.score

    a, sa = play(5, False)
    b, sb = play(5, True)
    c, _ = play(6, False)
    assert np.array_equal(a, b) and sa == sb
    assert len(a) > 20
    assert not (len(a) == len(c) and np.array_equal(a, c))


@pytest.mark.parametrize("seed", range(6))
def test_fast_and_generic_paths_give_the_same_4x4_game(seed):
    fast = E.Game2048(4, rng=np.random.default_rng(seed), fast=True)
    slow = E.Game2048(4, rng=np.random.default_rng(seed), fast=False)
    assert fast.bits is not None and slow.bits is None
    actions = np.random.default_rng(seed + 99).integers(0, 4, size=3000)
    resets = 0
    for a in actions.tolist():
        assert fast.step(a) == slow.step(a)
        assert np.array_equal(fast.board, slow.board)
        assert fast.legal_mask().tolist() == slow.legal_mask().tolist()
        assert fast.score == slow.score and fast.max_tile == slow.max_tile
        assert fast.exponent_bytes() == slow.exponent_bytes()
        if fast.is_over():
            assert slow.is_over()
            fast.reset()
            slow.reset()
            resets += 1
            assert np.array_equal(fast.board, slow.board)
    assert resets >= 3  # the run crossed game ends and the spawn-block boundary


def test_batched_games_equal_single_games():
    n = 37
    batch = E.BatchGame2048([np.random.default_rng(s) for s in range(n)])
    singles = [E.Game2048(4, rng=np.random.default_rng(s)) for s in range(n)]
    pick = np.random.default_rng(0)
    ends = 0
    for _ in range(700):
        actions = pick.integers(0, 4, n)
        where = pick.random(n) < 0.9
        gains, changed = batch.step(actions, where)
        for i, g in enumerate(singles):
            want = g.step(int(actions[i])) if where[i] else (0, False)
            assert (int(gains[i]), bool(changed[i])) == want
        assert np.array_equal(batch.boards(), np.stack([g.board for g in singles]))
        assert np.array_equal(batch.legal_mask(), np.stack([g.legal_mask() for g in singles]))
        assert batch.score.tolist() == [g.score for g in singles]
        over = batch.is_over()
        assert over.tolist() == [g.is_over() for g in singles]
        if over.any():
            ends += int(over.sum())
            batch.reset(over)
            for i in np.flatnonzero(over):
                singles[i].reset()
    assert ends >= 10


def test_spawn_value_and_cell_distribution():
    """Over 20000 new games (40000 tiles): P(4) ~ 0.1 and the first tile's cell is uniform."""
    rng = np.random.default_rng(123)
    game = E.Game2048(4, rng=rng)
    fours, tiles, first_cells = 0, 0, np.zeros(16, dtype=np.int64)
    n = 20000
    for _ in range(n):
        game.reset()
        b = game.board.reshape(-1)
        fours += int((b == 2).sum())
        tiles += int((b > 0).sum())
    assert tiles == 2 * n
    # sd of the fraction is sqrt(0.09 / 40000) = 0.0015; 6 sd is 0.009
    assert abs(fours / tiles - 0.1) < 0.009
    # first tile: the draw rule puts it at cell floor(u * 16) of an empty board
    batch_u = np.random.default_rng(7).random(n)
    cells = E.decode(E.spawn(np.zeros(n, dtype=np.uint64), batch_u, np.ones(n))).reshape(n, 16)
    assert (cells.sum(axis=1) == 1).all()
    first_cells += (cells > 0).sum(axis=0)
    expected = n / 16
    chi2 = float(((first_cells - expected) ** 2 / expected).sum())
    assert chi2 < 60  # 15 degrees of freedom: P(chi2 > 60) < 1e-6
    # the generic path draws the same way
    g5 = E.Game2048(5, rng=np.random.default_rng(9))
    fours5 = 0
    for _ in range(5000):
        g5.reset()
        fours5 += int((g5.board == 2).sum())
    assert abs(fours5 / 10000 - 0.1) < 0.018  # 6 sd of sqrt(0.09 / 10000)


def test_spawn_only_in_empty_cells_of_changed_boards():
    rng = np.random.default_rng(1)
    boards = random_boards(rng, 4000)
    bits = E.encode(boards)
    where = rng.random(4000) < 0.5
    out = E.decode(E.spawn(bits, rng.random(4000), rng.random(4000), where))
    diff = (out != boards).reshape(4000, 16)
    has_empty = (boards == 0).reshape(4000, 16).any(axis=1)
    assert np.array_equal(diff.sum(axis=1), (where & has_empty).astype(int))
    changed_cells = out.reshape(4000, 16)[diff]
    assert set(np.unique(changed_cells).tolist()) <= {1, 2}
    assert (boards.reshape(4000, 16)[diff] == 0).all()
