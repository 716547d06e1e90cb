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
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import operator
import random
import re
import string
import sys
from types import CodeType, FunctionType, ModuleType

from RestrictedPython import compile_restricted_exec
from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

from ossgym.sandbox.policy import FRAME_ATTRIBUTES, HIERARCHY_ATTRIBUTES
from ossgym.sandbox.result import Violation
from ossgym.sandbox.task import VETTED_IMPORTS

FILENAME = "<untrusted>"
_FORMAT_NAMES = frozenset({"format", "format_map"})
# Module members that would reintroduce string-built attribute access; dropped from proxies.
# functools.update_wrapper/wraps copy and update attributes named by the caller (e.g. '__globals__').
_DROPPED = {"operator": {"attrgetter", "methodcaller"}, "string": {"Formatter"},
            "functools": {"update_wrapper", "wraps"}}
# Modules of which the code sees only these members. typing: the annotation names models write (its
# get_type_hints and ForwardRef would eval strings, so the rest stays out).
_ONLY = {"typing": frozenset({
    "Any", "Callable", "Counter", "DefaultDict", "Deque", "Dict", "FrozenSet", "Iterable", "Iterator", "List",
    "Mapping", "MutableMapping", "MutableSequence", "Optional", "Sequence", "Set", "Tuple", "Union",
})}


class LeanTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer with hooks only where a runtime check is still needed."""

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


_LINE = re.compile(r"^Line (\d+): (.*)$", re.S)


def compile_untrusted(tree: ast.Module) -> tuple[CodeType | None, list[Violation]]:
    """Compile a policy-checked tree with RestrictedPython; return the code or the violations."""
    result = compile_restricted_exec(tree, FILENAME, policy=LeanTransformer)
    if result.errors:
        out = []
        for err in result.errors:
            m = _LINE.match(err)
            line = int(m.group(1)) if m and m.group(1).isdigit() else 1
            out.append(Violation(line, 0, m.group(2) if m else err))
        return None, out
    return result.code, []


# --- guards ----------------------------------------------------------------------------------------------
_formatter = string.Formatter()


def _check_format(fmt: str, depth: int = 0) -> None:
    for _literal, field, spec, _conv in _formatter.parse(fmt):
        if field is not None and ("." in field or "[" in field):
            raise ValueError("format fields with '.' or '[' are not allowed; use an f-string")
        if spec and "{" in spec and depth < 2:
            _check_format(spec, depth + 1)


def _safe_format(fmt: str, *args: object, **kwargs: object) -> str:
    _check_format(fmt)
    return str.format(fmt, *args, **kwargs)


def _safe_format_map(fmt: str, mapping: object) -> str:
    _check_format(fmt)
    return str.format_map(fmt, mapping)  # type: ignore[arg-type]


def guarded_getattr(ob: object, name: str, *default: object) -> object:
    """getattr for untrusted code: no '_' names, no frame attributes, field-free str.format."""
    if type(name) is not str:
        raise TypeError("attribute name must be a str")
    if name[:1] == "_" or name in FRAME_ATTRIBUTES or name in HIERARCHY_ATTRIBUTES:
        raise AttributeError(f"attribute '{name}' is not accessible")
    if name in _FORMAT_NAMES:
        if isinstance(ob, str):
            return functools.partial(_safe_format if name == "format" else _safe_format_map, ob)
        if isinstance(ob, type) and issubclass(ob, str):
            raise AttributeError(f"str.{name} through the class is not allowed; use an f-string")
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
        if shared is not None and getattr(value, "__self__", None) is shared:
            value = getattr(rng, key)
        if hasattr(type(value), "__get__"):
            value = staticmethod(value)  # functions must not bind to the proxy
        ns[key] = value
    for key, value in (extra or {}).items():
        ns[key] = staticmethod(value) if hasattr(type(value), "__get__") else value
    return type(name, (ModuleProxy,), ns)()


_user_classes: set[type] = set()


def _user_class(name: str, bases: tuple, namespace: dict) -> type:
    """Metaclass hook: records classes defined by the untrusted code (their attributes are writable)."""
    cls = type(name, bases, namespace)
    _user_classes.add(cls)
    return cls


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
    "format frozenset hash hex id int isinstance issubclass iter len list map max min next object oct ord "
    "pow property range repr reversed round set slice sorted staticmethod str sum super tuple zip "
    "Exception ArithmeticError AssertionError AttributeError IndexError KeyError LookupError NameError "
    "NotImplementedError OverflowError RecursionError RuntimeError StopIteration TypeError ValueError "
    "ZeroDivisionError MemoryError UnboundLocalError FloatingPointError NotImplemented Ellipsis"
).split()


_proxies: dict[str, tuple[ModuleProxy, random.Random | None]] = {}


def module_proxy(name: str) -> tuple[ModuleProxy, random.Random | None]:
    """The read-only proxy of module ``name`` (and its private generator, for ``random``), built once per
    process: the template builds them at preload, so each forked worker only reads them."""
    if name not in _proxies:
        module = importlib.import_module(name)
        rng = random.Random(0) if name == "random" else None
        _proxies[name] = (make_proxy(module, name, rng=rng), rng)
    return _proxies[name]


_SAFE_BUILTINS = {name: getattr(builtins, name) for name in _SAFE_BUILTIN_NAMES}
_SAFE_BUILTINS.update({
    "__build_class__": builtins.__build_class__, "getattr": guarded_getattr, "hasattr": guarded_hasattr,
    "type": _type, "None": None, "True": True, "False": False,
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
    safe = _SAFE_BUILTINS.copy()
    safe["__import__"] = guarded_import
    return {
        "__builtins__": safe, "__name__": "untrusted", "__metaclass__": _user_class,
        "_getattr_": guarded_getattr, "_getitem_": operator.getitem, "_getiter_": iter,
        "_write_": guarded_write, "_iter_unpack_sequence_": _unpack, "_unpack_sequence_": _unpack,
        "_apply_": _apply, "_print_": _Printer,
    }


def load_untrusted(code: CodeType, allowed_imports: frozenset[str], seed: int, entrypoint: str) -> FunctionType:
    """Execute compiled untrusted module code in fresh globals and return its entrypoint function."""
    g = make_globals(allowed_imports, seed)
    exec(code, g)  # noqa: S102 - restricted code in a sandbox worker, never in the caller
    fn = g.get(entrypoint)
    if type(fn) is not FunctionType:
        raise TypeError(f"'{entrypoint}' is not a function")
    return fn
