"""The rules of 2048: the single source of truth for every 2048 piece of ossgym.

Rules (those of gabrielecirulli/2048):

* A board is ``size x size`` cells (3..8) holding tile *exponents*: 0 is empty, ``e`` is the tile ``2**e``.
* A game starts with two random tiles. A move slides every tile as far as it goes in the move's direction;
  two equal tiles that meet merge into one tile of twice the value, a tile merges at most once per move,
  and the pair nearest the wall merges first (``2 2 2 .`` moved left gives ``4 2 . .``). The score grows
  by the value of every tile a merge creates.
* After a move that changed the board (and only then) a new tile appears in a uniformly random empty
  cell: a 2 with probability 0.9, a 4 with probability 0.1.
* The game is over when no move changes the board.
* Largest tile: exponent 15, the tile 32768 (:data:`MAX_EXPONENT`). Two 32768 tiles do not merge. This cap
  lets the 4x4 bitboard keep each cell in 4 bits; every size and path applies it, so all agree.

Actions (kept everywhere in ossgym): ``UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3``; ``KEYS[a]`` is the key of
action ``a`` (W up, D right, S down, A left).

Randomness: every random choice comes from a ``numpy.random.Generator``. A game draws uniforms from it in
blocks of :data:`SPAWN_BLOCK` (``rng.random(SPAWN_BLOCK)``), drawn when the previous block is used up and
thrown away at ``reset``; each new tile uses two of them, ``u`` for the cell and ``v`` for the value: the
cell is the ``min(floor(u * n), n - 1)``-th of the ``n`` empty cells in row-major order, and the tile is a
4 if ``v < 0.1`` else a 2. The bitboard path, the generic path and the batched engine all follow this, so
the same seed and the same moves give the same game through any of them.

Two implementations of the same rules:

* 4x4 fast path: a bitboard, one 64-bit integer per board with cell ``(r, c)`` in bits ``4 * (4 r + c)``,
  and precomputed 65536-entry tables of what a left or right move does to one 16-bit row (and its score
  gain). Columns are handled as the rows of the transposed board. The batched functions (:func:`encode`,
  :func:`decode`, :func:`move`, :func:`legal_mask`, :func:`spawn`, :class:`BatchGame2048`) work on numpy
  ``uint64`` arrays of boards; :class:`Game2048` uses the same tables on a Python integer.
* Generic path (any size 3..8): plain lists, :func:`merge_line` applied to each row or column. The tables
  of the fast path are built from :func:`merge_line` too.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ossgym.errors import ConfigError

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
ACTIONS = (UP, RIGHT, DOWN, LEFT)
ACTION_NAMES = ("up", "right", "down", "left")
KEYS = "WDSA"
KEY_TO_ACTION = {"W": 0, "D": 1, "S": 2, "A": 3}

MAX_EXPONENT = 15
MIN_SIZE, MAX_SIZE = 3, 8
FOUR_PROBABILITY = 0.1
SPAWN_BLOCK = 256

_ROW_MASK = 0xFFFF


# ----------------------------------------------------------------------------------------------------
# The rule of one line (shared by both paths)


def merge_line(line: Sequence[int]) -> tuple[list[int], int]:
    """Move one line of exponents towards index 0: returns the new line and the score gained."""
    tiles = [e for e in line if e]
    out: list[int] = []
    gain = 0
    i = 0
    while i < len(tiles):
        e = tiles[i]
        if i + 1 < len(tiles) and tiles[i + 1] == e and e < MAX_EXPONENT:
            out.append(e + 1)
            gain += 1 << (e + 1)
            i += 2
        else:
            out.append(e)
            i += 1
    out.extend([0] * (len(line) - len(out)))
    return out, gain


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError("size", f"must be an int from {MIN_SIZE} to {MAX_SIZE}, got {size!r}", "Pass size=4.")
    return int(size)


def _check_action(action: int) -> int:
    try:
        a = int(action)
    except (TypeError, ValueError):
        a = -1
    if a != action or not 0 <= a <= 3:
        raise ValueError(f"action must be 0 (up), 1 (right), 2 (down) or 3 (left), got {action!r}")
    return a


# ----------------------------------------------------------------------------------------------------
# Generic path: boards as lists of lists of exponents


def move_board(board: Sequence[Sequence[int]], action: int) -> tuple[list[list[int]], int]:
    """Apply one move to a square board of exponents (any size); returns the new board and the score gain."""
    vertical = action in (UP, DOWN)
    reverse = action in (RIGHT, DOWN)
    lines = zip(*board) if vertical else board
    out: list[list[int]] = []
    gain = 0
    for line in lines:
        moved, g = merge_line(line[::-1] if reverse else line)
        out.append(moved[::-1] if reverse else moved)
        gain += g
    if vertical:
        out = [list(col) for col in zip(*out)]
    return out, gain


def legal_actions_generic(board: Sequence[Sequence[int]]) -> list[bool]:
    """Which of the four moves change the board (generic path)."""
    rows = [list(r) for r in board]
    return [move_board(rows, a)[0] != rows for a in ACTIONS]


def spawn_index(u: float, n: int) -> int:
    """The index of the chosen empty cell among ``n`` empty cells for the uniform ``u`` in [0, 1)."""
    k = int(u * n)
    return k if k < n else n - 1


# ----------------------------------------------------------------------------------------------------
# 4x4 bitboard tables


@dataclass(frozen=True)
class _Tables:
    """Precomputed 65536-entry row tables of the 4x4 bitboard (numpy arrays and Python lists)."""

    left: np.ndarray  # uint16: row after a left move
    right: np.ndarray  # uint16: row after a right move
    gain: np.ndarray  # int64: score gain of the move (same for left and right)
    legal: np.ndarray  # uint8: bit 0 set if a left move changes the row, bit 1 if a right move does
    empty: np.ndarray  # int64: number of empty cells in the row
    nth_empty: np.ndarray  # int64 (65536*4,): nibble index of the k-th empty cell of the row
    max_exp: np.ndarray  # uint8: largest exponent in the row
    row_bytes: list[bytes]  # the row's four exponents as bytes
    row_words: np.ndarray  # uint32 (65536,): the row's four exponents as bytes in one word
    # Python lists for the single-board path
    l_left: list[int]
    l_right: list[int]
    l_up: list[int]  # left result spread as a column (nibble i at bit 16 i)
    l_down: list[int]
    l_gain: list[int]
    l_legal_h: list[int]  # action bits: 1 << LEFT, 1 << RIGHT
    l_legal_v: list[int]  # action bits: 1 << UP, 1 << DOWN (row taken as a column)
    l_empty: list[int]
    l_nth_empty: list[int]
    l_max_exp: list[int]


def _spread(rows: np.ndarray) -> np.ndarray:
    """Place a 16-bit row's nibble i at bit 16 i (a row turned into a column of the board)."""
    r = rows.astype(np.uint64)
    out = np.zeros_like(r)
    for i in range(4):
        out |= ((r >> np.uint64(4 * i)) & np.uint64(0xF)) << np.uint64(16 * i)
    return out


