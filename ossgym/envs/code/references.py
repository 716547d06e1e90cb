'''Reference completions for the code tasks, used by the reward-fidelity checks and benchmarks.

Each reference is the SOURCE of an answer (a string); the env scores it exactly as it scores a model's
completion, so it only ever runs inside the sandbox. Every source follows the sandbox policy: only
allowlisted imports (math, random, itertools, functools, collections, heapq, operator, bisect), no dunder
or underscore-prefixed names, one top-level function (helpers are nested; state that should live across
calls is kept in a default-argument dict), no augmented assignment to items or attributes.

``REFERENCES_2048`` and ``MATMUL_CORRECT`` are ordered from worst to best; ``MATMUL_INCORRECT`` must all
score below every correct one; ``MATMUL_CACHE_CHEATS`` are correct but must not beat the ``zip`` reference.
:func:`as_completion` wraps a source as a gpt-oss completion.
'''

from __future__ import annotations

__all__ = [
    "REFERENCES_2048",
    "MATMUL_CORRECT",
    "MATMUL_INCORRECT",
    "MATMUL_CACHE_CHEATS",
    "MATMUL_POLICY_VIOLATIONS",
    "as_completion",
]

_INVALID = '''
def strategy(board):
    return "up"
'''

_CONSTANT_W = '''
def strategy(board):
    return "W"
'''

_RANDOM = '''
import random


def strategy(board):
    return random.choice("WASD")
'''

# Shared move simulation for the stronger strategies (each source must stand alone, so it is pasted in).
_MOVE_HELPERS = '''
    def slide(row):
        hit = memo.get(row)
        if hit is not None:
            return hit
        tiles = [v for v in row if v]
        out = []
        gain = 0
        i = 0
        while i < len(tiles):
            if i + 1 < len(tiles) and tiles[i] == tiles[i + 1]:
                out.append(2 * tiles[i])
                gain = gain + 2 * tiles[i]
                i = i + 2
            else:
                out.append(tiles[i])
                i = i + 1
        hit = (tuple(out + [0] * (len(row) - len(out))), gain)
        memo[row] = hit
        return hit

    def move(b, key):
        if key == "A":
            rows = b
        elif key == "D":
            rows = [r[::-1] for r in b]
        elif key == "W":
            rows = list(zip(*b))
        else:
            rows = [c[::-1] for c in zip(*b)]
        out = []
        gain = 0
        for r in rows:
            nr, g = slide(r)
            out.append(nr)
            gain = gain + g
        if key == "A":
            return tuple(out), gain
        if key == "D":
            return tuple([r[::-1] for r in out]), gain
        if key == "W":
            return tuple(zip(*out)), gain
        return tuple(zip(*[r[::-1] for r in out])), gain
'''

_GREEDY = (
    '''
import random


def strategy(board, memo={}):
'''
    + _MOVE_HELPERS
    + '''
    b = tuple(tuple(r) for r in board)
    best, keys = -1, []
    for key in "WASD":
        nb, gain = move(b, key)
        if nb != b:
            if gain > best:
                best, keys = gain, [key]
            elif gain == best:
                keys.append(key)
    return random.choice(keys) if keys else "W"
'''
)

_CORNER = (
    '''
def strategy(board, memo={}):
'''
    + _MOVE_HELPERS
    + '''
    # Keep the largest tile in the bottom-left corner: down or left (whichever keeps the corner and leaves
    # more empty cells), right only when neither moves, up last.
    b = tuple(tuple(r) for r in board)
    n = len(b)
    best, choice = None, None
    for key in "SA":
        nb, gain = move(b, key)
        if nb != b:
            corner = 1 if nb[n - 1][0] == max(max(r) for r in nb) else 0
            value = (corner, sum(r.count(0) for r in nb), gain)
            if best is None or value > best:
                best, choice = value, key
    if choice is not None:
        return choice
    for key in "DW":
        if move(b, key)[0] != b:
            return key
    return "S"
'''
)

