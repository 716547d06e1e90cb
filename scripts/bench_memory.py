"""Benchmark (GPU): gpt-oss-20b with MXFP4-resident experts and split expert LoRA vs today's bf16 path.

One run, random full-size gpt-oss-20b weights:
1. writes them to disk in the official MXFP4 layout (``*_blocks``/``*_scales``), loads them with ossgym's
   streaming loader (peak memory while loading);
2. checks the Triton MXFP4 grouped GEMM (forward and transposed) against the one-expert-at-a-time torch path;
3. rollout tok/s through the fast engine (CUDA graphs) at batch 1 / 8 / 64: MXFP4 + LoRA r8 on attention and
   experts, MXFP4 without LoRA, bf16 without LoRA (baseline), bf16 + peft LoRA (attention + target_parameters);
4. peak GPU memory of one GRPO step: rollout of a group of 8 x 1,024 new tokens after a 530-token prompt, then
   the policy-gradient forward/backward over the 8 sequences (micro-batch 1, activation checkpointing, LM
   head in chunks) and an AdamW step on the LoRA parameters; MXFP4 + split LoRA vs bf16 + peft LoRA;
5. agreement: engine logits on the MXFP4 weights vs Hugging Face eager on the dequantized weights (bf16).

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_memory.py --out $OUT/bench_memory.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

GIB = 2**30


def log(*args):
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def write_random_mxfp4(config, directory: Path, seed: int = 0) -> float:
    """Random gpt-oss weights in the official MXFP4 layout, generated on the GPU, one layer per shard."""
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
    g = torch.Generator(device="cuda").manual_seed(seed)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    for key, shape in shapes.items():
        layer = key.split(".")[2] if key.startswith("model.layers.") else "rest"
        shard = shards.setdefault(layer, {})
        if key.endswith("experts.gate_up_proj") or key.endswith("experts.down_proj"):
            e, inp, out = shape
            shard[key + "_blocks"] = torch.randint(0, 256, (e, out, inp // 32, 16), dtype=torch.uint8,
                                                   device="cuda", generator=g).cpu()
            # |fp4| averages ~2.6: scale 2^-7 gives weights of std ~0.02 (HF's init)
            shard[key + "_scales"] = torch.randint(119, 122, (e, out, inp // 32), dtype=torch.uint8,
                                                   device="cuda", generator=g).cpu()
            continue
        if key.endswith("norm.weight"):
            t = torch.ones(shape, device="cuda")
        elif key.endswith("bias") or key.endswith("sinks"):
            t = torch.randn(shape, device="cuda", generator=g) * 0.02
        else:
            t = torch.randn(shape, device="cuda", generator=g) * 0.02
        shard[key] = t.to(torch.bfloat16).cpu()
    weight_map = {}
    for n, (layer, tensors) in enumerate(shards.items()):
        name = f"model-{n:05d}.safetensors"
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return time.perf_counter() - start


def kernel_check(model) -> dict:
    """Triton MXFP4 grouped GEMM vs the torch path on layer 0's experts (forward and transposed)."""
    from ossgym.agents.gptoss import weights as W

    experts = model.model.layers[0].mlp.experts
    out = {}
    for name in ("gate_up_proj", "down_proj"):
        w = experts.expert_weight(name)
        for rows in (32, 4096):
            counts = torch.multinomial(torch.ones(w.num_experts), rows, replacement=True).bincount(
                minlength=w.num_experts)
            offs = torch.cumsum(counts, 0).to(torch.int32).cuda()
            for transpose in (False, True):
                k = w.out_features if transpose else w.in_features
                x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
                ref = W._mxfp4_mm_torch(x.float(), w.blocks, w.scales, offs, transpose)
                y = W._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose).float()
                rel = ((y - ref).norm() / ref.norm()).item()
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(20):
                    W._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose)
                torch.cuda.synchronize()
                ms = (time.perf_counter() - t0) / 20 * 1e3
                out[f"{name} rows={rows} T={transpose}"] = {"rel_err": rel, "ms": ms}
                log("kernel", name, rows, transpose, f"rel err {rel:.2e}", f"{ms:.3f} ms")
    return out


def rollout_speed(model, batches, new_tokens, prompt_len, label) -> dict:
    from ossgym.agents.gptoss.engine import FastGptOss

    res = {}
    engine = FastGptOss(model, max_batch_size=max(batches), max_seq_len=prompt_len + max(new_tokens.values()) + 8,
                        compile=False)
    g = torch.Generator().manual_seed(0)
    for b in batches:
        prompts = torch.randint(0, 200000, (b, prompt_len), generator=g).tolist()
        engine.generate(prompts, max_new_tokens=4, seed=0)  # prefill path warm
        engine.warmup(b)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = engine.generate(prompts, max_new_tokens=new_tokens[b], seed=1)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = sum(len(t) for t in out.tokens)
        res[b] = n / dt
        log(label, f"batch {b}: {n / dt:.0f} tok/s ({n} tokens, {dt:.2f} s incl. prefill)")
    del engine
    return res