@functools.cache
def tables() -> _Tables:
    """Build (once) the row tables of the 4x4 fast path from :func:`merge_line`."""
    idx = np.arange(1 << 16, dtype=np.int64)
    cells = np.stack([(idx >> (4 * i)) & 0xF for i in range(4)], axis=1)
    left = np.zeros(1 << 16, dtype=np.uint16)
    right = np.zeros(1 << 16, dtype=np.uint16)
    gain = np.zeros(1 << 16, dtype=np.int64)
    for row in range(1 << 16):
        line = cells[row].tolist()
        moved, g = merge_line(line)
        left[row] = moved[0] | moved[1] << 4 | moved[2] << 8 | moved[3] << 12
        gain[row] = g
        rmoved, _ = merge_line(line[::-1])
        rmoved = rmoved[::-1]
        right[row] = rmoved[0] | rmoved[1] << 4 | rmoved[2] << 8 | rmoved[3] << 12
    legal = ((left != idx).astype(np.uint8)) | ((right != idx).astype(np.uint8) << 1)
    is_empty = cells == 0
    empty = is_empty.sum(axis=1).astype(np.int64)
    nth = np.zeros((1 << 16, 4), dtype=np.int64)
    running = np.cumsum(is_empty, axis=1)
    for k in range(4):
        # position of the k-th empty nibble: the first i where the running count of empties reaches k + 1
        hit = (running == k + 1) & is_empty
        nth[:, k] = np.where(hit.any(axis=1), hit.argmax(axis=1), 0)
    max_exp = cells.max(axis=1).astype(np.uint8)
    row_bytes = [bytes(c) for c in cells.astype(np.uint8)]
    up = _spread(left)
    down = _spread(right)
    legal_h = ((legal & 1).astype(np.int64) << LEFT) | (((legal >> 1) & 1).astype(np.int64) << RIGHT)
    legal_v = ((legal & 1).astype(np.int64) << UP) | (((legal >> 1) & 1).astype(np.int64) << DOWN)
    return _Tables(
        left=left, right=right, gain=gain, legal=legal, empty=empty, nth_empty=nth.reshape(-1),
        max_exp=max_exp, row_bytes=row_bytes,
        row_words=np.ascontiguousarray(cells.astype(np.uint8)).view(np.uint32).reshape(-1),
        l_left=left.astype(np.int64).tolist(), l_right=right.astype(np.int64).tolist(),
        l_up=up.tolist(), l_down=down.tolist(), l_gain=gain.tolist(),
        l_legal_h=legal_h.tolist(), l_legal_v=legal_v.tolist(), l_empty=empty.tolist(),
        l_nth_empty=nth.reshape(-1).tolist(), l_max_exp=max_exp.astype(np.int64).tolist(),
    )


