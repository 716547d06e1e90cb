"""Restricted compilation (RestrictedPython) with lean guards, safe builtins and read-only module proxies.

The static policy (policy.py) rejects underscore names, frame attributes and string-built attribute access
before this runs; RestrictedPython enforces the same at compile time, and the guards below keep the few
checks that depend on runtime values. The guards are deliberately small so that restricted code runs at
close to plain-Python speed:

* ``_getattr_``: refuses names starting with ``_`` and frame/code attributes; ``str.format`` and
  ``format_map`` go through a formatter that refuses field lookups (``"{0.__class__}"``). Static
  attribute loads whose name passed the compile-time check run natively; only ``format``/``format_map``
  (whose safety depends on the receiver) and ``getattr()`` calls reach the guard.
* ``_write_`` (attribute stores): refuses modules, module proxies and classes the code did not define.
  Item stores need no guard: nothing the code can reach has an item store that changes the interpreter.
* ``_getitem_`` is ``operator.getitem``; ``_getiter_`` is ``iter``; sequence unpacking is native.

Before RestrictedPython's checks every annotation is dropped, and the tree is compiled with explicit flags
(``dont_inherit=True``: no future is inherited). ``time`` is a work-counting clock (``make_time_proxy``;
ticks inserted only when the code imports time), ``typing`` inert names, ``hash``/``repr``/``random``
address- and entropy-free. Why each module and builtin is allowed, and which class of gadget each rule
closes: docs/python_layer.md.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import itertools
import operator
import random
import re
import string
import sys
from types import CodeType, FunctionType, MethodType, ModuleType

from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

from ossgym.sandbox.policy import FRAME_ATTRIBUTES, HIERARCHY_ATTRIBUTES
from ossgym.sandbox.result import Violation
from ossgym.sandbox.task import VETTED_IMPORTS

FILENAME = "<untrusted>"
_FORMAT_NAMES = frozenset({"format", "format_map"})
# Module members that would reintroduce string-built attribute access; dropped from proxies.
# functools.update_wrapper/wraps copy and update attributes named by the caller (e.g. '__globals__').
# functools.singledispatch(method) calls typing.get_type_hints, which eval()s string annotations (the red
# team's escape); collections.namedtuple eval()s generated source; random.SystemRandom reads os.urandom.
# See docs/python_layer.md for every allowed module and why.
_DROPPED = {"operator": {"attrgetter", "methodcaller"}, "string": {"Formatter"},
            "functools": {"update_wrapper", "wraps", "singledispatch", "singledispatchmethod"},
            "collections": {"namedtuple", "UserString"}, "random": {"SystemRandom"},
            "array": set(), "copy": {"dispatch_table"}}
# The same objects are dropped wherever a module re-exports them (functools and statistics hand out
# collections.namedtuple, statistics hands out collections.Counter's module's namedtuple...): by identity.
_DROPPED_OBJECTS = tuple(getattr(importlib.import_module(mod), name) for mod, names in _DROPPED.items()
                         for name in names)
# Modules of which the code sees only these members.
_ONLY: dict[str, frozenset[str]] = {"copy": frozenset({"copy", "deepcopy", "Error"})}
# typing is replaced by inert stand-ins (annotations are stripped before compilation, so they are only
# ever evaluated where the code uses them as values, e.g. 'Board = List[List[int]]').
TYPING_NAMES = frozenset({
    "Any", "Callable", "Counter", "DefaultDict", "Deque", "Dict", "FrozenSet", "Iterable", "Iterator", "List",
    "Mapping", "MutableMapping", "MutableSequence", "Optional", "Sequence", "Set", "Tuple", "Union",
    "Generator", "Hashable", "Sized", "Literal", "Final", "ClassVar", "NoReturn", "Type", "TypeVar",
})
# Module members of these types are shared by value (immutable); any other non-callable member (a dict such
# as copy.dispatch_table, a decimal.Context, a calendar instance) is module state the code must not change.
_CONSTANT_TYPES = (int, float, complex, str, bytes, bool, type(None), frozenset)
TICK_NAME = "_tick_"


def reserved_name(name: str) -> bool:
    """Names the code may not bind or read: dunders and the guard names (``_getattr_``, ``_tick_``, ...).
    Single-underscore names of the code's own (``_``, ``_helper``, ``_cache``) are ordinary names."""
    return name.startswith("__") or (name.startswith("_") and name.endswith("_") and name != "_")


class LeanTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer with hooks only where a runtime check is still needed."""

    def check_name(self, node, name, allow_magic_methods=False):  # type: ignore[no-untyped-def]
        if name is not None and name.startswith("_") and not reserved_name(name):
            return  # '_helper', '_': ordinary local names; '_x' attribute access stays refused
        super().check_name(node, name, allow_magic_methods)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.attr not in _FORMAT_NAMES:
            # The name is checked here, at compile time; the load itself then runs natively.
            if node.attr.startswith("_"):
                self.error(node, f'"{node.attr}" is an invalid attribute name because it starts with "_".')
            if node.attr in FRAME_ATTRIBUTES:
                self.error(node, f'"{node.attr}" is a restricted name.')
            return self.node_contents_visit(node)
        return super().visit_Attribute(node)

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        if isinstance(node.ctx, ast.Load):
            return super().visit_Subscript(node)
        return self.node_contents_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        # 'x += 1' and 'a[i] += 1' run natively; 'o.x += 1' gets '_write_(o)' from visit_Attribute.
        return self.node_contents_visit(node)

    def guard_iter(self, node):  # type: ignore[no-untyped-def]
        node = self.node_contents_visit(node)
        new_iter = ast.Call(func=ast.Name("_getiter_", ast.Load()), args=[node.iter], keywords=[])
        copy_locations(new_iter, node.iter)
        node.iter = new_iter
        return node

    def protect_unpack_sequence(self, target, value):  # type: ignore[no-untyped-def]
        return value

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        for name in node.names:
            self.check_name(node, name)
        return node


class _Prepare(ast.NodeTransformer):
    """Before RestrictedPython: drop every annotation (none is ever evaluated, stored, or handed to
    typing.get_type_hints / functools.singledispatch), and with ``ticks`` count work: a call of the
    deterministic work counter at the start of every function and loop body (see ``TickClock``)."""

    def __init__(self, ticks: bool) -> None:
        self.ticks = ticks

    def _tick(self, body: list[ast.stmt], at: ast.AST) -> list[ast.stmt]:
        if not self.ticks:
            return body
        call = ast.Expr(ast.Call(ast.Name(TICK_NAME, ast.Load()), [], []))
        ast.copy_location(call, at)
        ast.fix_missing_locations(call)
        return [call, *body]

    def visit_arg(self, node: ast.arg) -> ast.AST:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        self.generic_visit(node)
        node.returns = None
        node.body = self._tick(node.body, node)
        return node

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        node.body = self._tick(node.body, node)
        return node

    visit_While = visit_For  # type: ignore[assignment]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        self.generic_visit(node)
        if node.value is None:
            return ast.copy_location(ast.Pass(), node)
        return ast.copy_location(ast.Assign([node.target], node.value), node)


SCRUB_NAME = "_scrub_"
TEXT_NAME = "_text_"


class _AddressFreeText(ast.NodeTransformer):
    """After RestrictedPython's checks: every text conversion the code writes goes through a guard that
    removes object addresses (`` at 0x7f...`` in the default reprs of functions, ``object()``, iterators):
    ``str(x)`` calls, f-string fields and ``%``-formatting of a literal (``repr``, ``ascii`` and ``format``
    are scrubbing builtins). So no address becomes a value the code can compute with."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id == "str":  # str stays the type; see _SAFE_BUILTINS
            return ast.copy_location(ast.Call(ast.Name(SCRUB_NAME, ast.Load()), [node], []), node)
        return node

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        self.generic_visit(node)
        node.value = ast.copy_location(
            ast.Call(ast.Name(TEXT_NAME, ast.Load()), [node.value, ast.Constant(node.conversion)], []), node.value)
        node.conversion = -1
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Mod) and (isinstance(node.left, ast.JoinedStr) or (
                isinstance(node.left, ast.Constant) and isinstance(node.left.value, (str, bytes)))):
            return ast.copy_location(ast.Call(ast.Name(SCRUB_NAME, ast.Load()), [node], []), node)
        return node


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{4,}")
_ADDRESS_BYTES = re.compile(rb" at 0x[0-9a-fA-F]{4,}")


