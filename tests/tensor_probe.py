"""TEST-ONLY probe of peak tensor sizes: which is the largest tensor an operation creates (memory-bound claims)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """Inside ``with LargestTensor() as probe:``, ``probe.largest`` is the most elements of any tensor an op returned."""

    largest = 0

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out