def transpose_int(b: int) -> int:
    """Transpose a 4x4 bitboard held in a Python int (cell (r, c) <-> (c, r))."""
    a1 = b & 0xF0F00F0FF0F00F0F
    a2 = b & 0x0000F0F00000F0F0
    a3 = b & 0x0F0F00000F0F0000
    a = a1 | (a2 << 12) | (a3 >> 12)
    b1 = a & 0xFF00FF0000FF00FF
    b2 = a & 0x00FF00FF00000000
    b3 = a & 0x00000000FF00FF00
    return b1 | (b2 >> 24) | (b3 << 24)


# ----------------------------------------------------------------------------------------------------
# Batched 4x4 bitboard functions (numpy uint64 arrays of boards)

_U = np.uint64
_M1, _M2, _M3 = _U(0xF0F00F0FF0F00F0F), _U(0x0000F0F00000F0F0), _U(0x0F0F00000F0F0000)
_N1, _N2, _N3 = _U(0xFF00FF0000FF00FF), _U(0x00FF00FF00000000), _U(0x00000000FF00FF00)
_S12, _S24 = _U(12), _U(24)


def encode(boards: np.ndarray) -> np.ndarray:
    """Pack exponent boards of shape (..., 4, 4) into uint64 bitboards of shape (...)."""
    b = np.asarray(boards)
    if b.shape[-2:] != (4, 4):
        raise ValueError(f"bitboards hold 4x4 boards, got shape {b.shape}")
    if b.size and (b.min() < 0 or b.max() > MAX_EXPONENT):
        raise ValueError(f"exponents must be in 0..{MAX_EXPONENT}")
    flat = b.reshape(b.shape[:-2] + (16,)).astype(np.uint64)
    shifts = (np.arange(16, dtype=np.uint64) * _U(4))
    return np.bitwise_or.reduce(flat << shifts, axis=-1).astype(np.uint64)


def decode(bits: np.ndarray) -> np.ndarray:
    """Unpack uint64 bitboards of shape (...) into uint8 exponent boards of shape (..., 4, 4)."""
    b = np.asarray(bits, dtype=np.uint64)
    flat = b.reshape(-1)
    row_words = tables().row_words
    out = np.empty((flat.size, 4), dtype=np.uint32)
    for k, r in enumerate(_rows(flat)):
        out[:, k] = row_words[r]
    return out.view(np.uint8).reshape(b.shape + (4, 4))


def transpose(bits: np.ndarray) -> np.ndarray:
    """Transpose every 4x4 bitboard of a uint64 array."""
    x = bits
    a = (x & _M1) | ((x & _M2) << _S12) | ((x & _M3) >> _S12)
    return (a & _N1) | ((a & _N2) >> _S24) | ((a & _N3) << _S24)


