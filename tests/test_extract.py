"""Finding the answer code in completions: Harmony channels, fenced blocks, feedback."""

import ast

import pytest

from ossgym.envs.code.extract import extract_code, find_code_blocks

GOOD = "def strategy(board):\n    return 'W'\n"
OTHER = "def strategy(board):\n    return 'S'\n"


def raw(analysis: str, final: str | None, terminated: bool = True) -> str:
    text = f"<|channel|>analysis<|message|>{analysis}<|end|>"
    if final is not None:
        text += f"<|start|>assistant<|channel|>final<|message|>{final}" + ("<|return|>" if terminated else "")
    return text


def decoded(analysis: str, final: str) -> str:
    return f"analysis{analysis}assistantfinal{final}"


def fence(code: str, tag: str = "python") -> str:
    return f"```{tag}\n{code}```\n"


def test_raw_harmony_final_block():
    ex = extract_code(raw("I will go up.", "Here:\n" + fence(GOOD)), "strategy")
    assert ex.ok and ex.source == GOOD and ex.status == "fenced" and ex.harmony_format == "raw"
    assert ex.blocks_found == 1 and ex.syntax_error is None


def test_decoded_harmony_final_block():
    ex = extract_code(decoded("Think.", fence(GOOD)), "strategy")
    assert ex.source == GOOD and ex.harmony_format == "decoded"


def test_code_only_in_analysis_is_ignored():
    ex = extract_code(raw("Draft:\n" + fence(GOOD), "I have explained the strategy above."), "strategy")
    assert not ex.ok and ex.status == "no_code"
    assert "reasoning" in ex.feedback and "```python" in ex.feedback


def test_analysis_code_ignored_final_code_used():
    ex = extract_code(raw(fence(OTHER), fence(GOOD)), "strategy")
    assert ex.source == GOOD


def test_cut_off_in_analysis_reports_no_final():
    ex = extract_code("<|channel|>analysis<|message|>" + fence(GOOD), "strategy")
    assert ex.status == "no_final" and ex.source is None
    assert "cut off" in ex.feedback and "only in the reasoning" in ex.feedback


def test_truncated_final_with_unterminated_fence():
    ex = extract_code(raw("ok", "```python\n" + GOOD, terminated=False), "strategy")
    assert ex.source == GOOD
    assert "never closed" in ex.feedback


def test_last_defining_block_wins():
    text = fence(OTHER) + "Improved:\n" + fence(GOOD) + "Usage:\n" + fence("print(strategy(b))\n")
    ex = extract_code(text, "strategy")
    assert ex.source == GOOD and ex.blocks_found == 3


def test_py_and_untagged_and_tilde_fences():
    for tag in ("py", "", "Python", "python3"):
        assert extract_code(fence(GOOD, tag), "strategy").source == GOOD, tag
    assert extract_code("~~~python\n" + GOOD + "~~~\n", "strategy").source == GOOD


def test_other_tags_are_not_code():
    ex = extract_code(fence(GOOD, "text"), "strategy")
    assert not ex.ok and ex.status == "no_code" and "'text'" in ex.feedback


def test_longer_fence_contains_shorter():
    code = 'def strategy(board):\n    s = """\n```\n"""\n    return "W"\n'
    ex = extract_code("````python\n" + code + "````\n", "strategy")
    assert ex.source == code


def test_unfenced_whole_answer_that_parses():
    ex = extract_code(GOOD, "strategy")
    assert ex.status == "unfenced" and ex.source == GOOD


def test_unfenced_mixed_with_prose_is_rejected():
    ex = extract_code("Here is my code:\n" + GOOD + "It moves up.", "strategy")
    assert not ex.ok and "outside a code block" in ex.feedback


def test_missing_code():
    ex = extract_code(raw("hmm", "I would move up always."), "strategy")
    assert not ex.ok and ex.status == "no_code"
    assert "def strategy(...):" in ex.feedback


def test_empty_answer():
    for text in ("", "   \n", raw("x", "")):
        ex = extract_code(text, "strategy")
        assert ex.status == "empty" and not ex.ok


def test_wrong_function_name_lists_what_was_found():
    ex = extract_code(fence("def solve(board):\n    return 'W'\n\ndef helper():\n    pass\n"), "strategy")
    assert ex.status == "no_function" and not ex.ok
    assert "`solve`" in ex.feedback and "`helper`" in ex.feedback and "`strategy`" in ex.feedback


