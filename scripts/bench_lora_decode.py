"""Benchmark (GPU): ways to add LoRA to a projection at decode sizes, each timed in CUDA graphs (issue 16).

The LoRA of a rollout (r8 on the attention projections through peft, split LoRA on both expert projections) cost
2.2 ms of a batch-1 MXFP4 step in many small launches; lora_rows.py (two Triton launches for up to three adapters
sharing an input) was chosen from these candidates. Each is timed for gpt-oss-20b's shapes with random factors,
against the base product alone, and checked against the fp32 sum:

attention (q_proj, 2,880 -> 4,096; rows = the batch):
- ``peft``: peft's LoRA ``Linear`` forward (what the engine ran before lora_rows);
- ``bf16_products``: ``y + (x @ A.T) @ B.T * s`` with bf16 copies of the factors (the copies would be refreshed
  once per rollout, not per token);
- ``bf16_compiled``: the same under ``torch.compile`` (the scale and the add fused into one kernel);
- ``lora_rows``: the shipped op, on peft's fp32 factors as they are held;

experts (gate_up, 2,880 -> 5,760, 32 experts; rows = 4 x the batch, sorted by expert):
- ``gathered_fp32``: each row's fp32 factors gathered, cast, two bmm (weights.py's products at <= 32 rows);
- ``gathered_bf16``: the same from bf16 copies (no casts);
- ``grouped_bf16``: two grouped products from bf16 copies (weights.py's products above 32 rows, less its casts);
- ``lora_rows``: the shipped op;

one layer's four attention projections (``layer_cases``): peft's forward op for op, bf16 products per
projection, q/k/v's A factors as one product (the last two also compiled whole), and ``lora_rows`` with q, k and v
in one pair of launches and o in another (what the engine's ``project`` runs).

    PYTHONUNBUFFERED=1 PYTHONPATH=$PWD python3 scripts/bench_lora_decode.py --out $OUT/lora.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mxfp4 import graph_ms  # noqa: E402

from ossgym.agents.gptoss import lora_rows  # noqa: E402

triton = lora_rows.triton


def shipped(y, x, a, b, scaling, row_expert=None):
    """lora_rows.lora_rows (what the engine runs at decode sizes): two Triton launches."""
    return lora_rows.lora_rows(x, [y], [a], [b], [scaling], row_expert)[0]


def bf16_products(y, x, a16t, b16t, scaling):
    return y + (x @ a16t) @ b16t * scaling


def check(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def attention_cases(dev, rows_list, hidden=2880, out=4096, rank=8) -> dict:
    import peft
    from torch import nn

    torch.manual_seed(0)
    block = nn.Module()
    block.proj = nn.Linear(hidden, out, bias=True, device=dev, dtype=torch.bfloat16)
    model = peft.get_peft_model(block, peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"],
                                                       init_lora_weights=False)).eval()
    layer = model.base_model.model.proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # fp32 [r, in], [out, r]
    s = float(layer.scaling["default"])
    a16t, b16t = a.t().to(torch.bfloat16).contiguous(), b.t().to(torch.bfloat16).contiguous()
    b3 = b.t()[None]  # [1, r, out] view
    compiled = torch.compile(bf16_products)
    res = {}
    for rows in rows_list:
        x = torch.randn(rows, hidden, device=dev, dtype=torch.bfloat16)
        with torch.no_grad():
            base = layer.base_layer(x)
            want = base.float() + s * (x.float() @ a.t()) @ b.t()
            cands = {"base only": lambda: layer.base_layer(x), "peft": lambda: layer(x),
                     "bf16_products": lambda: bf16_products(layer.base_layer(x), x, a16t, b16t, s),
                     "bf16_compiled": lambda: compiled(layer.base_layer(x), x, a16t, b16t, s)}
            if triton is not None and x.is_cuda:
                cands["lora_rows"] = lambda: shipped(layer.base_layer(x), x, a.t()[None], b3, s)
            case = {}
            for name, fn in cands.items():
                try:
                    err = check(fn(), base.float() if name == "base only" else want)
                    case[name] = {"rel_err": err, "ms": graph_ms(fn) if err < 1e-2 else None}
                except Exception as exc:  # noqa: BLE001 - a candidate that fails is a result
                    case[name] = {"error": repr(exc)[:300]}
        res[rows] = case
        print("attention", rows, {k: round(v["ms"], 4) if v.get("ms") else v for k, v in case.items()}, flush=True)
    return res


def layer_cases(dev, rows_list, hidden=2880, heads=64, kv_heads=8, head_dim=64, rank=8) -> dict:
    """One layer's four attention projections with LoRA (q, k, v share their input): peft's four forwards, bf16
    products per projection, and q/k/v's A factors as one product (x @ [A_q; A_k; A_v].T, the bf16 copy
    concatenated once per rollout) before the three B products; each also compiled whole."""
    torch.manual_seed(2)
    outs = {"q": heads * head_dim, "k": kv_heads * head_dim, "v": kv_heads * head_dim}
    w = {n: torch.randn(o, hidden, device=dev, dtype=torch.bfloat16) * 0.02 for n, o in outs.items()}
    w["o"] = torch.randn(hidden, heads * head_dim, device=dev, dtype=torch.bfloat16) * 0.02
    bias = {n: torch.randn(t.shape[0], device=dev, dtype=torch.bfloat16) * 0.02 for n, t in w.items()}
    a = {n: torch.randn(rank, t.shape[1], device=dev) * 0.02 for n, t in w.items()}
    b = {n: torch.randn(t.shape[0], rank, device=dev) * 0.02 for n, t in w.items()}
    a16t = {n: t.t().to(torch.bfloat16).contiguous() for n, t in a.items()}
    b16t = {n: t.t().to(torch.bfloat16).contiguous() for n, t in b.items()}
    a_qkv = torch.cat([a16t["q"], a16t["k"], a16t["v"]], 1)  # [hidden, 3r]
    s = 2.0

    def per_projection(x, o_in):
        ys = [F.linear(x, w[n], bias[n]) + (x @ a16t[n]) @ b16t[n] * s for n in ("q", "k", "v")]
        return ys + [F.linear(o_in, w["o"], bias["o"]) + (o_in @ a16t["o"]) @ b16t["o"] * s]

    def shared_a(x, o_in):
        t = (x @ a_qkv).split(rank, dim=1)
        ys = [F.linear(x, w[n], bias[n]) + t[i] @ b16t[n] * s for i, n in enumerate(("q", "k", "v"))]
        return ys + [F.linear(o_in, w["o"], bias["o"]) + (o_in @ a16t["o"]) @ b16t["o"] * s]

    def rows_qkv(x, o_in):  # lora_rows: q, k, v's adapters in one pair of launches, o's in another
        ys = lora_rows.lora_rows(x, [F.linear(x, w[n], bias[n]) for n in ("q", "k", "v")],
                                 [a[n].t()[None] for n in ("q", "k", "v")], [b[n].t()[None] for n in ("q", "k", "v")],
                                 [s, s, s])
        return ys + lora_rows.lora_rows(o_in, [F.linear(o_in, w["o"], bias["o"])], [a["o"].t()[None]],
                                        [b["o"].t()[None]], [s])

    def fp32_sum(x, o_in):
        ys = [F.linear(x.float(), w[n].float(), bias[n].float()) + (x.float() @ a[n].t()) @ b[n].t() * s
              for n in ("q", "k", "v")]
        o = o_in.float()
        return ys + [F.linear(o, w["o"].float(), bias["o"].float()) + (o @ a["o"].t()) @ b["o"].t() * s]

    def peft_like(x, o_in):  # peft's vanilla LoRA forward, op for op (cast to the factors' fp32, two products)
        out = []
        for n, inp in (("q", x), ("k", x), ("v", x), ("o", o_in)):
            y = F.linear(inp, w[n], bias[n])
            out.append((y + F.linear(F.linear(inp.float(), a[n]), b[n]) * s).to(y.dtype))
        return out

    res = {}
    compiled = {name: torch.compile(fn) for name, fn in (("per_projection", per_projection), ("shared_a", shared_a))}
    for rows in rows_list:
        x = torch.randn(rows, hidden, device=dev, dtype=torch.bfloat16)
        o_in = torch.randn(rows, heads * head_dim, device=dev, dtype=torch.bfloat16)
        want = torch.cat([t.flatten() for t in fp32_sum(x, o_in)])
        cands = {"peft_like": peft_like, "per_projection": per_projection, "shared_a": shared_a,
                 **{f"{k} compiled": v for k, v in compiled.items()}}
        if triton is not None and x.is_cuda:
            cands["lora_rows"] = rows_qkv
        case = {}
        with torch.no_grad():
            for name, fn in cands.items():
                try:
                    err = check(torch.cat([t.flatten() for t in fn(x, o_in)]), want)
                    case[name] = {"rel_err": err, "ms": graph_ms(lambda: fn(x, o_in)) if err < 1e-2 else None}
                except Exception as exc:  # noqa: BLE001
                    case[name] = {"error": repr(exc)[:300]}
        res[rows] = case
        print("layer", rows, {k: round(v["ms"], 4) if v.get("ms") else v for k, v in case.items()}, flush=True)
    return res


def expert_cases(dev, rows_list, hidden=2880, out=5760, experts=32, rank=8) -> dict:
    from ossgym.agents.gptoss.weights import _dense_grouped, _lora_delta

    torch.manual_seed(1)
    a = torch.randn(experts, hidden, rank, device=dev) * 0.02
    b = torch.randn(experts, rank, out, device=dev) * 0.02
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    res = {}
    for rows in rows_list:
        expert = torch.sort(torch.randint(0, experts, (rows,), device=dev)).values
        offs = torch.cumsum(torch.bincount(expert, minlength=experts), 0).to(torch.int32)
        x = torch.randn(rows, hidden, device=dev, dtype=torch.bfloat16)
        y = torch.randn(rows, out, device=dev, dtype=torch.bfloat16)
        want = y.float() + 2.0 * torch.bmm(torch.bmm(x.float()[:, None], a[expert]), b[expert])[:, 0]
        cands = {"gathered_fp32": lambda: y + _lora_delta(x, a, b, offs, expert) * 2.0,
                 "gathered_bf16": lambda: y + torch.bmm(torch.bmm(x[:, None], a16[expert]), b16[expert])[:, 0] * 2.0,
                 "grouped_bf16": lambda: y + _dense_grouped(_dense_grouped(x, a16, offs), b16, offs) * 2.0}
        if triton is not None and x.is_cuda:
            cands["lora_rows"] = lambda: shipped(y, x, a, b, 2.0, expert)
        case = {}
        with torch.no_grad():
            for name, fn in cands.items():
                try:
                    err = check(fn(), want)
                    case[name] = {"rel_err": err, "ms": graph_ms(fn) if err < 1e-2 else None}
                except Exception as exc:  # noqa: BLE001
                    case[name] = {"error": repr(exc)[:300]}
        res[rows] = case
        print("experts", rows, {k: round(v["ms"], 4) if v.get("ms") else v for k, v in case.items()}, flush=True)
    return res


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__,
               "attention": attention_cases(dev, (1, 8, 64)), "layer": layer_cases(dev, (1, 8, 64)),
               "experts": expert_cases(dev, (4, 32, 256))}
    out = args.out or (str(Path(os.environ["OUT"]) / "lora.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
