"""Benchmark (GPU): gpt-oss-20b GRPO memory with MXFP4-resident experts + split expert LoRA, each memory saving
measured on its own, against today's bf16 path, in one run (issues 16 and 11).

Random full-size gpt-oss-20b weights, written to disk in the official MXFP4 layout and loaded with ossgym's
streaming loader. Phases (each one recorded, a failure recorded and the next phase run):

1. ``kernel``: the MXFP4 grouped GEMM (Triton) against the one-expert-at-a-time torch path (correctness), the
   previous kernel (``--prev-weights``: a copy of the earlier weights.py, same run) and bf16 ``grouped_mm`` on
   the dequantized weights (the dense floor), forward and transposed, decode- and prefill-sized;
2. ``speed``: rollout tok/s through the fast engine (CUDA graphs, compile off) at batch 1 / 8 / 64, MXFP4 +
   LoRA r8 on attention and experts;
3. ``grpo``: one GRPO step, group 8 x 1,024-token completions after a 530-token prompt: one rollout, then the
   policy-gradient forward/backward per sequence (micro-batch 1, activation checkpointing) and an optimizer
   step on the LoRA parameters, as variants that add one saving each: V0 as last measured (engine kept, eager,
   ossgym's 512-token LM-head chunks), V1 engine cache released, V2 flex_sinks attention, V3 TRL's fused LM
   head (what ``ossgym train`` runs), V4 embeddings offloaded to the CPU, V5 = V4 with torch AdamW (fp32
   states, the config's default optim) instead of bitsandbytes' paged 8-bit AdamW;
4. ``long``: MXFP4 long-context training step (1K prompt + 16K completion, micro-batch 1, V4's settings):
   the experts in one pass (the baseline) against token chunks of 1K-4K (``experts_forward``'s chunking),
   checkpoints on the GPU or offloaded to the CPU; ``longroll``: long-rollout timing (16K prompt, group 8,
   128 new tokens);
5. ``train``: one ``run_training`` step (what ``ossgym train --model DIR`` runs: TRL's GRPOTrainer, fast-engine
   rollout, sandbox scoring) on the MXFP4 checkpoint folder, group 2 x 64 tokens: the wiring on the GPU;
6. ``grpo_bf16``: the same GRPO step on random bf16 weights (V0 and V3) and bf16 rollout tok/s (the baseline);
7. ``agree``: engine logits on the MXFP4 weights (bf16) and HF eager in bf16 on the dequantized weights, both
   against HF eager in fp32 (is bf16 disagreement the code or the arithmetic?).

``--nf4 attention,lm_head`` adds ``speed_nf4`` and ``grpo_nf4`` after the MXFP4 phases: the MXFP4 model loaded
again with those parts in bitsandbytes NF4 (ossgym/agents/gptoss/nf4.py) under the same LoRA, rollout tok/s and
V3/V4 of the GRPO step, beside grpo_mxfp4's V3/V4; the ``train`` phase then runs with ``nf4`` set too.

Peak = torch.cuda.max_memory_allocated (reserved also recorded). ``--tiny`` runs every phase on the CPU with
the tiny config at toy lengths (a dry run of this script; no numbers to report).

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_memory.py --out $OUT/bench_memory.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

GIB = 2**30
T0 = time.perf_counter()
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def log(*args):
    print(f"[{time.perf_counter() - T0:6.1f}s]", *args, flush=True)


def sync():
    if CUDA:
        torch.cuda.synchronize()


def free():
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()


def reset_peak() -> float:
    """Reset the peak counters; returns GiB allocated now."""
    sync()
    free()
    if not CUDA:
        return 0.0
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated() / GIB


def peaks() -> dict:
    sync()
    if not CUDA:
        return {"peak_gib": 0.0, "peak_reserved_gib": 0.0}
    return {"peak_gib": torch.cuda.max_memory_allocated() / GIB,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB}


def write_random_mxfp4(config, directory: Path, seed: int = 0) -> float:
    """Random gpt-oss weights in the official MXFP4 layout (random nibbles, E8M0 scales 119-121: weights of std
    ~0.02), generated on the device, one layer per shard."""
    from safetensors.torch import save_file
    from transformers import GptOssForCausalLM

    from ossgym.agents.gptoss.mxfp4 import MODULES_NOT_CONVERTED

    start = time.perf_counter()
    directory.mkdir(parents=True, exist_ok=True)
    cfg = config.to_dict()
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_NOT_CONVERTED}
    (directory / "config.json").write_text(json.dumps(cfg, default=str))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GptOssForCausalLM(config).state_dict().items()}
    g = torch.Generator(device=DEV).manual_seed(seed)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for key, shape in shapes.items():
        layer = key.split(".")[2] if key.startswith("model.layers.") else "rest"
        shard = shards.setdefault(layer, {})
        if key.endswith("experts.gate_up_proj") or key.endswith("experts.down_proj"):
            e, inp, out = shape
            shard[key + "_blocks"] = torch.randint(0, 256, (e, out, inp // 32, 16), dtype=torch.uint8,
                                                   device=DEV, generator=g).cpu()
            shard[key + "_scales"] = torch.randint(119, 122, (e, out, inp // 32), dtype=torch.uint8,
                                                   device=DEV, generator=g).cpu()
            continue
        t = torch.ones(shape, device=DEV) if key.endswith("norm.weight") else \
            torch.randn(shape, device=DEV, generator=g) * 0.02
        shard[key] = t.to(torch.bfloat16).cpu()
    weight_map = {}
    for n, (_, tensors) in enumerate(shards.items()):
        name = f"model-{n:05d}.safetensors"
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return time.perf_counter() - start


class _Unregistered:
    """Stands in for torch.library.custom_op while the previous weights.py is executed."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def register_fake(self, fn):
        return fn

    def register_autograd(self, *args, **kwargs):
        return None


