"""The Python layer attacked class by class: the static policy alone, RestrictedPython alone (policy
skipped), and the honest code each must let through. Every gadget ends in a policy violation or an error
from the untrusted code itself (which the worker reports as a typed runtime error), never in a value.
"""

from __future__ import annotations

import collections
import textwrap

import pytest

from ossgym.sandbox.policy import check_policy
from ossgym.sandbox.restricted import (COMPILE_FLAGS, NOMINAL_TICK_S, compile_untrusted, guarded_getattr,
                                       load_untrusted)
from ossgym.sandbox.task import VETTED_IMPORTS, SandboxTask

ALL = frozenset(VETTED_IMPORTS)
T = SandboxTask(entrypoint="f", harness="x:y", allowed_imports=ALL)


def restricted_only(src: str, *args: object) -> object:
    """Compile and run ``src`` with RestrictedPython and the guards, the static policy skipped."""
    import ast

    code, violations = compile_untrusted(ast.parse(textwrap.dedent(src)))
    if code is None:
        raise PermissionError(violations)
    return load_untrusted(code, ALL, 0, "f")(*args)


def both(src: str, *args: object) -> object:
    src = textwrap.dedent(src)
    v = check_policy(src, T)
    if v:
        raise PermissionError(v)
    return restricted_only(src, *args)


BLOCKED = (PermissionError, AttributeError, ValueError, TypeError, NameError, ImportError, RuntimeError, KeyError)

# Each gadget, if it worked, returns something that is not the string "safe".
GADGETS = {
    # typing.get_type_hints eval of a string annotation, reached through functools.singledispatch
    "singledispatch_annotation": """
        import functools
        def f():
            def g(a: "__import__('os').getcwd()"):
                return a
            d = functools.singledispatch(lambda a: 0)
            d.register(g)
            return d
    """,
    "typing_get_type_hints": """
        import typing
        def f():
            return typing.get_type_hints
    """,
    "typing_forwardref": """
        import typing
        def f():
            return typing.ForwardRef("1+1")
    """,
    "namedtuple_eval": """
        import collections
        def f():
            return collections.namedtuple("P", "a")
    """,
    # str.format field access on every receiver
    "format_str": """
        def f():
            return "{0.__class__}".format(1)
    """,
    "format_map_str": """
        def f():
            return "{a.__class__}".format_map({"a": 1})
    """,
    "format_unbound": """
        def f():
            return str.format("{0.__class__}", 1)
    """,
    "format_type_of": """
        def f():
            return type("").format("{0.__class__}", 1)
    """,
    "format_getattr_class": """
        def f():
            return getattr(str, "format")("{0.__class__}", 1)
    """,
    "format_super": """
        def f():
            class S(str):
                pass
            return super(S, S("{0.__class__}")).format(1)
    """,
    "format_subclass": """
        def f():
            class S(str):
                pass
            return S("{0.__class__}").format(1)
    """,
    "format_userstring": """
        import collections
        def f():
            return collections.UserString("{0.__class__}").format(1)
    """,
    "format_bound_in_map": """
        def f():
            return list(map("{0.__class__}".format, [1]))
    """,
    "format_nested_spec": """
        def f():
            return "{0:{1:{2.real}}}".format(1, 2, 3)
    """,
    "format_index_field": """
        def f():
            return "{0[0]}".format([1])
    """,
    "string_formatter": """
        import string
        def f():
            return string.Formatter().format("{0.__class__}", 1)
    """,
    "methodcaller_format": """
        import operator
        def f():
            return operator.methodcaller("format", 1)("{0.__class__}")
    """,
    "attrgetter": """
        import operator
        def f():
            return operator.attrgetter("__class__")(1)
    """,
    # frames and tracebacks
    "traceback_attr": """
        def f():
            try:
                1 / 0
            except Exception as e:
                return e.__traceback__
    """,
    "tb_frame_getattr": """
        def f():
            try:
                1 / 0
            except Exception as e:
                return getattr(getattr(e, "with_traceback"), "tb_frame")
    """,
    "gi_frame": """
        def f():
            g = (i for i in [1])
            return g.gi_frame
    """,
    "gi_frame_getattr": """
        def f():
            g = (i for i in [1])
            n = "gi_" + "frame"
            return getattr(g, n)
    """,
    "f_back_via_generator_code": """
        def f():
            g = (i for i in [1])
            return g.gi_code.co_consts
    """,
    "cr_frame": """
        def f():
            async def c():
                return 1
            return c().cr_frame
    """,
    # pickling / copy machinery and module state
    "copy_dispatch_table": """
        import copy
        def f():
            copy.dispatch_table[list] = len
            return copy.dispatch_table
    """,
    "copyreg_import": """
        import copyreg
        def f():
            return copyreg
    """,
    "pickle_import": """
        import pickle
        def f():
            return pickle
    """,
    "decimal_default_context": """
        import decimal
        def f():
            return decimal.DefaultContext
    """,
    "reduce_dunder": """
        def f():
            return (1).__reduce_ex__(2)
    """,
    # eval / exec / compile / import machinery / builtins
    "eval": """
        def f():
            return eval("1")
    """,
    "dunder_import": """
        def f():
            return __import__("os")
    """,
    "import_os": """
        def f():
            import os
            return os
    """,
    "builtins_via_dunder": """
        def f():
            return f.__globals__
    """,
    "type3": """
        def f():
            return type(int)("X", (), {})
    """,
    "guard_name_rebinding": """
        def f():
            _getattr_ = None
            return _getattr_
    """,
    # address- and hash-dependent values (determinism)
    "id": """
        def f():
            return id(f)
    """,
    "hash_of_function": """
        def f():
            return hash(f)
    """,
    "system_random": """
        import random
        def f():
            return random.SystemRandom().random()
    """,
    "sleep": """
        import time
        def f():
            time.sleep(0)
            return 1
    """,
}


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_gadget_blocked_by_restricted_layer_alone(name):
    with pytest.raises(BLOCKED):
        value = restricted_only(GADGETS[name])
        assert value == "safe", value  # pragma: no cover - only reached when a gadget works


