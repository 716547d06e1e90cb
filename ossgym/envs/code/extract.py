"""Finding the answer code in a completion: gpt-oss Harmony channels, then fenced Python blocks.

Rules (in this order):

1. Only the answer counts. For Harmony output (raw special tokens or decoded text, see
   :mod:`ossgym.harmony`) that is the final channel; code written while reasoning (analysis channel) is
   ignored. Text without any Harmony marker is the answer as a whole.
2. Fenced blocks tagged ``python``, ``py``, ``python3`` or untagged (any case; ``` or ~~~ fences; a last
   fence left open runs to the end of the text) are candidates; blocks with another tag (``text``,
   ``bash``, ...) are not.
3. The chosen block is the LAST candidate that defines the required function at top level: checked with
   :mod:`ast` where the block parses, else by a line starting with ``def name(``. A chosen block that
   does not parse is still returned (with ``syntax_error`` set) so the sandbox reports the error with
   line numbers.
4. Without any candidate fence, the whole answer is accepted if it parses and defines the function.
5. Harmony words inside code are code: a header token inside a message's content (``# <|channel|>final``
   in a comment) is text (see :mod:`ossgym.harmony`); and when the first reading finds no code, the
   completion is read again with every Harmony marker inside a fenced block masked (``assistantfinal``,
   ``<|return|>`` in a comment or a string), so such a word can never make a good answer unreadable.
6. Sizes are capped before any parsing (the caller must not be stalled by a huge completion): a completion
   over ``max_completion_bytes``, more than ``max_blocks`` fenced blocks, or a chosen source over
   ``max_source_bytes`` ends in ``status="too_large"`` with ``cap`` naming the cap.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, replace

from ossgym.harmony import parse_harmony

__all__ = ["Extraction", "extract_code", "find_code_blocks", "CODE_TAGS", "MAX_COMPLETION_BYTES", "MAX_BLOCKS",
           "MAX_SOURCE_BYTES"]

#: Completions longer than this (UTF-8 bytes) are refused unread: about 128k tokens of gpt-oss text.
MAX_COMPLETION_BYTES = 512 * 1024
#: At most this many fenced blocks are looked at (counted before any of them is parsed).
MAX_BLOCKS = 64
#: A chosen source over this many bytes is refused (the sandbox's own default source cap).
MAX_SOURCE_BYTES = 100_000

CODE_TAGS = frozenset({"", "python", "py", "python3"})
_FENCE_OPEN = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")


@dataclass(frozen=True)
class Extraction:
    """What was found in a completion: the source to run (or None) and feedback a model can act on."""

    source: str | None
    status: str  # "fenced", "unfenced", "no_final", "no_code", "no_function", "empty", "too_large", "invalid"
    feedback: str
    blocks_found: int = 0  # candidate (python/untagged) fenced blocks in the answer
    syntax_error: str | None = None  # "line N: message" when the chosen source does not parse
    harmony_format: str = "plain"  # "raw", "decoded" or "plain" (see ossgym.harmony)
    cap: str | None = None  # with status "too_large": which cap ("max_completion_bytes", "max_blocks", ...)

    @property
    def ok(self) -> bool:
        """Whether a source defining the required function was found (it may still not compile)."""
        return self.source is not None


@dataclass(frozen=True)
class _Block:
    tag: str
    code: str
    closed: bool


def find_code_blocks(text: str) -> list[tuple[str, str, bool]]:
    """All fenced blocks of ``text`` as ``(tag, code, closed)`` in order (tag lower-cased, "" if none)."""
    return [(b.tag, b.code, b.closed) for b in _blocks(text)]


def _blocks(text: str, limit: int | None = None) -> list[_Block]:
    """Fenced blocks in order; with ``limit``, stop after that many (so a flood of fences costs little)."""
    lines = text.split("\n")
    blocks: list[_Block] = []
    i = 0
    while i < len(lines) and (limit is None or len(blocks) < limit):
        m = _FENCE_OPEN.match(lines[i])
        if m is None or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            i += 1
            continue
        fence, indent = m.group("fence"), len(m.group("indent"))
        info = m.group("info").strip()
        tag = info.split()[0].lower() if info else ""
        close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            line = lines[j]
            strip = len(line) - len(line.lstrip(" "))
            body.append(line[min(indent, strip) :])
            j += 1
        closed = j < len(lines)
        code = textwrap.dedent("\n".join(body)).rstrip("\n")
        blocks.append(_Block(tag, code + "\n" if code.strip() else "", closed))
        i = j + 1
    return blocks


def _defines(code: str, name: str) -> tuple[bool, str | None, list[str]]:
    """(defines name at top level, syntax error or None, top-level function names found)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:  # ValueError: null bytes
        line = getattr(exc, "lineno", None)
        msg = getattr(exc, "msg", None) or str(exc)
        if isinstance(exc, (RecursionError, MemoryError)):  # what ast.parse raises for very deep nesting
            msg = "the code is nested too deeply to parse"
        error = f"line {line}: {msg}" if line else msg
        found = re.findall(r"^def\s+(\w+)\s*\(", code, flags=re.MULTILINE)
        return name in found, error, found
    found = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    return name in found, None, found