def load_previous_weights(path: str):
    """The previous weights.py as a module of its own, its kernels callable directly. Its custom op is NOT
    registered: the same name (ossgym::mxfp4_grouped_mm) would replace this tree's implementation for every caller,
    which silently made every "new kernel" rollout run the previous one (found 2026-12-02)."""
    spec = importlib.util.spec_from_file_location("weights_prev", path)
    module = importlib.util.module_from_spec(spec)
    real = torch.library.custom_op
    torch.library.custom_op = lambda name, **kwargs: _Unregistered
    try:
        spec.loader.exec_module(module)
    finally:
        torch.library.custom_op = real
    return module


def bench_ms(fn, reps: int = 20) -> float:
    """Median ms of fn() (CUDA events; wall clock on the CPU)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if CUDA:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return sorted(times)[len(times) // 2]


def kernel_check(model, prev) -> dict:
    """The MXFP4 grouped GEMM against the torch path, the previous kernel and dense bf16 grouped_mm (layer 0)."""
    from ossgym.agents.gptoss import weights as W

    experts = model.model.layers[0].mlp.experts
    out: dict = {"ok": True}
    for name in ("gate_up_proj", "down_proj"):
        w = experts.expert_weight(name)
        dense = w.dense(torch.bfloat16).contiguous()  # [E, in, out]
        dense_t = dense.transpose(1, 2).contiguous()
        for rows in (32, 4096):
            counts = torch.multinomial(torch.ones(w.num_experts), rows, replacement=True).bincount(
                minlength=w.num_experts)
            offs = torch.cumsum(counts, 0).to(torch.int32).to(DEV)
            for transpose in (False, True):
                k = w.out_features if transpose else w.in_features
                x = torch.randn(rows, k, device=DEV, dtype=torch.bfloat16)
                ref = W._mxfp4_mm_torch(x.float(), w.blocks, w.scales, offs, transpose)
                row = {}
                if CUDA:
                    y = W._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose).float()
                    row["rel_err"] = ((y - ref).norm() / ref.norm()).item()
                    row["all_written"] = bool(torch.isfinite(y).all())
                    out["ok"] &= row["rel_err"] < 1e-2 and row["all_written"]
                    row["ms"] = bench_ms(lambda: W._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose))
                    if prev is not None:
                        yp = prev._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose).float()
                        row["prev_rel_err"] = ((yp - ref).norm() / ref.norm()).item()
                        row["prev_ms"] = bench_ms(lambda: prev._mxfp4_mm_triton(x, w.blocks, w.scales, offs,
                                                                               transpose))
                row["bf16_grouped_mm_ms"] = bench_ms(lambda: W._dense_grouped(x, dense_t if transpose else dense,
                                                                              offs), reps=5 if not CUDA else 20)
                out[f"{name} rows={rows} T={int(transpose)}"] = row
                log("kernel", name, rows, transpose, row)
        del dense, dense_t
    return out


def rollout_speed(model, batches, new_tokens, prompt_len, label) -> dict:
    from ossgym.agents.gptoss.engine import FastGptOss

    res = {}
    engine = FastGptOss(model, max_batch_size=max(batches), max_seq_len=prompt_len + max(new_tokens.values()) + 8,
                        compile=False)
    g = torch.Generator().manual_seed(0)
    for b in batches:
        prompts = torch.randint(0, 200000, (b, prompt_len), generator=g).tolist()  # distinct prompts
        engine.generate(prompts, max_new_tokens=4, seed=0)
        engine.warmup(b)
        sync()
        t0 = time.perf_counter()
        out = engine.generate(prompts, max_new_tokens=new_tokens[b], seed=1)
        sync()
        dt = time.perf_counter() - t0
        n = sum(len(t) for t in out.tokens)
        res[b] = n / dt
        log(label, f"batch {b}: {n / dt:.0f} tok/s ({n} tokens, {dt:.2f} s incl. prefill)")
    engine.release()
    del engine
    free()
    return res


def set_attention(lm, impl: str) -> None:
    lm.config._attn_implementation = impl
    lm.model.config._attn_implementation = impl


def make_optimizer(params, kind: str):
    if kind == "paged8" and CUDA:
        import bitsandbytes as bnb

        return bnb.optim.PagedAdamW8bit(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5)


def train_pass(lm, params, seqs, prompt_len, attn: str, head: str, optim: str = "paged8",
               offload_checkpoints: bool = False, autocast: bool = False) -> dict:
    """Policy-gradient forward/backward over `seqs` (micro-batch 1) and one optimizer step: peak and time.
    ``autocast``: under bf16 autocast, as the trainer runs (``bf16=True``): without it the fp32 LoRA layers see
    fp32 copies of their inputs (peft casts them), which the backward keeps."""
    import contextlib

    from ossgym.training.logprobs import chunked_logprobs
    from ossgym.training.nf4_head import nf4_fused_lm_head

    set_attention(lm, attn)
    lm.train()
    for p in params:
        p.grad = None
    before = reset_peak()
    opt = make_optimizer(params, optim)
    advantages = torch.randn(len(seqs), generator=torch.Generator().manual_seed(5))
    ctx = torch.autograd.graph.save_on_cpu(pin_memory=CUDA) if offload_checkpoints else contextlib.nullcontext()
    mixed = torch.autocast("cuda", dtype=torch.bfloat16) if autocast and CUDA else contextlib.nullcontext()
    t0 = time.perf_counter()
    with ctx, mixed, nf4_fused_lm_head():  # an NF4 head (--nf4 lm_head) through ossgym's blocks; dense heads: TRL's kernel
        for row, seq in enumerate(seqs):
            ids = torch.tensor([seq], device=DEV)
            n = ids.shape[1] - prompt_len
            if head == "trl":
                labels = ids.clone()
                labels[:, :prompt_len] = -100
                logp = lm(input_ids=ids, labels=labels, fused_lm_head=True).log_probs.sum()
            else:
                hidden = lm.model(input_ids=ids, use_cache=False).last_hidden_state[0, prompt_len - 1:-1]
                logp = chunked_logprobs(hidden, lm.lm_head.weight, ids[0, prompt_len:], 512).sum()
            (-(advantages[row]) * logp / (len(seqs) * n)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    res = {"before_gib": before, **peaks(), "train_s": time.perf_counter() - t0}
    del opt
    lm.eval()
    free()
    return res


def rollout(model, prompt, group, completion, distinct: bool = False, new_tokens: int | None = None
            ) -> tuple[dict, object, list]:
    """One group rollout (rows share the prompt unless `distinct`; the cache sized for `completion`, `new_tokens`
    of them sampled): peak, time, the engine and the sequences."""
    from ossgym.agents.gptoss.engine import FastGptOss

    before = reset_peak()
    t0 = time.perf_counter()
    engine = FastGptOss(model, max_batch_size=group, max_seq_len=len(prompt) + completion + 8, compile=False)
    prompts = [prompt] * group
    if distinct:
        prompts = [[(t + i) % 200000 for t in prompt] for i in range(group)]
    out = engine.generate(prompts, max_new_tokens=new_tokens or completion, seed=2)
    sync()
    res = {"before_gib": before, **peaks(), "rollout_s": time.perf_counter() - t0,
           "cache_gib": engine.cache.nbytes() / GIB, "tokens": sum(len(t) for t in out.tokens)}
    return res, engine, [p + t for p, t in zip(prompts, out.tokens)]


def fused_head(lm) -> None:
    """TRL's fused LM head on `lm` (what GRPOTrainer adds), once; a failure is left to the variants using it."""
    if getattr(lm, "_fused_head", False):
        return
    try:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(lm, outputs=("log_probs",))
        lm._fused_head = True
    except Exception:  # noqa: BLE001
        traceback.print_exc()


