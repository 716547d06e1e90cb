"""TEST-ONLY STAND-IN for ossgym.envs.game2048.engine (issue 2), written to the contract in helper-common.md.

The real engine was not on this branch when the code-env harnesses were written. Tests use the real engine
when it can be imported and fall back to this stand-in otherwise (see ``engine_module``). Never import
this from library code.
"""

from __future__ import annotations

import importlib
import sys
import types

import numpy as np

UP, RIGHT, DOWN, LEFT = 0, 1, 2, 3
KEYS = "WDSA"
KEY_TO_ACTION = {"W": 0, "D": 1, "S": 2, "A": 3}


def _slide_left(row: list[int]) -> tuple[list[int], int]:
    tiles = [v for v in row if v]
    out: list[int] = []
    gain = 0
    i = 0
    while i < len(tiles):
        if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
            out.append(tiles[i] + 1)
            gain += 1 << (tiles[i] + 1)
            i += 2
        else:
            out.append(tiles[i])
            i += 1
    return out + [0] * (len(row) - len(out)), gain


class Game2048:
    """Stand-in with the contract's API: exponents in ``board``, tile values from ``tiles()``."""

    def __init__(self, size: int = 4, rng: np.random.Generator | None = None):
        self.size = size
        self.rng = rng if rng is not None else np.random.default_rng()
        self.board = np.zeros((size, size), dtype=np.uint8)
        self.score = 0

    def reset(self) -> None:
        self.board[:] = 0
        self.score = 0
        self._spawn()
        self._spawn()

    def _spawn(self) -> None:
        empty = np.flatnonzero(self.board.ravel() == 0)
        if len(empty) == 0:
            return
        cell = empty[self.rng.integers(len(empty))]
        self.board.ravel()[cell] = 1 if self.rng.random() < 0.9 else 2

    def _moved(self, action: int) -> tuple[np.ndarray, int]:
        # rotate so that the move becomes a left slide
        rot = {LEFT: 0, UP: 1, RIGHT: 2, DOWN: 3}[action]
        b = np.rot90(self.board, k=rot).copy()
        gain = 0
        for r in range(self.size):
            row, g = _slide_left([int(v) for v in b[r]])
            b[r] = row
            gain += g
        return np.rot90(b, k=-rot), gain

    def step(self, action: int) -> tuple[int, bool]:
        new, gain = self._moved(int(action))
        changed = not np.array_equal(new, self.board)
        if changed:
            self.board[:] = new
            self.score += gain
            self._spawn()
        return (gain if changed else 0), changed

    def tiles(self) -> list[list[int]]:
        return [[(1 << int(v)) if v else 0 for v in row] for row in self.board]

    @property
    def max_tile(self) -> int:
        m = int(self.board.max())
        return (1 << m) if m else 0

    def legal_mask(self) -> np.ndarray:
        return np.array([not np.array_equal(self._moved(a)[0], self.board) for a in range(4)], dtype=np.bool_)

    def is_over(self) -> bool:
        return not self.legal_mask().any()


def engine_module() -> types.ModuleType:
    """The real engine module if importable, else this stand-in registered under the real name."""
    try:
        return importlib.import_module("ossgym.envs.game2048.engine")
    except ImportError:
        sys.modules["ossgym.envs.game2048.engine"] = sys.modules[__name__]
        return sys.modules[__name__]
