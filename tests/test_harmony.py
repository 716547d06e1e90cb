"""Harmony parsing: raw special tokens, decoded text without them, and plain text."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ossgym.harmony import HarmonyMessage, parse_harmony

RAW = (
    "<|channel|>analysis<|message|>User asks: 2+2. Simple.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)


def test_raw_completion_after_prompt_start_assistant():
    p = parse_harmony(RAW)
    assert p.format == "raw" and p.is_harmony
    assert p.final == "2 + 2 = 4."
    assert p.analysis == "User asks: 2+2. Simple."
    assert [(m.role, m.channel, m.terminator) for m in p.messages] == [
        ("assistant", "analysis", "end"),
        ("assistant", "final", "return"),
    ]
    assert not p.truncated
    assert p.answer == "2 + 2 = 4."


def test_raw_with_leading_start_assistant_and_full_transcript():
    text = (
        "<|start|>system<|message|>You are ChatGPT.\nReasoning: low<|end|>"
        "<|start|>user<|message|>What is 2 + 2?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>think<|end|>"
        "<|start|>assistant<|channel|>final<|message|>four<|return|>"
    )
    p = parse_harmony(text)
    assert [m.role for m in p.messages] == ["system", "user", "assistant", "assistant"]
    assert p.messages[0].channel is None and p.messages[0].content.startswith("You are")
    assert p.final == "four" and p.analysis == "think"


def test_raw_missing_terminal_token_keeps_open_final():
    p = parse_harmony("<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>partial code")
    assert p.final == "partial code"
    assert p.truncated and p.messages[-1].terminator is None


def test_raw_cut_off_in_analysis_has_no_final():
    p = parse_harmony("<|channel|>analysis<|message|>still thinking about def strategy(board)")
    assert p.final is None and p.answer is None
    assert p.truncated and "still thinking" in p.analysis


def test_raw_missing_end_before_next_start():
    p = parse_harmony("<|channel|>analysis<|message|>a<|start|>assistant<|channel|>final<|message|>b<|return|>")
    assert p.analysis == "a" and p.final == "b"
    assert p.messages[0].terminator is None


def test_raw_constrain_and_recipient_tool_call():
    text = (
        "<|channel|>analysis<|message|>Need weather.<|end|>"
        '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"location":"SF"}<|call|>'
    )
    p = parse_harmony(text)
    call = p.messages[-1]
    assert call == HarmonyMessage(
        role="assistant",
        channel="commentary",
        content='{"location":"SF"}',
        recipient="functions.get_weather",
        content_type="json",
        terminator="call",
    )
    assert p.final is None


def test_raw_recipient_in_role_section_and_tool_message():
    text = (
        '<|start|>assistant to=functions.f<|channel|>commentary<|constrain|>json<|message|>{}<|call|>'
        '<|start|>functions.f to=assistant<|channel|>commentary<|message|>{"ok": true}<|end|>'
        "<|start|>assistant<|channel|>final<|message|>done<|return|>"
    )
    p = parse_harmony(text)
    assert p.messages[0].recipient == "functions.f" and p.messages[0].role == "assistant"
    assert p.messages[1].role == "functions.f" and p.messages[1].recipient == "assistant"
    assert p.final == "done"


def test_raw_content_after_prompt_that_opened_final_channel():
    # The prompt ended with "<|channel|>final<|message|>": the completion is bare content.
    p = parse_harmony("def strategy(board):\n    return 'W'\n<|return|>")
    assert p.is_harmony and p.final is None
    assert p.answer == "def strategy(board):\n    return 'W'\n"


def test_raw_last_final_wins_in_multi_turn_transcript():
    text = (
        "<|start|>assistant<|channel|>final<|message|>old<|end|>"
        "<|start|>user<|message|>again<|end|>"
        "<|start|>assistant<|channel|>final<|message|>new<|return|>"
    )
    assert parse_harmony(text).final == "new"


def test_raw_endoftext_terminates():
    p = parse_harmony("<|channel|>final<|message|>x<|endoftext|>")
    assert p.final == "x" and p.messages[0].terminator == "endoftext"


def test_decoded_stripped_tokens():
    p = parse_harmony("analysisUser asks: 2+2. Simple.assistantfinal2 + 2 = 4.")
    assert p.format == "decoded"
    assert p.analysis == "User asks: 2+2. Simple." and p.final == "2 + 2 = 4."


def test_decoded_with_leading_assistant_and_code_fence():
    p = parse_harmony("assistantanalysisThink.assistantfinal```python\ndef f():\n    pass\n```")
    assert p.final == "```python\ndef f():\n    pass\n```"


def test_decoded_final_only_starting_with_newline():
    assert parse_harmony("final\n```python\nx = 1\n```").final == "\n```python\nx = 1\n```"


def test_decoded_tool_call():
    p = parse_harmony('analysisNeed it.assistantcommentary to=functions.get_weather json{"location":"SF"}')
    call = p.messages[-1]
    assert (call.channel, call.recipient, call.content_type, call.content) == (
        "commentary",
        "functions.get_weather",
        "json",
        '{"location":"SF"}',
    )


def test_decoded_with_prompt_prefix_before_first_marker():
    p = parse_harmony("userWrite code.assistantanalysisok.assistantfinalanswer")
    assert p.messages[0].channel is None and p.messages[0].content == "userWrite code."
    assert p.final == "answer" and p.analysis == "ok."


@pytest.mark.parametrize(
    "text",
    [
        "finally, here is the code",
        "analysis of the board shows",
        "Here is my answer.\n```python\ndef f(): pass\n```",
        "",
        "commentary is cheap",
    ],
)
def test_plain_text_is_not_harmony(text):
    p = parse_harmony(text)
    assert p.format == "plain" and not p.is_harmony
    assert p.final is None and p.analysis == "" and p.answer == text


def test_unicode_content_survives():
    text = "<|channel|>analysis<|message|>Überlegung 🤔<|end|><|start|>assistant<|channel|>final<|message|>λ = '中文'<|return|>"
    p = parse_harmony(text)
    assert p.final == "λ = '中文'" and p.analysis == "Überlegung 🤔"


def test_rejects_non_str():
    with pytest.raises(TypeError):
        parse_harmony(b"<|channel|>final")  # type: ignore[arg-type]


_body = st.text(st.characters(blacklist_characters="<|", blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=150, deadline=None)
@given(analysis=_body, final=_body, terminated=st.booleans())
def test_raw_roundtrip_property(analysis, final, terminated):
    text = (
        f"<|channel|>analysis<|message|>{analysis}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{final}" + ("<|return|>" if terminated else "")
    )
    p = parse_harmony(text)
    assert p.analysis == analysis and p.final == final
    assert p.truncated is (not terminated)


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=80))
def test_never_raises_and_answer_is_str_or_none(text):
    p = parse_harmony(text)
    assert p.answer is None or isinstance(p.answer, str)
    assert p.format in ("raw", "decoded", "plain")


def test_cut_inside_a_second_final_header_keeps_the_first_final():
    p = parse_harmony("<|channel|>final<|message|>A<|end|><|start|>assistant<|channel|>final")
    assert p.final == "A" and p.answer == "A"
    assert p.truncated and p.cut_in_header and len(p.messages) == 1


def test_stray_channel_token_inside_content_is_literal_content():
    p = parse_harmony("<|channel|>final<|message|>abc<|channel|>final<|message|>def<|return|>")
    assert p.final == "abc<|channel|>final<|message|>def"
    assert [m.channel for m in p.messages] == ["final"]


def test_text_before_the_first_channel_is_a_recipient_not_the_role():
    p = parse_harmony("hello<|channel|>final<|message|>x<|return|>")
    assert p.messages[0].role == "assistant" and p.messages[0].recipient == "hello"
    assert p.final == "x"
    assert parse_harmony("assistant<|channel|>final<|message|>y<|return|>").messages[0].recipient is None
