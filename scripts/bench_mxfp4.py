"""Benchmark (GPU): MXFP4 decode kernels and rollout speed, the gpt-oss-120b GRPO step, the MXFP4 long-context
budget table and ``ossgym train`` through the CLI (issues 16 and 11), each a phase of one run.

Phases (``--phases``, run in the order given; each recorded in the JSON, a failure recorded and the next phase run):

- ``kernel``: the MXFP4 grouped product on gpt-oss-20b's layer-0 experts (random MXFP4 weights) at decode sizes
  (4 / 32 / 64 / 128 / 256 routed rows: batch 1 / 8 / 16 / 32 / 64 x top-4) and 4,096 rows: every candidate tile
  of the one-row kernel and of the tensor-core kernel, checked against the torch path (fp32) and timed (device
  time from CUDA-graph replays; ``launch_ms``: one launch from Python, gaps included), beside
  the previous kernel (``--prev-weights``, same run) and bf16 ``grouped_mm`` on the dequantized weights (the
  dense path). The fastest correct tiles and the row threshold become weights.py's tiles for the later phases;
  the table prints them (they are what weights.py ships).
- ``speed``: rollout tok/s through the fast engine as shipped (compiled decode, CUDA graphs) at batch 1 / 8 / 64:
  bf16 without LoRA (the issue's baseline), MXFP4 without LoRA, MXFP4 + LoRA r8 on attention and experts (split)
  through lora_rows as shipped, and the same LoRA as products (peft's forward, gathered products: the baseline).
- ``nf4``: gpt-oss-20b MXFP4 + LoRA without and with the attention projections and the LM head in bitsandbytes NF4
  (same run): the group-8 GRPO step's peak (rollout, training) and a 1K + 16K long step's.
- ``engine_rows``: batch-1 decode through an engine sized for 1 row against one sized for 64.
- ``step120b``: gpt-oss-120b (its config, random MXFP4 experts built on the GPU: presets.random_mxfp4_model),
  LoRA r8 on attention + split expert LoRA: one group-8 rollout of 1,024 new tokens after a 530-token prompt, the
  engine released, embeddings offloaded, then the policy-gradient forward/backward per sequence (flex_sinks,
  TRL's fused head, activation checkpointing) and a paged 8-bit AdamW step: peak memory of each part.
- ``budget``: gpt-oss-20b MXFP4, one training step of one sequence (micro-batch 1; chunked experts, checkpoints
  offloaded, embeddings offloaded, flex_sinks, TRL's fused head, paged 8-bit AdamW) at growing lengths: peak and
  time per length, so the longest step per memory budget follows; at 16K a CUDA memory snapshot of the step
  (``$OUT/snapshot16k.pickle``) says what the memory beyond the weights is.
- ``cli`` (before ``budget``): ``python -m ossgym.cli train --model <the MXFP4 folder> ...`` as a user runs it (compiled engine), 2
  steps, peak GPU memory polled with nvidia-smi.

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_mxfp4.py --phases kernel,speed --out $OUT/a.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_memory import (  # noqa: E402
    CUDA, DEV, GIB, T0, bench_ms, free, load_previous_weights, log, peaks, record_phase, reset_peak, rollout,
    split_lora, sync, train_pass, train_ready, write_random_mxfp4,
)

DECODE_ROWS = (4, 32, 64, 128, 256)
AUTOCAST = False  # --autocast: long steps under bf16 autocast, as the trainer runs them
GEMV_TILES = [dict(block_n=bn, block_g=bg, num_warps=w) for bn in (16, 32) for bg in (8, 16) for w in (2, 4)] + [
    dict(block_n=8, block_g=8, num_warps=1), dict(block_n=16, block_g=8, num_warps=1)]
# (block_m, block_n, block_k, warps, split, swap): block_m <= 32 for decode sizes, >= 64 for 4K rows (both at 256)
DOT_TILES = [(16, 64, 128, 4, False, False), (16, 128, 64, 4, False, False), (32, 64, 64, 4, False, False),
             (16, 64, 128, 4, True, False),
             (16, 64, 128, 4, False, True), (16, 128, 128, 4, False, True), (16, 128, 64, 4, False, True),
             (32, 128, 64, 4, False, True), (16, 128, 128, 4, True, True), (16, 256, 64, 8, False, True),
             (64, 128, 64, 8, False, False), (128, 128, 64, 8, False, False), (64, 128, 128, 8, False, False),
             (64, 128, 64, 4, False, True), (128, 128, 64, 8, False, True), (64, 256, 64, 8, False, True),
             (128, 128, 128, 8, True, True)]


def graph_ms(fn, calls: int = 10, reps: int = 20) -> float:
    """Median device ms of one fn() call: `calls` of them captured in a CUDA graph and replayed, so launch gaps
    (which dominate single decode-sized launches from Python) stay out; plain bench_ms off CUDA."""
    if not CUDA:
        return bench_ms(fn)
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return bench_ms(graph.replay, reps) / calls


def routed_offs(rows: int, num_experts: int, top_k: int = 4, seed: int = 0) -> torch.Tensor:
    """Group ends of `rows` routed rows as a router makes them: rows / top_k tokens, each on top_k distinct experts."""
    g = torch.Generator().manual_seed(seed)
    tokens = max(1, rows // top_k)
    index = torch.rand(tokens, num_experts, generator=g).topk(top_k, dim=-1).indices.flatten()[:rows]
    return torch.cumsum(index.bincount(minlength=num_experts), 0).to(torch.int32).to(DEV)


def kernel_phase(model, prev) -> dict:
    from ossgym.agents.gptoss import weights as W

    experts = model.model.layers[0].mlp.experts
    cases: dict = {}
    shipped = (dict(W.GEMV_TILE), W.GEMV_MAX_ROWS, dict(W.DOT_TILES))

    def run(fn, x, ref):
        try:
            y = fn().float()
        except Exception as exc:  # noqa: BLE001 - a candidate that does not compile is a result
            return {"ok": False, "error": repr(exc)[:300], "ms": None}
        err = ((y - ref).norm() / ref.norm()).item()
        ok = bool(torch.isfinite(y).all()) and err < 1e-2
        timed = graph_ms(fn) if ok else None
        return {"rel_err": err, "ok": ok, "ms": timed, "launch_ms": bench_ms(fn) if ok else None}

    for name in ("gate_up_proj", "down_proj"):
        w = experts.expert_weight(name)
        dense = w.dense(torch.bfloat16).contiguous()
        dense_t = dense.transpose(1, 2).contiguous()
        for rows in DECODE_ROWS + (4096,):
            offs = routed_offs(rows, w.num_experts)
            for transpose in (False, True) if rows == 4096 else (False,):
                k = w.out_features if transpose else w.in_features
                x = torch.randn(rows, k, device=DEV, dtype=torch.bfloat16)
                ref = W._mxfp4_mm_torch(x.float(), w.blocks, w.scales, offs, transpose)
                case = {"bf16_grouped_mm_ms": graph_ms(lambda: W._dense_grouped(x, dense_t if transpose else dense,
                                                                                offs))}
                if prev is not None:
                    case["prev"] = run(lambda: prev._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose), x, ref)
                if not transpose and rows <= 256:
                    W.GEMV_MAX_ROWS = 1 << 30
                    for tile in GEMV_TILES:
                        W.GEMV_TILE = tile
                        case[f"gemv {tile['block_n']}/{tile['block_g']}/{tile['num_warps']}"] = run(
                            lambda: W._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose), x, ref)
                W.GEMV_MAX_ROWS = 0
                for tile in DOT_TILES:
                    if (rows <= 256) != (tile[0] <= 32) and rows != 256:
                        continue  # small tiles for decode sizes, large ones for 4K (both at 256)
                    W.DOT_TILES = {"small": tile, "large": tile}
                    case[f"dot {'/'.join(map(str, tile))}"] = run(
                        lambda: W._mxfp4_mm_triton(x, w.blocks, w.scales, offs, transpose), x, ref)
                cases[f"{name} rows={rows} T={int(transpose)}"] = case
                best = min(((v["ms"], k) for k, v in case.items() if isinstance(v, dict) and v.get("ms")),
                           default=(None, None))
                log("kernel", name, rows, transpose, "bf16", f"{case['bf16_grouped_mm_ms']:.3f}",
                    "prev", (case.get("prev") or {}).get("ms"), "best", best)
        del dense, dense_t
    W.GEMV_TILE, W.GEMV_MAX_ROWS, W.DOT_TILES = shipped
    return {"cases": cases, "choice": choose_tiles(cases)}


def choose_tiles(cases: dict) -> dict:
    """The fastest correct tiles: one-row tile by decode time at 4 and 32 rows (both projections), the threshold as
    the largest decode size up to which the one-row kernel wins, the tensor-core tiles at 256 rows (small: decode
    above the threshold) and 4,096 rows (large)."""
    def total(prefix: str, keys) -> dict:
        out: dict = {}
        for key in keys:
            for cand, v in cases.get(key, {}).items():
                if cand.startswith(prefix) and isinstance(v, dict):
                    out[cand] = out.get(cand, 0.0) + (v["ms"] if v.get("ms") else float("inf"))
        return out

    def keys(rows, transposes=(0,)):
        return [f"{n} rows={r} T={t}" for n in ("gate_up_proj", "down_proj") for r in rows for t in transposes]

    gemv = total("gemv", keys((4, 32)))
    best_gemv = min(gemv, key=gemv.get)
    def block_m(cand: str) -> int:
        return int(cand.split()[1].split("/")[0])

    small = total("dot", keys((256,)))  # above the one-row kernel's rows: batch 64 decode
    best_small = min(small, key=small.get)
    large = {c: t for c, t in total("dot", keys((4096,), (0, 1))).items() if block_m(c) >= 64}
    best_large = min(large, key=large.get)
    threshold = 0
    for rows in DECODE_ROWS:
        g = total(best_gemv, keys((rows,))).get(best_gemv, float("inf"))
        d = min(total("dot", keys((rows,))).values(), default=float("inf"))
        if g > d:
            break
        threshold = rows
    bn, bg, warps = (int(v) for v in best_gemv.split()[1].split("/"))
    def tile(cand: str) -> tuple:
        *sizes, split, swap = cand.split()[1].split("/")
        return (*(int(v) for v in sizes), split == "True", swap == "True")

    return {"GEMV_TILE": {"block_n": bn, "block_g": bg, "num_warps": warps}, "GEMV_MAX_ROWS": threshold,
            "DOT_TILES": {"small": tile(best_small), "large": tile(best_large)}}


def apply_choice(choice: dict) -> None:
    from ossgym.agents.gptoss import weights as W

    W.GEMV_TILE, W.GEMV_MAX_ROWS = choice["GEMV_TILE"], choice["GEMV_MAX_ROWS"]
    W.DOT_TILES = {k: tuple(v) for k, v in choice["DOT_TILES"].items()}
    log("tiles", choice)


def decode_speed(model, batches, new_tokens, prompt_len, label, engine_rows: int | None = None) -> dict:
    """Rollout tok/s at each batch through the engine as shipped (compiled, CUDA graphs; distinct random prompts):
    with the prefill (the issue's measure) and the decode alone (from a second, 1-token call)."""
    from ossgym.agents.gptoss.engine import FastGptOss

    res = {}
    engine = FastGptOss(model, max_batch_size=engine_rows or max(batches),
                        max_seq_len=prompt_len + max(new_tokens.values()) + 8)
    g = torch.Generator().manual_seed(0)
    for b in batches:
        prompts = torch.randint(0, 200000, (b, prompt_len), generator=g).tolist()
        engine.generate(prompts, max_new_tokens=4, seed=0)
        engine.warmup(b)
        times = {}
        for n in (1, new_tokens[b]):
            sync()
            t0 = time.perf_counter()
            engine.generate(prompts, max_new_tokens=n, seed=1)
            sync()
            times[n] = time.perf_counter() - t0
        n = new_tokens[b]
        res[b] = {"tok_s": b * n / times[n], "decode_tok_s": b * (n - 1) / (times[n] - times[1]),
                  "prefill_s": times[1]}
        log(label, b, res[b])
    engine.release()
    del engine
    free()
    return res


def speed_phase(path: Path, config, batches, new_tokens, prompt_len) -> dict:
    """MXFP4 alone, MXFP4 + LoRA on attention and experts (through lora_rows, and as products: the baseline),
    bf16 alone (the goal)."""
    from ossgym.agents.gptoss import lora_rows
    from ossgym.agents.gptoss.mxfp4 import load_gptoss
    from ossgym.agents.gptoss.presets import random_model

    res: dict = {}
    model = load_gptoss(path, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
    # before split_lora, which adds the LoRA layers to `model` itself (earlier entries' "no LoRA" rows had them)
    res["mxfp4"] = decode_speed(model, batches, new_tokens, prompt_len, "mxfp4 no LoRA")
    peft_model, _ = split_lora(model)
    res["mxfp4_lora"] = decode_speed(peft_model, batches, new_tokens, prompt_len, "mxfp4 + LoRA")
    rows_max = lora_rows.LORA_ROWS_MAX
    lora_rows.LORA_ROWS_MAX = -1  # the baseline: the LoRA as products (peft's forward, the gathered products)
    try:
        res["mxfp4_lora_products"] = decode_speed(peft_model, batches, new_tokens, prompt_len,
                                                  "mxfp4 + LoRA as products")
    finally:
        lora_rows.LORA_ROWS_MAX = rows_max
    del peft_model, model
    free()
    bf16 = random_model(config, DEV)
    res["bf16"] = decode_speed(bf16, batches, new_tokens, prompt_len, "bf16 no LoRA")
    del bf16
    free()
    return res


def engine_rows_phase(path: Path, new_tokens: int, prompt_len: int) -> dict:
    """Batch-1 decode of MXFP4 + LoRA through an engine sized for 1 row and one sized for 64 (the speed table's)."""
    from ossgym.agents.gptoss.mxfp4 import load_gptoss

    model = load_gptoss(path, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
    peft_model, _ = split_lora(model)
    res = {rows: decode_speed(peft_model, [1], {1: new_tokens}, prompt_len, f"engine of {rows} rows", rows)
           for rows in (1, 64)}
    del peft_model, model
    free()
    return res


def profile_phase(path: Path, batches, prompt_len: int) -> dict:
    """Where a decode step's time goes (MXFP4 + LoRA, compiled) at each batch: wall time per token in generate,
    one captured step's replay alone (device time), and the kernels of eagerly launched steps by CUDA time."""
    from torch.profiler import ProfilerActivity, profile

    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.mxfp4 import load_gptoss

    model = load_gptoss(path, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
    peft_model, _ = split_lora(model)
    out: dict = {}
    for batch in batches:
        engine = FastGptOss(peft_model, max_batch_size=batch, max_seq_len=prompt_len + 80, compile=True)
        prompts = torch.randint(0, 200000, (batch, prompt_len), generator=torch.Generator().manual_seed(0)).tolist()
        engine.generate(prompts, max_new_tokens=4, seed=0)
        engine.warmup(batch)
        sync()
        t0 = time.perf_counter()
        engine.generate(prompts, max_new_tokens=64, seed=1)
        sync()
        res: dict = {"batch": batch, "wall_ms_per_step": (time.perf_counter() - t0) * 1e3 / 64}
        if engine._graphs:
            res["graph_replay_ms"] = bench_ms(engine._graphs[max(engine._graphs)].graph.replay)
        tokens = torch.zeros(batch, dtype=torch.long, device=DEV)
        pad = torch.zeros(batch, dtype=torch.long, device=DEV)
        engine.use_graphs = False
        with torch.no_grad():  # as generate runs the step (autograd on, the LoRA would take its products)
            res["eager_launch_ms_per_step"] = bench_ms(lambda: engine._decode(tokens, prompt_len + 10, pad), reps=5)
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    engine._decode(tokens, prompt_len + 10, pad)
                sync()
        res["kernels"] = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
        log("profile", {k: v for k, v in res.items() if k != "kernels"})
        print(res["kernels"][-6000:])
        engine.release()
        del engine
        free()
        out[batch] = res
    del peft_model, model
    free()
    return out


def group_step(peft_model, params, prompt: list[int], group: int, completion: int) -> tuple[dict, object]:
    """One GRPO step as ossgym train runs it: a group rollout (engine, CUDA graphs), the engine released, then the
    training passes (``train_ready``; flex compiled once outside the measurement) and an optimizer step. Returns
    the peaks and times, and the LM ready for more passes."""
    row: dict = {}
    row["rollout"], engine, seqs = rollout(peft_model, prompt, group, completion)
    engine.release()
    del engine
    free()
    lm = train_ready(peft_model)
    train_pass(lm, params, [seqs[0][: len(prompt) + 64]], len(prompt), "flex_sinks", "trl")
    row["train"] = train_pass(lm, params, seqs, len(prompt), "flex_sinks", "trl")
    row["step_peak_gib"] = max(row["train"]["peak_gib"], row["rollout"]["peak_gib"])
    return row, lm


def nf4_phase(path: Path, parts: tuple[str, ...], prompt_len: int, completion: int, group: int,
              long_tokens: int) -> dict:
    """gpt-oss-20b MXFP4 + LoRA as in ``step120b``, without and then with ``parts`` in NF4 (nf4.py), same run: the
    group-8 GRPO step (rollout, then training) and one long step (1K prompt + `long_tokens`, chunked experts,
    checkpoints offloaded)."""
    from ossgym.agents.gptoss.mxfp4 import load_gptoss, set_expert_chunk_tokens, weight_bytes
    from ossgym.agents.gptoss.nf4 import quantize_nf4

    res: dict = {}
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 200000, (prompt_len,), generator=g).tolist()
    long_seq = torch.randint(0, 200000, (1024 + long_tokens,), generator=g).tolist()
    for name, quantized in (("mxfp4", ()), ("mxfp4+nf4 " + ",".join(parts), parts)):
        reset_peak()
        model = load_gptoss(path, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
        if quantized:
            quantize_nf4(model, quantized)
        row: dict = {"weights_gib": weight_bytes(model) / GIB, "allocated_gib": torch.cuda.memory_allocated() / GIB
                     if CUDA else 0.0}
        peft_model, params = split_lora(model)
        step, lm = group_step(peft_model, params, prompt, group, completion)
        row.update(step)
        set_expert_chunk_tokens(lm, 2048)
        row["long"] = train_pass(lm, params, [long_seq], 1024, "flex_sinks", "trl", offload_checkpoints=True,
                                 autocast=AUTOCAST)
        log("nf4 phase", name, row)
        res[name] = row
        del lm, peft_model, model, params
        free()
    return res


def step120b_phase(config, prompt_len: int, completion: int, group: int) -> dict:
    from ossgym.agents.gptoss.mxfp4 import weight_bytes
    from ossgym.agents.gptoss.presets import random_mxfp4_model

    reset_peak()
    t0 = time.perf_counter()
    model = random_mxfp4_model(config, DEV)
    res: dict = {"build_s": time.perf_counter() - t0, "weights_gib": weight_bytes(model) / GIB, **peaks()}
    peft_model, params = split_lora(model)
    res["lora_params_m"] = sum(p.numel() for p in params) / 1e6
    log("120b built", res)
    prompt = torch.randint(0, 200000, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    step, lm = group_step(peft_model, params, prompt, group, completion)
    res.update(step)
    log("120b step", step)
    del lm, peft_model, model, params
    free()
    return res


def budget_phase(path: Path, lengths, prompt_len: int, deadline: float, snapshot_dir: str | None,
                 snapshot_at: int | None = None) -> dict:
    from ossgym.agents.gptoss.mxfp4 import load_gptoss, set_expert_chunk_tokens

    model = load_gptoss(path, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
    peft_model, params = split_lora(model)
    lm = train_ready(peft_model)
    set_expert_chunk_tokens(lm, 2048)
    g = torch.Generator().manual_seed(7)
    res: dict = {"skipped": []}
    train_pass(lm, params, [torch.randint(0, 200000, (prompt_len + 64,), generator=g).tolist()], prompt_len,
               "flex_sinks", "trl")
    for tokens in lengths:
        if time.perf_counter() > deadline:
            res["skipped"].append(tokens)
            continue
        seq = torch.randint(0, 200000, (tokens,), generator=g).tolist()
        snap = snapshot_dir and tokens == snapshot_at and CUDA
        if snap:
            torch.cuda.memory._record_memory_history(max_entries=200000, stacks="python")
        try:
            res[tokens] = train_pass(lm, params, [seq], prompt_len, "flex_sinks", "trl", offload_checkpoints=True,
                                     autocast=AUTOCAST)
        except Exception as exc:  # noqa: BLE001 - out of memory is a result here
            traceback.print_exc()
            res[tokens] = {"error": repr(exc)[:300]}
            lm.eval()
            free()
        if snap:
            torch.cuda.memory._dump_snapshot(os.path.join(snapshot_dir, "snapshot16k.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        log("budget", tokens, res[tokens])
    del lm, peft_model, model, params
    free()
    return res


def cli_phase(path: Path, out_dir: Path) -> dict:
    """``ossgym train`` in a subprocess, as a user runs it; GPU memory polled with nvidia-smi every 0.5 s."""
    cmd = [sys.executable, "-m", "ossgym.cli", "train", "--model", str(path), "--steps", "2", "--group-size", "8",
           "--max-completion-length", "256", "--lora-target-parameters", "mlp.experts.gate_up_proj,mlp.experts.down_proj",
           "--offload-embeddings", "--optim", "paged_adamw_8bit" if CUDA else "adamw_torch", "--no-merged-export", "--no-progress",
           "--output-dir", str(out_dir)]
    poll = subprocess.Popen(["bash", "-c", "while command -v nvidia-smi >/dev/null; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,"
                             "nounits; sleep 0.5; done"], stdout=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
    wall = time.perf_counter() - t0
    poll.terminate()
    used = [int(line) for line in poll.communicate()[0].split() if line.strip().isdigit()]
    log_file = out_dir / "log.jsonl"
    records = [json.loads(line) for line in log_file.read_text().splitlines()] if log_file.exists() else []
    res = {"cmd": " ".join(cmd), "returncode": proc.returncode, "wall_s": wall,
           "nvidia_smi_peak_mib": max(used, default=None), "records": records,
           "stderr_tail": proc.stderr[-3000:], "files": sorted(p.name for p in out_dir.iterdir()) if out_dir.exists() else []}
    log("cli", {k: v for k, v in res.items() if k not in ("records", "stderr_tail")})
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", default="kernel,speed,engine_rows,profile,nf4,step120b,budget,cli")
    parser.add_argument("--out", default=None)
    parser.add_argument("--prev-weights", default=None, help="path of the previous weights.py (kernel baseline)")
    parser.add_argument("--lengths", default="4096,16384,32768,65536,131072")
    parser.add_argument("--budget-deadline-s", type=float, default=540.0, help="start no budget length after this")
    parser.add_argument("--tiny", action="store_true", help="CPU dry run: tiny config, toy lengths")
    parser.add_argument("--autocast", action="store_true", help="long steps (budget, nf4) under bf16 autocast, as "
                        "the trainer runs them (bf16=True); the entries so far ran without")
    args = parser.parse_args()
    global AUTOCAST
    AUTOCAST = args.autocast
    phases = [p for p in args.phases.split(",") if p]
    import ossgym  # noqa: F401  registers flex_sinks
    import ossgym.agents.agent  # noqa: F401
    from ossgym.agents.gptoss.mxfp4 import load_gptoss
    from ossgym.agents.gptoss.presets import gpt_oss_20b_config
    from ossgym.agents.gptoss.tiny import tiny_config

    out_path = args.out or (str(Path(os.environ["OUT"]) / "bench_mxfp4.json") if os.environ.get("OUT") else None)
    results: dict = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
                     "phases": phases, "errors": {}}

    def save():
        if out_path:
            Path(out_path).write_text(json.dumps(results, indent=1, default=str))


    prev = load_previous_weights(args.prev_weights) if args.prev_weights and CUDA else None
    config = tiny_config() if args.tiny else gpt_oss_20b_config()
    tmp = Path(tempfile.mkdtemp(prefix="gptoss-mxfp4-"))
    if set(phases) - {"step120b"}:  # every other phase reads the 20b MXFP4 folder
        results["write_s"] = write_random_mxfp4(config, tmp)
        log("wrote the MXFP4 checkpoint", results["write_s"])
    tiny = args.tiny
    batches, new_tokens = ([1, 4], {1: 8, 4: 8}) if tiny else ([1, 8, 64], {1: 128, 8: 128, 64: 128})
    prompt = 40 if tiny else 530
    lengths = [300, 600] if tiny else [int(v) for v in args.lengths.split(",")]

    def kernel():
        if not CUDA:
            return None
        model = load_gptoss(tmp, device=DEV, dtype=torch.bfloat16, experts="mxfp4")
        out = kernel_phase(model, prev)
        del model
        apply_choice(out["choice"])  # the later phases run the sweep's tiles
        return out

    from ossgym.agents.gptoss.presets import gpt_oss_120b_config

    runs = {
        "kernel": kernel,
        "speed": lambda: speed_phase(tmp, config, batches, new_tokens, prompt),
        "engine_rows": lambda: engine_rows_phase(tmp, 8 if tiny else 128, prompt),
        "profile": lambda: profile_phase(tmp, [1, 4] if tiny else [1, 64], prompt),
        "nf4": lambda: nf4_phase(tmp, ("attention", "lm_head"), prompt, 16 if tiny else 1024, 4 if tiny else 8,
                                 300 if tiny else 16384),
        "step120b": lambda: step120b_phase(config if tiny else gpt_oss_120b_config(), prompt, 16 if tiny else 1024,
                                           4 if tiny else 8),
        "cli": lambda: cli_phase(tmp, tmp / "cli_run"),
        "budget": lambda: budget_phase(tmp, lengths, 32 if tiny else 1024, T0 + args.budget_deadline_s,
                                       os.environ.get("OUT")),
    }
    unknown = [p for p in phases if p not in runs]
    if unknown:
        parser.error(f"unknown phases {unknown}; choose from {list(runs)}")
    for name in phases:  # in the order given
        record_phase(results, name, runs[name], save)
    results["wall_s"] = time.perf_counter() - T0
    save()
    print(json.dumps({k: v for k, v in results.items() if k not in ("kernel",)}, default=str)[:6000])
    if results.get("kernel"):
        print("tiles chosen:", results["kernel"]["choice"])
        for key, case in results["kernel"]["cases"].items():
            best = min(((v["ms"], k) for k, v in case.items() if isinstance(v, dict) and v.get("ms")),
                       default=(None, None))
            print(f"{key}: bf16 {case['bf16_grouped_mm_ms']:.3f} prev {(case.get('prev') or {}).get('ms')} best {best}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
