"""MXFP4-resident gpt-oss: an experts module for Hugging Face's GptOss, checkpoint I/O in the official layout,
and split expert LoRA saved in peft's format.

``OssExperts`` replaces ``GptOssExperts`` inside a ``GptOssForCausalLM`` (same forward signature), holding its
weights dense or as MXFP4 blocks + scales and multiplying them only through the weights seam (weights.py), so
the HF forward used in training and the fast engine run the same code. Optional split LoRA per expert
(``add_expert_lora``) trains on top of frozen MXFP4 weights; ``expert_lora_state_dict`` writes it under peft's
``target_parameters`` names so stock peft loads it onto the bf16 model.

``load_gptoss`` streams a safetensors checkpoint (official MXFP4 layout or bf16) tensor by tensor onto the
device, so peak memory while loading stays near the final size; ``save_mxfp4`` writes the official layout.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from torch import nn

from ossgym.agents.gptoss.weights import (
    BLOCK,
    EXPERT_CHUNK_TOKENS,
    LoraFactors,
    Mxfp4,
    dequantize_mxfp4,
    experts_forward,
    quantize_experts,
    quantize_mxfp4,
)
from ossgym.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

PROJECTIONS = ("gate_up_proj", "down_proj")
EXPERT_FORMATS = ("mxfp4", "bf16")
MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def _shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) of each expert projection."""
    hidden, inter = int(config.hidden_size), int(config.intermediate_size)
    return {"gate_up_proj": (hidden, 2 * inter), "down_proj": (inter, hidden)}


