"""Benchmark: ossgym's FastGptOss against stock transformers eager `generate` on a full-size gpt-oss-20b.

Random bf16 weights built on the GPU from gpt-oss-20b's real config; one run measures both engines:
tokens/s at batch 1, 8, 64 (128-token prompt; 128 and 1024 new tokens, sampling at temperature 1), peak memory
beyond the weights, the longest batch-1 prefill that fits, and agreement (max logit difference, greedy match).
Prints a table and writes JSON to $OUT (or --out). Run on the lent GPU:
    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_inference.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback

import torch

from ossgym.agents.gptoss.presets import gpt_oss_20b_config, random_model

VOCAB_LIMIT = 200019  # tokenizer ids; the extra embedding rows are never sampled
PROMPT = 128
GiB = 2**30
TINY_RUN = False

results: dict = {"sections": {}}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu only for a dry run of the script (--tiny)
TINY = dict(num_local_experts=4, vocab_size=1024, hidden_size=64, intermediate_size=32, head_dim=16,
            num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4,
            layer_types=["sliding_attention", "full_attention"] * 2)


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def mem_now() -> int:
    return torch.cuda.memory_allocated() if DEVICE == "cuda" else 0


def mem_peak() -> int:
    return torch.cuda.max_memory_allocated() if DEVICE == "cuda" else 0


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def empty_cache() -> None:
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def out_path(args) -> str:
    folder = args.out or os.environ.get("OUT") or "."
    return os.path.join(folder, "bench_inference.json")


def save(args) -> None:
    with open(out_path(args), "w") as f:
        json.dump(results, f, indent=1)


def section(name: str, args):
    def wrap(fn):
        if name not in args.sections:
            return
        print(f"== {name}", flush=True)
        start = time.time()
        try:
            fn()
            results["sections"][name] = f"ok in {time.time() - start:.0f}s"
        except Exception as error:  # noqa: BLE001 - a benchmark section must not hide the others
            traceback.print_exc()
            results["sections"][name] = f"FAILED: {type(error).__name__}: {error}"[:500]
        save(args)
        empty_cache()

    return wrap


def build_config(**overrides):
    from transformers import GptOssConfig

    config = gpt_oss_20b_config(**{**(TINY if TINY_RUN else {}), **overrides})
    defaults = GptOssConfig()
    rope_default = getattr(defaults, "rope_parameters", None) or {}
    checks = {k: (getattr(defaults, k, None), getattr(config, k)) for k in
              ("hidden_size", "intermediate_size", "head_dim", "num_attention_heads", "num_key_value_heads",
               "vocab_size", "sliding_window", "swiglu_limit", "num_experts_per_tok", "rms_norm_eps")}
    results.setdefault("config_vs_transformers_defaults", {k: list(v) for k, v in checks.items()})
    results.setdefault("rope_defaults", {k: str(v) for k, v in rope_default.items()})
    return config


def build_model(config):
    return random_model(config, DEVICE)


def random_prompts(batch: int, length: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB_LIMIT, (batch, length), generator=g).tolist()


def timed(fn):
    sync()
    start = time.perf_counter()
    value = fn()
    sync()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sections", default="check,fast,agree,prefill,stock")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--stock-1024", default="1,8", help="batches for the 1024-token stock runs")
    parser.add_argument("--prefill", default="4096,16384,32768,65536")
    parser.add_argument("--out", default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny config: a dry run of the script (CPU is fine)")
    args = parser.parse_args()
    global TINY_RUN, VOCAB_LIMIT
    TINY_RUN = args.tiny
    if TINY_RUN:
        VOCAB_LIMIT = 1000
    args.sections = args.sections.split(",")
    batches = [int(b) for b in args.batches.split(",")]

    import transformers

    from ossgym.agents.gptoss.engine import FastGptOss

    results["env"] = {
        "gpu": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu", "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(), "argv": sys.argv,
    }
    print(results["env"], flush=True)

    @section("paths", args)
    def _paths():
        # Each GPU-only path against its plain reference on random inputs of gpt-oss-20b's shapes.
        import inspect

        from transformers.models.gpt_oss import modeling_gpt_oss as hf

        from ossgym.agents.gptoss import attention, moe

        src = inspect.getsource(hf.GptOssExperts)
        print("HF experts source (first 1800 chars):", src[:1800], flush=True)
        print("HF attention forward:", inspect.getsource(hf.GptOssAttention.forward)[-1500:], flush=True)
        torch.manual_seed(0)
        paths = results.setdefault("paths", {})
        q = torch.randn(2, 64, 300, 64, device=DEVICE, dtype=torch.bfloat16)
        k = torch.randn(2, 8, 300, 64, device=DEVICE, dtype=torch.bfloat16)
        v = torch.randn(2, 8, 300, 64, device=DEVICE, dtype=torch.bfloat16)
        sinks, pad = torch.randn(64, device=DEVICE), torch.tensor([0, 50], device=DEVICE)
        for window in (None, 128):
            ref = attention.attend(q.float(), k.float(), v.float(), attention.prefill_mask(pad, 300, window),
                                   sinks, 0.125)
            for name, fns in (("eager", (None, None)), ("compiled", (torch.compile(attention.flex_attention),
                                                                       torch.compile(attention.create_block_mask)))):
                out = attention.flex_prefill(q, k, v, pad, window, sinks, 0.125, *fns)
                paths[f"flex_{name}_window{window}"] = (out.float() - ref).abs().max().item()
                out = attention.flex_prefill(q, k, v.transpose(1, 2).contiguous().transpose(1, 2), pad, window,
                                             sinks, 0.125, *fns)
                paths[f"flex_{name}_strided_window{window}"] = (out.float() - ref).abs().max().item()
        experts = 32
        gu = torch.randn(experts, 2880, 5760, device=DEVICE, dtype=torch.bfloat16) * 0.02
        gub = torch.randn(experts, 5760, device=DEVICE, dtype=torch.bfloat16) * 0.02
        dp = torch.randn(experts, 2880, 2880, device=DEVICE, dtype=torch.bfloat16) * 0.02
        dpb = torch.randn(experts, 2880, device=DEVICE, dtype=torch.bfloat16) * 0.02
        for tokens in (1, 37, 512):
            x = torch.randn(tokens, 2880, device=DEVICE, dtype=torch.bfloat16)
            w = torch.softmax(torch.randn(tokens, 4, device=DEVICE), -1).to(torch.bfloat16)
            idx = torch.stack([torch.randperm(experts, device=DEVICE)[:4] for _ in range(tokens)])
            ref = moe.experts_loop(x.float(), w.float(), idx, gu.float(), gub.float(), dp.float(), dpb.float(), 1.702, 7.0)
            out = moe.experts_forward(x, w, idx, gu, gub, dp, dpb, 1.702, 7.0)
            paths[f"grouped_mm_tokens{tokens}_rel"] = ((out.float() - ref).norm() / ref.norm()).item()
        print(paths, flush=True)

    @section("check", args)
    def _check():
        # A 2-layer model of full width: the GPU paths (flex prefill, grouped MoE, compiled graph decode) vs HF eager.
        config = build_config(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
        if TINY_RUN:
            config.vocab_size = 1024
        model = build_model(config)
        engine = FastGptOss(model, max_batch_size=4, max_seq_len=400)
        prompts = [random_prompts(1, n, seed=n)[0] for n in (300, 150, 40)]
        logits = engine.logits(prompts)
        worst = 0.0
        with torch.no_grad():
            for row, ids in enumerate(prompts):
                ref = model(torch.tensor([ids], device=DEVICE)).logits[0].float()
                worst = max(worst, (logits[row, -len(ids):] - ref).abs().max().item())
            cont = random_prompts(3, 40, seed=1)
            steps = engine.decode_logits(prompts, cont)
            worst_decode = 0.0
            for row, (ids, extra) in enumerate(zip(prompts, cont)):
                ref = model(torch.tensor([ids + extra], device=DEVICE)).logits[0, len(ids) - 1:].float()
                worst_decode = max(worst_decode, (steps[row] - ref).abs().max().item())
            scale = ref.std().item()
        results["check_2layer"] = {"prefill_max_abs_diff": worst, "decode_max_abs_diff": worst_decode,
                                   "logit_std": scale, "compiled_fns": engine._decode_fns is not engine._eager,
                                   "hf_attn_implementation": model.config._attn_implementation}
        # bf16 against fp32: which of the two bf16 implementations is nearer the fp32 model?
        import copy

        model32 = copy.deepcopy(model).float()
        logits = engine.logits(prompts)
        stats = {"engine": [], "hf_bf16": []}
        with torch.no_grad():
            for row, ids in enumerate(prompts):
                x = torch.tensor([ids], device=DEVICE)
                r32 = model32(x).logits[0].float()
                for name, value in (("engine", logits[row, -len(ids):]), ("hf_bf16", model(x).logits[0].float())):
                    diff = (value - r32).abs()
                    stats[name].append((diff.max().item(), diff.mean().item(),
                                        (value.argmax(-1) == r32.argmax(-1)).float().mean().item(),
                                        (diff.amax(-1) > 0.5).float().mean().item()))
        for name, rows in stats.items():
            results["check_2layer"][f"{name}_vs_fp32"] = {
                "max_abs": max(r[0] for r in rows), "mean_abs": sum(r[1] for r in rows) / len(rows),
                "argmax_match": sum(r[2] for r in rows) / len(rows),
                "tokens_with_diff_over_0.5": sum(r[3] for r in rows) / len(rows),
            }
        del model32
        import ossgym.agents.gptoss.moe as moe_module

        for variant in ("no_flex", "no_grouped"):
            engine.use_flex = variant != "no_flex"
            saved = moe_module.use_grouped
            if variant == "no_grouped":
                moe_module.use_grouped = lambda x: False
            try:
                logits = engine.logits(prompts)
            finally:
                moe_module.use_grouped = saved
            diff = 0.0
            with torch.no_grad():
                for row, ids in enumerate(prompts):
                    ref = model(torch.tensor([ids], device=DEVICE)).logits[0].float()
                    diff = max(diff, (logits[row, -len(ids):] - ref).abs().max().item())
            results["check_2layer"][f"prefill_max_abs_diff_{variant}"] = diff
        engine.use_flex = DEVICE == "cuda"
        print(results["check_2layer"], flush=True)
        del engine, model

    state: dict = {}

    def model20b():
        if "model" not in state:
            config = build_config()
            reset_peak()
            base = mem_now()
            model, seconds = timed(lambda: build_model(config))
            state["model"] = model
            state["weights"] = mem_now() - base
            results["weights_GiB"] = state["weights"] / GiB
            results["params_B"] = sum(p.numel() for p in model.parameters()) / 1e9
            print(f"gpt-oss-20b random bf16: {results['params_B']:.2f} B params, {results['weights_GiB']:.2f} GiB,"
                  f" built in {seconds:.1f}s", flush=True)
        return state["model"]

    @section("fast", args)
    def _fast():
        model = model20b()
        before = mem_now()
        engine = FastGptOss(model, max_batch_size=max(batches), max_seq_len=PROMPT + 1024)
        state["engine"] = engine
        rows = results.setdefault("fast", {})
        for batch in batches:
            prompts = random_prompts(batch, PROMPT, seed=batch)
            _, warm = timed(lambda: (engine.warmup(batch), engine.generate(
                prompts, max_new_tokens=8, seed=0, vocab_size_limit=VOCAB_LIMIT)))
            rows[f"warmup_b{batch}_s"] = warm
            for new in (128, 1024):
                reset_peak()
                out, seconds = timed(lambda: engine.generate(
                    prompts, max_new_tokens=new, temperature=1.0, top_p=1.0, seed=1, vocab_size_limit=VOCAB_LIMIT))
                produced = sum(len(t) for t in out.tokens)
                rows[f"b{batch}_new{new}"] = {
                    "tok_s": produced / seconds, "seconds": seconds, "tokens": produced,
                    "peak_beyond_weights_GiB": (mem_peak() - before) / GiB,
                }
                print(f"fast b{batch} new{new}: {produced / seconds:.1f} tok/s, peak beyond weights "
                      f"{rows[f'b{batch}_new{new}']['peak_beyond_weights_GiB']:.2f} GiB (warm-up {warm:.1f}s)",
                      flush=True)
        rows["cache_GiB"] = engine.cache.nbytes() / GiB
        rows["compiled_fns"] = engine._decode_fns is not engine._eager

    @section("agree", args)
    def _agree():
        model = model20b()
        engine = state.get("engine") or FastGptOss(model, max_batch_size=8, max_seq_len=PROMPT + 1024)
        prompt = random_prompts(1, PROMPT, seed=123)
        ids = torch.tensor(prompt, device=DEVICE)
        with torch.no_grad():
            hf = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=256,
                                min_new_tokens=256, pad_token_id=0)[0, PROMPT:].tolist()
        fast = engine.generate(prompt, max_new_tokens=256, temperature=0.0).tokens[0]
        first_diff = next((i for i, (a, b) in enumerate(zip(hf, fast)) if a != b), 256)
        steps = engine.decode_logits(prompt, [hf[:255]])[0]  # teacher-forced on HF's greedy tokens
        with torch.no_grad():
            ref = model(torch.tensor([prompt[0] + hf], device=DEVICE)).logits[0, PROMPT - 1:-1].float()
        prefill_batch = random_prompts(8, PROMPT, seed=7)
        prefill_batch = [p[: PROMPT - 9 * i] for i, p in enumerate(prefill_batch)]  # left padding
        pre = engine.logits(prefill_batch)
        pre_diff = 0.0
        with torch.no_grad():
            for row, p in enumerate(prefill_batch):
                r = model(torch.tensor([p], device=DEVICE)).logits[0].float()
                pre_diff = max(pre_diff, (pre[row, -len(p):] - r).abs().max().item())
        per_token = (steps - ref).abs().amax(-1)
        top5 = steps.topk(5, dim=-1).indices
        results["agreement"] = {
            "decode_mean_abs_logit_diff": (steps - ref).abs().mean().item(),
            "decode_median_token_max_diff": per_token.median().item(),
            "hf_argmax_in_engine_top5": (top5 == ref.argmax(-1, keepdim=True)).any(-1).float().mean().item(),
            "hf_top1_top2_gap_median": (lambda t: (t[:, 0] - t[:, 1]).median().item())(ref.topk(2, -1).values),
            "greedy_match_rate_256": sum(a == b for a, b in zip(hf, fast)) / 256,
            "greedy_first_divergence": first_diff,
            "teacher_forced_argmax_match": (steps.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "decode_max_logit_diff": (steps - ref).abs().max().item(),
            "prefill_max_logit_diff_padded_b8": pre_diff,
            "logit_std": ref.std().item(),
        }
        print(results["agreement"], flush=True)

    @section("prefill", args)
    def _prefill():
        model = model20b()
        state.pop("engine", None)
        empty_cache()
        lengths = [int(n) for n in args.prefill.split(",")]
        engine = FastGptOss(model, max_batch_size=1, max_seq_len=max(lengths) + 8)
        rows = results.setdefault("prefill_fast", {})
        for n in lengths:
            prompt = random_prompts(1, n, seed=n)
            reset_peak()
            try:
                _, seconds = timed(lambda: engine.generate(prompt, max_new_tokens=2, temperature=0.0))
                rows[n] = {"ok": True, "seconds": seconds,
                           "peak_beyond_weights_GiB": (mem_peak() - state["weights"]) / GiB}
            except torch.OutOfMemoryError:
                rows[n] = {"ok": False}
            print(f"fast prefill {n}: {rows[n]}", flush=True)
            save(args)
        del engine
        empty_cache()
        rows = results.setdefault("prefill_stock", {})
        for n in (4096, 8192, 16384):
            ids = torch.tensor(random_prompts(1, n, seed=n), device=DEVICE)
            try:
                with torch.no_grad():
                    _, seconds = timed(lambda: model(ids, logits_to_keep=1))
                rows[n] = {"ok": True, "seconds": seconds}
            except torch.OutOfMemoryError:
                rows[n] = {"ok": False}
            empty_cache()
            print(f"stock prefill {n}: {rows[n]}", flush=True)

    @section("stock", args)
    def _stock():
        model = model20b()
        state.pop("engine", None)
        empty_cache()
        rows = results.setdefault("stock", {})
        long_batches = [int(b) for b in args.stock_1024.split(",") if b]
        for batch in batches:
            ids = torch.tensor(random_prompts(batch, PROMPT, seed=batch), device=DEVICE)
            for new in (128, 1024):
                if new == 1024 and batch not in long_batches:
                    rows[f"b{batch}_new{new}"] = "skipped: would not fit the 10-minute limit with the other runs"
                    print(f"stock b{batch} new{new}: skipped (time limit)", flush=True)
                    continue
                reset_peak()
                with torch.no_grad():
                    _, seconds = timed(lambda: model.generate(
                        ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0,
                        max_new_tokens=new, min_new_tokens=new, pad_token_id=0))
                rows[f"b{batch}_new{new}"] = {
                    "tok_s": batch * new / seconds, "seconds": seconds,
                    "peak_beyond_weights_GiB": (mem_peak() - state["weights"]) / GiB,
                }
                print(f"stock b{batch} new{new}: {rows[f'b{batch}_new{new}']}", flush=True)
                save(args)

    print_table()
    save(args)


def print_table() -> None:
    fast, stock = results.get("fast", {}), results.get("stock", {})
    print("\n| run | fast tok/s | stock tok/s | speed-up | fast peak beyond weights | stock peak beyond weights |")
    print("|---|---|---|---|---|---|")
    for key in sorted(k for k in fast if k.startswith("b") and isinstance(fast[k], dict)):
        f, s = fast[key], stock.get(key)
        s_tok = f"{s['tok_s']:.1f}" if isinstance(s, dict) else "skipped"
        ratio = f"{f['tok_s'] / s['tok_s']:.1f}x" if isinstance(s, dict) else "-"
        s_mem = f"{s['peak_beyond_weights_GiB']:.2f} GiB" if isinstance(s, dict) else "-"
        print(f"| {key} | {f['tok_s']:.1f} | {s_tok} | {ratio} | {f['peak_beyond_weights_GiB']:.2f} GiB | {s_mem} |")
    for name in ("prefill_fast", "prefill_stock"):
        if name in results:
            ok = [int(n) for n, r in results[name].items() if r.get("ok")]
            print(f"{name}: longest batch-1 prefill that fit: {max(ok) if ok else 'none'} "
                  f"({json.dumps(results[name])})")
    for name in ("check_2layer", "agreement", "sections"):
        if name in results:
            print(name, json.dumps(results[name]))


if __name__ == "__main__":
    main()