def test_nested_or_method_definition_is_not_top_level():
    code = "class S:\n    def strategy(self, board):\n        return 'W'\n"
    assert extract_code(fence(code), "strategy").status == "no_function"
    code2 = "def outer():\n    def strategy(board):\n        return 'W'\n    return strategy\n"
    assert extract_code(fence(code2), "strategy").status == "no_function"


def test_prefix_name_is_not_the_function():
    assert not extract_code(fence("def strategy2(board):\n    return 'W'\n"), "strategy").ok


def test_syntax_error_block_still_returned_with_line():
    code = "def strategy(board):\n    return 'W'\n  x = (\n"
    ex = extract_code(fence(code), "strategy")
    assert ex.ok and ex.source == code and ex.syntax_error.startswith("line ")
    assert "does not parse" in ex.feedback


def test_syntax_error_without_def_at_column_zero_is_not_chosen():
    ex = extract_code(fence("print(1\n") + fence("if x:\n    def strategy(board) return\n"), "strategy")
    assert ex.status == "no_function"


def test_last_block_chosen_even_if_earlier_one_was_fine():
    broken = "def strategy(board):\n    return 'W'\n)\n"
    ex = extract_code(fence(GOOD) + fence(broken), "strategy")
    assert ex.source == broken and ex.syntax_error is not None


def test_indented_fence_in_list_is_dedented():
    text = "1. Code:\n   ```python\n   def strategy(board):\n       return 'W'\n   ```\n"
    ex = extract_code(text, "strategy")
    assert ex.ok and ast.parse(ex.source) and ex.source.startswith("def strategy")


def test_crlf_and_bom():
    text = "\ufeff```python\r\ndef strategy(board):\r\n    return 'W'\r\n```\r\n"
    assert extract_code(text, "strategy").source == GOOD


def test_unicode_source_and_nfkc_identifier():
    code = "def strategy(board):\n    # 向上 🙂\n    return 'W'  # ü\n"
    assert extract_code(fence(code), "strategy").source == code
    # Python normalises identifiers with NFKC: a fullwidth 'ｓ' defines the same name at run time.
    code2 = "def ｓtrategy(board):\n    return 'W'\n"
    assert extract_code(fence(code2), "strategy").ok


def test_inline_triple_backticks_are_not_fences():
    ex = extract_code("Use ```python def strategy(b): pass``` like that", "strategy")
    assert not ex.ok


def test_matmul_entrypoint():
    code = "def matmul(A, B):\n    return [[sum(a * b for a, b in zip(r, c)) for c in zip(*B)] for r in A]\n"
    ex = extract_code(decoded("fast", "```py\n" + code + "```"), "matmul")
    assert ex.source == code


def test_find_code_blocks_reports_tags_and_closure():
    assert find_code_blocks("```Python\na\n```\n```bash\nls\n```\n```\nopen") == [
        ("python", "a\n", True),
        ("bash", "ls\n", True),
        ("", "open\n", False),
    ]


@pytest.mark.parametrize("text", ["<|start|>", "```", "```python", "<|message|>```python\n", "final", "assistantfinal"])
def test_degenerate_inputs_never_raise(text):
    ex = extract_code(text, "strategy")
    assert ex.source is None and ex.feedback


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_prose = st.text(st.characters(blacklist_characters="`<|~", blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=120, deadline=None)
@given(before=_prose, after=_prose, analysis=_prose, style=st.sampled_from(["raw", "decoded", "plain"]))
def test_code_in_final_fence_is_always_found(before, after, analysis, style):
    final = f"{before}\n```python\n{GOOD}```\n{after}"
    text = {"raw": raw(analysis, final), "decoded": decoded(analysis, final), "plain": final}[style]
    assert extract_code(text, "strategy").source == GOOD


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=120))
def test_arbitrary_text_never_raises(text):
    ex = extract_code(text, "strategy")
    assert ex.feedback and (ex.source is None or "strategy" in ex.source)


@pytest.mark.parametrize("expr", ["1" + "+1" * 5000, "-" * 20000 + "1", "a" + ".b" * 5000, "f" + "()" * 5000])
def test_too_deeply_nested_code_is_a_syntax_error_not_a_crash(expr):
    # ast.parse raises RecursionError/MemoryError (not SyntaxError) on such code; a degenerate completion
    # that repeats "+1" a few thousand times must still get an Extraction, never an exception.
    source = f"def strategy(board):\n    return {expr}\n"
    ex = extract_code(fence(source), "strategy")
    assert ex.ok and ex.source == source and ex.syntax_error is not None
    unfenced = extract_code(source, "strategy")
    assert not unfenced.ok and unfenced.status == "no_code"


