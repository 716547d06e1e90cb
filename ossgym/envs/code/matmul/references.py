"""Reference sources of GptOssMatmul-v0 (scored exactly like a model's completion).

``MATMUL_CORRECT`` is ordered slowest to fastest (the fidelity bar); ``MATMUL_INCORRECT`` must all score
below every correct one; ``MATMUL_CACHE_CHEATS`` are correct but must not beat ``zip``;
``MATMUL_POLICY_VIOLATIONS`` must be refused. ``NAIVE_SOURCE`` is also the trusted speed baseline, run
through the same sandbox machinery as the completion (ossgym.envs.code.matmul.env.MatmulTask.baseline).
"""

from __future__ import annotations

__all__ = ["MATMUL_CORRECT", "MATMUL_INCORRECT", "MATMUL_CACHE_CHEATS", "MATMUL_POLICY_VIOLATIONS", "NAIVE_SOURCE"]

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

NAIVE_SOURCE = MATMUL_CORRECT["naive"]