@pytest.mark.parametrize("name", sorted(GADGETS))
def test_gadget_blocked_by_both_layers(name):
    with pytest.raises(BLOCKED):
        both(GADGETS[name])


# The gadgets with a static sign. singledispatch_annotation and format_super have none: the restricted layer
# alone closes them (a dropped module member, the checked format), as the two tests above show.
POLICY_ALONE = ["traceback_attr", "gi_frame", "eval", "dunder_import", "import_os", "builtins_via_dunder",
                "guard_name_rebinding", "id", "cr_frame", "copyreg_import", "f_back_via_generator_code"]


@pytest.mark.parametrize("name", POLICY_ALONE)
def test_policy_alone_reports_statically(name):
    assert check_policy(textwrap.dedent(GADGETS[name]), T)


def test_percent_formatting_reads_keys_not_attributes():
    assert restricted_only("def f():\n    return '%(a)s-%(b)d' % {'a': 'x', 'b': 2}\n") == "x-2"
    with pytest.raises(KeyError):
        restricted_only("def f():\n    return '%(__class__)s' % {}\n")


def test_guard_refuses_format_of_a_userstring_passed_in():
    with pytest.raises(AttributeError):
        guarded_getattr(collections.UserString("{0.__class__}"), "format")
    ok = guarded_getattr("{0}-{x}", "format")
    assert ok(1, x=2) == "1-2"


def test_compile_inherits_no_future_and_keeps_no_annotation():
    import __future__
    import ast

    src = "def f(a: 'x', b: int = 1) -> 'y':\n    z: 'w' = 2\n    return f\n"
    code, _ = compile_untrusted(ast.parse(src))
    assert COMPILE_FLAGS == 0 and not code.co_flags & __future__.annotations.compiler_flag
    fn = load_untrusted(code, ALL, 0, "f")
    assert fn.__annotations__ == {} and fn(1) is fn


# --- honest code passes -----------------------------------------------------------------------------------
HONEST = """
    import math
    import time
    from typing import List, Optional, Tuple
    def f(board: List[List[int]]) -> str:
        _moves: Tuple[str, ...] = ("W", "A", "S", "D")
        def _score(b: Optional[List[List[int]]]) -> float:
            return sum(math.log2(v) for row in b for v in row if v)
        for _ in range(4):
            pass
        start = time.perf_counter()
        best, _best_score = None, -1.0
        for m in _moves:
            if time.perf_counter() - start > 0.01:
                break
            s = _score(board) + len(m)
            if s > _best_score:
                best, _best_score = m, s
        größe = len(board)
        return best if größe else "W"
"""


def test_honest_code_with_underscores_typing_time_and_unicode_passes():
    assert both(HONEST, [[2, 4], [0, 8]]) == "W"


