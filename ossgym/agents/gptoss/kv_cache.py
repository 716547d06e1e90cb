"""Static, preallocated KV cache: full-attention layers hold every column, sliding layers a ring of `window` slots.

Columns are positions in the left-padded batch (all rows share them); row b's real tokens start at column pad[b].
"""

from __future__ import annotations

import torch

SLIDING = "sliding_attention"


class KVCache:
    """Keys and values of every layer, allocated once for `max_batch_size` rows of `max_seq_len` columns."""

    def __init__(
        self,
        layer_types: list[str],
        max_batch_size: int,
        max_seq_len: int,
        window: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.layer_types = list(layer_types)
        self.window = window
        self.max_seq_len = max_seq_len
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for kind in self.layer_types:
            slots = window if kind == SLIDING else max_seq_len
            shape = (max_batch_size, kv_heads, slots, head_dim)
            self.k.append(torch.zeros(shape, dtype=dtype, device=device))
            self.v.append(torch.zeros(shape, dtype=dtype, device=device))

    def is_sliding(self, layer: int) -> bool:
        """Whether `layer` is a sliding-window (ring) layer."""
        return self.layer_types[layer] == SLIDING

    def nbytes(self) -> int:
        """Bytes held by the cache."""
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def write_prefill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the keys/values of columns 0..T-1 (k, v: [B, kv_heads, T, head_dim])."""
        batch, _, length, _ = k.shape
        if not self.is_sliding(layer):
            self.k[layer][:batch, :, :length] = k
            self.v[layer][:batch, :, :length] = v
            return
        cols = torch.arange(max(0, length - self.window), length, device=k.device)
        slots = cols % self.window
        self.k[layer][:batch].index_copy_(2, slots, k.index_select(2, cols))
        self.v[layer][:batch].index_copy_(2, slots, v.index_select(2, cols))

    def write_decode(self, layer: int, k: torch.Tensor, v: torch.Tensor, col: torch.Tensor) -> None:
        """Store one column (k, v: [B, kv_heads, 1, head_dim]; col: long tensor of shape [1], on the device)."""
        batch = k.shape[0]
        slot = col % self.window if self.is_sliding(layer) else col
        self.k[layer][:batch].index_copy_(2, slot, k)
        self.v[layer][:batch].index_copy_(2, slot, v)

    def view(self, layer: int, batch: int, span: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `batch` rows of a layer's keys and values (full layers: only the first `span` columns)."""
        k, v = self.k[layer][:batch], self.v[layer][:batch]
        if span is not None and not self.is_sliding(layer):
            k, v = k[:, :, :span], v[:, :, :span]
        return k, v

    def slot_columns(self, layer: int, col: torch.Tensor, span: int | None = None) -> torch.Tensor:
        """Column held by each slot of `view` once column `col` is written (negative: never written)."""
        if not self.is_sliding(layer):
            return torch.arange(span or self.max_seq_len, device=col.device)
        slots = torch.arange(self.window, device=col.device)
        return col - torch.remainder(col - slots, self.window)
