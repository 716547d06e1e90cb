"""Long-context training step of random full-size gpt-oss-20b: flex_sinks against eager, in one run (GPU).

One step = forward + backward of the model body and a chunked log-prob loss (the GRPO loss's memory shape:
micro-batch 1, LoRA r=16 on q/k/v/o, activation checkpointing, LM head + log-softmax in 4,096-token chunks so
[tokens, 201,088] logits never exist). Prints peak memory and step time per length, the longest length that
fits each memory budget (a linear fit of measured peaks for flex_sinks, whose memory is O(N); marked when it
extrapolates past the longest measured length), and a tiny-model correctness check of the CUDA flex path
against eager (logits and every gradient, sinks included, left padding, window crossed).

    python scripts/bench_long_context.py --lengths 4096,16384,65536,131072 --eager-lengths 4096,8192
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

GiB = 1024**3


def log(*a):
    print(*a, flush=True)


def tiny_check(device: str) -> dict:
    """The CUDA flex path against eager on the tiny model in fp32: max abs differences of logits and grads."""
    from ossgym.agents.gptoss import flex_sinks
    from ossgym.agents.gptoss.tiny import tiny_model

    ids = torch.randint(0, 1000, (3, 300), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones(3, 300, dtype=torch.long, device=device)
    mask[1, :57] = 0
    mask[2, :170] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    res = {}
    for impl in ("eager", flex_sinks.NAME):
        m = tiny_model(device=device)
        m.train()
        m.set_attn_implementation(impl)
        with torch.no_grad():
            for layer in m.model.layers:
                layer.self_attn.sinks.copy_(torch.linspace(-3, 3, layer.self_attn.sinks.numel()))
        logits = m(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        w = torch.randn(logits.shape[-1], generator=torch.Generator().manual_seed(2)).to(device)
        ((logits * w).sum(-1) * mask).sum().div(mask.sum()).backward()
        res[impl] = (logits.detach()[mask.bool()], {n: p.grad for n, p in m.named_parameters() if p.grad is not None})
    (le, ge), (lf, gf) = res["eager"], res[flex_sinks.NAME]
    grad_err = max(((gf[n] - ge[n]).abs().max() / ge[n].abs().max().clamp(min=1)).item() for n in ge)
    sink_err = max(((gf[n] - ge[n]).abs().max() / ge[n].abs().max().clamp(min=1)).item() for n in ge if "sinks" in n)
    return {"logits_max_abs_err": (lf - le).abs().max().item(), "grad_max_rel_err": grad_err,
            "sinks_grad_max_rel_err": sink_err, "same_grad_set": set(ge) == set(gf)}


def build(device: str):
    from peft import LoraConfig, get_peft_model

    from ossgym.agents.gptoss.presets import gpt_oss_20b_config, random_model

    model = random_model(gpt_oss_20b_config(), device)
    model.config.attention_dropout = 0.0
    core, head = model.model, model.lm_head
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                  "o_proj"]))
    model.train()
    core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, core, head


def step(model, core, head, impl: str, n: int, device: str) -> dict:
    from ossgym.training.logprobs import chunked_logprobs

    core.config._attn_implementation = impl
    model.base_model.model.config._attn_implementation = impl
    ids = torch.randint(0, 200_000, (1, n), device=device)
    for p in model.parameters():
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    hidden = core(input_ids=ids).last_hidden_state
    lp = chunked_logprobs(hidden[:, :-1], head.weight, ids[:, 1:], chunk_size=4096)
    loss = -lp.mean()
    loss.backward()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated()
    del hidden, lp, loss
    return {"impl": impl, "tokens": n, "step_s": dt, "ms_per_1k_tok": 1000 * dt / (n / 1000),
            "peak_gib": peak / GiB, "beyond_weights_gib": (peak - base) / GiB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="4096,16384,65536,131072")
    ap.add_argument("--eager-lengths", default="4096,8192")
    ap.add_argument("--budget-s", type=float, default=460.0, help="stop starting steps after this many seconds")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    t_start = time.perf_counter()
    device = "cuda"
    import ossgym.agents.agent  # noqa: F401  registers flex_sinks
    import torch._dynamo.utils as dutils

    results: dict = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(), "steps": []}
    import transformers

    results["transformers"] = transformers.__version__

    def save():
        with open(os.path.join(args.out, "bench_long_context.json"), "w") as f:
            json.dump(results, f, indent=1)

    try:
        results["tiny_cuda_check"] = tiny_check(device)
    except Exception as e:  # noqa: BLE001 - report and go on to the benchmark
        results["tiny_cuda_check"] = {"error": repr(e)[:2000]}
    log("tiny check", results["tiny_cuda_check"])
    save()
    model, core, head = build(device)
    results["weights_gib"] = torch.cuda.memory_allocated() / GiB
    log(f"built in {time.perf_counter() - t_start:.0f}s, weights {results['weights_gib']:.1f} GiB")
    plan = [("flex_sinks", 4096), ("flex_sinks", 4096), ("eager", 4096), ("eager", 4096)]
    plan += [("eager", int(n)) for n in args.eager_lengths.split(",") if int(n) != 4096]
    plan += [("flex_sinks", int(n)) for n in args.lengths.split(",") if int(n) != 4096]
    frames_after_warm = None
    for i, (impl, n) in enumerate(plan):
        if time.perf_counter() - t_start > args.budget_s:
            log("time budget reached; skipping", impl, n)
            results["steps"].append({"impl": impl, "tokens": n, "skipped": "time budget"})
            continue
        try:
            r = step(model, core, head, impl, n, device)
        except torch.OutOfMemoryError:
            r = {"impl": impl, "tokens": n, "oom": True}
            torch.cuda.empty_cache()
        r["warmup"] = i in (0, 2)
        if i == 1:
            frames_after_warm = dutils.counters["frames"]["ok"]
        results["steps"].append(r)
        log(json.dumps(r))
        save()
    results["dynamo_frames_compiled_after_warmup"] = (dutils.counters["frames"]["ok"] - frames_after_warm
                                                      if frames_after_warm is not None else None)
    # longest length per budget from flex_sinks' measured peaks (linear in N)
    pts = [(s["tokens"], s["peak_gib"]) for s in results["steps"]
           if s.get("impl") == "flex_sinks" and "peak_gib" in s and not s.get("warmup")]
    fits = {}
    if len(pts) >= 2:
        xs = torch.tensor([p[0] for p in pts], dtype=torch.float64)
        ys = torch.tensor([p[1] for p in pts], dtype=torch.float64)
        b = ((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum()
        a = ys.mean() - b * xs.mean()
        results["flex_fit"] = {"gib_at_0": a.item(), "gib_per_1k_tokens": 1000 * b.item()}
        for budget in (16, 24, 40, 80, 139):
            n = (budget - a.item()) / b.item()
            fits[str(budget)] = {"max_tokens": max(0, int(n)), "extrapolated": n > xs.max().item()}
    results["fits_flex_sinks"] = fits
    save()
    log(json.dumps({k: v for k, v in results.items() if k != "steps"}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
