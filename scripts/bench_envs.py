#!/usr/bin/env python
"""Steps per second of the 2048 engine and environments, against a plain reference and gymnasium-2048.

One core (the process is pinned to one CPU, numpy threads set to 1), random legal actions. Only the
environment's own calls (step, and reset when a game ends) are timed; choosing the action is not.
Prints a markdown table with each row's ratio to the plain reference implementation.

    python scripts/bench_envs.py [--seconds 2] [--no-external]

gymnasium-2048==0.1.2 runs in a scratch virtualenv (/tmp/ossgym-bench-venv), installed there by this
script if missing; if that cannot be done, its row is skipped with a note.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gymnasium as gym  # noqa: E402

import ossgym  # noqa: E402,F401
from ossgym.envs.game2048.engine import BatchGame2048, Game2048  # noqa: E402

SCRATCH_VENV = Path("/tmp/ossgym-bench-venv")
EXTERNAL = "gymnasium-2048==0.1.2"

# PICK[code][r]: a uniformly random legal action for the 4-bit legal code and r uniform in 0..11
PICK = np.zeros((16, 12), dtype=np.int64)
for _code in range(16):
    _legal = [a for a in range(4) if (_code >> a) & 1] or [0]
    for _r in range(12):
        PICK[_code, _r] = _legal[_r * len(_legal) // 12]
PICK_LISTS = PICK.tolist()
CODE_OF_MASK = {bytes(np.array([(c >> a) & 1 for a in range(4)], dtype=np.bool_)): c for c in range(16)}


# ---------------------------------------------------------------------------------------------------
# The plain reference: lists of tile values, every move by rotating the board to a left move.


class ReferenceGame:
    """A plain, obviously-correct 2048 in Python lists (the baseline)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.reset()

    def reset(self) -> None:
        self.board = [[0] * 4 for _ in range(4)]
        self.score = 0
        self.spawn()
        self.spawn()

    def spawn(self) -> None:
        empty = [(r, c) for r in range(4) for c in range(4) if self.board[r][c] == 0]
        r, c = self.rng.choice(empty)
        self.board[r][c] = 4 if self.rng.random() < 0.1 else 2

    @staticmethod
    def slide_left(row: list[int]) -> tuple[list[int], int]:
        tiles = [v for v in row if v]
        out, gain, i = [], 0, 0
        while i < len(tiles):
            if i + 1 < len(tiles) and tiles[i] == tiles[i + 1] and tiles[i] < 32768:
                out.append(2 * tiles[i])
                gain += 2 * tiles[i]
                i += 2
            else:
                out.append(tiles[i])
                i += 1
        return out + [0] * (4 - len(out)), gain

    @classmethod
    def moved(cls, board: list[list[int]], action: int) -> tuple[list[list[int]], int]:
        b = [list(col) for col in zip(*board)] if action in (0, 2) else [list(r) for r in board]
        if action in (1, 2):
            b = [r[::-1] for r in b]
        rows = [cls.slide_left(r) for r in b]
        out, gain = [r for r, _ in rows], sum(g for _, g in rows)
        if action in (1, 2):
            out = [r[::-1] for r in out]
        if action in (0, 2):
            out = [list(col) for col in zip(*out)]
        return out, gain

    def legal(self) -> list[int]:
        return [a for a in range(4) if self.moved(self.board, a)[0] != self.board]

    def step(self, action: int) -> tuple[int, bool]:
        new, gain = self.moved(self.board, action)
        if new == self.board:
            return 0, False
        self.board = new
        self.score += gain
        self.spawn()
        return gain, True


# ---------------------------------------------------------------------------------------------------
# Timed loops: each returns (steps, seconds of timed calls)


def run_reference(seconds: float) -> tuple[int, float]:
    game = ReferenceGame(random.Random(0))
    pick = random.Random(1)
    steps, timed = 0, 0.0
    legal = game.legal()  # the legality check a step needs to detect the game end, timed below
    while timed < seconds:
        a = pick.choice(legal)
        t0 = time.perf_counter()
        game.step(a)
        legal = game.legal()
        if not legal:
            game.reset()
            legal = game.legal()
        timed += time.perf_counter() - t0
        steps += 1
    return steps, timed


def run_engine_single(seconds: float, fast: bool) -> tuple[int, float]:
    game = Game2048(4, rng=np.random.default_rng(0), fast=fast)
    rs = np.random.default_rng(1).integers(0, 12, size=1 << 16).tolist()
    steps, timed, i = 0, 0.0, 0
    while timed < seconds:
        t0 = time.perf_counter()
        for _ in range(1000):
            game.step(PICK_LISTS[game.legal_code][rs[i & 0xFFFF]])
            i += 1
            if game.is_over():
                game.reset()
        timed += time.perf_counter() - t0  # action choice is two list lookups here, timed with the step
        steps += 1000
    return steps, timed


def run_engine_batched(seconds: float, n: int) -> tuple[int, float]:
    games = BatchGame2048([np.random.default_rng(s) for s in range(n)])
    pick = np.random.default_rng(0)
    steps, timed = 0, 0.0
    while timed < seconds:
        actions = PICK[games.codes, pick.integers(0, 12, n)]
        t0 = time.perf_counter()
        games.step(actions)
        over = games.is_over()
        if over.any():
            games.reset(over)
        timed += time.perf_counter() - t0
        steps += n
    return steps, timed