def _mentions_def(text: str, name: str) -> bool:
    """Whether a line of ``text`` starts (after indentation) with ``def name(``.

    The indentation class excludes newlines: with ``\\s*`` a long run of blank lines was rescanned from
    every line start (quadratic: a whitespace-only completion of a few 100k characters took minutes).
    """
    return re.search(r"^[^\S\n]*def\s+" + re.escape(name) + r"\s*\(", text, re.MULTILINE) is not None


def extract_code(completion: str, entrypoint: str, *, max_completion_bytes: int = MAX_COMPLETION_BYTES,
                 max_blocks: int = MAX_BLOCKS, max_source_bytes: int = MAX_SOURCE_BYTES) -> Extraction:
    """Find the source that defines ``entrypoint`` in a completion's answer (see the module rules).

    The caps are checked before any parsing; exceeding one gives ``status="too_large"`` with ``cap`` set.
    """
    how = f"Write the complete function `def {entrypoint}(...):` at the top level of one ```python code block in your final answer."
    if type(completion) is not str:
        return Extraction(None, "invalid", f"The completion must be a str, got {type(completion).__name__}.")
    # len() is O(1) and a lower bound of the UTF-8 size; the encode below then costs at most 4x the cap.
    if len(completion) > max_completion_bytes or \
            len(completion.encode("utf-8", "surrogatepass")) > max_completion_bytes:
        return _too_large("max_completion_bytes", f"The completion is longer than {max_completion_bytes} bytes; "
                                                  f"it was not read. Answer more briefly. {how}")
    text = completion.replace("\r\n", "\n").lstrip("\ufeff")
    first = _extract(text, entrypoint, how, max_blocks, max_source_bytes)
    if (first.ok and first.syntax_error is None) or first.status == "too_large":
        return first
    masked = _mask_markers_in_fences(text)
    if masked is None:
        return first
    second = _extract(masked, entrypoint, how, max_blocks, max_source_bytes)
    if not second.ok or (first.ok and second.syntax_error is not None):
        return first
    return replace(second, source=_unmask(second.source))  # type: ignore[arg-type]


def _too_large(cap: str, feedback: str, blocks: int = 0, fmt: str = "plain") -> Extraction:
    return Extraction(None, "too_large", feedback, blocks, harmony_format=fmt, cap=cap)


_MASK = "\ue000"
# a fence opened right after a Harmony header on the same line ("assistantfinal```python")
_FENCE_AFTER_MARK = re.compile(r"(?:assistant(?:analysis|commentary|final)|<\|message\|>|\A(?:analysis|commentary|final))"
                               r"[ \t]*(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)$")
_MARKERS = (("assistant", "assist" + _MASK + "ant"), ("<|", "<" + _MASK + "|"))


