"""Static policy: an AST check of untrusted source that reports every violation with line, column and a
message a model can learn from. It is the first layer; restricted compilation and the worker follow.
"""

from __future__ import annotations

import ast
import types
import unicodedata  # noqa: F401 - the parser imports it lazily for non-ASCII identifiers; in the worker's
#                     empty root nothing can be imported any more, so it is loaded with this module

from ossgym.sandbox.result import Violation
from ossgym.sandbox.task import SandboxTask

# Attributes that lead to frames, code objects and the interpreter: the whole class, not a list of cases:
# every public member of the frame, traceback, code, generator, coroutine and async-generator types (read
# from the running interpreter, so a new version's members are covered too) except the generator protocol
# methods, plus RestrictedPython's list.
_PROTOCOL_METHODS = frozenset({"send", "throw", "close", "clear", "replace", "aclose", "asend", "athrow"})
FRAME_ATTRIBUTES = frozenset({
    "tb_frame", "tb_next", "f_back", "f_builtins", "f_code", "f_generator", "f_globals", "f_locals",
    "f_trace", "co_code", "gi_frame", "gi_code", "gi_yieldfrom", "cr_await", "cr_frame", "cr_code",
    "cr_origin", "ag_await", "ag_frame", "ag_code",
} | {a for t in (types.FrameType, types.TracebackType, types.CodeType, types.GeneratorType, types.CoroutineType,
                 types.AsyncGeneratorType) for a in dir(t) if not a.startswith("_")} - _PROTOCOL_METHODS)
# Attributes that hand out a class's bases: Exception.mro() reaches BaseException (the name is forbidden),
# and an 'except' clause on it would swallow the worker's timer interrupt.
HIERARCHY_ATTRIBUTES = frozenset({"mro"})

FORBIDDEN_NAMES = {
    "eval": "eval() is not allowed",
    "exec": "exec() is not allowed",
    "compile": "compile() is not allowed",
    "open": "open() is not allowed: the code may not touch files",
    "globals": "globals() is not allowed",
    "locals": "locals() is not allowed",
    "vars": "vars() is not allowed",
    "dir": "dir() is not allowed",
    "breakpoint": "breakpoint() is not allowed",
    "input": "input() is not allowed: there is no input",
    "setattr": "setattr() is not allowed: assign attributes directly",
    "delattr": "delattr() is not allowed",
    "exit": "exit() is not allowed: return a value instead",
    "quit": "quit() is not allowed: return a value instead",
    "help": "help() is not allowed",
    "memoryview": "memoryview is not allowed",
    "BaseException": "BaseException may not be used: catch Exception or a specific error instead",
    "SystemExit": "SystemExit may not be used: return a value instead",
    "KeyboardInterrupt": "KeyboardInterrupt may not be used",
    "GeneratorExit": "GeneratorExit may not be used",
    "printed": "'printed' is reserved",
    "id": "id() is not available: object addresses differ between runs (compare with 'is' instead)",
}
for _m in ("sys", "os", "gc", "inspect", "ctypes", "signal", "threading", "subprocess", "socket",
           "importlib", "builtins", "traceback", "types", "weakref", "atexit", "resource"):
    FORBIDDEN_NAMES[_m] = f"'{_m}' is not available: no access to the interpreter or the OS"


def _name_problem(name: str) -> str | None:
    """Names: the code's own '_x' names are fine; dunders and the sandbox's '_x_' guard names are not."""
    if name.startswith("__"):
        return f"'{name}': dunder names are not allowed"
    if name.startswith("_") and name.endswith("_") and name != "_":
        return f"'{name}': names that start and end with '_' are reserved (rename it)"
    return FORBIDDEN_NAMES.get(name)


def _attr_problem(attr: str) -> str | None:
    if attr.startswith("_"):
        return f"'.{attr}': attributes starting with '_' (including dunders) are not allowed"
    if attr in FRAME_ATTRIBUTES:
        return f"'.{attr}': frame, code and generator internals are not allowed"
    if attr in HIERARCHY_ATTRIBUTES:
        return f"'.{attr}': class hierarchies are not available (catch Exception or a specific error)"
    return None