def grpo_step(model, params, prompt_len=530, completion=1024, group=8, chunk=512) -> dict:
    """Peak memory and time of one GRPO step: rollout (engine) + policy-gradient backward + AdamW step."""
    from ossgym.agents.gptoss.engine import FastGptOss

    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    engine = FastGptOss(model, max_batch_size=group, max_seq_len=prompt_len + completion + 8, compile=False)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 200000, (prompt_len,), generator=g).tolist()
    out = engine.generate([prompt] * group, max_new_tokens=completion, seed=2)
    torch.cuda.synchronize()
    rollout_s = time.perf_counter() - t0
    rollout_peak = torch.cuda.max_memory_allocated()
    try:
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-5)
        opt_name = "bitsandbytes PagedAdamW8bit"
    except Exception as exc:  # noqa: BLE001
        log("bitsandbytes unavailable:", repr(exc)[:200])
        opt = torch.optim.AdamW(params, lr=1e-5)
        opt_name = "torch AdamW"
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    model.train()
    advantages = torch.randn(group)
    t1 = time.perf_counter()
    for row in range(group):  # micro-batch 1
        ids = torch.tensor([prompt + out.tokens[row]], device="cuda")
        hidden = lm.model(input_ids=ids, use_cache=False).last_hidden_state[0, prompt_len - 1:-1]
        targets = ids[0, prompt_len:]
        loss = 0.0
        for s in range(0, hidden.shape[0], chunk):
            def piece(h, t):
                logp = torch.log_softmax(lm.lm_head(h).float(), -1)
                return logp.gather(-1, t[:, None]).sum()
            loss = loss + torch.utils.checkpoint.checkpoint(piece, hidden[s:s + chunk], targets[s:s + chunk],
                                                           use_reentrant=False)
        (-(advantages[row]) * loss / (group * targets.numel())).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    train_s = time.perf_counter() - t1
    model.eval()
    lm.gradient_checkpointing_disable()
    peak = torch.cuda.max_memory_allocated()
    res = {"peak_gib": peak / GIB, "rollout_peak_gib": rollout_peak / GIB, "before_gib": base / GIB,
           "rollout_s": rollout_s, "train_s": train_s, "optimizer": opt_name,
           "completion_tokens": sum(len(t) for t in out.tokens)}
    del engine, opt
    gc.collect()
    torch.cuda.empty_cache()
    log("grpo step", res)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--skip", default="", help="comma-separated phases to skip: kernel,speed,step,bf16,agree")
    parser.add_argument("--completion", type=int, default=1024)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    from ossgym.agents.gptoss.mxfp4 import add_expert_lora, load_gptoss, weight_bytes
    from ossgym.agents.gptoss.presets import gpt_oss_20b_config, random_model

    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "errors": {}}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        pass
    import peft
    import transformers

    results["transformers"], results["peft"] = transformers.__version__, peft.__version__
    config = gpt_oss_20b_config()
    speed_batches, speed_tokens = [1, 8, 64], {1: 128, 8: 256, 64: 128}

    def phase(name, fn):
        if name.split(":")[0] in skip:
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - record and go on: one call must give every number it can
            traceback.print_exc()
            results["errors"][name] = repr(exc)[:500]
            gc.collect()
            torch.cuda.empty_cache()
            return None

    tmp = Path(tempfile.mkdtemp(prefix="gptoss20b-mxfp4-"))
    results["write_s"] = write_random_mxfp4(config, tmp)
    log("wrote MXFP4 checkpoint", f"{results['write_s']:.1f} s",
        f"{sum(f.stat().st_size for f in tmp.glob('*.safetensors')) / GIB:.2f} GiB on disk")
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = load_gptoss(tmp, device="cuda", dtype=torch.bfloat16, experts="mxfp4")
    results["mxfp4_load"] = {"s": time.perf_counter() - t0, "peak_gib": torch.cuda.max_memory_allocated() / GIB,
                             "weights_gib": weight_bytes(model) / GIB}
    log("loaded", results["mxfp4_load"])
    results["kernel"] = phase("kernel", lambda: kernel_check(model))
    results["speed_mxfp4"] = phase("speed:mxfp4", lambda: rollout_speed(model, speed_batches, speed_tokens, 530,
                                                                       "mxfp4 no LoRA"))
    peft_model = attention_lora(model, 8, expert_params=False)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    expert_params = add_expert_lora(peft_model, rank=8, alpha=16.0)
    with torch.no_grad():
        for p in expert_params[1::2]:  # the B factors (zero at init)
            p.normal_(0, 1e-3)
    params += expert_params
    results["lora_params_m"] = sum(p.numel() for p in params) / 1e6
    results["speed_mxfp4_lora"] = phase("speed:mxfp4_lora", lambda: rollout_speed(
        peft_model, speed_batches, speed_tokens, 530, "mxfp4 + LoRA"))
    results["step_mxfp4_lora"] = phase("step:mxfp4", lambda: grpo_step(peft_model, params, completion=args.completion))
    del peft_model, model, params
    gc.collect()
    torch.cuda.empty_cache()

    if "bf16" not in skip:
        model = random_model(config, "cuda")
        results["bf16_weights_gib"] = weight_bytes(model) / GIB
        results["speed_bf16"] = phase("speed:bf16", lambda: rollout_speed(model, speed_batches, speed_tokens, 530,
                                                                         "bf16 no LoRA"))
        peft_model = attention_lora(model, 8, expert_params=True)
        params = [p for p in peft_model.parameters() if p.requires_grad]
        results["speed_bf16_lora"] = phase("speed:bf16_lora", lambda: rollout_speed(
            peft_model, [8, 64], speed_tokens, 530, "bf16 + peft LoRA"))
        results["step_bf16_lora"] = phase("step:bf16", lambda: grpo_step(peft_model, params,
                                                                         completion=args.completion))
        del peft_model, model, params
        gc.collect()
        torch.cuda.empty_cache()

    def agreement():
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

        from ossgym.agents.gptoss.engine import FastGptOss

        ours = load_gptoss(tmp, device="cuda", dtype=torch.bfloat16, experts="mxfp4")
        ref = load_gptoss(tmp, device="cuda", dtype=torch.bfloat16, experts="bf16")
        for layer in ref.model.layers:  # stock HF experts holding the dequantized weights
            own = layer.mlp.experts
            with torch.device("meta"):
                hf = GptOssExperts(ref.config)
            for n in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
                setattr(hf, n, torch.nn.Parameter(getattr(own, n).data, requires_grad=False))
            layer.mlp.experts = hf
        g = torch.Generator().manual_seed(3)
        prompts = torch.randint(0, 200000, (4, 256), generator=g)
        engine = FastGptOss(ours, max_batch_size=4, max_seq_len=512, compile=False)
        with torch.no_grad():
            mine = engine.logits(prompts.tolist())
            theirs = ref(prompts.cuda()).logits.float()
        diff = (mine - theirs).abs()
        kl = torch.nn.functional.kl_div(torch.log_softmax(mine, -1), torch.log_softmax(theirs, -1),
                                        log_target=True, reduction="none").sum(-1)
        return {"top1_agree": (mine.argmax(-1) == theirs.argmax(-1)).float().mean().item(),
                "mean_abs": diff.mean().item(), "max_abs": diff.max().item(),
                "logit_std": theirs.std().item(), "mean_kl": kl.mean().item(), "tokens": prompts.numel()}

    results["agreement"] = phase("agree", agreement)
    log("agreement", results["agreement"])
    print(json.dumps(results, indent=1, default=str))
    out = args.out or (str(Path(os.environ["OUT"]) / "bench_memory.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(results, indent=1, default=str))
    print_table(results)
    return 0


def print_table(r: dict) -> None:
    def f(x, fmt="{:.0f}"):
        return "-" if x is None else fmt.format(x)

    print("\n| variant | tok/s b=1 | b=8 | b=64 |\n|---|---:|---:|---:|")
    for key, label in (("speed_bf16", "bf16, no LoRA (baseline)"), ("speed_bf16_lora", "bf16 + peft LoRA (split)"),
                       ("speed_mxfp4", "MXFP4, no LoRA"), ("speed_mxfp4_lora", "MXFP4 + LoRA r8 attn+experts")):
        s = r.get(key) or {}
        print(f"| {label} | {f(s.get(1))} | {f(s.get(8))} | {f(s.get(64))} |")
    print("\n| GRPO step (group 8) | peak GiB | rollout peak GiB | rollout s | train s |\n|---|---:|---:|---:|---:|")
    for key, label in (("step_bf16_lora", "bf16 + peft LoRA"), ("step_mxfp4_lora", "MXFP4 + split LoRA")):
        s = r.get(key) or {}
        print(f"| {label} | {f(s.get('peak_gib'), '{:.2f}')} | {f(s.get('rollout_peak_gib'), '{:.2f}')} | "
              f"{f(s.get('rollout_s'), '{:.1f}')} | {f(s.get('train_s'), '{:.1f}')} |")
    print("errors:", r.get("errors"))


if __name__ == "__main__":
    sys.exit(main())