def _mask_markers_in_fences(text: str) -> str | None:
    """``text`` with every Harmony marker inside a fenced block's lines made inert (None when there is
    nothing to mask, or the text already holds the mask character)."""
    if _MASK in text or not any(m in text for m, _ in _MARKERS):
        return None
    lines = text.split("\n")
    changed = False
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i]) or _FENCE_AFTER_MARK.search(lines[i])
        if m is None or (m.group("fence")[0] == "`" and "`" in m.group("info")):
            i += 1
            continue
        fence = m.group("fence")
        close = re.compile(r"^ {0,3}" + re.escape(fence[0]) + "{" + str(len(fence)) + r",}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            line = lines[j]
            for marker, inert in _MARKERS:
                if marker in line:
                    line = line.replace(marker, inert)
            if line is not lines[j]:
                lines[j], changed = line, True
            j += 1
        i = j + 1
    return "\n".join(lines) if changed else None


def _unmask(source: str) -> str:
    for marker, inert in _MARKERS:
        source = source.replace(inert, marker)
    return source


def _extract(text: str, entrypoint: str, how: str, max_blocks: int, max_source_bytes: int) -> Extraction:
    parsed = parse_harmony(text)
    answer = parsed.answer
    fmt = parsed.format
    if answer is None:
        in_analysis = _mentions_def(parsed.analysis, entrypoint)
        why = "The completion has reasoning but no final answer"
        if parsed.truncated:
            why += " (it was cut off before the final channel; reason more briefly)"
        if in_analysis:
            why += f"; `def {entrypoint}` appears only in the reasoning, which is ignored"
        return Extraction(None, "no_final", f"{why}. {how}", harmony_format=fmt)
    if not answer.strip():
        return Extraction(None, "empty", f"The answer is empty. {how}", harmony_format=fmt)

    all_blocks = _blocks(answer, max_blocks + 1)
    if len(all_blocks) > max_blocks:
        return _too_large("max_blocks", f"The answer has more than {max_blocks} code blocks; it was not read. "
                                        f"{how}", len(all_blocks), fmt)
    blocks = [b for b in all_blocks if b.tag in CODE_TAGS]
    other_tags = sorted({b.tag for b in all_blocks if b.tag not in CODE_TAGS})
    if blocks:
        all_found: list[str] = []
        for block in reversed(blocks):
            if len(block.code.encode("utf-8", "surrogatepass")) > max_source_bytes:
                if _mentions_def(block.code, entrypoint):
                    return _too_large("max_source_bytes", f"The code block that defines `{entrypoint}` is longer "
                                      f"than {max_source_bytes} bytes. Write shorter code.", len(blocks), fmt)
                continue  # never parsed
            ok, error, found = _defines(block.code, entrypoint)
            all_found.extend(n for n in found if n not in all_found)
            if ok:
                n = len(blocks)
                note = f"Found {n} Python code block{'s' if n > 1 else ''}; using the last one that defines `{entrypoint}`"
                if not block.closed:
                    note += " (its fence was never closed)"
                if error:
                    return Extraction(
                        block.code,
                        "fenced",
                        f"{note}, but it does not parse ({error}). Fix the syntax error.",
                        n,
                        error,
                        fmt,
                    )
                return Extraction(block.code, "fenced", note + ".", n, None, fmt)
        defined = f" (it defines {', '.join(f'`{x}`' for x in all_found)})" if all_found else ""
        n = len(blocks)
        return Extraction(
            None,
            "no_function",
            f"Found {n} Python code block{'s' if n > 1 else ''}, but none defines `{entrypoint}` at the top level{defined}. {how}",
            n,
            harmony_format=fmt,
        )

    if len(answer.encode("utf-8", "surrogatepass")) > max_source_bytes:
        if _mentions_def(answer, entrypoint):
            return _too_large("max_source_bytes", f"The answer is longer than {max_source_bytes} bytes and has no "
                              f"code block. {how}", 0, fmt)
        return Extraction(None, "no_code", f"No Python code block found in the final answer. {how}", 0, None, fmt)
    ok, error, _found = _defines(answer, entrypoint)
    if ok and error is None:
        return Extraction(
            textwrap.dedent(answer),
            "unfenced",
            f"No code block found; the whole answer is Python code that defines `{entrypoint}`, so it is used.",
            0,
            None,
            fmt,
        )
    hint = ""
    if other_tags:
        hint = f" Code blocks tagged {', '.join(repr(t) for t in other_tags)} are not Python blocks."
    elif _mentions_def(answer, entrypoint):
        hint = f" `def {entrypoint}` appears outside a code block, mixed with prose."
    elif _mentions_def(parsed.analysis, entrypoint):
        hint = f" `def {entrypoint}` appears only in the reasoning, which is ignored."
    return Extraction(None, "no_code", f"No Python code block found in the final answer.{hint} {how}", 0, None, fmt)
