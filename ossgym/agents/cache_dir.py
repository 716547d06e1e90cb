"""The folder where the agent keeps files it builds at first use (the gpt-oss tokenizer): never in git."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "OSSGYM_CACHE"


def cache_root() -> Path:
    """The ossgym cache folder: `$OSSGYM_CACHE` if set, else `~/.cache/ossgym`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ossgym"