def scrub(value: object) -> object:
    """``value`` with every object address (`` at 0x...``) removed when it is text; anything else as is."""
    t = type(value)
    if t is str and " at 0x" in value:  # type: ignore[operator]
        return _ADDRESS.sub("", value)  # type: ignore[arg-type]
    if t is bytes and b" at 0x" in value:  # type: ignore[operator]
        return _ADDRESS_BYTES.sub(b"", value)  # type: ignore[arg-type]
    return value


_FIELD_CONVERSIONS = {ord("s"): str, ord("r"): repr, ord("a"): ascii}  # FormattedValue.conversion -> function


def _text(value: object, conversion: int) -> object:
    """An f-string field: the conversion (!s, !r, !a) done here and scrubbed; without one, values whose type
    formats itself (numbers, str, the code's own classes with __format__) pass as they are and the rest
    (containers, functions: object.__format__ would use their repr) become their scrubbed str."""
    convert = _FIELD_CONVERSIONS.get(conversion)
    if convert is None:
        if type(value).__format__ is not object.__format__:
            return value
        convert = str
    return scrub(convert(value))


def _imports_time(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "time" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module == "time":
            return True
    return False


_LINE = re.compile(r"^Line (\d+): (.*)$", re.S)
# No flag is inherited from this module (it has 'from __future__ import annotations', as RestrictedPython's
# compile.py has: compile() without dont_inherit=True handed that future to untrusted code, which made every
# annotation a string that typing.get_type_hints evaluates).
COMPILE_FLAGS = 0


def compile_untrusted(tree: ast.Module) -> tuple[CodeType | None, list[Violation]]:
    """Compile a policy-checked tree with RestrictedPython's checks and explicit flags (no inherited
    futures); return the code or the violations. The tree is modified in place."""
    try:
        return _compile(tree)
    except (RecursionError, MemoryError):
        return None, [Violation(1, 0, "the code is too deeply nested or too large to compile")]
    except Exception as e:  # noqa: BLE001 - odd input refuses the code (a typed result), never crashes
        return None, [Violation(1, 0, f"the code could not be compiled ({type(e).__name__}: {str(e)[:200]})")]


def _compile(tree: ast.Module) -> tuple[CodeType | None, list[Violation]]:
    ticks = _imports_time(tree)
    _Prepare(ticks=False).visit(tree)
    ast.fix_missing_locations(tree)
    errors: list[str] = []
    LeanTransformer(errors, [], {}).visit(tree)
    if not errors:  # after the checks: the guards' names are reserved for the sandbox
        _AddressFreeText().visit(tree)
        if ticks:
            _Prepare(ticks=True).visit(tree)
        ast.fix_missing_locations(tree)
    if errors:
        out = []
        for err in errors:
            m = _LINE.match(err)
            line = int(m.group(1)) if m and m.group(1).isdigit() else 1
            out.append(Violation(line, 0, m.group(2) if m else err))
        return None, out
    return compile(tree, FILENAME, "exec", flags=COMPILE_FLAGS, dont_inherit=True), []


# --- guards ----------------------------------------------------------------------------------------------
_formatter = string.Formatter()


def _check_format(fmt: str, depth: int = 0) -> None:
    for _literal, field, spec, _conv in _formatter.parse(fmt):
        if field is not None and ("." in field or "[" in field):
            raise ValueError("format fields with '.' or '[' are not allowed; use an f-string")
        if spec and "{" in spec:
            if depth >= 2:
                raise ValueError("format specs nested this deeply are not allowed")
            _check_format(spec, depth + 1)


def _safe_format(fmt: str, *args: object, **kwargs: object) -> str:
    _check_format(fmt)
    return scrub(str.format(fmt, *args, **kwargs))  # type: ignore[return-value]


def _safe_format_map(fmt: str, mapping: object) -> str:
    _check_format(fmt)
    return scrub(str.format_map(fmt, mapping))  # type: ignore[arg-type,return-value]


def _own_method(value: object) -> bool:
    """Whether ``value`` is a method the untrusted code defined itself (compiled from FILENAME)."""
    func = getattr(value, "__func__", None) if type(value) is MethodType else value
    return type(func) is FunctionType and func.__code__.co_filename == FILENAME


def _format_attribute(ob: object, name: str, default: tuple) -> object:
    """``ob.format`` / ``ob.format_map`` on ANY receiver: str's methods (reached on a str, a str subclass,
    through ``super()``, or as a method bound to a str) become the field-checked versions; the unbound
    ``str.format`` is refused; a method the code defined itself is returned; anything else (a stdlib
    wrapper such as UserString.format that forwards to str.format natively) is refused."""
    safe = _safe_format if name == "format" else _safe_format_map
    if isinstance(ob, str):
        return functools.partial(safe, ob)
    if isinstance(ob, type) and issubclass(ob, str):
        raise AttributeError(f"str.{name} through the class is not allowed; use an f-string")
    value = getattr(ob, name, *default)
    if default and value is default[0]:
        return value
    owner = getattr(value, "__self__", None)
    if isinstance(owner, str):
        return functools.partial(safe, owner)
    if _own_method(value):
        return value
    raise AttributeError(f"'.{name}' is only available on str here; use an f-string")


def guarded_getattr(ob: object, name: str, *default: object) -> object:
    """getattr for untrusted code: no '_' names, no frame attributes, field-free str.format."""
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name[:1] == "_" or name in FRAME_ATTRIBUTES or name in HIERARCHY_ATTRIBUTES:
        raise AttributeError(f"attribute '{name}' is not accessible")
    if name in _FORMAT_NAMES:
        return _format_attribute(ob, name, default)
    return getattr(ob, name, *default)


def guarded_hasattr(ob: object, name: str) -> bool:
    """hasattr for untrusted code, with the same name rules as ``guarded_getattr``."""
    try:
        guarded_getattr(ob, name)
    except AttributeError:
        return False
    return True


class ModuleProxy:
    """Base of read-only stand-ins for modules: public attributes only, no assignment."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"module '{type(self).__name__}' is read-only")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"module '{type(self).__name__}' is read-only")

    def __repr__(self) -> str:
        return f"<module '{type(self).__name__}'>"


def _constant_tuple(value: object) -> bool:
    return type(value) is tuple and all(isinstance(v, _CONSTANT_TYPES) or _constant_tuple(v) for v in value)


def make_proxy(module: ModuleType, name: str, extra: dict[str, object] | None = None,
               rng: random.Random | None = None) -> ModuleProxy:
    """A read-only proxy of ``module``; with ``rng``, module-level random functions use that generator."""
    dropped = _DROPPED.get(name, ())
    only = _ONLY.get(name)
    ns: dict[str, object] = {"__slots__": (), "__module__": "sandbox"}
    shared = getattr(module, "_inst", None) if rng is not None else None
    for key, value in vars(module).items():
        if key.startswith("_") or key in dropped or isinstance(value, ModuleType) or (only and key not in only):
            continue
        if any(value is d for d in _DROPPED_OBJECTS):
            continue
        if not (callable(value) or isinstance(value, _CONSTANT_TYPES) or _constant_tuple(value)):
            continue  # module state (dicts, lists, contexts, instances): not the code's to read or change
        if shared is not None and getattr(value, "__self__", None) is shared:
            value = getattr(rng, key)
        if hasattr(type(value), "__get__"):
            value = staticmethod(value)  # functions must not bind to the proxy
        ns[key] = value
    for key, value in (extra or {}).items():
        ns[key] = staticmethod(value) if hasattr(type(value), "__get__") else value
    return type(name, (ModuleProxy,), ns)()


_user_classes: set[type] = set()
_serials = [itertools.count(1)]  # reset by make_globals: the same program numbers its objects the same way


def _stable_object_hash(self: object) -> int:
    """__hash__ of the code's own classes: a serial number given on first use, not the address."""
    d = object.__getattribute__(self, "__dict__")
    serial = d.get("\0serial")
    if serial is None:
        serial = d["\0serial"] = next(_serials[0])
    return serial


def _plain_repr(self: object) -> str:
    """__repr__ of the code's own classes: the class name, without the address."""
    return f"<{type(self).__name__} object>"


def _user_class(name: str, bases: tuple, namespace: dict) -> type:
    """Metaclass hook: records classes defined by the untrusted code (their attributes are writable) and
    gives them address-free hashing and repr where they would inherit object's (whose values are the
    object's address: set order and printed reprs would differ between pools)."""
    cls = type(name, bases, namespace)
    _user_classes.add(cls)
    if cls.__hash__ is object.__hash__:
        cls.__hash__ = _stable_object_hash  # type: ignore[method-assign]
    if cls.__repr__ is object.__repr__:
        cls.__repr__ = _plain_repr  # type: ignore[method-assign]
    return cls


_HASH_EXACT = (int, float, complex, bool, str, bytes, type(None))


def _hash(ob: object) -> int:
    """hash() without addresses: numbers, str and bytes (the template runs with PYTHONHASHSEED=0), tuples
    and frozensets of those, and instances of the code's own classes; others raise TypeError."""
    t = type(ob)
    if t in _HASH_EXACT or t in _user_classes or (t is tuple or t is frozenset) and all(_hashable_ok(v) for v in ob):
        return hash(ob)
    raise TypeError(f"hash() of a {t.__name__} is not available: it depends on a memory address")


def _hashable_ok(ob: object) -> bool:
    t = type(ob)
    return t in _HASH_EXACT or t in _user_classes or ((t is tuple or t is frozenset) and all(_hashable_ok(v) for v in ob))


def _getiter(ob: object) -> object:
    """iter() for loops and comprehensions: a set or frozenset iterates only when every element hashes
    without an address (numbers, str, bytes, tuples of those, the code's own objects): the order of a set of
    functions or ``object()`` instances is the order of their addresses."""
    t = type(ob)
    if (t is set or t is frozenset) and not all(_hashable_ok(v) for v in ob):  # type: ignore[attr-defined]
        raise TypeError("iterating a set of functions, classes or plain objects is not available: its order "
                        "depends on memory addresses (use a list or a dict)")
    return iter(ob)  # type: ignore[call-overload]


def guarded_write(ob: object) -> object:
    """Target of attribute stores: refuses modules, proxies and classes the code did not define."""
    t = type(ob)
    if t is list or t is dict:
        return ob
    if isinstance(ob, (ModuleProxy, ModuleType)) or (isinstance(ob, type) and ob not in _user_classes):
        raise TypeError(f"cannot modify {ob!r}: modules and classes the code did not define are read-only")
    return ob


def _apply(f, *args, **kwargs):  # type: ignore[no-untyped-def]
    return f(*args, **kwargs)


def _unpack(it, spec, getiter):  # type: ignore[no-untyped-def]
    return it


def _type(ob: object) -> type:
    """type() with one argument, never returning a metaclass: with ``type`` itself the code could call the
    three-argument form and build a class with dunder methods (say ``__exit__`` returning True) from strings."""
    t = type(ob)
    if issubclass(t, type):
        raise TypeError("type() of a class is not available")
    return t


class _Printer:
    """RestrictedPython's print collector, writing to the worker's capped stdout."""

    def __init__(self, _getattr_: object = None) -> None:
        pass

    def _call_print(self, *objects: object, sep: str | None = " ", end: str | None = "\n",
                    file: object = None, flush: bool = False) -> None:
        print(*objects, sep=sep, end=end, file=sys.stdout)

    def __call__(self) -> str:
        return ""


_SAFE_BUILTIN_NAMES = (
    "abs all any ascii bin bool callable chr classmethod complex dict divmod enumerate filter float "
    "format frozenset hex int isinstance issubclass iter len list map max min next object oct ord "
    "pow property range repr reversed round set slice sorted staticmethod str sum super tuple zip "
    "Exception ArithmeticError AssertionError AttributeError IndexError KeyError LookupError NameError "
    "NotImplementedError OverflowError RecursionError RuntimeError StopIteration TypeError ValueError "
    "ZeroDivisionError MemoryError UnboundLocalError FloatingPointError NotImplemented Ellipsis"
).split()


class DeterministicRandom(random.Random):
    """random.Random whose seed defaults to 0 instead of the OS's entropy (so ``random.Random()`` and
    ``random.seed()`` give the same numbers in every pool)."""

    def __init__(self, x: object = 0) -> None:
        super().__init__(0 if x is None else x)

    def seed(self, a: object = 0, version: int = 2) -> None:  # type: ignore[override]
        super().seed(0 if a is None else a, version)


# --- the deterministic clock -------------------------------------------------------------------------------
#: Nominal cost of one unit of work, in seconds. The code's clock reads (number of work ticks so far) x this.
#: A tick is one function call or one loop iteration of the untrusted code (and one clock read). The value is
#: an upper estimate of what a tick costs in CPython, so a search that budgets itself by this clock uses no more
#: real CPU time than it believes it does and stays inside the caller's CPU limit (measured: a one-ply
#: expectimax on 4x4 costs about 0.25 us of CPU per tick on the 2-core dev machine under load; 1 us leaves 4x).
NOMINAL_TICK_S = 1e-6
_work = [itertools.count()]


def _now() -> float:
    return next(_work[0]) * NOMINAL_TICK_S


def _now_ns() -> int:
    return next(_work[0]) * int(NOMINAL_TICK_S * 1e9)


def _no_sleep(secs: float = 0) -> None:
    raise RuntimeError("time.sleep is not available: the sandbox clock counts work, and sleeping does none")


def make_time_proxy() -> ModuleProxy:
    """``time`` as the code sees it: a read-only clock that counts work (ticks x NOMINAL_TICK_S), not real
    time, so a time-budgeted search makes the same moves on every machine and under any load."""
    extra: dict[str, object] = {name: _now for name in ("time", "perf_counter", "monotonic", "process_time",
                                                        "thread_time")}
    extra.update({f"{name}_ns": _now_ns for name in ("time", "perf_counter", "monotonic", "process_time",
                                                     "thread_time")})
    extra["sleep"] = _no_sleep
    return make_proxy(ModuleType("time"), "time", extra=extra)


class _TypingName:
    """An inert stand-in for a typing name: subscriptable and combinable, evaluates nothing."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "name", name)

    def __getitem__(self, item: object) -> "_TypingName":
        return self

    def __call__(self, *args: object, **kwargs: object) -> "_TypingName":
        return self

    def __or__(self, other: object) -> "_TypingName":
        return self

    __ror__ = __or__

    def __repr__(self) -> str:
        return f"typing.{self.name}"


def make_typing_proxy() -> ModuleProxy:
    """``typing`` as the code sees it: inert names only (no get_type_hints, ForwardRef, NamedTuple...)."""
    extra: dict[str, object] = {n: _TypingName(n) for n in TYPING_NAMES}
    extra.update({"TYPE_CHECKING": False, "cast": _typing_cast})
    return make_proxy(ModuleType("typing"), "typing", extra=extra)


def _typing_cast(typ: object, value: object) -> object:
    """typing.cast: returns the value."""
    return value


_proxies: dict[str, tuple[ModuleProxy, random.Random | None]] = {}


def module_proxy(name: str) -> tuple[ModuleProxy, random.Random | None]:
    """The read-only proxy of module ``name`` (and its private generator, for ``random``), built once per
    process: the template builds them at preload, so each forked worker only reads them."""
    if name not in _proxies:
        if name == "time":
            _proxies[name] = (make_time_proxy(), None)
        elif name == "typing":
            _proxies[name] = (make_typing_proxy(), None)
        else:
            module = importlib.import_module(name)
            rng = DeterministicRandom(0) if name == "random" else None
            extra = {"Random": DeterministicRandom} if name == "random" else None
            _proxies[name] = (make_proxy(module, name, extra=extra, rng=rng), rng)
    return _proxies[name]


_SAFE_BUILTINS = {name: getattr(builtins, name) for name in _SAFE_BUILTIN_NAMES}
_SAFE_BUILTINS.update({
    "__build_class__": builtins.__build_class__, "getattr": guarded_getattr, "hasattr": guarded_hasattr,
    "type": _type, "hash": _hash, "None": None, "True": True, "False": False,
    # functions, not types, so they can be replaced outright (an alias of them scrubs too); str stays the type
    "repr": lambda ob: scrub(repr(ob)), "ascii": lambda ob: scrub(ascii(ob)),
    "format": lambda ob, spec="": scrub(format(ob, spec)),
})


def make_globals(allowed_imports: frozenset[str], seed: int) -> dict[str, object]:
    """Fresh globals for one untrusted module: safe builtins, guards and a guarded import."""

    def guarded_import(name: str, globals: object = None, locals: object = None,
                       fromlist: tuple = (), level: int = 0) -> ModuleProxy:
        if type(name) is not str or level != 0 or name not in allowed_imports \
                or name not in VETTED_IMPORTS:
            raise ImportError(f"import of '{name}' is not allowed")
        if fromlist or "." not in name:
            return module_proxy(name)[0]
        # 'import a.b as c' (the policy requires 'as'): Python reads attribute b of the result
        parent, child = name.rsplit(".", 1)
        return make_proxy(ModuleType(parent), parent, extra={child: module_proxy(name)[0]})

    if "random" in allowed_imports:
        module_proxy("random")[1].seed(seed)  # type: ignore[union-attr]
    random.seed(seed)  # the module's own generator too: stdlib code the untrusted code calls may use it
    _work[0] = itertools.count()
    _serials[0] = itertools.count(1)
    safe = _SAFE_BUILTINS.copy()
    safe["__import__"] = guarded_import
    return {
        "__builtins__": safe, "__name__": "untrusted", "__metaclass__": _user_class,
        "_getattr_": guarded_getattr, "_getitem_": operator.getitem, "_getiter_": _getiter,
        SCRUB_NAME: scrub, TEXT_NAME: _text,
        "_write_": guarded_write, "_iter_unpack_sequence_": _unpack, "_unpack_sequence_": _unpack,
        "_apply_": _apply, "_print_": _Printer, TICK_NAME: _work[0].__next__,
    }


def load_untrusted(code: CodeType, allowed_imports: frozenset[str], seed: int, entrypoint: str) -> FunctionType:
    """Execute compiled untrusted module code in fresh globals and return its entrypoint function."""
    g = make_globals(allowed_imports, seed)
    exec(code, g)  # noqa: S102 - restricted code in a sandbox worker, never in the caller
    fn = g.get(entrypoint)
    if type(fn) is not FunctionType:
        raise TypeError(f"'{entrypoint}' is not a function")
    return fn