def run_gym_single(seconds: float) -> tuple[int, float]:
    env = gym.make("Game2048-v0")
    _, info = env.reset(seed=0)
    rs = np.random.default_rng(1).integers(0, 12, size=1 << 16).tolist()
    steps, timed, i = 0, 0.0, 0
    while timed < seconds:
        t0 = time.perf_counter()
        for _ in range(1000):
            a = PICK_LISTS[CODE_OF_MASK[info["action_mask"].tobytes()]][rs[i & 0xFFFF]]
            i += 1
            _, _, terminated, truncated, info = env.step(a)
            if terminated or truncated:
                _, info = env.reset()
        timed += time.perf_counter() - t0  # includes choosing from info["action_mask"] (~0.3 us)
        steps += 1000
    return steps, timed


def run_gym_vector(seconds: float, n: int) -> tuple[int, float]:
    env = gym.make_vec("Game2048-v0", num_envs=n, vectorization_mode="vector_entry_point")
    _, info = env.reset(seed=0)
    weights = np.array([1, 2, 4, 8])
    pick = np.random.default_rng(0)
    steps, timed = 0, 0.0
    while timed < seconds:
        actions = PICK[info["action_mask"] @ weights, pick.integers(0, 12, n)]
        t0 = time.perf_counter()
        _, _, _, _, info = env.step(actions)
        timed += time.perf_counter() - t0
        steps += n
    return steps, timed


EXTERNAL_RUNNER = r"""
import json, sys, time
import numpy as np, gymnasium as gym, gymnasium_2048  # noqa: F401
from gymnasium_2048.envs import TwentyFortyEightEnv
seconds = float(sys.argv[1])
env = gym.make("gymnasium_2048/TwentyFortyEight-v0")
_, info = env.reset(seed=0)
pick = np.random.default_rng(1)
steps, timed = 0, 0.0
while timed < seconds:
    board = info["board"]
    legal = [a for a in range(4) if TwentyFortyEightEnv.apply_action(board.copy(), a)[2]]  # not timed
    a = legal[int(pick.integers(len(legal)))]
    t0 = time.perf_counter()
    _, _, terminated, truncated, info = env.step(a)
    if terminated or truncated:
        _, info = env.reset()
    timed += time.perf_counter() - t0
    steps += 1
print(json.dumps({"steps": steps, "seconds": timed}))
"""


def ensure_external() -> tuple[Path | None, str]:
    """The scratch venv's python with gymnasium-2048 installed, or None and the reason."""
    python = SCRATCH_VENV / "bin" / "python"
    check = [str(python), "-c", "import gymnasium_2048"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, ""
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(SCRATCH_VENV)], check=True, capture_output=True,
                           timeout=300)
            if not python.exists():  # the bench's own python may be a venv without ensurepip
                subprocess.run(["python3", "-m", "venv", str(SCRATCH_VENV)], check=True, capture_output=True,
                               timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", EXTERNAL], check=True, capture_output=True,
                       timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install {EXTERNAL} into {SCRATCH_VENV}: {exc}"
    if subprocess.run(check, capture_output=True).returncode != 0:
        return None, f"{EXTERNAL} installed but does not import"
    return python, ""


def run_external(seconds: float) -> tuple[int, float] | str:
    python, why = ensure_external()
    if python is None:
        return why
    out = subprocess.run([str(python), "-c", EXTERNAL_RUNNER, str(seconds)], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        return f"{EXTERNAL} failed: {out.stderr.strip().splitlines()[-1:]}"
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["steps"], data["seconds"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per row")
    parser.add_argument("--no-external", action="store_true", help="skip gymnasium-2048")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    rows: list[tuple[str, int, object]] = [
        ("plain reference (Python lists), baseline", 1, run_reference(args.seconds)),
    ]
    if not args.no_external:
        rows.append((f"{EXTERNAL} via gymnasium.make", 1, run_external(args.seconds)))
    rows += [
        ("ossgym engine Game2048, generic path", 1, run_engine_single(args.seconds, fast=False)),
        ("ossgym engine Game2048, 4x4 bitboard", 1, run_engine_single(args.seconds, fast=True)),
    ]
    rows += [(f"ossgym engine BatchGame2048, {n} boards", n, run_engine_batched(args.seconds, n))
             for n in (1, 64, 1024, 16384)]
    rows.append(('ossgym gymnasium.make("Game2048-v0")', 1, run_gym_single(args.seconds)))
    rows += [(f"ossgym make_vec Game2048-v0, {n} envs", n, run_gym_vector(args.seconds, n)) for n in (1024, 16384)]

    base_steps, base_time = rows[0][2]
    base = base_steps / base_time
    print(f"python {platform.python_version()}, numpy {np.__version__}, gymnasium {gym.__version__}, "
          f"one core, random legal actions, {args.seconds:g} s timed per row")
    print()
    print("| implementation | boards | steps/s | x reference |")
    print("|---|---:|---:|---:|")
    for name, n, result in rows:
        if isinstance(result, str):
            print(f"| {name} | {n} | skipped: {result} | |")
            continue
        steps, timed = result
        rate = steps / timed
        print(f"| {name} | {n} | {rate:,.0f} | {rate / base:,.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
