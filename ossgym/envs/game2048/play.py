"""Play 2048 in the terminal: W/A/S/D or the arrow keys move, Q quits (``ossgym play``)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import numpy as np

from ossgym.envs.game2048.engine import ACTION_NAMES, KEY_TO_ACTION, Game2048
from ossgym.envs.game2048.render import render_ansi

QUIT = "quit"
_ARROWS = {"\x1b[A": 0, "\x1b[C": 1, "\x1b[B": 2, "\x1b[D": 3, "\x1bOA": 0, "\x1bOC": 1, "\x1bOB": 2, "\x1bOD": 3}
_CLEAR = "\x1b[H\x1b[2J"
HELP = "W/A/S/D or arrow keys to move, Q to quit"


def key_to_action(key: str) -> int | str | None:
    """The action of one key press (a letter or an arrow escape sequence), :data:`QUIT`, or None."""
    if key in _ARROWS:
        return _ARROWS[key]
    k = key.upper()
    if k in ("Q", "\x03", "\x04"):  # q, Ctrl-C, Ctrl-D
        return QUIT
    return KEY_TO_ACTION.get(k)


def run_session(game: Game2048, keys: Iterator[str], write: Callable[[str], None], color: bool = True) -> int:
    """Drive ``game`` from a stream of key presses, writing each frame with ``write``; returns the score."""
    message = HELP
    while True:
        write(f"{_CLEAR}2048 ({game.size}x{game.size})\n{render_ansi(game.board, game.score, color=color)}\n"
              f"{message}\n")
        if game.is_over():
            write(f"Game over. Score {game.score}, max tile {game.max_tile}.\n")
            return game.score
        key = next(keys, None)
        if key is None:
            return game.score
        action = key_to_action(key)
        if action == QUIT:
            write(f"Quit. Score {game.score}, max tile {game.max_tile}.\n")
            return game.score
        if action is None:
            message = f"{key!r} is not a move. {HELP}"
            continue
        gain, changed = game.step(action)
        message = f"{ACTION_NAMES[action]}: +{gain}" if changed else f"{ACTION_NAMES[action]} does not move anything"


def _read_keys(fd: int) -> Iterator[str]:
    """Key presses from a terminal in cbreak mode (arrow keys come as one escape sequence)."""
    while True:
        ch = os.read(fd, 1).decode(errors="replace")
        if not ch:
            return
        if ch == "\x1b":
            seq = ch + os.read(fd, 1).decode(errors="replace")
            if seq[-1] in "[O":
                seq += os.read(fd, 1).decode(errors="replace")
            yield seq
        else:
            yield ch


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def play(seed: int | None = None, size: int = 4) -> int:
    """Let a person play one game in this terminal; returns a process exit code."""
    if not sys.stdin.isatty() or not sys.stdout.isatty():
        sys.stderr.write("ossgym play needs an interactive terminal (stdin and stdout must be a tty). "
                         "Run it directly in a terminal, not through a pipe or redirect.\n")
        return 2
    game = Game2048(size, rng=np.random.default_rng(seed))
    fd = sys.stdin.fileno()

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    with _cbreak(fd):
        try:
            run_session(game, _read_keys(fd), write)
        except KeyboardInterrupt:
            write("\n")
    return 0