def grpo_variants(peft_model, params, prompt_len, completion, group, label, variants) -> dict:
    """One rollout, then each training variant on the same sequences (see the module docstring)."""
    from ossgym.agents.gptoss.offload import offload_embeddings, restore_embeddings
    from ossgym.agents.peft_utils import base_model

    lm = base_model(peft_model)
    fused_head(lm)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    flex = "flex_sinks"
    prompt = torch.randint(0, 200000, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    res: dict = {}
    res["rollout_distinct"], engine, _ = rollout(peft_model, prompt, group, completion, distinct=True, new_tokens=16)
    engine.release()
    del engine
    res["rollout"], engine, seqs = rollout(peft_model, prompt, group, completion)
    log(label, "rollout", res["rollout"])
    plan = {
        "V0": dict(attn="eager", head="ossgym512"),
        "V1": dict(attn="eager", head="ossgym512"),
        "V2": dict(attn=flex, head="ossgym512"),
        "V3": dict(attn=flex, head="trl"),
        "V4": dict(attn=flex, head="trl"),
        "V5": dict(attn=flex, head="trl", optim="adamw"),
    }
    for name in variants:
        if name == "V1" and engine is not None:
            engine.release()
            engine = None
            free()
        if name == "V4":
            offload_embeddings(peft_model)
            free()
            res["rollout_offloaded"], eng, _ = rollout(peft_model, prompt, group, completion, new_tokens=16)
            eng.release()
            del eng
        if name == "V2":  # compile flex once outside the measurement
            try:
                train_pass(lm, params, seqs[:1], prompt_len, **plan[name])
            except Exception:  # noqa: BLE001 - the measured pass records it
                traceback.print_exc()
        try:
            res[name] = train_pass(lm, params, seqs, prompt_len, **plan[name])
        except Exception as exc:  # noqa: BLE001 - out of memory or a failure: recorded, the next variant runs
            traceback.print_exc()
            res[name] = {"error": repr(exc)[:300]}
            lm.eval()
            free()
        rollout_peak = res["rollout_offloaded" if name in ("V4", "V5") else "rollout"]["peak_gib"]
        if "peak_gib" in res[name]:
            res[name]["step_peak_gib"] = max(res[name]["peak_gib"], rollout_peak)
        log(label, name, plan[name], res[name])
    if engine is not None:
        engine.release()
    restore_embeddings(peft_model)
    lm.gradient_checkpointing_disable()
    free()
    return res


LONG_VARIANTS = (  # (name, experts chunk in tokens or None for one pass, checkpoints offloaded), in priority order
    ("one_pass", None, False),
    ("chunk2048", 2048, False),
    ("chunk2048_offload", 2048, True),
    ("chunk4096", 4096, False),
    ("chunk1024", 1024, False),
    ("one_pass_offload", None, True),
)


def long_context(peft_model, params, prompt_len, completion, deadline: float, chunk_divisor: int = 1) -> dict:
    """MXFP4 long-context training step (embeddings offloaded, flex_sinks, TRL's fused head, paged 8-bit AdamW),
    micro-batch 1, as LONG_VARIANTS: the experts in one pass (the baseline) or in token chunks, checkpoints on
    the GPU or offloaded; no variant starts after `deadline` (perf_counter seconds). ``chunk_divisor`` scales
    the chunks down for the tiny dry run."""
    from ossgym.agents.gptoss.mxfp4 import set_expert_chunk_tokens
    from ossgym.agents.gptoss.offload import offload_embeddings, restore_embeddings
    from ossgym.agents.gptoss.weights import EXPERT_CHUNK_TOKENS
    from ossgym.agents.peft_utils import base_model

    lm = base_model(peft_model)
    fused_head(lm)
    offload_embeddings(peft_model)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    g = torch.Generator().manual_seed(7)
    seq = torch.randint(0, 200000, (prompt_len + completion,), generator=g).tolist()
    res: dict = {"tokens": len(seq), "skipped": []}
    t0 = time.perf_counter()  # flex_sinks compiles once (dynamic shapes) outside the measurement
    train_pass(lm, params, [seq[: prompt_len + 64]], prompt_len, "flex_sinks", "trl")
    res["warmup_s"] = time.perf_counter() - t0
    for name, chunk, offload in LONG_VARIANTS:
        if time.perf_counter() > deadline:
            res["skipped"].append(name)
            continue
        chunk = chunk // chunk_divisor if chunk else None
        set_expert_chunk_tokens(lm, chunk)
        try:
            res[name] = train_pass(lm, params, [seq], prompt_len, "flex_sinks", "trl", offload_checkpoints=offload)
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc()
            res[name] = {"error": repr(exc)[:300]}
            lm.eval()
            free()
        res[name].update(chunk_tokens=chunk, offload_checkpoints=offload)
        log("long", name, res[name])
    set_expert_chunk_tokens(lm, EXPERT_CHUNK_TOKENS)
    lm.gradient_checkpointing_disable()
    restore_embeddings(peft_model)
    free()
    return res


def long_rollout(peft_model, group, rollout_prompt, rollout_tokens) -> dict:
    """Long-rollout timing at the group size: one prompt prefilled once, its cache copied to the group's rows."""
    from ossgym.agents.gptoss.engine import FastGptOss

    g = torch.Generator().manual_seed(8)
    prompt = torch.randint(0, 200000, (rollout_prompt,), generator=g).tolist()
    before = reset_peak()
    engine = FastGptOss(peft_model, max_batch_size=group, max_seq_len=rollout_prompt + rollout_tokens + 8,
                        compile=False)
    t0 = time.perf_counter()
    engine.generate([prompt] * group, max_new_tokens=1, seed=3)  # prefill (shared) + capture
    sync()
    prefill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = engine.generate([prompt] * group, max_new_tokens=rollout_tokens, seed=4)
    sync()
    dt = time.perf_counter() - t0
    n = sum(len(t) for t in out.tokens)
    res = {"prompt": rollout_prompt, "group": group, "new_tokens": rollout_tokens, "before_gib": before,
           **peaks(), "cache_gib": engine.cache.nbytes() / GIB, "first_call_s": prefill_s,
           "generate_s": dt, "tok_per_s_incl_prefill": n / dt}
    log("long rollout", res)
    engine.release()
    del engine
    free()
    return res


def train_run(path: Path, out_dir: Path, nf4: tuple[str, ...] = ()) -> dict:
    """One ``run_training`` step (what ``ossgym train --model DIR`` runs) on the MXFP4 checkpoint folder: TRL's
    GRPOTrainer, the fast engine's rollout, sandbox scoring, split expert LoRA, offloaded embeddings, paged
    8-bit AdamW (CUDA), the ``nf4`` parts in NF4; group 2 x 64 new tokens. The agent comes from ``load_agent`` with
    the engine's compile off (CUDA graphs on), as in the rest of this script; the merged export is off (the adapter
    is saved)."""
    import dataclasses

    from ossgym.agents.gptoss.mxfp4 import OssExperts
    from ossgym.agents.peft_utils import base_model
    from ossgym.training.config import GRPORunConfig
    from ossgym.training.run import load_agent, run_training

    config = GRPORunConfig(model=str(path), steps=1, group_size=2, max_completion_length=64, num_dataset_rows=2,
                           lora_target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"),
                           offload_embeddings=True, optim="paged_adamw_8bit" if CUDA else "adamw_torch",
                           output_dir=str(out_dir), nf4=nf4)
    before = reset_peak()
    t0 = time.perf_counter()
    agent = load_agent(config)
    agent.config = dataclasses.replace(agent.config, compile=False)
    load_s = time.perf_counter() - t0
    experts = base_model(agent.model).model.layers[0].mlp.experts
    fmt = experts.format if isinstance(experts, OssExperts) else type(experts).__name__
    result = run_training(config, agent=agent, export_merged=False, progress=False)
    res = {"before_gib": before, **peaks(), "load_s": load_s, "wall_s": time.perf_counter() - t0,
           "experts": fmt, "generation_backend": result.generation_backend, "records": result.records,
           "adapter_files": sorted(p.name for p in result.adapter_dir.iterdir()) if result.adapter_dir else None}
    if result.adapter_dir is not None:
        cfg = json.loads((result.adapter_dir / "adapter_config.json").read_text())
        res["adapter_target_parameters"] = cfg.get("target_parameters")
    log("train", {k: v for k, v in res.items() if k != "records"})
    del agent, result
    free()
    return res


def attention_lora(model, rank, expert_params: bool):
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                     target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"] if expert_params else None)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # B = 0 at init: give the adapters values so they cost what trained ones cost
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    return peft_model


def split_lora(model):
    """LoRA r8 on attention (peft) and ossgym's split LoRA on both expert projections, B factors random (trained
    adapters cost what these cost): (the peft model, every trainable parameter)."""
    from ossgym.agents.gptoss.mxfp4 import add_expert_lora

    peft_model = attention_lora(model, 8, expert_params=False)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    expert_params = add_expert_lora(peft_model, rank=8, alpha=16.0)
    with torch.no_grad():
        for p in expert_params[1::2]:  # the B factors (zero at init)
            p.normal_(0, 1e-3)
    return peft_model, params + expert_params


def train_ready(peft_model, offload: bool = True):
    """The model prepared for the training passes as ossgym train runs them: embeddings offloaded (``offload``),
    TRL's fused head, activation checkpointing, no cache. Returns the causal LM inside peft."""
    from ossgym.agents.gptoss.offload import offload_embeddings
    from ossgym.agents.peft_utils import base_model

    if offload:
        offload_embeddings(peft_model)
    lm = base_model(peft_model)
    fused_head(lm)
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    return lm


def record_phase(results: dict, name: str, fn, save) -> object:
    """Run one phase: its result (None on a failure, whose repr goes to results["errors"]) stored and saved."""
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - record and go on: one call must give every number it can
        traceback.print_exc()
        results["errors"][name] = repr(exc)[:800]
        out = None
    free()
    results[name] = out
    save()
    return out


def agreement(path: Path, tokens: int) -> dict:
    """Engine (MXFP4, bf16) and HF eager (bf16, dequantized) against HF eager in fp32 on the dequantized weights."""
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.mxfp4 import load_gptoss

    g = torch.Generator().manual_seed(3)
    prompts = torch.randint(0, 200000, (4, tokens), generator=g)

    def hf_logits(dtype):
        ref = load_gptoss(path, device=DEV, dtype=dtype, experts="bf16")
        for layer in ref.model.layers:  # stock HF experts holding the dequantized weights
            own = layer.mlp.experts
            with torch.device("meta"):
                hf = GptOssExperts(ref.config)
            for n in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
                setattr(hf, n, torch.nn.Parameter(getattr(own, n).data, requires_grad=False))
            layer.mlp.experts = hf
        with torch.no_grad():
            out = ref(prompts.to(DEV)).logits.float().cpu()
        del ref
        free()
        return out

    ours = load_gptoss(path, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
    engine = FastGptOss(ours, max_batch_size=4, max_seq_len=tokens + 8, compile=False)
    with torch.no_grad():
        logits = {"engine_bf16": engine.logits(prompts.tolist()).cpu(),
                  "hf_ossexperts_bf16": ours(prompts.to(DEV)).logits.float().cpu()}
    engine.release()
    del engine, ours
    free()
    logits["hf_bf16"] = hf_logits(torch.bfloat16)
    logits["hf_fp32"] = hf_logits(torch.float32)

    def compare(a, b):
        diff = (a - b).abs()
        kl = torch.nn.functional.kl_div(torch.log_softmax(a, -1), torch.log_softmax(b, -1), log_target=True,
                                        reduction="none").sum(-1)
        return {"top1_agree": (a.argmax(-1) == b.argmax(-1)).float().mean().item(), "mean_abs": diff.mean().item(),
                "max_abs": diff.max().item(), "mean_kl": kl.mean().item()}

    ref = logits["hf_fp32"]
    res = {"logit_std": ref.std().item(), "tokens": prompts.numel()}
    for name in ("engine_bf16", "hf_ossexperts_bf16", "hf_bf16"):
        res[f"{name} vs hf_fp32"] = compare(logits[name], ref)
    res["engine_bf16 vs hf_bf16"] = compare(logits["engine_bf16"], logits["hf_bf16"])
    # the same per position: does bf16 noise grow along the sequence (a chaotic random net) or start large?
    for name in ("engine_bf16", "hf_bf16"):
        d = (logits[name] - ref).abs().mean(-1).mean(0)
        res[f"{name} mean_abs by position (first, middle, last)"] = [d[0].item(), d[len(d) // 2].item(), d[-1].item()]
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip (a name or its first _-part): kernel,speed,grpo (both),grpo_bf16,"
                        "long,longroll,train,agree")
    parser.add_argument("--completion", type=int, default=1024)
    parser.add_argument("--long-completion", type=int, default=16384)
    parser.add_argument("--budget-s", type=float, default=480.0, help="start no phase after this many seconds")
    parser.add_argument("--long-budget-s", type=float, default=400.0,
                        help="start no long-context variant after this many seconds")
    parser.add_argument("--prev-weights", default=None, help="path of the previous weights.py (kernel baseline)")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny config, toy lengths")
    parser.add_argument("--nf4", default="", help="comma-separated parts held in NF4 (attention,lm_head): adds the "
                        "phases speed_nf4 and grpo_nf4 (MXFP4 experts + these parts in NF4: rollout tok/s and V3/V4 "
                        "of the GRPO step) and runs the train phase with them")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    nf4_parts = tuple(filter(None, args.nf4.split(",")))
    import ossgym  # noqa: F401  registers flex_sinks
    import ossgym.agents.agent  # noqa: F401
    from ossgym.agents.gptoss.mxfp4 import load_gptoss, weight_bytes
    from ossgym.agents.gptoss.presets import gpt_oss_20b_config, random_model
    from ossgym.agents.gptoss.tiny import tiny_config

    results: dict = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
                     "errors": {}, "skipped": []}
    import peft
    import transformers

    results["transformers"], results["peft"] = transformers.__version__, peft.__version__
    results["ossgym"] = ossgym.__file__
    log("ossgym from", ossgym.__file__)
    out_path = args.out or (str(Path(os.environ["OUT"]) / "bench_memory.json") if os.environ.get("OUT") else None)

    def save():
        if out_path:
            Path(out_path).write_text(json.dumps(results, indent=1, default=str))

    if args.tiny:
        config = tiny_config()
        config._attn_implementation = "eager"
        lengths = dict(prompt=40, completion=24, group=4, long_prompt=32, long=300, rollout_prompt=200,
                       rollout_tokens=8, agree=150)
        speed_batches, speed_tokens = [1, 4], {1: 8, 4: 8}
    else:
        config = gpt_oss_20b_config()
        lengths = dict(prompt=530, completion=args.completion, group=8, long_prompt=1024, long=args.long_completion,
                       rollout_prompt=16384, rollout_tokens=128, agree=256)
        speed_batches, speed_tokens = [1, 8, 64], {1: 128, 8: 256, 64: 128}
    results["lengths"] = lengths
    prev = None
    if args.prev_weights and CUDA:
        prev = load_previous_weights(args.prev_weights)

    def phase(name, fn):
        if name in skip or name.split("_")[0] in skip:
            return None
        if time.perf_counter() - T0 > args.budget_s:
            results["skipped"].append(name)
            log("time budget reached; skipping", name)
            return None
        return record_phase(results, name, fn, save)

    tmp = Path(tempfile.mkdtemp(prefix="gptoss-mxfp4-"))
    results["write_s"] = write_random_mxfp4(config, tmp)
    log("wrote MXFP4 checkpoint", f"{results['write_s']:.1f} s",
        f"{sum(f.stat().st_size for f in tmp.glob('*.safetensors')) / GIB:.2f} GiB on disk")
    reset_peak()
    t0 = time.perf_counter()
    model = load_gptoss(tmp, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
    results["mxfp4_load"] = {"s": time.perf_counter() - t0, **peaks(), "weights_gib": weight_bytes(model) / GIB,
                             "embedding_gib": model.model.embed_tokens.weight.numel() * 2 / GIB}
    log("loaded", results["mxfp4_load"])
    kernel = phase("kernel", lambda: kernel_check(model, prev))
    if CUDA and kernel is not None and not kernel["ok"] and prev is not None:
        from ossgym.agents.gptoss import weights as W

        log("new kernel failed its check: the previous kernel runs the rest")
        W._mxfp4_mm_triton = lambda x, blocks, scales, offs, transpose, row_expert=None: prev._mxfp4_mm_triton(
            x, blocks, scales, offs, transpose)  # an older kernel takes no row_expert
        results["kernel_fallback"] = True
    peft_model, params = split_lora(model)
    results["lora_params_m"] = sum(p.numel() for p in params) / 1e6
    results["lora_gib"] = sum(p.numel() * p.element_size() for p in params) / GIB
    phase("speed_mxfp4_lora", lambda: rollout_speed(peft_model, speed_batches, speed_tokens, lengths["prompt"],
                                                    "mxfp4 + LoRA"))
    phase("grpo_mxfp4", lambda: grpo_variants(peft_model, params, lengths["prompt"], lengths["completion"],
                                              lengths["group"], "mxfp4", ["V0", "V1", "V2", "V3", "V4", "V5"]))
    phase("long_mxfp4", lambda: long_context(peft_model, params, lengths["long_prompt"], lengths["long"],
                                             T0 + args.long_budget_s, 16 if args.tiny else 1))
    phase("longroll", lambda: long_rollout(peft_model, lengths["group"], lengths["rollout_prompt"],
                                           lengths["rollout_tokens"]))
    del peft_model, model, params
    free()

    def mxfp4_nf4_lora():
        """The MXFP4 model again, ``nf4_parts`` in NF4, with the same LoRA as above (attention + split experts)."""
        from ossgym.agents.gptoss.nf4 import quantize_nf4

        model = load_gptoss(tmp, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
        quantize_nf4(model, nf4_parts)
        results["nf4_weights_gib"] = weight_bytes(model) / GIB  # packed bytes (absmaxes are not buffers: +12%)
        return split_lora(model)

    if nf4_parts:
        results["nf4_parts"] = nf4_parts
        peft_model, params = mxfp4_nf4_lora()
        phase("speed_nf4", lambda: rollout_speed(peft_model, speed_batches, speed_tokens, lengths["prompt"],
                                                 f"mxfp4 + nf4 {','.join(nf4_parts)} + LoRA"))
        phase("grpo_nf4", lambda: grpo_variants(peft_model, params, lengths["prompt"], lengths["completion"],
                                                lengths["group"], "mxfp4 + nf4", ["V3", "V4"]))
        del peft_model, params
        free()
    phase("train", lambda: train_run(tmp, tmp / "run", nf4_parts))

    def bf16():
        model = random_model(config, DEV)
        results["bf16_weights_gib"] = weight_bytes(model) / GIB
        results["speed_bf16"] = rollout_speed(model, speed_batches, speed_tokens, lengths["prompt"], "bf16 no LoRA")
        save()
        peft_model = attention_lora(model, 8, expert_params=True)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        out = grpo_variants(peft_model, params, lengths["prompt"], lengths["completion"], lengths["group"], "bf16",
                            ["V0", "V1", "V2", "V3"])
        del peft_model, model, params
        return out

    phase("grpo_bf16", bf16)
    phase("agree", lambda: agreement(tmp, lengths["agree"]))
    results["wall_s"] = time.perf_counter() - T0
    save()
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    k = r.get("kernel") or {}
    print("\n| kernel case | rel err | ms | prev ms | bf16 grouped_mm ms |\n|---|---:|---:|---:|---:|")
    for name, row in k.items():
        if isinstance(row, dict):
            print(f"| {name} | {f(row.get('rel_err'), '{:.1e}')} | {f(row.get('ms'), '{:.3f}')} | "
                  f"{f(row.get('prev_ms'), '{:.3f}')} | {f(row.get('bf16_grouped_mm_ms'), '{:.3f}')} |")
    s = r.get("speed_mxfp4_lora") or {}
    b = r.get("speed_bf16") or {}
    print("\n| rollout tok/s | b=1 | b=8 | b=64 |\n|---|---:|---:|---:|")
    print(f"| MXFP4 + LoRA | {' | '.join(f(s.get(x), '{:.0f}') for x in (1, 8, 64))} |")
    if r.get("speed_nf4"):
        n = r["speed_nf4"]
        print(f"| MXFP4 + NF4 {','.join(r.get('nf4_parts', ()))} + LoRA | "
              f"{' | '.join(f(n.get(x), '{:.0f}') for x in (1, 8, 64))} |")
    print(f"| bf16 no LoRA | {' | '.join(f(b.get(x), '{:.0f}') for x in (1, 8, 64))} |")
    for key in ("grpo_mxfp4", "grpo_nf4", "grpo_bf16"):
        g = r.get(key) or {}
        ro = g.get("rollout") or {}
        print(f"\n{key}: rollout peak {f(ro.get('peak_gib'))} GiB in {f(ro.get('rollout_s'), '{:.1f}')} s, "
              f"distinct-prompt rollout peak {f((g.get('rollout_distinct') or {}).get('peak_gib'))}, "
              f"offloaded-embedding rollout peak {f((g.get('rollout_offloaded') or {}).get('peak_gib'))}")
        print("| variant | before | train peak | reserved | step peak | train s |\n|---|---:|---:|---:|---:|---:|")
        for v in ("V0", "V1", "V2", "V3", "V4", "V5"):
            x = g.get(v)
            if x:
                print(f"| {v} | {f(x.get('before_gib'))} | {f(x.get('peak_gib'))} | {f(x.get('peak_reserved_gib'))} | "
                      f"{f(x.get('step_peak_gib'))} | {f(x.get('train_s'), '{:.1f}')} |")
    lc = r.get("long_mxfp4") or {}
    print(f"\nlong context, {lc.get('tokens')} tokens, micro-batch 1 (warm-up {f(lc.get('warmup_s'), '{:.1f}')} s; "
          f"skipped {lc.get('skipped')})")
    print("| variant | experts chunk | checkpoints offloaded | before | peak | reserved | step s | error |\n"
          "|---|---:|---|---:|---:|---:|---:|---|")
    for name, x in lc.items():
        if isinstance(x, dict) and "offload_checkpoints" in x:
            print(f"| {name} | {x.get('chunk_tokens') or 'one pass'} | {x.get('offload_checkpoints')} | "
                  f"{f(x.get('before_gib'))} | {f(x.get('peak_gib'))} | {f(x.get('peak_reserved_gib'))} | "
                  f"{f(x.get('train_s'), '{:.1f}')} | {x.get('error', '')} |")
    tr = r.get("train") or {}
    rec = (tr.get("records") or [{}])[-1]
    print(f"\ntrain (run_training, 1 step): experts {tr.get('experts')}, peak {f(tr.get('peak_gib'))} GiB "
          f"(reserved {f(tr.get('peak_reserved_gib'))}), load {f(tr.get('load_s'), '{:.1f}')} s, wall "
          f"{f(tr.get('wall_s'), '{:.1f}')} s, backend {tr.get('generation_backend')}, adapter "
          f"{tr.get('adapter_files')} targets {tr.get('adapter_target_parameters')}")
    print("last record:", json.dumps(rec, default=str)[:1500])
    print("longroll:", json.dumps(r.get("longroll"), default=str))
    print("agree:", json.dumps(r.get("agree"), default=str))
    print("errors:", r.get("errors"), "skipped:", r.get("skipped"), "wall", f(r.get("wall_s"), "{:.0f}"))


if __name__ == "__main__":
    sys.exit(main())