class OssExperts(nn.Module):
    """gpt-oss experts with weights dense ([E, in, out] parameters, HF layout) or MXFP4 (uint8 buffers
    ``<proj>_blocks`` [E, out, in/32, 16] and ``<proj>_scales`` [E, out, in/32]); optional split LoRA."""

    def __init__(self, config, fmt: str = "mxfp4", device=None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if fmt not in EXPERT_FORMATS:
            raise ConfigError("experts", f"got {fmt!r}", f"use one of {EXPERT_FORMATS}")
        self.format = fmt
        self.num_experts = int(config.num_local_experts)
        self.alpha = float(getattr(config, "swiglu_alpha", 1.702))
        self.limit = float(getattr(config, "swiglu_limit", 7.0))  # older configs lack it (HF hard-codes 7.0)
        for name, (inp, out) in _shapes(config).items():
            if fmt == "mxfp4":
                if inp % BLOCK:
                    raise ConfigError("experts", f"{name} has {inp} inputs, not a multiple of {BLOCK}", "use bf16")
                self.register_buffer(f"{name}_blocks", torch.zeros(self.num_experts, out, inp // BLOCK, BLOCK // 2,
                                                                   dtype=torch.uint8, device=device))
                self.register_buffer(f"{name}_scales", torch.zeros(self.num_experts, out, inp // BLOCK,
                                                                   dtype=torch.uint8, device=device))
            else:
                self.register_parameter(name, nn.Parameter(
                    torch.zeros(self.num_experts, inp, out, dtype=dtype, device=device), requires_grad=False))
            self.register_parameter(f"{name}_bias", nn.Parameter(
                torch.zeros(self.num_experts, out, dtype=dtype, device=device), requires_grad=False))
        self.lora = nn.ParameterDict()  # "<proj>_a" [E, in, r], "<proj>_b" [E, r, out]
        self.lora_scaling: dict[str, float] = {}
        self.chunk_tokens: int | None = EXPERT_CHUNK_TOKENS  # tokens per experts pass (set_expert_chunk_tokens)

    def expert_weight(self, name: str):
        """The weight of projection `name` through the seam (Mxfp4 or a dense tensor)."""
        if self.format == "mxfp4":
            return Mxfp4(getattr(self, f"{name}_blocks"), getattr(self, f"{name}_scales"))
        return getattr(self, name)

    def lora_factors(self) -> dict[str, LoraFactors]:
        """The split LoRA factors of each adapted projection."""
        return {name: LoraFactors(self.lora[f"{name}_a"], self.lora[f"{name}_b"], scaling)
                for name, scaling in self.lora_scaling.items()}

    def forward(self, hidden_states: torch.Tensor, router_indices: torch.Tensor, routing_weights: torch.Tensor):
        """As GptOssExperts.forward: tokens [N, H], top-k indices [N, k], their weights [N, k] (or [N, E])."""
        if routing_weights.shape[-1] != router_indices.shape[-1]:  # older transformers: scores over all experts
            routing_weights = routing_weights.gather(-1, router_indices)
        factors = self.lora_factors()
        lora = {k: (v,) for k, v in factors.items()}
        return experts_forward(
            hidden_states, routing_weights, router_indices, self.expert_weight("gate_up_proj"),
            self.gate_up_proj_bias, self.expert_weight("down_proj"), self.down_proj_bias, self.alpha, self.limit,
            lora.get("gate_up_proj"), lora.get("down_proj"), self.chunk_tokens,
        )


def set_expert_chunk_tokens(model: nn.Module, tokens: int | None) -> int:
    """Tokens per experts pass of every chunked layer, OssExperts or stock experts under ``ChunkedGptOssMLP``
    (hf_experts.py) (None: one pass; see ``experts_forward``); returns the number of layers set. Smaller chunks
    bound a long sequence's expert activations in training."""
    from ossgym.agents.gptoss.hf_experts import ChunkedGptOssMLP

    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ConfigError("chunk_tokens", f"must be a positive int or None, got {tokens!r}",
                          f"Pass {EXPERT_CHUNK_TOKENS} (the default) or None.")
    layers = [m for _, mlp in expert_modules(model) for m in (mlp, mlp.experts)
              if isinstance(m, (OssExperts, ChunkedGptOssMLP))]
    for experts in layers:
        experts.chunk_tokens = tokens
    return len(layers)


def expert_modules(model: nn.Module):
    """(layer index, the MLP) of every decoder layer of a GptOssForCausalLM (peft-wrapped or not)."""
    from ossgym.agents.peft_utils import base_model

    return list(enumerate(layer.mlp for layer in base_model(model).model.layers))


@torch.no_grad()
def convert_experts(model: nn.Module, fmt: str = "mxfp4") -> nn.Module:
    """Replace each layer's GptOssExperts by OssExperts of `fmt` (quantizing dense weights to MXFP4 one expert
    at a time and freeing each layer's dense copy before the next). Returns the model."""
    config = model.config
    for _, mlp in expert_modules(model):
        old = mlp.experts
        device, dtype = old.gate_up_proj_bias.device, old.gate_up_proj_bias.dtype
        new = OssExperts(config, fmt, device=device, dtype=dtype)
        for name in PROJECTIONS:
            if isinstance(old, OssExperts):
                weight = old.expert_weight(name)
                dense = weight.dense(dtype) if isinstance(weight, Mxfp4) else weight
            else:
                dense = getattr(old, name)
            if fmt == "mxfp4":
                q = quantize_experts(dense)
                getattr(new, f"{name}_blocks").copy_(q.blocks)
                getattr(new, f"{name}_scales").copy_(q.scales)
            else:
                getattr(new, name).copy_(dense)
            getattr(new, f"{name}_bias").copy_(getattr(old, f"{name}_bias"))
        mlp.experts = new
        del old
    return model


# ------------------------------------------------------------------------------------------- split LoRA
def add_expert_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=PROJECTIONS,
                    seed: int = 0) -> list[nn.Parameter]:
    """Per-expert LoRA on the OssExperts of every layer (peft's init: A random, B zero, scaling alpha / r).
    Returns the new trainable parameters."""
    if rank < 1:
        raise ConfigError("lora_rank", f"must be >= 1, got {rank}", "pass a positive rank")
    generator = torch.Generator().manual_seed(seed)
    params = []
    for _, mlp in expert_modules(model):
        experts = mlp.experts
        if not isinstance(experts, OssExperts):
            raise ConfigError("experts", "split expert LoRA needs ossgym's OssExperts", "call convert_experts first")
        device = experts.gate_up_proj_bias.device
        for name in targets:
            inp, out = _shapes(model.config)[name]
            a = torch.empty(experts.num_experts, rank, inp)
            nn.init.kaiming_uniform_(a.view(-1, inp), a=math.sqrt(5), generator=generator)  # as peft's lora_A
            experts.lora[f"{name}_a"] = nn.Parameter(a.transpose(1, 2).contiguous().to(device, torch.float32))
            experts.lora[f"{name}_b"] = nn.Parameter(torch.zeros(experts.num_experts, rank, out, device=device))
            experts.lora_scaling[name] = alpha / rank
            params += [experts.lora[f"{name}_a"], experts.lora[f"{name}_b"]]
    return params


