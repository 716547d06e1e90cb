"""Embedding offload: gpt-oss's input embedding table (201,088 x 2,880 bf16, 1.08 GiB) kept in CPU memory.

Only the rows of the tokens being embedded travel to the GPU (Unsloth's ``offload_embeddings``). The table is a
plain attribute, not a parameter, so ``model.to(device)`` (the Trainer moves models) leaves it where it is and
``model.device`` stays the GPU; it is frozen (LoRA never trains it). The fast engine embeds outside its CUDA
graphs (engine.py ``_embed``), so decoding works with it too, at one host sync per step. Call
:func:`restore_embeddings` before saving: the table is not in the state dict while offloaded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ossgym.agents.peft_utils import base_model


class OffloadedEmbedding(nn.Module):
    """An ``nn.Embedding`` whose table stays on the CPU (pinned when CUDA is there); output on `device`."""

    def __init__(self, embed: nn.Embedding, device: torch.device) -> None:
        super().__init__()
        table = embed.weight.detach().to("cpu")
        self.table = table.pin_memory() if torch.cuda.is_available() else table
        self.out_device = torch.device(device)
        self.padding_idx = embed.padding_idx
        self.num_embeddings, self.embedding_dim = table.shape

    @property
    def weight(self) -> torch.Tensor:  # what code reading ``get_input_embeddings().weight`` expects (shape, dtype)
        return self.table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = F.embedding(ids.to("cpu"), self.table, self.padding_idx)
        return rows.to(self.out_device, non_blocking=True)


def offload_embeddings(model: nn.Module) -> nn.Module:
    """Move a GptOssForCausalLM's (peft-wrapped or not) input embedding table to the CPU. Returns the model."""
    inner = base_model(model).model
    embed = inner.embed_tokens
    if isinstance(embed, OffloadedEmbedding):
        return model
    device = embed.weight.device
    inner.embed_tokens = OffloadedEmbedding(embed, device)
    del embed
    return model


def restore_embeddings(model: nn.Module) -> nn.Module:
    """Undo :func:`offload_embeddings` (the table back on the compute device, as a frozen parameter)."""
    inner = base_model(model).model
    embed = inner.embed_tokens
    if not isinstance(embed, OffloadedEmbedding):
        return model
    restored = nn.Embedding(embed.num_embeddings, embed.embedding_dim, embed.padding_idx,
                            device="meta", dtype=embed.table.dtype)
    restored.weight = nn.Parameter(embed.table.to(embed.out_device), requires_grad=False)
    inner.embed_tokens = restored
    return model


__all__ = ["OffloadedEmbedding", "offload_embeddings", "restore_embeddings"]