@pytest.mark.timeout(60)
def test_long_runs_of_blank_lines_are_linear():
    # The "def appears elsewhere" hints once scanned every run of blank lines from each of its line starts:
    # a completion of 400k newlines took minutes in the caller's process (not the sandbox).
    blank = "\n" * 45_000  # under the source cap; quadratic scanning would still take minutes
    ex = extract_code(blank + "Some prose." + blank + "def strategy(board): pass", "strategy")
    assert ex.status == "no_code" and "outside a code block" in ex.feedback
    ex = extract_code(raw(blank + "  def strategy(board):" + blank, None), "strategy")
    assert ex.status == "no_final" and "only in the reasoning" in ex.feedback


# --- Harmony words inside code are code ---------------------------------------------------------------------
WORDY = "def strategy(board):\n    # assistantfinal: the <|channel|>final answer, then <|return|>\n    return 'W'\n"


@pytest.mark.parametrize("wrap", ["plain", "raw", "decoded"])
def test_harmony_words_in_code_comments_do_not_hide_the_code(wrap):
    answer = "Here is my strategy:\n" + fence(WORDY)
    text = {"plain": answer, "raw": raw("Think.", answer), "decoded": decoded("Think.", answer)}[wrap]
    ex = extract_code(text, "strategy")
    assert ex.ok and ex.source == WORDY, (ex.status, ex.feedback)


def test_header_token_inside_content_is_text():
    from ossgym.harmony import parse_harmony

    p = parse_harmony(raw("a", "x = 1  # <|channel|>analysis<|message|>y"))
    assert p.final == "x = 1  # <|channel|>analysis<|message|>y"


def test_harmony_words_in_a_string_literal():
    code = 'def strategy(board):\n    s = "assistantfinal"\n    return "W"\n'
    ex = extract_code(decoded("ok", fence(code)), "strategy")
    assert ex.source == code


# --- caps before parsing ------------------------------------------------------------------------------------
def test_huge_completion_is_refused_before_parsing(monkeypatch):
    import ossgym.envs.code.extract as ex_mod

    def boom(*a, **k):
        raise AssertionError("parsed a completion over the cap")

    monkeypatch.setattr(ex_mod, "parse_harmony", boom)
    monkeypatch.setattr(ex_mod.ast, "parse", boom)
    big = fence(GOOD) * 1 + "x" * (ex_mod.MAX_COMPLETION_BYTES + 1)
    ex = extract_code(big, "strategy")
    assert ex.status == "too_large" and ex.cap == "max_completion_bytes" and ex.source is None
    # multi-byte characters count as bytes
    ex = extract_code("\u00e9" * (ex_mod.MAX_COMPLETION_BYTES // 2 + 1), "strategy")
    assert ex.status == "too_large" and ex.cap == "max_completion_bytes"


def test_too_many_blocks_are_refused_before_any_is_parsed(monkeypatch):
    import ossgym.envs.code.extract as ex_mod

    calls = []
    monkeypatch.setattr(ex_mod, "_defines", lambda *a: calls.append(1) or (False, None, []))
    ex = extract_code(fence(GOOD) * (ex_mod.MAX_BLOCKS + 1), "strategy")
    assert ex.status == "too_large" and ex.cap == "max_blocks" and not calls


def test_oversized_block_is_not_parsed(monkeypatch):
    import ossgym.envs.code.extract as ex_mod

    monkeypatch.setattr(ex_mod.ast, "parse", lambda *a, **k: (_ for _ in ()).throw(AssertionError("parsed")))
    code = GOOD + "# " + "y" * 2000 + "\n"
    ex = extract_code(fence(code), "strategy", max_source_bytes=1000)
    assert ex.status == "too_large" and ex.cap == "max_source_bytes"


def test_caps_are_parameters():
    assert extract_code(fence(GOOD), "strategy", max_completion_bytes=10).cap == "max_completion_bytes"
    assert extract_code(fence(GOOD) * 3, "strategy", max_blocks=2).cap == "max_blocks"
    assert extract_code(fence(GOOD) * 2, "strategy", max_blocks=2).ok


def test_non_str_completion_is_typed():
    assert extract_code(b"def strategy(b): pass", "strategy").status == "invalid"  # type: ignore[arg-type]
