"""TRL's fused LM head on CPU: score only the completion positions, in tiles small enough to reuse memory.

TRL 1.16's ``add_fused_lm_head`` projects the hidden states through the LM head in vocabulary tiles and folds
each tile into log-probabilities without materialising the ``[positions, vocab]`` logits. On CUDA it scores
only the positions that have a label (the completion tokens); on every other device it scores every position,
prompt included (a fixed tile shape keeps Neuron from recompiling), in tiles of 32,768 vocabulary columns.
On CPU with eager kernels neither choice helps, and with gpt-oss's 201,088-row vocabulary they were most of a
small run's time: every tile is ``positions x 32,768`` fp32 (about 100 MB for 8 sequences of 100 tokens), each
of its half-dozen temporaries is a fresh ``mmap`` that the kernel zero-fills page by page, so the demo spent
more time in the kernel than in Python and PyTorch together (20 million page faults in 8 steps).

:func:`cpu_fused_lm_head` (used by :func:`ossgym.training.run.run_training` when it trains on CPU) makes the
CPU path score only the labelled positions and use ``tile_columns``-wide tiles, while it is active; the
result is the same log-probabilities and gradients (checked in tests/test_train.py). Measured on the 2-core
machine, one forward + backward of the head for 8 x (60 prompt + 32 completion) positions: 2.1 s user +
4.9 s system before, 0.6 s + 0.5 s after (BENCHMARKS.md, "make demo").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: vocabulary columns per tile: 4,096 keeps a tile of 256 positions at 4 MiB
TILE_COLUMNS = 4096


@contextlib.contextmanager
def cpu_fused_lm_head(tile_columns: int = TILE_COLUMNS) -> Iterator[bool]:
    """While active, TRL's fused LM head on CPU scores only labelled positions, ``tile_columns`` at a time.

    Yields whether the patch applies (False, with a warning, when the installed TRL lacks the two names it
    sets: ``trl.trainer.utils._use_triton`` and ``_CHUNKED_LOGPROB_CHUNK_SIZE``). Restores both on exit.
    """
    try:
        from trl.trainer import utils
    except ImportError:  # pragma: no cover - TRL is in the train extra, which this module is for
        yield False
        return
    use_triton = getattr(utils, "_use_triton", None)
    chunk = getattr(utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
    if not callable(use_triton) or not isinstance(chunk, int):
        logger.warning("this TRL's fused LM head is not the 1.16 one: CPU training scores every position")
        yield False
        return

    def compact(device) -> bool:  # in trl.trainer.utils this decides only "score labelled positions only"
        return device.type == "cpu" or use_triton(device)

    utils._use_triton, utils._CHUNKED_LOGPROB_CHUNK_SIZE = compact, tile_columns
    try:
        yield True
    finally:
        utils._use_triton, utils._CHUNKED_LOGPROB_CHUNK_SIZE = use_triton, chunk