def has_oss_experts(model: nn.Module) -> bool:
    """Whether a GptOssForCausalLM (peft-wrapped or not) holds ossgym's OssExperts."""
    return any(isinstance(mlp.experts, OssExperts) for _, mlp in expert_modules(model))


def split_expert_targets(model: nn.Module, target_parameters) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the peft ``target_parameters`` left to peft, the expert projections that get split LoRA instead).

    On a model with OssExperts the expert weights are not parameters peft could wrap (MXFP4 buffers), so
    ``mlp.experts.gate_up_proj`` / ``mlp.experts.down_proj`` (or any name ending so) become split LoRA; on
    a model with stock experts everything stays with peft."""
    targets = tuple(target_parameters)
    if not has_oss_experts(model):
        return targets, ()
    split = tuple(p for p in PROJECTIONS if any(t == f"experts.{p}" or t.endswith(f".experts.{p}") for t in targets))
    rest = tuple(t for t in targets if not any(t == f"experts.{p}" or t.endswith(f".experts.{p}") for p in split))
    return rest, split


def add_expert_lora_to_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Add the split expert LoRA to a peft adapter folder that ``save_pretrained`` wrote (attention adapters):
    its tensors under peft's ``target_parameters`` keys, the targets in adapter_config.json, so one adapter
    holds both and stock peft loads it onto the bf16 model."""
    from safetensors.torch import load_file, save_file

    directory = Path(directory)
    config_path, weights_path = directory / "adapter_config.json", directory / "adapter_model.safetensors"
    config = json.loads(config_path.read_text())
    targets = sorted({name for _, mlp in expert_modules(model) if isinstance(mlp.experts, OssExperts)
                      for name in mlp.experts.lora_scaling})
    if not targets:
        return directory
    state = load_file(str(weights_path)) if weights_path.exists() else {}
    state.update({k: v.cpu() for k, v in expert_lora_state_dict(model).items()})
    config["target_parameters"] = sorted(set(config.get("target_parameters") or [])
                                         | {f"mlp.experts.{t}" for t in targets})
    config_path.write_text(json.dumps(config, indent=2))
    save_file(state, str(weights_path), metadata={"format": "pt"})
    return directory


def expert_lora_state_dict(model: nn.Module, prefix: str = "base_model.model.") -> dict[str, torch.Tensor]:
    """The split expert LoRA under peft's ``target_parameters`` keys (peft nests the wrappers: down_proj outside,
    gate_up_proj in its ``base_layer``): lora_A [E*r, in], lora_B [out, r*E]."""
    state = {}
    for i, mlp in expert_modules(model):
        experts = mlp.experts
        for name in experts.lora_scaling:
            a, b = experts.lora[f"{name}_a"].detach(), experts.lora[f"{name}_b"].detach()
            num_experts, inp, rank = a.shape
            where = f"{prefix}model.layers.{i}.mlp.experts." + _nesting(name, experts.lora_scaling)
            state[where + "lora_A.weight"] = a.transpose(1, 2).reshape(num_experts * rank, inp).contiguous()
            state[where + "lora_B.weight"] = b.permute(2, 1, 0).reshape(b.shape[-1], rank * num_experts).contiguous()
    return state