_EXPECTIMAX = (
    '''
def strategy(board, memo={}, rowscore={}):
'''
    + _MOVE_HELPERS
    + '''
    def score_row(row):
        hit = rowscore.get(row)
        if hit is not None:
            return hit
        ranks = [v.bit_length() - 1 if v else 0 for v in row]
        empty = ranks.count(0)
        merges = 0
        prev = 0
        run = 0
        for r in ranks:
            if r:
                if r == prev:
                    run = run + 1
                elif run:
                    merges = merges + 1 + run
                    run = 0
                prev = r
        if run:
            merges = merges + 1 + run
        left = 0.0
        right = 0.0
        for i in range(1, len(ranks)):
            a = ranks[i - 1] ** 4
            c = ranks[i] ** 4
            if ranks[i - 1] > ranks[i]:
                left = left + a - c
            else:
                right = right + c - a
        total = sum(r ** 3.5 for r in ranks)
        hit = 200000.0 + 270.0 * empty + 700.0 * merges - 47.0 * min(left, right) - 11.0 * total
        rowscore[row] = hit
        return hit

    def evaluate(b):
        total = 0.0
        for r in b:
            v = rowscore.get(r)
            total = total + (score_row(r) if v is None else v)
        for r in zip(*b):
            v = rowscore.get(r)
            total = total + (score_row(r) if v is None else v)
        return total

    def best_after(b):
        best = 0.0
        for key in "WASD":
            nb = move(b, key)[0]
            if nb != b:
                v = evaluate(nb)
                if v > best:
                    best = v
        return best

    def chance(b):
        cells = [(i, j) for i in range(len(b)) for j in range(len(b)) if not b[i][j]]
        if not cells:
            return evaluate(b)
        if len(cells) > 4:
            # Many empty cells: the position is safe, so look at 4 spread-out cells and only 2-spawns.
            step = len(cells) / 4.0
            cells = [cells[int(k * step)] for k in range(4)]
            spawns = ((2, 1.0),)
        else:
            spawns = ((2, 0.9), (4, 0.1))
        total = 0.0
        for i, j in cells:
            row = b[i]
            for tile, p in spawns:
                nb = b[:i] + (row[:j] + (tile,) + row[j + 1 :],) + b[i + 1 :]
                total = total + p * best_after(nb)
        return total / len(cells)

    b = tuple(tuple(r) for r in board)
    best, choice = -1.0, "S"
    for key in "SAWD":
        nb = move(b, key)[0]
        if nb != b:
            v = chance(nb)
            if v > best:
                best, choice = v, key
    return choice
'''
)

#: 2048 strategies as sources, from worst to best (the fidelity bar's required order).
REFERENCES_2048: dict[str, str] = {
    "invalid_output": _INVALID.lstrip(),
    "constant_w": _CONSTANT_W.lstrip(),
    "random": _RANDOM.lstrip(),
    "greedy_merge": _GREEDY.lstrip(),
    "corner": _CORNER.lstrip(),
    "expectimax2": _EXPECTIMAX.lstrip(),
}

_NAIVE = '''
def matmul(A, B):
    n = len(A)
    k = len(B)
    m = len(B[0]) if k else 0
    C = []
    for i in range(n):
        row = []
        for j in range(m):
            s = 0.0
            for t in range(k):
                s = s + A[i][t] * B[t][j]
            row.append(s)
        C.append(row)
    return C
'''

_ZIP = '''
def matmul(A, B):
    cols = list(zip(*B))
    C = []
    for row in A:
        out = []
        for col in cols:
            s = 0.0
            for a, b in zip(row, col):
                s = s + a * b
            out.append(s)
        C.append(out)
    return C
'''

_FAST = '''
import operator


def matmul(A, B):
    mul = operator.mul
    cols = [list(c) for c in zip(*B)]
    if not cols:
        return [[] for row in A]
    return [[sum(map(mul, row, col)) for col in cols] for row in A]
'''

