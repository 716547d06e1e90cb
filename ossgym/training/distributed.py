"""Data-parallel GRPO: one engine per rank, launched with ``accelerate launch`` or ``torchrun``.

``accelerate launch --num_processes N -m ossgym.cli train ...`` (or ``torchrun --nproc_per_node N -m ossgym.cli
train ...``) runs N copies of :func:`ossgym.training.run.run_training`. What each part does under N processes:

- **Batch.** ``group_size x prompts_per_step`` stays the *total* batch of one optimizer step; each rank takes
  ``total / N`` of it (:func:`grpo_overrides` sets ``per_device_train_batch_size``). TRL's ``RepeatSampler`` is
  seeded alike on every rank, so all ranks walk the same global batch and each takes its contiguous slice;
  a group may span ranks, and every copy of a prompt carries its dataset row's evaluation seed, so all
  completions of one group are scored against the same games/tests wherever they were sampled.
- **Generation.** Each rank samples its slice with its own fast engine over its own copy of the peft model.
  :func:`shard_rollout` cuts a rank's prompts into generation *shards* and seeds each from its global shard
  index (not the rank), so the sampled completions depend only on the run seed, the step and the shard size:
  one process given the same shard size (``OSSGYM_GENERATION_SHARD``) samples exactly what N processes do.
- **Rewards.** Each rank scores only its own completions (once each); TRL gathers the rewards of all ranks
  before normalising per group, then keeps its slice of the advantages.
- **Update.** TRL/accelerate wrap the model in DDP: the LoRA gradients are all-reduced (averaged) and every
  rank applies the same optimizer step; :class:`AdapterSyncCheck` gathers the trainable weights after each
  step and records (main process) the largest difference between ranks in ``distributed.json``.
- **Outputs.** ``log.jsonl``, the plot, the report and the exports are written by the main process only
  (:func:`main_only`); TRL's logged metrics are already averaged over ranks.

Launchers: ``torchrun`` works on CPU (gloo, what the test uses) and GPU (nccl). ``accelerate launch
--num_processes N`` on GPUs starts the ranks through torchrun (WORLD_SIZE/RANK set: the same code path);
``accelerate launch --cpu`` starts ONE process whatever ``--num_processes`` says (checked with accelerate's
1.x launcher), so on CPU use torchrun.

Models that do not fit one GPU (gpt-oss-120b, ~117B parameters; ~63 GB in MXFP4, ~234 GB in bf16). Plan:

1. *Training forward/backward*: FSDP2 (:func:`fsdp_wrap`, one unit per decoder layer, tested on CPU/gloo
   against one process) or accelerate's ``fsdp_version: 2`` (:func:`accelerate_fsdp_config`); each layer's
   weights are all-gathered for its forward and backward only, LoRA gradients reduce-scattered. On 4-8 H200
   bf16 120b fits sharded (~60/30 GB per GPU) with activation checkpointing.
2. *Generation* (not built yet): the fast engine calls the HF projection modules directly, so FSDP2's
   layer hooks do not fire. Either (a) the engine calls ``layer.unshard()`` before a layer and
   ``layer.reshard()`` after (a prefetch of layer i+1 overlaps the gather; decode cost = one all-gather of
   the model per generated token batch, acceptable only with large batches), or (b) better for MoE:
   expert parallelism over the MXFP4 experts (each rank keeps 128/N experts of every layer resident, the
   attention and router replicated; tokens are all-to-all dispatched to the rank of their top-4 experts),
   which needs no per-token weight gather and keeps 120b MXFP4 at ~16 GB per GPU on 4 GPUs.
3. *Export*: gather the LoRA weights (small) to rank 0 (``get_model_state_dict`` with full_state_dict) and
   save the adapter there; the merged export is done offline from the adapter.

``scripts/bench_multigpu.py`` measures data-parallel scaling for 20b and one FSDP2 training step of the 120b
shape (not run: no multi-GPU machine was lent when it was written).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ossgym.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from ossgym.training.config import GRPORunConfig

logger = logging.getLogger(__name__)

SHARD_ENV = "OSSGYM_GENERATION_SHARD"  # completions per generation shard (default: a rank's whole batch)
SYNC_FILE = "distributed.json"


def world_size() -> int:
    """Processes of this run (``WORLD_SIZE`` as torchrun and accelerate set it; 1 when not launched by them)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (``RANK``; 0 when not launched by torchrun/accelerate)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """Whether this process writes the run's logs and exports."""
    return rank() == 0


