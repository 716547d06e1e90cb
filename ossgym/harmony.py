"""Parsing gpt-oss Harmony output into messages (analysis / commentary / final channels).

gpt-oss writes every message as ``<|start|>{header}<|message|>{content}<|end|>``, where the header is the
role, then ``<|channel|>`` and the channel, optionally a recipient (`` to=functions.x``, before or after the
channel) and a content type after ``<|constrain|>``. A completion stops with ``<|return|>`` (final answer
done) or ``<|call|>`` (tool call). A completion sampled after the prompt's ``<|start|>assistant`` begins
directly with ``<|channel|>``.

Three input forms are understood (``ParsedCompletion.format`` says which one was seen):

- ``"raw"``: text that still holds the special tokens (decoded with ``skip_special_tokens=False``), e.g.
  ``<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>answer<|return|>``.
  A missing terminal token (cut off by ``max_new_tokens``) leaves the last message open
  (``terminator=None``).
- ``"decoded"``: the same text with the special tokens stripped (``skip_special_tokens=True``, as TRL and
  most trainers decode): ``analysisthink assistantfinalanswer``. Message boundaries are recognised by a
  role+channel word (``assistantanalysis``, ``assistantcommentary``, ``assistantfinal``); at the very
  start of the text a bare channel word counts only when what follows it could not continue an English
  word (``finally`` or ``analysis of`` are not channel markers).
- ``"plain"``: no Harmony structure at all; the whole text is one message without channel.

``ParsedCompletion.answer`` is what a task should treat as the model's answer: the final channel when the
text is Harmony output, the whole text when it is not.

Raw parsing follows OpenAI's reference parser (``openai-harmony``; tests/test_harmony_reference.py checks it
token for token) where it matters for the answer:

- inside a message's content only ``<|end|>``, ``<|return|>`` and ``<|call|>`` (and ``<|endoftext|>``) end
  it; a stray ``<|channel|>``, ``<|message|>`` or ``<|constrain|>`` there is content, kept as its literal text;
- a completion cut inside a header (``...<|end|><|start|>assistant<|channel|>final``) drops that unfinished
  message (``ParsedCompletion.truncated`` still says it was cut), so an earlier complete final still counts;
- a header without ``<|start|>`` (the completion continues the prompt's ``<|start|>assistant``) has the role
  ``assistant``; other words before its ``<|channel|>`` are a recipient, as in the reference.

Two deliberate differences, both more forgiving of a model that forgot ``<|end|>``: ``<|start|>`` always begins
a new message (the reference reads it as content of the open one), and ``<|endoftext|>`` ends the open message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: the reasoning efforts gpt-oss's system message accepts (the Harmony chat template's ``reasoning_effort``)
REASONING_EFFORTS = ("low", "medium", "high")

__all__ = ["HarmonyMessage", "ParsedCompletion", "parse_harmony", "CHANNELS", "SPECIAL_TOKENS", "REASONING_EFFORTS"]

CHANNELS = ("analysis", "commentary", "final")
# Special tokens that structure a conversation (names as in the o200k_harmony encoding).
SPECIAL_TOKENS = ("start", "end", "message", "channel", "constrain", "return", "call", "endoftext")
_TERMINATORS = {"end": "end", "return": "return", "call": "call", "endoftext": "endoftext"}

_RAW_TOKEN = re.compile(r"<\|(" + "|".join(SPECIAL_TOKENS) + r")\|>")
_RECIPIENT = re.compile(r"(?:^|\s)to=(\S+)")
# Decoded form: "assistant" + channel, then an optional recipient and a constrain type ("json").
_DECODED_TAIL = r"(?P<channel>analysis|commentary|final)(?: to=(?P<recipient>[\w.\-]+))?(?: ?(?P<ctype>json)(?=[\s\[{\"]))?"
_DECODED_MARK = re.compile(r"assistant" + _DECODED_TAIL)
# At the very start a bare channel word counts only if it is not the beginning of an ordinary word/sentence.
_DECODED_START = re.compile(r"\A(?:assistant)?" + _DECODED_TAIL + r"(?=[^a-z ]| to=|\Z)")


@dataclass(frozen=True)
class HarmonyMessage:
    """One message of a Harmony transcript."""

    role: str | None  # "assistant", "user", "functions.get_weather", ...; None for stray text
    channel: str | None  # "analysis", "commentary", "final", another name, or None when there was none
    content: str
    recipient: str | None = None  # from "to=..." in the header
    content_type: str | None = None  # from "<|constrain|>json"
    terminator: str | None = None  # "end", "return", "call", "endoftext"; None when the text stopped first


@dataclass(frozen=True)
class ParsedCompletion:
    """A completion split into Harmony messages, with the channels a task needs."""

    messages: tuple[HarmonyMessage, ...]
    format: str  # "raw", "decoded" or "plain"
    cut_in_header: bool = False  # raw text that stopped inside a message header (that message is dropped)

    @property
    def is_harmony(self) -> bool:
        """Whether any Harmony structure (special tokens or decoded channel markers) was found."""
        return self.format != "plain"

    @property
    def final(self) -> str | None:
        """Content of the last assistant message in the final channel, or None when there is none."""
        for msg in reversed(self.messages):
            if msg.channel == "final" and msg.role in ("assistant", None):
                return msg.content
        return None

    @property
    def analysis(self) -> str:
        """All analysis-channel (reasoning) content, messages joined by a newline ("" when none)."""
        return "\n".join(m.content for m in self.messages if m.channel == "analysis")

    @property
    def truncated(self) -> bool:
        """Whether the last message has no terminal token (e.g. generation hit max_new_tokens)."""
        if self.format != "raw":
            return False
        return self.cut_in_header or (bool(self.messages) and self.messages[-1].terminator is None)

    @property
    def answer(self) -> str | None:
        """The text that counts as the answer: the final channel for Harmony output, else the whole text.

        Raw text whose messages carry no channel at all (e.g. ``code<|return|>`` sampled after a prompt that
        already opened the final channel) counts as its concatenated content.
        """
        if not self.is_harmony:
            return self.messages[0].content if self.messages else ""
        final = self.final
        if final is not None:
            return final
        if all(m.channel is None for m in self.messages):
            return "".join(m.content for m in self.messages)
        return None


def parse_harmony(text: str) -> ParsedCompletion:
    """Split a gpt-oss completion (raw special tokens, decoded without them, or plain) into messages."""
    if not isinstance(text, str):
        raise TypeError(f"parse_harmony expects a str, got {type(text).__name__}")
    if _RAW_TOKEN.search(text):
        messages, cut_in_header = _parse_raw(text)
        return ParsedCompletion(messages, "raw", cut_in_header)
    decoded = _parse_decoded(text)
    if decoded is not None:
        return ParsedCompletion(decoded, "decoded")
    return ParsedCompletion((HarmonyMessage(role=None, channel=None, content=text),), "plain")


class _Open:
    """A message being read: header parts, then content."""

    __slots__ = ("role_text", "channel_text", "ctype_text", "content", "phase", "implied")

    def __init__(self, implied: bool = False):
        self.role_text = self.channel_text = self.ctype_text = self.content = ""
        self.phase = "role"  # role -> channel -> constrain -> content
        self.implied = implied  # no <|start|> was seen: the completion continues "<|start|>assistant"

    def add(self, piece: str) -> None:
        if self.phase == "role":
            self.role_text += piece
        elif self.phase == "channel":
            self.channel_text += piece
        elif self.phase == "constrain":
            self.ctype_text += piece
        else:
            self.content += piece

    def close(self, terminator: str | None) -> HarmonyMessage | None:
        if self.phase == "role":
            # No header was ever finished: this is stray text (or content sampled after a header that the
            # prompt already held, e.g. "code<|return|>").
            if not self.role_text.strip():
                return None
            return HarmonyMessage(role=None, channel=None, content=self.role_text, terminator=terminator)
        role_words = self.role_text.split()
        if self.implied:
            # The prompt already opened "<|start|>assistant": a repeated role word is dropped and other words
            # before <|channel|> name a recipient (as openai-harmony reads them), never the role.
            role = "assistant"
            if role_words and role_words[0] == "assistant":
                role_words = role_words[1:]
        else:
            role = next((w for w in role_words if not w.startswith("to=")), None) or "assistant"
            if role_words and role_words[0] == role:
                role_words = role_words[1:]
        channel_words = self.channel_text.split()
        channel = next((w for w in channel_words if not w.startswith("to=")), None)
        m = _RECIPIENT.search(self.role_text) or _RECIPIENT.search(self.channel_text)
        recipient = m.group(1) if m else None
        if recipient is None and self.implied and role_words:
            recipient = role_words[0]
        ctype = self.ctype_text.strip() or None
        return HarmonyMessage(
            role=role,
            channel=channel,
            content=self.content,
            recipient=recipient,
            content_type=ctype,
            terminator=terminator,
        )


def _parse_raw(text: str) -> tuple[tuple[HarmonyMessage, ...], bool]:
    """Messages of raw Harmony text, and whether it stopped inside an unfinished header."""
    messages: list[HarmonyMessage] = []
    cur: _Open | None = _Open(implied=True)
    pos = 0

    def finish(terminator: str | None) -> None:
        nonlocal cur
        if cur is not None:
            msg = cur.close(terminator)
            if msg is not None:
                messages.append(msg)
        cur = None

    for m in _RAW_TOKEN.finditer(text):
        piece = text[pos : m.start()]
        pos = m.end()
        tok = m.group(1)
        if piece:
            if cur is None:
                if not piece.strip():
                    piece = ""  # whitespace between messages
                else:
                    cur = _Open()
            if piece:
                cur.add(piece)  # type: ignore[union-attr]
        if tok == "start":
            finish(None)
            cur = _Open()
        elif tok in _TERMINATORS:
            finish(_TERMINATORS[tok])
        elif cur is not None and cur.phase == "content":
            # Inside a message's content only <|start|> and the terminators have structure: a header token
            # there (e.g. "# <|channel|>final" in a code comment) is text of the message.
            cur.add(m.group(0))
        else:
            if cur is None:
                cur = _Open()
            if tok == "channel":
                cur.phase = "channel"
            elif tok == "constrain":
                cur.phase = "constrain"
            elif tok == "message":
                cur.phase = "content"
    tail = text[pos:]
    if tail and (cur is not None or tail.strip()):
        if cur is None:
            cur = _Open()
        cur.add(tail)
    cut_in_header = False
    if cur is not None and (cur.phase in ("channel", "constrain") or (cur.phase == "role" and not cur.implied)):
        # Stopped inside a header ("...<|start|>assistant<|channel|>fin"): no message was begun, drop it.
        cut_in_header = True
        cur = None
    finish(None)
    return tuple(messages), cut_in_header


def _parse_decoded(text: str) -> tuple[HarmonyMessage, ...] | None:
    start = _DECODED_START.match(text)
    marks = list(_DECODED_MARK.finditer(text, start.end() if start else 0))
    if start is None and not marks:
        return None
    messages: list[HarmonyMessage] = []
    heads = ([start] if start else []) + marks
    if start is None and marks[0].start() > 0:
        messages.append(HarmonyMessage(role=None, channel=None, content=text[: marks[0].start()]))
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        messages.append(
            HarmonyMessage(
                role="assistant",
                channel=head.group("channel"),
                content=text[head.end() : end],
                recipient=head.group("recipient"),
                content_type=head.group("ctype"),
            )
        )
    return tuple(messages)