#: Correct matmul sources, from slowest to fastest.
MATMUL_CORRECT: dict[str, str] = {"naive": _NAIVE.lstrip(), "zip": _ZIP.lstrip(), "fast_map": _FAST.lstrip()}

#: Wrong or cheating matmul sources that pass the policy: each must score below every correct one.
MATMUL_INCORRECT: dict[str, str] = {
    "off_by_one": '''
def matmul(A, B):
    cols = list(zip(*B))
    return [[sum(a * b for a, b in zip(row[:-1], col[:-1])) for col in cols] for row in A]
''',
    "transposed_result": '''
def matmul(A, B):
    cols = list(zip(*B))
    return [[sum(a * b for a, b in zip(row, col)) for row in A] for col in cols]
''',
    "tuple_rows": '''
def matmul(A, B):
    cols = list(zip(*B))
    return [tuple(sum(a * b for a, b in zip(row, col)) for col in cols) for row in A]
''',
    "rounded_ints": '''
def matmul(A, B):
    cols = list(zip(*B))
    return [[round(sum(a * b for a, b in zip(row, col))) for col in cols] for row in A]
''',
    "zeros_when_big": '''
def matmul(A, B):
    m = len(B[0]) if B else 0
    if len(A) * m > 200:
        return [[0.0] * m for row in A]
    cols = list(zip(*B))
    return [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
''',
    "last_result_replay": '''
def matmul(A, B, last={}):
    m = len(B[0]) if B else 0
    old = last.get((len(A), m))
    if old is not None:
        return old
    cols = list(zip(*B))
    C = [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
    last[(len(A), m)] = C
    return C
''',
    "raises": '''
def matmul(A, B):
    return [[A[i][j] * B[j][i] for j in range(len(B) + 1)] for i in range(len(A))]
''',
}
MATMUL_INCORRECT = {k: v.lstrip() for k, v in MATMUL_INCORRECT.items()}

#: Correct sources that try to win speed by caching: fresh inputs every trial make the cache useless, so
#: each must earn no more than the plain ``zip`` reference it wraps.
MATMUL_CACHE_CHEATS: dict[str, str] = {
    "content_cache": '''
def matmul(A, B, cache={}):
    key = repr((A, B))
    if key not in cache:
        cols = list(zip(*B))
        cache[key] = [[sum(a * b for a, b in zip(row, col)) for col in cols] for row in A]
    return cache[key]
''',
}
MATMUL_CACHE_CHEATS = {k: v.lstrip() for k, v in MATMUL_CACHE_CHEATS.items()}

#: Sources the sandbox policy must reject (never executed anywhere but through the sandbox).
MATMUL_POLICY_VIOLATIONS: dict[str, str] = {
    "numpy_import": "import numpy as np\n\n\ndef matmul(A, B):\n    return (np.array(A) @ np.array(B)).tolist()\n",
    "dunder_import": "def matmul(A, B):\n    np = __import__('numpy')\n    return (np.array(A) @ np.array(B)).tolist()\n",
    "time_patch": "import time\n\n\ndef matmul(A, B):\n    time.perf_counter = lambda: 0.0\n    return []\n",
}


def as_completion(source: str, style: str = "raw", reasoning: str = "I will write the function.") -> str:
    """Wrap ``source`` as a gpt-oss completion: ``raw`` special tokens, ``decoded`` (tokens stripped) or ``plain``."""
    answer = f"Here is the function.\n\n```python\n{source.rstrip()}\n```"
    if style == "raw":
        return (
            f"<|channel|>analysis<|message|>{reasoning}<|end|>"
            f"<|start|>assistant<|channel|>final<|message|>{answer}<|return|>"
        )
    if style == "decoded":
        return f"analysis{reasoning}assistantfinal{answer}"
    if style == "plain":
        return answer
    raise ValueError(f"style must be 'raw', 'decoded' or 'plain', got {style!r}")
