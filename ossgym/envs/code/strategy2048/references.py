"""Reference strategies of GptOss2048-v0 (sources, scored exactly like a model's completion).

Every source follows the sandbox policy (allowed imports only, one top-level function, helpers nested,
state across calls in a default-argument dict). ``REFERENCES_2048`` is ordered from worst to best: the
fidelity bar (docs/rewards.md, tests/test_fidelity_2048.py) requires that order with gaps > 3 SE.
"""

from __future__ import annotations

__all__ = ["REFERENCES_2048"]

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


# One-ply expectimax: every move, then the expected evaluation over the spawn (every empty cell, 2 or 4),
# no second move (about 0.6 ms a move). Shares the evaluation with the deeper search below.
_EVAL_HELPERS = '''
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
'''

# The move both searches play: the one whose spawn is worth most (down, left, up, right on ties).
_PICK_BY_CHANCE = '''
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

_EXPECTIMAX1 = (
    '''
def strategy(board, memo={}, rowscore={}):
'''
    + _MOVE_HELPERS
    + _EVAL_HELPERS
    + '''
    def chance(b):
        total = 0.0
        count = 0
        for i in range(len(b)):
            row = b[i]
            for j in range(len(row)):
                if not row[j]:
                    for tile, p in ((2, 0.9), (4, 0.1)):
                        nb = b[:i] + (row[:j] + (tile,) + row[j + 1 :],) + b[i + 1 :]
                        total = total + p * evaluate(nb)
                    count = count + 1
        return total / count if count else evaluate(b)
'''
    + _PICK_BY_CHANCE
)

_EXPECTIMAX = (
    '''
def strategy(board, memo={}, rowscore={}):
'''
    + _MOVE_HELPERS
    + _EVAL_HELPERS
    + '''
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
'''
    + _PICK_BY_CHANCE
)

#: 2048 strategies as sources, from worst to best (the fidelity bar's required order).
REFERENCES_2048: dict[str, str] = {
    "invalid_output": _INVALID.lstrip(),
    "constant_w": _CONSTANT_W.lstrip(),
    "random": _RANDOM.lstrip(),
    "greedy_merge": _GREEDY.lstrip(),
    "corner": _CORNER.lstrip(),
    "expectimax1": _EXPECTIMAX1.lstrip(),
    "expectimax2": _EXPECTIMAX.lstrip(),
}