def per_rank_batch(config: "GRPORunConfig", num_processes: int | None = None) -> int:
    """Completions each rank samples and trains on per step: the total batch split evenly (ConfigError if not)."""
    n = world_size() if num_processes is None else num_processes
    total = config.group_size * config.prompts_per_step
    if total % n:
        raise ConfigError(
            "prompts_per_step",
            f"gives {total} completions per step (group_size {config.group_size} x prompts_per_step "
            f"{config.prompts_per_step}), which {n} processes cannot share evenly",
            f"Make group_size x prompts_per_step a multiple of the number of processes ({n}).",
        )
    return total // n


def grpo_overrides(config: "GRPORunConfig") -> dict[str, Any]:
    """GRPOConfig fields for this process count: each rank's share of the total batch; gloo on CPU."""
    n = world_size()
    if n == 1:
        return {}
    import torch

    overrides: dict[str, Any] = {"per_device_train_batch_size": per_rank_batch(config, n)}
    if not torch.cuda.is_available():
        overrides["ddp_backend"] = "gloo"
    return overrides


def shard_size(default: int) -> int:
    """Completions per generation shard: ``OSSGYM_GENERATION_SHARD`` if set, else ``default``."""
    value = os.environ.get(SHARD_ENV)
    if not value:
        return default
    size = int(value)
    if size < 1:
        raise ConfigError(SHARD_ENV, f"must be >= 1, got {size}", "Set it to a divisor of each rank's batch.")
    return size


class _ShardAccelerator:
    """The trainer's accelerator as a rollout shard sees it: ``process_index`` is the global shard index."""

    def __init__(self, accelerator: Any, shard_index: int):
        self._accelerator = accelerator
        self.process_index = shard_index

    def __getattr__(self, name: str) -> Any:
        return getattr(self._accelerator, name)


class _ShardTrainer:
    """The trainer as one rollout shard sees it (everything delegated but the accelerator's process index)."""

    def __init__(self, trainer: Any, shard_index: int):
        self._trainer = trainer
        self.accelerator = _ShardAccelerator(trainer.accelerator, shard_index)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)


def shard_rollout(rollout_func: Callable | None, size: int | None = None) -> Callable | None:
    """Wrap a rollout so its samples depend on the global shard index, not on the rank that draws them.

    A rank's ``prompts`` (``B`` of them, ranks in order) are cut into shards of ``size`` (default: ``B``, one
    shard per rank, which is what the unwrapped rollout does); shard ``k`` of rank ``r`` is sampled as the
    unwrapped rollout would on process ``r * B / size + k``. The outputs are concatenated in order.
    """
    if rollout_func is None:
        return None

    def sharded(prompts: list, trainer: Any) -> dict[str, list]:
        per_rank = len(prompts)
        step = shard_size(per_rank) if size is None else size
        if per_rank % step:
            raise ConfigError(SHARD_ENV, f"{step} does not divide a rank's {per_rank} prompts",
                              "Use a divisor of the per-rank batch.")
        shards = per_rank // step
        first = trainer.accelerator.process_index * shards
        out: dict[str, list] = {}
        for k in range(shards):
            part = rollout_func(prompts[k * step:(k + 1) * step], _ShardTrainer(trainer, first + k))
            for key, values in part.items():
                out.setdefault(key, []).extend(values)
        return out

    return sharded


def main_only(callback: Any) -> Any:
    """``callback`` on the main process; on the others the same object with its events turned off.

    Its other attributes (e.g. the run log's ``timings`` dict the step timers write to) stay usable.
    """
    if is_main():
        return callback
    from transformers import TrainerCallback

    for name in dir(TrainerCallback):
        if name.startswith("on_"):
            setattr(callback, name, lambda *args, **kwargs: None)
    return callback


def trainable_vector(model: "torch.nn.Module") -> "torch.Tensor":
    """The model's trainable parameters (the LoRA weights), flattened in name order, float32 on CPU."""
    import torch

    params = [p.detach().reshape(-1).float().cpu() for _, p in sorted(model.named_parameters()) if p.requires_grad]
    return torch.cat(params) if params else torch.zeros(0)


