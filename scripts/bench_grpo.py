"""Benchmark: GRPO steps of a full-size gpt-oss-20b (random bf16 weights) on GptOss2048-v0, on the GPU.

gpt-oss-20b built from its real config with random bf16 weights directly on the GPU; LoRA rank 8 on the
attention projections; one prompt (the env's task, about 530 tokens) x a group of 8; 512-token completions
(random weights rarely stop early, so nearly all run to the limit; they write no code either, so scoring
finds nothing to run in the sandbox and costs almost nothing here). The same run measures generation through
the ossgym rollout (the fast engine, or the agent's reference loop when the engine is not importable)
against TRL's stock ``generate``: ``--steps`` GRPO steps with each, on the same base model, a fresh adapter
each. Per step: peak GPU memory, seconds in generation, scoring, the optimizer step and the whole step
(the rest is TRL's forward and backward passes). The first step of each includes warm-up (compilation,
CUDA-graph capture), so the table also shows the last step.

Prints a table and writes JSON to $OUT/bench_grpo.json (or --out). Run on the lent GPU:
    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_grpo.py
A dry run on CPU with the embedded tiny model: PYTHONPATH=$PWD python scripts/bench_grpo.py --tiny
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from ossgym.agents.gptoss.presets import gpt_oss_20b_config, random_model

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="embedded tiny model on CPU: a dry run of the script")
    parser.add_argument("--group-size", type=int, default=None, help="default 8 (tiny: 2)")
    parser.add_argument("--completion", type=int, default=None, help="max completion tokens, default 512 (tiny: 8)")
    parser.add_argument("--steps", type=int, default=2, help="GRPO steps per generation backend")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--backends", default="fast,trl", help="comma-separated: fast (ossgym rollout), trl")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/bench_grpo.json if $OUT is set)")
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    from ossgym.agents.agent import AgentConfig, GptOssAgent
    from ossgym.training.config import GRPORunConfig
    from ossgym.training.run import run_training

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if device == "cpu" and not args.tiny:
        print("no GPU: pass --tiny for a CPU dry run", file=sys.stderr)
        return 2
    group = args.group_size or (2 if args.tiny else 8)
    completion = args.completion or (8 if args.tiny else 512)
    start = time.perf_counter()
    if args.tiny:
        from ossgym.agents.gptoss.tiny import tiny_model

        model = tiny_model()
    else:
        model = random_model(gpt_oss_20b_config(), device)
    build_s = time.perf_counter() - start
    agent = GptOssAgent(model, config=AgentConfig(max_seq_len=2048, max_batch_size=group))
    engine_importable = importlib.util.find_spec("ossgym.agents.gptoss.engine") is not None
    results: dict = {
        "model": "tiny gpt-oss (CPU dry run)" if args.tiny else "gpt-oss-20b, random bf16 weights",
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "group_size": group, "max_completion_length": completion,
        "lora_rank": args.lora_rank, "build_s": build_s, "fast_engine_importable": engine_importable,
        "weights_gib": torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None, "runs": {},
    }
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        with tempfile.TemporaryDirectory() as tmp:
            config = GRPORunConfig(
                env_id="GptOss2048-v0", steps=args.steps, group_size=group, max_prompt_length=1024,
                max_completion_length=completion, max_seq_len=2048, lora_rank=args.lora_rank,
                lora_alpha=2 * args.lora_rank, learning_rate=1e-5, num_dataset_rows=8, output_dir=tmp,
                generation="fast" if backend == "fast" else "trl",
            )
            result = run_training(config, agent=agent, export_merged=False, progress=False)
        agent.model = agent.model.unload()  # drop the adapter (unmerged): the next backend starts fresh
        agent.reset_engine()
        results["runs"][backend] = {"generation_backend": result.generation_backend, "steps": result.records}
        if device == "cuda":
            torch.cuda.empty_cache()

    keys = ("generation_s", "scoring_s", "optimizer_s", "step_s", "completion_length", "peak_gpu_memory_gib")
    header = f"| generation | step | {' | '.join(keys)} |"
    lines = [header, "|" + "---|" * (len(keys) + 2)]
    for backend, run in results["runs"].items():
        for rec in run["steps"]:
            cells = ["-" if rec.get(k) is None else f"{rec[k]:.2f}" for k in keys]
            lines.append(f"| {backend} ({run['generation_backend']}) | {rec['step']} | {' | '.join(cells)} |")
    runs = results["runs"]
    if "fast" in runs and "trl" in runs and runs["fast"]["steps"] and runs["trl"]["steps"]:
        fast, trl = runs["fast"]["steps"][-1]["generation_s"], runs["trl"]["steps"][-1]["generation_s"]
        results["generation_speedup_last_step"] = trl / fast if fast else None
        lines.append(f"\ngeneration, last step: ossgym rollout {fast:.2f} s vs TRL generate {trl:.2f} s "
                     f"({trl / fast:.2f}x)")
    print(f"{results['model']} on {results['device']}; group {group} x {completion} tokens; LoRA rank "
          f"{args.lora_rank} on attention; fast engine importable: {engine_importable}")
    print("\n".join(lines))
    out = args.out or (str(Path(os.environ["OUT"]) / "bench_grpo.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