def _rows(bits: np.ndarray) -> list[np.ndarray]:
    """The four 16-bit rows of each board as int64 arrays (usable as table indices)."""
    v = bits.view(np.int64)
    return [v & _ROW_MASK, (v >> 16) & _ROW_MASK, (v >> 32) & _ROW_MASK, (v >> 48) & _ROW_MASK]


def legal_codes(bits: np.ndarray, transposed: np.ndarray | None = None) -> np.ndarray:
    """Legal moves of each board as a 4-bit code (bit ``a`` set if action ``a`` changes the board)."""
    t = tables()
    tr = transpose(bits) if transposed is None else transposed
    h = np.zeros(bits.shape, dtype=np.uint8)
    v = np.zeros(bits.shape, dtype=np.uint8)
    for r in _rows(bits):
        h |= t.legal[r]
    for r in _rows(tr):
        v |= t.legal[r]
    # action bits: UP = left on the transposed board, DOWN = right on it, LEFT/RIGHT on the board itself
    return (v & 1) | ((h & 2)) | ((v & 2) << 1) | ((h & 1) << 3)


_CODE_TO_MASK = np.array([[(c >> a) & 1 for a in range(4)] for c in range(16)], dtype=np.bool_)


def codes_to_mask(codes: np.ndarray) -> np.ndarray:
    """Turn 4-bit legal codes into a boolean mask of shape (..., 4)."""
    return _CODE_TO_MASK[codes]


def legal_mask(bits: np.ndarray) -> np.ndarray:
    """Boolean mask (N, 4) of the moves that change each board."""
    return codes_to_mask(legal_codes(bits))


def is_over(bits: np.ndarray) -> np.ndarray:
    """Whether each board has no move that changes it."""
    return legal_codes(bits) == 0


