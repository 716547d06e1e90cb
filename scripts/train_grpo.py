"""GRPO-train a gpt-oss agent (LoRA) on an ossgym code env: the same as ``ossgym train`` (see ossgym/cli.py).

Usage: PYTHONPATH=$PWD python scripts/train_grpo.py --env GptOss2048-v0 --steps 20 --group-size 8 --output-dir runs/x
       (--help lists every option)
"""

from __future__ import annotations

import logging
import sys

from ossgym.cli import train_main as main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