def make_adapter_sync_check(output_dir: Path, tolerance: float = 0.0):
    """A TrainerCallback that checks after every step that all ranks hold the same trainable weights.

    It all-gathers the flattened LoRA weights (small: the adapter only), and the main process appends
    ``{"step", "world_size", "max_abs_diff", "checksums"}`` to ``output_dir/distributed.json``; a difference
    above ``tolerance`` is logged as an error (the ranks have drifted apart, e.g. a non-DDP-wrapped update).
    """
    from transformers import TrainerCallback

    path = Path(output_dir) / SYNC_FILE

    class AdapterSyncCheck(TrainerCallback):
        def __init__(self) -> None:
            self.records: list[dict] = []

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path.write_text("[]\n")

        def on_step_end(self, args, state, control, model=None, **kwargs):
            import torch
            import torch.distributed as dist

            if model is None or not (dist.is_available() and dist.is_initialized()):
                return
            local = trainable_vector(model)
            gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, local.to(_collective_device()))
            gathered = [g.cpu() for g in gathered]
            diff = max((float((g - gathered[0]).abs().max()) if g.numel() else 0.0) for g in gathered)
            record = {"step": state.global_step, "world_size": len(gathered), "max_abs_diff": diff,
                      "checksums": [float(g.double().sum()) for g in gathered]}
            self.records.append(record)
            if diff > tolerance:
                logger.error("step %d: the ranks' LoRA weights differ by up to %g", state.global_step, diff)
            if state.is_world_process_zero:
                path.write_text(json.dumps(self.records, indent=1) + "\n")

    return AdapterSyncCheck()


def _collective_device() -> "torch.device":
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def callbacks(output_dir: Path) -> list:
    """The extra callbacks of a multi-process run (none for one process)."""
    return [make_adapter_sync_check(output_dir)] if world_size() > 1 else []


# ------------------------------------------------------------------------------------------------------
# Models that do not fit one GPU: FSDP over the decoder layers (gpt-oss-120b)
# ------------------------------------------------------------------------------------------------------


def fsdp_wrap_policy(model: "torch.nn.Module") -> Callable:
    """FSDP auto-wrap policy for gpt-oss: one FSDP unit per decoder layer (attention + MoE experts).

    Each layer's weights (bf16 or MXFP4 blocks and scales) are sharded across ranks and gathered for that
    layer's forward/backward only; the embeddings, final norm and LM head stay in the root unit. The LoRA
    weights live inside their layer's unit (``use_orig_params=True`` keeps peft's names and requires_grad).
    """
    import functools

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    layer_classes = {type(layer) for layer in _decoder_layers(model)}
    return functools.partial(transformer_auto_wrap_policy, transformer_layer_cls=layer_classes)


def _decoder_layers(model: "torch.nn.Module") -> list:
    from ossgym.agents.peft_utils import base_model

    base = base_model(model)
    inner = getattr(base, "model", base)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ConfigError("model", "has no .model.layers (not a gpt-oss causal LM)", "Pass a GptOssForCausalLM.")
    return list(layers)


def fsdp_wrap(model: "torch.nn.Module", device_type: str | None = None) -> "torch.nn.Module":
    """Shard ``model`` with FSDP2 (``fully_shard``): each decoder layer one unit, then the root (in place).

    The process group must be initialised; ``device_type`` (default: cuda when available, else cpu, which
    FSDP2 supports over gloo, as the CPU test uses) names the device mesh. Parameters become DTensors
    sharded on dim 0 across ranks; each layer's are all-gathered for its forward and backward only.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for layer in _decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def accelerate_fsdp_config(model: "torch.nn.Module") -> dict[str, Any]:
    """The ``GRPOConfig(fsdp=..., fsdp_config=...)`` fields for the same wrapping through accelerate."""
    names = sorted({type(layer).__name__ for layer in _decoder_layers(model)})
    return {"fsdp": "full_shard auto_wrap",
            "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": names, "reshard_after_forward": True,
                            "activation_checkpointing": True, "cpu_ram_efficient_loading": True}}