def move(bits: np.ndarray, actions: np.ndarray, transposed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Apply one action per board (no spawn); returns the new boards and the score gains (int64)."""
    t = tables()
    a = np.asarray(actions, dtype=np.int64)
    tr = transpose(bits) if transposed is None else transposed
    vertical = (a & 1) == 0
    src = np.where(vertical, tr, bits)
    # table 0 moves towards index 0 of a row (LEFT, or UP on the transposed board), table 1 away from it
    use_right = ((a + 1) >> 1) & 1
    offset = use_right << 16
    both = _both_tables()
    out = np.zeros(bits.shape, dtype=np.uint64)
    gain = np.zeros(bits.shape, dtype=np.int64)
    for k, r in enumerate(_rows(src)):
        gain += t.gain[r]
        r += offset
        out |= both[r] << _U(16 * k)
    out = np.where(vertical, transpose(out), out)
    return out, gain


@functools.cache
def _both_tables() -> np.ndarray:
    t = tables()
    return np.concatenate([t.left, t.right]).astype(np.uint64)


def spawn(bits: np.ndarray, u_cell: np.ndarray, u_value: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
    """Place a new tile on each board (where ``where`` is true) from the uniforms ``u_cell``, ``u_value``."""
    t = tables()
    rows = _rows(bits)
    n0, n1, n2, n3 = (t.empty[r] for r in rows)
    c1 = n0
    c2 = c1 + n1
    c3 = c2 + n2
    n = c3 + n3
    k = np.minimum((u_cell * n).astype(np.int64), n - 1)
    ge1, ge2, ge3 = k >= c1, k >= c2, k >= c3
    row = ge1.astype(np.int64) + ge2 + ge3
    prefix = ge1 * n0 + ge2 * n1 + ge3 * n2
    k -= prefix
    shift16 = (row << 4).astype(np.uint64)
    row_bits = ((bits >> shift16) & _U(_ROW_MASK)).view(np.int64)
    pos = t.nth_empty[(row_bits << 2) + np.maximum(k, 0)]
    value = np.where(u_value < FOUR_PROBABILITY, 2, 1).astype(np.uint64)
    ok = n > 0 if where is None else (n > 0) & where
    value *= ok
    return bits | (value << (shift16 + (pos << 2).astype(np.uint64)))


def max_exponent(bits: np.ndarray) -> np.ndarray:
    """Largest exponent on each board (uint8)."""
    t = tables()
    rows = _rows(bits)
    out = t.max_exp[rows[0]]
    for r in rows[1:]:
        np.maximum(out, t.max_exp[r], out=out)
    return out


# ----------------------------------------------------------------------------------------------------
# One game


class Game2048:
    """One game of 2048 on a ``size x size`` board (3..8), all randomness from ``rng``.

    Creating a game starts it (two random tiles); :meth:`reset` starts a new one with the same generator.
    4x4 games run on the bitboard tables unless ``fast=False``; both paths give the same game for the same
    seed and moves. ``step(action)`` returns ``(score_gain, changed)``; an action that does not change the
    board changes nothing (no tile appears, nothing is drawn from ``rng``). Attributes: ``size``, ``rng``,
    ``score`` (int), ``moves`` (board-changing moves since the start); views: ``board``, ``tiles()``,
    ``max_tile``, ``legal_mask()``, ``is_over()``.
    """

    def __init__(self, size: int = 4, rng: np.random.Generator | None = None, fast: bool = True):
        self.size = _check_size(size)
        if not isinstance(rng, np.random.Generator):
            raise ConfigError("rng", f"must be a numpy.random.Generator, got {type(rng).__name__}",
                              "Pass rng=numpy.random.default_rng(seed).")
        self.rng = rng
        self._fast = self.size == 4 and fast
        self.reset()

    # -- randomness ------------------------------------------------------------------------------------
    def _uniforms(self) -> tuple[float, float]:
        i = self._draw_pos
        if i >= SPAWN_BLOCK:
            self._draws = self.rng.random(SPAWN_BLOCK).tolist()
            i = 0
        self._draw_pos = i + 2
        d = self._draws
        return d[i], d[i + 1]

    # -- state -----------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start a new game: empty board, score 0, two random tiles."""
        self._draws: list[float] = []
        self._draw_pos = SPAWN_BLOCK
        self.score = 0
        self.moves = 0
        if self._fast:
            self._grid: list[list[int]] | None = None
            bits = self._spawn_bits(self._spawn_bits(0))
            self._set_bits(bits)
        else:
            self._bits = None
            self._grid = [[0] * self.size for _ in range(self.size)]
            self._spawn_grid()
            self._spawn_grid()
            self._legal = self._legal_grid()

    def set_board(self, board: Sequence[Sequence[int]] | np.ndarray, score: int = 0) -> None:
        """Put the game in a given position (exponents, 0 = empty); the random stream is left as it is."""
        b = np.asarray(board, dtype=np.int64)
        if b.shape != (self.size, self.size) or b.min() < 0 or b.max() > MAX_EXPONENT:
            raise ValueError(f"board must be {self.size}x{self.size} exponents in 0..{MAX_EXPONENT}")
        self.score = int(score)
        if self._fast:
            self._set_bits(int(encode(b)))
        else:
            self._grid = b.tolist()
            self._legal = self._legal_grid()

    def _set_bits(self, bits: int) -> None:
        t = tables()
        self._bits = bits
        tr = transpose_int(bits)
        self._tbits = tr
        lh, lv = t.l_legal_h, t.l_legal_v
        self._legal = (lh[bits & 0xFFFF] | lh[(bits >> 16) & 0xFFFF] | lh[(bits >> 32) & 0xFFFF] | lh[bits >> 48]
                       | lv[tr & 0xFFFF] | lv[(tr >> 16) & 0xFFFF] | lv[(tr >> 32) & 0xFFFF] | lv[tr >> 48])

    def _legal_grid(self) -> int:
        return sum(1 << a for a, ok in enumerate(legal_actions_generic(self._grid)) if ok)

    def _spawn_bits(self, bits: int) -> int:
        t = tables()
        u, v = self._uniforms()
        e, nth = t.l_empty, t.l_nth_empty
        rows = (bits & 0xFFFF, (bits >> 16) & 0xFFFF, (bits >> 32) & 0xFFFF, bits >> 48)
        n = e[rows[0]] + e[rows[1]] + e[rows[2]] + e[rows[3]]
        k = spawn_index(u, n)
        r = 0
        while k >= e[rows[r]]:
            k -= e[rows[r]]
            r += 1
        pos = nth[(rows[r] << 2) + k]
        return bits | ((2 if v < FOUR_PROBABILITY else 1) << (16 * r + 4 * pos))

    def _spawn_grid(self) -> None:
        u, v = self._uniforms()
        empty = [(r, c) for r in range(self.size) for c in range(self.size) if self._grid[r][c] == 0]
        r, c = empty[spawn_index(u, len(empty))]
        self._grid[r][c] = 2 if v < FOUR_PROBABILITY else 1

    # -- moves -----------------------------------------------------------------------------------------
    def step(self, action: int) -> tuple[int, bool]:
        """Play one move: returns ``(score_gain, changed)``; a tile appears only if the board changed."""
        try:
            legal = (self._legal >> action) & 1
        except (TypeError, ValueError):
            legal = _check_action(action)
        if not legal:
            _check_action(action)
            return 0, False
        if self._fast:
            t = tables()
            if action & 1:
                b = self._bits
                tab = t.l_right if action == RIGHT else t.l_left
                r0, r1, r2, r3 = b & 0xFFFF, (b >> 16) & 0xFFFF, (b >> 32) & 0xFFFF, b >> 48
                nb = tab[r0] | tab[r1] << 16 | tab[r2] << 32 | tab[r3] << 48
            else:
                b = self._tbits
                tab = t.l_down if action == DOWN else t.l_up
                r0, r1, r2, r3 = b & 0xFFFF, (b >> 16) & 0xFFFF, (b >> 32) & 0xFFFF, b >> 48
                nb = tab[r0] | tab[r1] << 4 | tab[r2] << 8 | tab[r3] << 12
            g = t.l_gain
            gain = g[r0] + g[r1] + g[r2] + g[r3]
            self._set_bits(self._spawn_bits(nb))
        else:
            self._grid, gain = move_board(self._grid, action)
            self._spawn_grid()
            self._legal = self._legal_grid()
        self.score += gain
        self.moves += 1
        return gain, True

    # -- views -----------------------------------------------------------------------------------------
    @property
    def board(self) -> np.ndarray:
        """The board as a ``size x size`` uint8 array of exponents (0 = empty); a fresh copy."""
        if self._fast:
            return decode(np.uint64(self._bits))
        return np.array(self._grid, dtype=np.uint8)

    @property
    def bits(self) -> int | None:
        """The 4x4 bitboard (Python int) on the fast path, else None."""
        return self._bits

    def exponent_bytes(self) -> bytes:
        """The board's exponents as ``size * size`` bytes in row-major order."""
        if self._fast:
            b, rb = self._bits, tables().row_bytes
            return b"".join((rb[b & 0xFFFF], rb[(b >> 16) & 0xFFFF], rb[(b >> 32) & 0xFFFF], rb[b >> 48]))
        return bytes(e for row in self._grid for e in row)

    def tiles(self) -> list[list[int]]:
        """The board as a list of lists of tile values (0 = empty)."""
        return [[(1 << int(e)) if e else 0 for e in row] for row in self.board]

    @property
    def max_exponent(self) -> int:
        """The largest exponent on the board."""
        if self._fast:
            b, m = self._bits, tables().l_max_exp
            return max(m[b & 0xFFFF], m[(b >> 16) & 0xFFFF], m[(b >> 32) & 0xFFFF], m[b >> 48])
        return max(max(row) for row in self._grid)

    @property
    def max_tile(self) -> int:
        """The largest tile value on the board (0 if empty)."""
        e = self.max_exponent
        return 1 << e if e else 0

    @property
    def legal_code(self) -> int:
        """The legal moves as a 4-bit int (bit ``a`` set if action ``a`` changes the board)."""
        return self._legal

    def legal_mask(self) -> np.ndarray:
        """Boolean array of 4: which actions change the board."""
        return _CODE_TO_MASK[self._legal].copy()

    def is_over(self) -> bool:
        """True when no move changes the board."""
        return self._legal == 0


# ----------------------------------------------------------------------------------------------------
# Many 4x4 games at once, each with its own generator


class BatchGame2048:
    """``N`` 4x4 games stepped together on the batched bitboard engine, game ``i`` drawing from ``rngs[i]``.

    Game ``i`` draws from its generator exactly as a :class:`Game2048` would, so it plays the same game
    as ``Game2048(4, rngs[i])`` given the same moves.
    """

    def __init__(self, rngs: Sequence[np.random.Generator]):
        self.n = len(rngs)
        if self.n < 1:
            raise ConfigError("rngs", "must hold at least one generator", "Pass one generator per board.")
        self.rngs = list(rngs)
        self.bits = np.zeros(self.n, dtype=np.uint64)
        self.tbits = np.zeros(self.n, dtype=np.uint64)
        self.codes = np.zeros(self.n, dtype=np.uint8)
        self.score = np.zeros(self.n, dtype=np.int64)
        self._draws = np.zeros((self.n, SPAWN_BLOCK), dtype=np.float64)
        self._flat_draws = self._draws.reshape(-1)
        self._pos = np.full(self.n, SPAWN_BLOCK, dtype=np.int64)
        self._base = np.arange(self.n, dtype=np.int64) * SPAWN_BLOCK
        self.reset(np.ones(self.n, dtype=np.bool_))

    def set_rng(self, i: int, rng: np.random.Generator) -> None:
        """Give game ``i`` a new generator (takes effect from its next draw; call before :meth:`reset`)."""
        self.rngs[i] = rng
        self._pos[i] = SPAWN_BLOCK

    def _uniforms(self, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two uniforms per board (read where ``where`` is true, which advances its stream)."""
        pos = self._pos
        draws, rngs = self._draws, self.rngs
        for i in np.flatnonzero(where & (pos >= SPAWN_BLOCK)).tolist():
            rngs[i].random(out=draws[i])  # the same numbers as rng.random(SPAWN_BLOCK)
            pos[i] = 0
        idx = self._base + np.minimum(pos, SPAWN_BLOCK - 2)
        pos += where.astype(np.int64) << 1
        return self._flat_draws[idx], self._flat_draws[idx + 1]

    def _uniforms_at(self, games: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Two uniforms for each of the listed games (advancing their streams)."""
        pos = self._pos[games]
        draws, rngs = self._draws, self.rngs
        for j in np.flatnonzero(pos >= SPAWN_BLOCK).tolist():
            i = int(games[j])
            rngs[i].random(out=draws[i])
            pos[j] = 0
        idx = self._base[games] + pos
        self._pos[games] = pos + 2
        return self._flat_draws[idx], self._flat_draws[idx + 1]

    def reset(self, where: np.ndarray) -> None:
        """Start new games on the boards where ``where`` is true (their draw blocks are thrown away)."""
        games = np.flatnonzero(np.asarray(where, dtype=np.bool_))
        if games.size == 0:
            return
        self._pos[games] = SPAWN_BLOCK
        bits = np.zeros(games.size, dtype=np.uint64)
        for _ in range(2):
            u, v = self._uniforms_at(games)
            bits = spawn(bits, u, v)
        self.score[games] = 0
        tbits = transpose(bits)
        self.bits[games] = bits
        self.tbits[games] = tbits
        self.codes[games] = legal_codes(bits, tbits)

    def _set(self, bits: np.ndarray) -> None:
        self.bits = bits
        self.tbits = transpose(bits)
        self.codes = legal_codes(bits, self.tbits)

    def step(self, actions: np.ndarray, where: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Play one move on every board (or where ``where`` is true): returns ``(score_gains, changed)``.

        A tile appears only on boards that changed; boards left out are not touched and draw nothing.
        """
        actions = np.asarray(actions, dtype=np.int64)
        if actions.shape != (self.n,) or (actions.size and (actions.min() < 0 or actions.max() > 3)):
            raise ValueError(f"actions must be {self.n} ints in 0..3")
        changed = ((self.codes >> actions.astype(np.uint8)) & 1).astype(np.bool_)
        if where is not None:
            changed &= where
        moved, gain = move(self.bits, actions, self.tbits)
        gain *= changed
        u, v = self._uniforms(changed)
        bits = spawn(np.where(changed, moved, self.bits), u, v, changed)
        self.score += gain
        self._set(bits)
        return gain, changed

    def max_exponents(self) -> np.ndarray:
        """Largest exponent of each board (uint8, shape (N,))."""
        return max_exponent(self.bits)

    def legal_mask(self) -> np.ndarray:
        """Boolean (N, 4): which actions change each board."""
        return _CODE_TO_MASK[self.codes]

    def is_over(self) -> np.ndarray:
        """Boolean (N,): boards with no move that changes them."""
        return self.codes == 0

    def boards(self) -> np.ndarray:
        """The boards as uint8 exponents, shape (N, 4, 4)."""
        return decode(self.bits)
