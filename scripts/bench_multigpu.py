"""Benchmark: data-parallel GRPO of gpt-oss-20b on 1, 2 and 4 GPUs, and one FSDP training step of gpt-oss-120b.

NOT RUN YET: written while no multi-GPU machine was lent; only the CPU dry runs (``--tiny``) were run.

Data parallel (``--mode dp``, the default): for each N in ``--gpus`` (default 1,2,4; those above the GPU count
are skipped) the driver launches ``torchrun --nproc_per_node N`` of this script in worker mode; each rank
builds gpt-oss-20b from its real config with random bf16 weights on its GPU and runs ``--steps`` GRPO steps
through ``run_training`` (the ossgym rollout: one fast engine per rank) with ``--per-gpu`` completions per
GPU (weak scaling: the total batch grows with N, as one adds GPUs to sample more per step). Per N: steps/s
and completion tokens/s over all ranks (last step, the first includes warm-up) and the scaling efficiency
``tokens/s(N) / (N x tokens/s(1))``.

FSDP (``--mode fsdp``): one GRPO training step of gpt-oss-120b (36 layers, 128 experts; random bf16 weights,
built on the meta device, sharded with FSDP2 one unit per decoder layer, materialised shard by shard on each
GPU): the clipped GRPO loss over a group of ``--per-gpu`` completions per rank of ``--completion`` tokens,
backward, AdamW on the LoRA weights; seconds of each part and peak memory. Generation for 120b is not in
this step: the fast engine calls the projection modules directly, which FSDP2's per-layer hooks do not see;
the plan (docs in ossgym/training/distributed.py) is an engine that all-gathers one layer's weights at a time
(``layer.unshard()`` / ``reshard()``) or an expert-parallel split of the MXFP4 experts.

Keep NVLink multicast off: the driver sets NCCL_NVLS_ENABLE=0 (and keeps any NCCL_* already set).
Run on a lent multi-GPU machine:
    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_multigpu.py --gpus 1,2,4
    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_multigpu.py --mode fsdp --gpus 4
CPU dry runs (tiny model, gloo): add ``--tiny --gpus 1,2``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _worker_dp(args: argparse.Namespace) -> dict:
    import torch

    from ossgym.agents.agent import AgentConfig, GptOssAgent
    from ossgym.training import distributed
    from ossgym.training.config import GRPORunConfig
    from ossgym.training.run import run_training

    n = distributed.world_size()
    if args.tiny:
        torch.set_num_threads(1)
        agent = GptOssAgent.tiny()
    else:
        from ossgym.agents.gptoss.presets import gpt_oss_20b_config, random_model

        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        agent = GptOssAgent(random_model(gpt_oss_20b_config(), f"cuda:{local}"),
                            config=AgentConfig(max_seq_len=2048, max_batch_size=args.per_gpu))
    group = max(2, args.per_gpu * n)  # the whole step's batch is one group spread over the ranks
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPORunConfig(env_id="GptOss2048-v0", steps=args.steps, group_size=group, max_prompt_length=1024,
                               max_completion_length=args.completion, max_seq_len=2048, learning_rate=1e-5,
                               num_dataset_rows=8, output_dir=args.out_dir or tmp, gradient_checkpointing=not args.tiny)
        result = run_training(config, agent=agent, export_merged=False, progress=False)
    return {"world_size": n, "group_size": group, "steps": result.records}


def _worker_fsdp(args: argparse.Namespace) -> dict:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model

    from ossgym.training.distributed import fsdp_wrap

    backend = "gloo" if args.tiny else "nccl"
    dist.init_process_group(backend)
    rank, n = dist.get_rank(), dist.get_world_size()
    device = torch.device("cpu") if args.tiny else torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    start = time.perf_counter()
    if args.tiny:
        torch.set_num_threads(1)
        from ossgym.agents.gptoss.tiny import tiny_model

        model = tiny_model()
        name = "tiny gpt-oss (CPU dry run)"
    else:
        from transformers import GptOssForCausalLM

        from ossgym.agents.gptoss.presets import gpt_oss_20b_config

        cfg = gpt_oss_20b_config(num_hidden_layers=36, num_local_experts=128)  # gpt-oss-120b's shape
        with torch.device("meta"):
            model = GptOssForCausalLM(cfg).to(torch.bfloat16)
        name = "gpt-oss-120b shape, random bf16 weights"
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"]))
    fsdp_wrap(model, device_type=device.type)
    if not args.tiny:  # materialise each rank's shards on its GPU, then random-initialise them
        model.to_empty(device=device)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_B" in pname:
                    p.zero_()
                else:
                    p.normal_(0.0, 0.02)
    build_s = time.perf_counter() - start
    model.config.use_cache = False
    if hasattr(model, "gradient_checkpointing_enable") and not args.tiny:
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    g, prompt_len, comp = args.per_gpu, 512 if not args.tiny else 16, args.completion
    gen = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, 1000, (g, prompt_len + comp), generator=gen).to(device)
    old_logps = torch.zeros(g, comp, device=device)
    adv = torch.randn(g, 1, generator=gen).to(device)
    timings: dict[str, float] = {}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()
        dist.barrier()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    logits = model(input_ids=ids).logits[:, prompt_len - 1:-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, prompt_len:, None]).squeeze(-1)
    ratio = torch.exp(logps - old_logps.detach())
    loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.28) * adv).mean()
    sync()
    t1 = time.perf_counter()
    loss.backward()
    sync()
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad()
    sync()
    t3 = time.perf_counter()
    timings = {"forward_s": t1 - t0, "backward_s": t2 - t1, "optimizer_s": t3 - t2, "step_s": t3 - t0}
    return {"model": name, "world_size": n, "build_s": build_s, "completions_per_gpu": g,
            "tokens_per_completion": comp, "loss": float(loss.detach()), **timings,
            "tokens_per_s": n * g * comp / timings["step_s"],
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def _worker(args: argparse.Namespace) -> int:
    result = _worker_fsdp(args) if args.mode == "fsdp" else _worker_dp(args)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result).write_text(json.dumps(result))
    return 0


def _launch(args: argparse.Namespace, n: int, result: Path) -> dict:
    env = {**os.environ, "NCCL_NVLS_ENABLE": os.environ.get("NCCL_NVLS_ENABLE", "0"),
           "TRL_EXPERIMENTAL_SILENCE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.tiny:
        env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(29600 + n), str(Path(__file__).resolve()), "--worker", "--mode", args.mode, "--result", str(result),
           "--per-gpu", str(args.per_gpu), "--completion", str(args.completion), "--steps", str(args.steps)]
    cmd += ["--tiny"] if args.tiny else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        return {"world_size": n, "error": f"exit {proc.returncode}"}
    out = json.loads(result.read_text())
    out["wall_s"] = time.perf_counter() - start
    return out


def _dp_row(run: dict) -> dict:
    last = run["steps"][-1]
    tokens = (last.get("completion_length") or 0) * run["group_size"]
    return {"gpus": run["world_size"], "step_s": last["step_s"], "steps_per_s": 1 / last["step_s"],
            "tokens_per_s": tokens / last["step_s"], "generation_s": last["generation_s"],
            "peak_gpu_memory_gib": last.get("peak_gpu_memory_gib")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("dp", "fsdp"), default="dp")
    parser.add_argument("--gpus", default="1,2,4", help="process counts to run (comma-separated)")
    parser.add_argument("--per-gpu", type=int, default=None, help="completions per GPU (default 8; tiny: 2)")
    parser.add_argument("--completion", type=int, default=None, help="tokens per completion (default 512; tiny 8)")
    parser.add_argument("--steps", type=int, default=2, help="GRPO steps per process count (dp)")
    parser.add_argument("--tiny", action="store_true", help="embedded tiny model on CPU with gloo: a dry run")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/bench_multigpu.json if $OUT is set)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.per_gpu = args.per_gpu or (2 if args.tiny else 8)
    args.completion = args.completion or (8 if args.tiny else 512)
    if args.worker:
        return _worker(args)

    import torch

    available = torch.cuda.device_count()
    if not args.tiny and available == 0:
        print("no GPU: pass --tiny for a CPU dry run", file=sys.stderr)
        return 2
    counts = [int(x) for x in args.gpus.split(",") if x.strip()]
    skipped = [n for n in counts if not args.tiny and n > available]
    counts = [n for n in counts if n not in skipped]
    results: dict = {"mode": args.mode, "tiny": args.tiny, "torch": torch.__version__,
                     "device": torch.cuda.get_device_name() if available and not args.tiny else "cpu",
                     "per_gpu": args.per_gpu, "completion": args.completion, "skipped_gpu_counts": skipped,
                     "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            results["runs"].append(_launch(args, n, Path(tmp) / f"result{n}.json"))
    ok = [r for r in results["runs"] if "error" not in r]
    if args.mode == "dp":
        rows = [_dp_row(r) for r in ok]
        base = next((r for r in rows if r["gpus"] == 1), None)
        for r in rows:
            r["scaling_efficiency"] = (r["tokens_per_s"] / (r["gpus"] * base["tokens_per_s"])
                                       if base and base["tokens_per_s"] else None)
        results["table"] = rows
        print(f"data-parallel GRPO, {'tiny (CPU)' if args.tiny else 'gpt-oss-20b random bf16'}; {args.per_gpu} "
              f"completions/GPU x {args.completion} tokens (weak scaling)")
        print("| GPUs | step s | steps/s | tokens/s | generation s | scaling eff. | peak GiB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            eff = "-" if r["scaling_efficiency"] is None else f"{r['scaling_efficiency']:.2f}"
            mem = "-" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.1f}"
            print(f"| {r['gpus']} | {r['step_s']:.2f} | {r['steps_per_s']:.3f} | {r['tokens_per_s']:.1f} | "
                  f"{r['generation_s']:.2f} | {eff} | {mem} |")
    else:
        print("| model | GPUs | build s | forward s | backward s | optimizer s | step s | tokens/s | peak GiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in ok:
            mem = "-" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.1f}"
            print(f"| {r['model']} | {r['world_size']} | {r['build_s']:.1f} | {r['forward_s']:.2f} | "
                  f"{r['backward_s']:.2f} | {r['optimizer_s']:.2f} | {r['step_s']:.2f} | {r['tokens_per_s']:.1f} | "
                  f"{mem} |")
    for r in results["runs"]:
        if "error" in r:
            print(f"{r['world_size']} processes: {r['error']}", file=sys.stderr)
    if skipped:
        print(f"skipped (fewer GPUs here): {skipped}", file=sys.stderr)
    out = args.out or (str(Path(os.environ["OUT"]) / "bench_multigpu.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return 0 if len(ok) == len(results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