def _nesting(name: str, targets) -> str:
    """peft nests the parameter wrappers of one module: with both projections targeted, down_proj's is outside
    and gate_up_proj's in its ``base_layer``; a single target sits directly on the module."""
    return "base_layer." if name == "gate_up_proj" and "down_proj" in targets else ""


def load_expert_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor], alpha: float,
                                targets=PROJECTIONS, prefix: str = "base_model.model.") -> None:
    """Inverse of `expert_lora_state_dict` (adds the LoRA of the projections `targets` to the OssExperts; the
    targets are the adapter config's ``target_parameters``, which fix peft's key nesting)."""
    present = {t.rsplit(".", 1)[-1] for t in targets}
    for i, mlp in expert_modules(model):
        experts = mlp.experts
        for name in PROJECTIONS:
            if name not in present:
                continue
            where = f"{prefix}model.layers.{i}.mlp.experts." + _nesting(name, present)
            wa, wb = state[where + "lora_A.weight"], state[where + "lora_B.weight"]
            rank = wa.shape[0] // experts.num_experts
            device = experts.gate_up_proj_bias.device
            a = wa.view(experts.num_experts, rank, -1).transpose(1, 2).contiguous().float().to(device)
            b = wb.view(wb.shape[0], rank, experts.num_experts).permute(2, 1, 0).contiguous().float().to(device)
            experts.lora[f"{name}_a"], experts.lora[f"{name}_b"] = nn.Parameter(a), nn.Parameter(b)
            experts.lora_scaling[name] = alpha / rank


def save_expert_lora(model: nn.Module, directory: str | Path, rank: int, alpha: float,
                     base_model_name_or_path: str | None = None) -> Path:
    """Write the split expert LoRA as a peft adapter folder (adapter_config.json + adapter_model.safetensors)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = expert_lora_state_dict(model)
    targets = sorted({name for _, mlp in expert_modules(model) for name in mlp.experts.lora_scaling})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0,
        "bias": "none", "target_modules": [], "target_parameters": [f"mlp.experts.{t}" for t in targets],
        "base_model_name_or_path": base_model_name_or_path, "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False, "modules_to_save": None,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config, indent=2))
    save_file(state, str(directory / "adapter_model.safetensors"))
    return directory


@torch.no_grad()
def merge_expert_lora(model: nn.Module, fmt: str = "mxfp4") -> dict[str, float]:
    """Fold each OssExperts' split LoRA into its weights, held as `fmt` afterwards (one expert at a time).

    Returns the relative error of the re-quantized merge against the exact merged weights (fmt "mxfp4"; 0 for
    "bf16"), per projection over all layers: what exporting a merged MXFP4 checkpoint costs."""
    if fmt not in EXPERT_FORMATS:
        raise ConfigError("fmt", f"got {fmt!r}", f"use one of {EXPERT_FORMATS}")
    err2: dict[str, float] = {}
    ref2: dict[str, float] = {}
    for _, mlp in expert_modules(model):
        old = mlp.experts
        if not isinstance(old, OssExperts):
            raise ConfigError("experts", "merge_expert_lora needs ossgym's OssExperts", "call convert_experts first")
        dtype = old.gate_up_proj_bias.dtype
        new = OssExperts(model.config, fmt, device=old.gate_up_proj_bias.device, dtype=dtype)
        factors = old.lora_factors()
        for name in PROJECTIONS:
            weight = old.expert_weight(name)
            for e in range(old.num_experts):
                dense = weight.dense(torch.float32, expert=e) if isinstance(weight, Mxfp4) else weight[e].float()
                if name in factors:
                    f = factors[name]
                    dense = dense + f.scaling * (f.a[e].float() @ f.b[e].float())
                if fmt == "mxfp4":
                    blocks, scales = quantize_mxfp4(dense.T)
                    getattr(new, f"{name}_blocks")[e].copy_(blocks)
                    getattr(new, f"{name}_scales")[e].copy_(scales)
                    back = dequantize_mxfp4(blocks, scales, torch.float32).T
                    err2[name] = err2.get(name, 0.0) + float((back - dense).pow(2).sum())
                else:
                    getattr(new, name)[e].copy_(dense)
                ref2[name] = ref2.get(name, 0.0) + float(dense.pow(2).sum())
            getattr(new, f"{name}_bias").copy_(getattr(old, f"{name}_bias"))
        mlp.experts = new
    return {name: math.sqrt(err2.get(name, 0.0) / ref2[name]) if ref2.get(name) else 0.0 for name in ref2}


def to_hf_experts(model: nn.Module) -> nn.Module:
    """Replace OssExperts (dense or MXFP4, LoRA merged first if any) by stock GptOssExperts holding dense
    weights, so `model.save_pretrained` writes a plain bf16 checkpoint any transformers loads."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    if any(mlp.experts.lora_scaling for _, mlp in expert_modules(model) if isinstance(mlp.experts, OssExperts)):
        merge_expert_lora(model, "bf16")
    for _, mlp in expert_modules(model):
        own = mlp.experts
        if not isinstance(own, OssExperts):
            continue
        with torch.device("meta"):
            hf = GptOssExperts(model.config)
        dtype = own.gate_up_proj_bias.dtype
        for name in PROJECTIONS:
            weight = own.expert_weight(name)
            dense = weight.dense(dtype) if isinstance(weight, Mxfp4) else weight.data
            setattr(hf, name, nn.Parameter(dense, requires_grad=False))
            setattr(hf, f"{name}_bias", nn.Parameter(getattr(own, f"{name}_bias").data, requires_grad=False))
        mlp.experts = hf
    return model


