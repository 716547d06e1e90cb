"""MXFP4 experts: the format (against transformers' own dequantization), the weights seam, loading, split LoRA."""

from __future__ import annotations

import pytest
import torch

from ossgym.agents.gptoss.moe import experts_loop, route
from ossgym.agents.gptoss.weights import (
    LoraFactors,
    Mxfp4,
    dequantize_mxfp4,
    experts_forward,
    grouped_linear,
    mxfp4_grouped_mm,
    quantize_experts,
    quantize_mxfp4,
)


def _random_mxfp4(experts=3, out=64, inp=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (experts, out, inp // 32, 16), dtype=torch.uint8, generator=g)
    scales = torch.randint(118, 130, (experts, out, inp // 32), dtype=torch.uint8, generator=g)
    return Mxfp4(blocks, scales)


def test_dequantization_equals_transformers():
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    w = _random_mxfp4()
    ref = convert_moe_packed_tensors(w.blocks, w.scales, dtype=torch.bfloat16)  # HF layout [E, in, out]
    assert torch.equal(w.dense(torch.bfloat16), ref)
    assert torch.equal(w.dense(torch.float32, expert=1).bfloat16(), ref[1])


def test_quantization_is_canonical_and_close():
    torch.manual_seed(0)
    weight = torch.randn(2, 96, 64)  # HF layout
    q = quantize_experts(weight)
    assert q.blocks.shape == (2, 64, 3, 16) and q.scales.shape == (2, 64, 3)
    again = quantize_experts(q.dense(torch.float32))
    assert torch.equal(again.blocks, q.blocks) and torch.equal(again.scales, q.scales)  # bit-exact round trip
    error = (q.dense(torch.float32) - weight).norm() / weight.norm()
    assert error < 0.15  # 4-bit: about 10% relative error on Gaussian weights
    # exactly representable values come back exactly, signs and zeros included
    exact = torch.tensor([[0.0, -0.0, 0.5, -6.0, 3.0, 1.5] + [0.0] * 26])
    blocks, scales = quantize_mxfp4(exact)
    back = dequantize_mxfp4(blocks, scales, torch.float32)
    assert torch.equal(back, exact) and torch.equal(torch.signbit(back), torch.signbit(exact))


@pytest.mark.parametrize("transpose", [False, True])
def test_grouped_mm_and_its_input_gradient(transpose):
    w = _random_mxfp4(experts=4, out=64, inp=96)
    offs = torch.tensor([5, 5, 12, 20], dtype=torch.int32)  # expert 1 gets no rows
    x = torch.randn(20, 64 if transpose else 96, dtype=torch.float64, requires_grad=True)
    y = mxfp4_grouped_mm(x, w.blocks, w.scales, offs, transpose)
    dense = w.dense(torch.float64)  # [E, in, out]
    rows = torch.repeat_interleave(torch.arange(4), torch.diff(offs, prepend=torch.zeros(1, dtype=torch.int32)))
    ref = torch.stack([x[i] @ (dense[e].T if transpose else dense[e]) for i, e in enumerate(rows.tolist())])
    torch.testing.assert_close(y, ref)
    grad = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, grad)
    (gref,) = torch.autograd.grad(ref, x, grad)
    torch.testing.assert_close(gx, gref)


def test_experts_forward_mxfp4_and_split_lora_equal_dense_reference():
    torch.manual_seed(0)
    experts, hidden, inter, rank = 4, 64, 32, 2
    gate_up = quantize_experts(torch.randn(experts, hidden, 2 * inter) / 8)
    down = quantize_experts(torch.randn(experts, inter, hidden) / 6)
    gub, db = torch.randn(experts, 2 * inter) / 10, torch.randn(experts, hidden) / 10
    lora_gu = LoraFactors(torch.randn(experts, hidden, rank), torch.randn(experts, rank, 2 * inter) / 10, 0.5)
    lora_d = LoraFactors(torch.randn(experts, inter, rank), torch.randn(experts, rank, hidden) / 10, 2.0)
    x = torch.randn(9, hidden, dtype=torch.float64)
    weights, index = route(x, torch.randn(experts, hidden, dtype=torch.float64), torch.zeros(experts, dtype=torch.float64), 2)
    dense_gu = gate_up.dense(torch.float64) + lora_gu.scaling * (lora_gu.a @ lora_gu.b).double()
    dense_d = down.dense(torch.float64) + lora_d.scaling * (lora_d.a @ lora_d.b).double()
    ref = experts_loop(x, weights, index, dense_gu, gub.double(), dense_d, db.double(), 1.702, 7.0)
    f64 = lambda f: LoraFactors(f.a.double(), f.b.double(), f.scaling)  # noqa: E731
    out = experts_forward(x, weights, index, gate_up, gub.double(), down, db.double(), 1.702, 7.0,
                          (f64(lora_gu),), (f64(lora_d),))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # the routed sum accumulates in fp32


def test_split_lora_grouped_linear_has_gradients_in_the_factors():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 6, dtype=torch.float64)
    a = torch.randn(3, 8, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 2, 6, dtype=torch.float64, requires_grad=True)
    offs = torch.tensor([2, 2, 5], dtype=torch.int32)
    x = torch.randn(5, 8, dtype=torch.float64)
    y = grouped_linear(x, w, offs, LoraFactors(a, b, 0.5))
    rows = [0, 0, 2, 2, 2]
    ref = torch.stack([x[i] @ (w[e] + 0.5 * a[e] @ b[e]) for i, e in enumerate(rows)])
    torch.testing.assert_close(y, ref)
    ga = torch.autograd.grad(y.sum(), a)[0]
    gref = torch.autograd.grad(ref.sum(), a)[0]
    torch.testing.assert_close(ga, gref)