class _Checker(ast.NodeVisitor):
    def __init__(self, task: SandboxTask) -> None:
        self.task = task
        self.violations: list[Violation] = []
        self._direct_calls: set[int] = set()

    def add(self, node: ast.AST, message: str) -> None:
        self.violations.append(Violation(getattr(node, "lineno", 1), getattr(node, "col_offset", 0), message))

    # --- top level -------------------------------------------------------------------------------------
    def check_module(self, tree: ast.Module) -> None:
        entry = self.task.entrypoint
        found = 0
        for i, stmt in enumerate(tree.body):
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            if i == 0 and isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                    and isinstance(stmt.value.value, str):
                continue
            if isinstance(stmt, ast.FunctionDef) and stmt.name == entry:
                found += 1
                if found > 1:
                    self.add(stmt, f"'{entry}' is defined more than once; define it exactly once")
                if stmt.decorator_list:
                    self.add(stmt, f"'{entry}' may not have decorators")
                continue
            what = f"function '{stmt.name}'" if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else type(stmt).__name__.lower()
            self.add(stmt, f"only imports and the function '{entry}' may appear at the top level, found a "
                           f"{what}; put helpers inside '{entry}'")
        if not found:
            self.add(tree, f"define a top-level function named '{entry}'")
        self.visit(tree)

    # --- imports ---------------------------------------------------------------------------------------
    def _check_module_name(self, node: ast.AST, name: str) -> None:
        allowed = self.task.allowed_imports
        if name not in allowed:
            self.add(node, f"import of '{name}' is not allowed; allowed modules: {', '.join(sorted(allowed))}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module_name(node, alias.name)
            if alias.asname:
                self._check_binding(node, alias.asname)
            elif "." in alias.name:
                self.add(node, f"'import {alias.name}' binds '{alias.name.split('.')[0]}'; use 'import ... as'")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            self.add(node, "relative imports are not allowed")
            return
        self._check_module_name(node, node.module or "")
        for alias in node.names:
            if alias.name == "*":
                self.add(node, "'from ... import *' is not allowed; import the names you use")
                continue
            problem = _attr_problem(alias.name) or _name_problem(alias.name)
            if problem:
                self.add(node, problem)
            if alias.asname:
                self._check_binding(node, alias.asname)

    # --- names and attributes --------------------------------------------------------------------------
    def _check_binding(self, node: ast.AST, name: str | None) -> None:
        if name is not None:
            problem = _name_problem(name)
            if problem:
                self.add(node, problem)

    def visit_Name(self, node: ast.Name) -> None:
        self._check_binding(node, node.id)
        if node.id in ("getattr", "hasattr") and id(node) not in self._direct_calls:
            self.add(node, f"{node.id} may only be called directly, with a literal attribute name")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        problem = _attr_problem(node.attr)
        if problem:
            self.add(node, problem)
        self.generic_visit(node)

    def visit_arg(self, node: ast.arg) -> None:
        self._check_binding(node, node.arg)
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        problem = _name_problem(node.arg) if node.arg is not None else None
        if problem:
            self.add(node, f"keyword argument {problem}")
        self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._check_binding(node, node.name)
        self.generic_visit(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._check_binding(node, node.name)
        if node.keywords:
            self.add(node, "class keywords (metaclass=...) are not allowed")
        self.generic_visit(node)

    def visit_Global(self, node: ast.Global) -> None:
        for name in node.names:
            self._check_binding(node, name)

    visit_Nonlocal = visit_Global  # type: ignore[assignment]

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("getattr", "hasattr"):
            self._direct_calls.add(id(func))
            name = node.args[1] if len(node.args) >= 2 else None
            if not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                self.add(node, f"{func.id}() needs a literal attribute name (a string constant)")
            else:
                problem = _attr_problem(name.value)
                if problem:
                    self.add(node, problem)
        self.generic_visit(node)

    # --- control flow that could swallow the sandbox's timeout -----------------------------------------
    def visit_ExceptHandler(self, node: ast.ExceptHandler) -> None:
        if node.type is None:
            self.add(node, "bare 'except:' is not allowed (it would swallow the time limit); "
                           "catch Exception or a specific error")
        self._check_binding(node, node.name)
        self.generic_visit(node)

    def visit_Try(self, node: ast.Try) -> None:
        for stmt in node.finalbody:
            for sub in _walk_same_scope(stmt, loop_depth=0):
                self.add(sub, f"'{type(sub).__name__.lower()}' inside 'finally' is not allowed "
                              "(it would swallow errors and the time limit)")
        self.generic_visit(node)

    def visit_Match(self, node: ast.AST) -> None:
        self.add(node, "'match' statements are not allowed; use if/elif")
        self.generic_visit(node)

    def visit_TryStar(self, node: ast.AST) -> None:
        self.add(node, "'except*' is not allowed")
        self.generic_visit(node)

    def _no_async(self, node: ast.AST) -> None:
        self.add(node, "async code is not allowed")
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_Await = visit_AsyncFor = visit_AsyncWith = _no_async  # type: ignore[assignment]


def _walk_same_scope(node: ast.AST, loop_depth: int):  # noqa: ANN202 - small generator helper
    """Yield return/break/continue statements that would leave a ``finally`` block."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
        return
    if isinstance(node, ast.Return) or (isinstance(node, (ast.Break, ast.Continue)) and loop_depth == 0):
        yield node
    inner = loop_depth + 1 if isinstance(node, (ast.For, ast.While, ast.AsyncFor)) else loop_depth
    for child in ast.iter_child_nodes(node):
        # a loop's else-clause is outside the loop for break/continue; rare enough to treat as inside
        yield from _walk_same_scope(child, inner)


def analyze(source: str, task: SandboxTask) -> tuple[ast.Module | None, list[Violation]]:
    """Parse and check ``source``; return the tree (None on a syntax error) and every violation."""
    if type(source) is not str:
        return None, [Violation(1, 0, "the source must be a str")]
    if len(source.encode("utf-8", "surrogatepass")) > task.max_source_bytes:
        return None, [Violation(1, 0, f"the source is longer than {task.max_source_bytes} bytes")]
    try:
        tree = ast.parse(source, "<untrusted>", "exec")
    except SyntaxError as e:
        return None, [Violation(e.lineno or 1, (e.offset or 1) - 1, f"syntax error: {e.msg}")]
    except (ValueError, RecursionError, MemoryError) as e:
        return None, [Violation(1, 0, f"syntax error: {type(e).__name__}: {e}")]
    except Exception as e:  # noqa: BLE001 - whatever the parser raises on odd input is a typed result
        return None, [Violation(1, 0, f"syntax error: the code could not be parsed ({type(e).__name__})")]
    checker = _Checker(task)
    try:
        checker.check_module(tree)
    except RecursionError:
        checker.add(tree, "the code is nested too deeply")
    except Exception as e:  # noqa: BLE001 - a checker bug on odd input refuses the code, never crashes
        checker.add(tree, f"the code could not be checked ({type(e).__name__})")
    return tree, checker.violations


def check_policy(source: str, task: SandboxTask) -> list[Violation]:
    """Every static-policy violation of ``source`` for ``task`` (empty list: the code may run)."""
    return analyze(source, task)[1]