# ------------------------------------------------------------------------------------ checkpoint I/O
def save_mxfp4(model: nn.Module, directory: str | Path, max_shard_bytes: int = 4 << 30) -> Path:
    """Write `model` (GptOssForCausalLM with GptOssExperts or OssExperts) in the official MXFP4 layout:
    config.json with quantization_config, experts as ``*_blocks``/``*_scales``, everything else as is."""
    from safetensors.torch import save_file

    from ossgym.agents.peft_utils import base_model

    model = base_model(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_NOT_CONVERTED}
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str))
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".mlp.experts.lora." in key:
            continue
        if key.endswith(".mlp.experts.gate_up_proj") or key.endswith(".mlp.experts.down_proj"):
            q = quantize_experts(value)
            tensors[key + "_blocks"], tensors[key + "_scales"] = q.blocks.cpu(), q.scales.cpu()
        else:
            tensors[key] = value.detach().cpu().contiguous()
    shards, current, size = [], {}, 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = value, size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    weight_map = {}
    for n, shard in enumerate(shards):
        name = f"model-{n + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def _checkpoint_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.exists():
        return sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no safetensors files in {directory}; pass a gpt-oss checkpoint folder")
    return files


@torch.no_grad()
def load_gptoss(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
                experts: str = "mxfp4") -> nn.Module:
    """A GptOssForCausalLM from a local checkpoint folder (official MXFP4 layout or bf16), experts held as
    `experts` ("mxfp4": blocks + scales; "bf16": dense `dtype`). Streams tensor by tensor (a bf16 expert tensor
    is quantized one expert at a time), so peak memory stays near the final size."""
    from safetensors import safe_open
    from transformers import AutoConfig, GptOssForCausalLM

    if experts not in EXPERT_FORMATS:
        raise ConfigError("experts", f"got {experts!r}", f"use one of {EXPERT_FORMATS}")
    directory = Path(path)
    config = AutoConfig.from_pretrained(str(directory))
    if getattr(config, "model_type", None) != "gpt_oss":
        raise ModelError(f"{path} is a {getattr(config, 'model_type', '?')!r} model; pass a gpt-oss checkpoint")
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the experts module below holds the format; no HF quantizer
    config._attn_implementation = "eager"
    device = torch.device(device)
    with torch.device("meta"):
        model = GptOssForCausalLM(config)
    for _, mlp in expert_modules(model):
        mlp.experts = OssExperts(config, experts, device=device, dtype=dtype)
    modules = dict(model.named_modules())
    for file in _checkpoint_files(directory):
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                owner, _, leaf = key.rpartition(".")
                module = modules.get(owner)
                if module is None:
                    log.warning("checkpoint tensor %s has no place in the model; skipped", key)
                    continue
                if isinstance(module, OssExperts):
                    _load_expert_tensor(module, leaf, f, key, device, dtype)
                else:
                    value = f.get_tensor(key)
                    value = value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
                    old = getattr(module, leaf)
                    if tuple(old.shape) != tuple(value.shape):
                        raise ModelError(f"{key}: checkpoint shape {tuple(value.shape)} != model {tuple(old.shape)}")
                    if isinstance(old, nn.Parameter):
                        setattr(module, leaf, nn.Parameter(value, requires_grad=old.requires_grad))
                    else:
                        setattr(module, leaf, value)
    with torch.device(device):  # non-persistent buffers (rope frequencies) are computed, not loaded
        model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    if config.tie_word_embeddings:
        model.tie_weights()
    missing = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
    if missing:
        raise ModelError(f"{path}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    log.info("loaded %s with %s experts (%.2f GiB of weights)", path, experts,
             sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())) / 2**30)
    return model.eval()