@pytest.mark.parametrize("src, needle", [
    ("def f():\n    __x = 1\n", "dunder"),
    ("def f(x):\n    return x._y\n", "'_'"),
    ("def f(x):\n    return x.__class__\n", "'_'"),
    ("def f():\n    _tick_ = 1\n", "reserved"),
    ("def f():\n    return id(1)\n", "id()"),
])
def test_dunders_private_attributes_and_guard_names_stay_blocked(src, needle):
    v = check_policy(src, T)
    assert v and any(needle in x.message for x in v), v
    with pytest.raises(BLOCKED):
        restricted_only(src, 1) if "x" in src.split("\n")[0] else restricted_only(src)


def test_time_counts_work_deterministically():
    src = """
        import time
        def f(n):
            t0 = time.perf_counter()
            k = 0
            while time.perf_counter() - t0 < n:
                k += 1
            return [k, time.time() - t0 > 0, time.monotonic_ns() > 0]
    """
    a, b = restricted_only(src, 0.001), restricted_only(src, 0.001)
    assert a == b and a[0] > 0
    # a deeper budget does proportionally more work, whatever the machine's speed
    assert restricted_only(src, 0.002)[0] >= 2 * a[0] - 1
    assert NOMINAL_TICK_S > 0


def test_without_time_no_ticks_are_inserted():
    import ast

    code, _ = compile_untrusted(ast.parse("def f():\n    for i in range(3):\n        pass\n"))
    assert "_tick_" not in code.co_consts[0].co_names


def test_random_is_seeded_and_deterministic_without_a_seed():
    src = """
        import random
        def f():
            return [random.random(), random.Random().random(), random.Random(None).random()]
    """
    assert restricted_only(src) == restricted_only(src)
    a = restricted_only(src)
    assert a[1] == a[2]


def test_user_objects_hash_and_repr_without_addresses():
    src = """
        def f():
            class Node:
                pass
            nodes = [Node() for _ in range(50)]
            order = [nodes.index(n) for n in set(nodes)]
            return [order, repr(nodes[0]), hash(nodes[3]) - hash(nodes[2]), hash((1, "a")) == hash((1, "a"))]
    """
    a, b = restricted_only(src), restricted_only(src)
    assert a == b and a[1] == "<Node object>" and a[3]


def test_no_address_becomes_a_value():
    """Every text conversion the code can write removes object addresses, and sets whose order is the order
    of addresses refuse to iterate: two runs (new objects at new addresses) return the same values."""
    src = """
        def f():
            def g():
                return 1
            o, it = object(), iter([1])
            out = [repr(o), str(g), ascii(o), format(g), f"{g}", f"{g!r:>30}", f"{[g, 1.5]}", f"{it!s}", "%s" % (g,),
                   (b"%a" % (g,)).decode(), "{}".format(it), "{x}".format_map({"x": o}), f"{2.5:.2f}", f"{3}"]
            r, a = repr, ascii
            out = [r(g), a(it)] + out
            try:
                out.append([v for v in {g, f, o}])
            except TypeError as e:
                out.append(str(e))
            out.append(sorted(v for v in {3, 1, 2}) + sorted(frozenset({(1, "a"), (0, "b")})))
            return out
    """
    a, b = restricted_only(src), restricted_only(src)
    assert a == b
    assert not any("0x" in str(v) for v in a), a
    assert a[:5] == ["<function f.<locals>.g>", "<list_iterator object>", "<object object>", "<function f.<locals>.g>",
                     "<object object>"]
    assert a[-4:-2] == ["2.50", "3"] and a[-2].startswith("iterating a set of functions")
    assert a[-1] == [1, 2, 3, (0, "b"), (1, "a")]


def test_module_proxies_expose_no_mutable_state():
    src = """
        import copy, decimal, json, string
        def f():
            return [hasattr(copy, "dispatch_table"), hasattr(decimal, "DefaultContext"), hasattr(json, "loads"),
                    hasattr(string, "ascii_letters"), hasattr(copy, "deepcopy")]
    """
    assert restricted_only(src) == [False, False, True, True, True]


def test_odd_trees_are_typed_violations_not_crashes():
    import ast

    tree = ast.parse("def f():\n    return 1\n")
    tree.body[0].body[0].value = ast.Constant(value=object())  # not compilable
    code, v = compile_untrusted(tree)
    assert code is None and v