def _load_expert_tensor(module: OssExperts, leaf: str, f, key: str, device, dtype) -> None:
    """One expert tensor from an open safetensors file into `module`, converting between formats."""
    if leaf.endswith("_bias"):
        getattr(module, leaf).copy_(f.get_tensor(key).to(device=device, dtype=dtype))
        return
    if leaf.endswith("_scales"):
        name = leaf.removesuffix("_scales")
        if module.format == "mxfp4":
            getattr(module, leaf).copy_(f.get_tensor(key).to(device))
        else:  # dequantize once both halves are in
            module._pending = getattr(module, "_pending", {})
            module._pending[leaf] = f.get_tensor(key)
            _maybe_dequantize(module, name, device, dtype)
        return
    if leaf.endswith("_blocks"):
        name = leaf.removesuffix("_blocks")
        if module.format == "mxfp4":
            getattr(module, leaf).copy_(f.get_tensor(key).to(device))
        else:
            module._pending = getattr(module, "_pending", {})
            module._pending[leaf] = f.get_tensor(key)
            _maybe_dequantize(module, name, device, dtype)
        return
    # a dense expert tensor [E, in, out] (bf16 checkpoint)
    sliced = f.get_slice(key)
    for e in range(module.num_experts):
        dense = sliced[e].to(device)  # one expert at a time
        if module.format == "mxfp4":
            blocks, scales = quantize_mxfp4(dense.transpose(0, 1))
            getattr(module, f"{leaf}_blocks")[e].copy_(blocks)
            getattr(module, f"{leaf}_scales")[e].copy_(scales)
        else:
            getattr(module, leaf)[e].copy_(dense)


def _maybe_dequantize(module: OssExperts, name: str, device, dtype) -> None:
    pending = module._pending
    if f"{name}_blocks" in pending and f"{name}_scales" in pending:
        blocks, scales = pending.pop(f"{name}_blocks"), pending.pop(f"{name}_scales")
        target = getattr(module, name)
        for e in range(module.num_experts):
            target[e].copy_(dequantize_mxfp4(blocks[e].to(device), scales[e].to(device), dtype).T)


def is_mxfp4_checkpoint(path: str | Path) -> bool:
    """Whether a local checkpoint folder's config declares MXFP4 quantization."""
    config = Path(path) / "config.json"
    if not config.exists():
        return False
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    return quant.get("quant_method") == "mxfp4"


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by a model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


__all__ = [
    "OssExperts", "add_expert_lora", "add_expert_lora_to_adapter", "convert_experts", "expert_lora_state_dict",
    "has_oss_experts", "is_mxfp4_checkpoint", "set_expert_chunk_tokens", "split_expert_targets",
    "load_expert_lora_state_dict", "load_gptoss", "merge_expert_lora", "save_expert_lora", "save_mxfp4",
    "to_hf_experts", "weight_bytes",
]
