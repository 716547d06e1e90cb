"""MXFP4 experts: the format (against transformers' own dequantization), the weights seam, loading, split LoRA."""

from __future__ import annotations

import pytest
import torch

from ossgym.agents.gptoss.moe import experts_loop, route
from ossgym.errors import ConfigError
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


def _experts_case(tokens=37, seed=0):
    """MXFP4 experts with split LoRA on both projections (fp32), x and the router weight requiring grad."""
    torch.manual_seed(seed)
    experts, hidden, inter, rank = 4, 64, 32, 2
    gate_up = quantize_experts(torch.randn(experts, hidden, 2 * inter) / 8)
    down = quantize_experts(torch.randn(experts, inter, hidden) / 6)
    gub, db = torch.randn(experts, 2 * inter) / 10, torch.randn(experts, hidden) / 10
    leaves = [torch.randn(experts, hidden, rank), torch.randn(experts, rank, 2 * inter) / 10,
              torch.randn(experts, inter, rank), torch.randn(experts, rank, hidden) / 10,
              torch.randn(tokens, hidden), torch.randn(experts, hidden)]
    leaves = [t.requires_grad_(True) for t in leaves]

    def run(chunk_tokens, grad=True):
        a1, b1, a2, b2, x, router = leaves
        weights, index = route(x, router, torch.zeros(experts), 2)
        out = experts_forward(x, weights, index, gate_up, gub, down, db, 1.702, 7.0, (LoraFactors(a1, b1, 0.5),),
                              (LoraFactors(a2, b2, 2.0),), chunk_tokens=chunk_tokens)
        if not grad:
            return out
        return out, torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), leaves)

    return run


@pytest.mark.parametrize("chunk_tokens", [1, 5, 16, 36])
def test_chunked_experts_equal_one_pass_in_values_and_every_gradient(chunk_tokens):
    """Chunks over tokens (checkpointed each, as under autograd) give the one-pass output and the gradients of
    x, the routing (through the router weight) and both split LoRA factors of both projections."""
    run = _experts_case()
    ref, ref_grads = run(None)
    out, grads = run(chunk_tokens)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)  # fp32: row blocking of the matmuls differs
    for g, r in zip(grads, ref_grads):
        assert r.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # without autograd (no checkpoints) too
        torch.testing.assert_close(run(chunk_tokens, grad=False), ref, rtol=1e-5, atol=1e-5)


def test_chunked_experts_bound_the_largest_activation():
    """The largest tensor made in forward + backward shrinks from the whole sequence's routed rows to one chunk's
    (the probe sees the one-pass gate_up output when it exists)."""
    from tensor_probe import LargestTensor

    tokens, chunk = 64, 8
    run = _experts_case(tokens=tokens)
    with LargestTensor() as one_pass:
        run(None)
    with LargestTensor() as chunked:
        run(chunk)
    routed_gate_up = tokens * 2 * 64  # top-2 rows x 2 * intermediate (64)
    assert one_pass.largest >= routed_gate_up
    assert chunked.largest <= tokens * 64 < routed_gate_up  # the [tokens, hidden] output and its gradient


def test_chunked_experts_in_the_model_under_activation_checkpointing(checkpoint):
    """A checkpointed training step of the MXFP4 model with split LoRA: the same loss and LoRA gradients with the
    experts in chunks of 3 tokens as in one pass (nested checkpoints inside the layers' checkpoints)."""
    from ossgym.agents.gptoss.mxfp4 import set_expert_chunk_tokens

    model, params = _with_lora(checkpoint)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(p in set(params))
    ids = torch.tensor(IDS)
    results = []
    for tokens in (None, 3):
        assert set_expert_chunk_tokens(model, tokens) == len(model.model.layers)
        for p in params:
            p.grad = None
        loss = model(ids, labels=ids).loss
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in params]))
    (loss_ref, grads_ref), (loss_chunked, grads_chunked) = results
    torch.testing.assert_close(loss_chunked, loss_ref, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads_chunked, grads_ref):
        assert r.abs().sum() > 0
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="chunk_tokens"):
        set_expert_chunk_tokens(model, 0)


@pytest.mark.parametrize("gathered", [True, False])  # decode-sized (factors gathered per row) and grouped
def test_split_lora_grouped_linear_has_gradients_in_the_factors(gathered, monkeypatch):
    from ossgym.agents.gptoss import weights

    monkeypatch.setattr(weights, "GEMV_MAX_ROWS", 128 if gathered else 0)
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
    ga, gb = torch.autograd.grad(y.sum(), (a, b))
    gref_a, gref_b = torch.autograd.grad(ref.sum(), (a, b))
    torch.testing.assert_close(ga, gref_a)
    torch.testing.assert_close(gb, gref_b)


def test_random_mxfp4_model_is_built_in_the_official_layout():
    from ossgym.agents.gptoss.mxfp4 import OssExperts
    from ossgym.agents.gptoss.presets import gpt_oss_120b_config, random_mxfp4_model
    from ossgym.agents.gptoss.tiny import tiny_config

    model = random_mxfp4_model(tiny_config(num_hidden_layers=2), "cpu")
    experts = model.model.layers[1].mlp.experts
    assert isinstance(experts, OssExperts) and experts.format == "mxfp4"
    assert set(experts.gate_up_proj_scales.unique().tolist()) == {119, 120, 121}
    assert experts.down_proj_blocks.float().std() > 50  # random bytes, not zeros
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()
    big = gpt_oss_120b_config()
    assert (big.num_hidden_layers, big.num_local_experts, len(big.layer_types)) == (36, 128, 36)


# ------------------------------------------------------------------------------------- checkpoint loading
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ossgym.agents.gptoss.mxfp4 import save_mxfp4
    from ossgym.agents.gptoss.tiny import tiny_model

    path = tmp_path_factory.mktemp("mxfp4") / "ckpt"
    save_mxfp4(tiny_model(num_hidden_layers=2), path)
    return path


IDS = [[200006, 17360, 200008, 3575, 553, 261, 10297, 29186, 13, 200007, 200006, 173781]]


def test_packer_writes_the_official_layout_bit_exactly(checkpoint, tmp_path):
    from safetensors.torch import load_file

    from ossgym.agents.gptoss.mxfp4 import load_gptoss, save_mxfp4

    tensors = load_file(str(checkpoint / "model.safetensors"))
    blocks = tensors["model.layers.0.mlp.experts.gate_up_proj_blocks"]
    scales = tensors["model.layers.0.mlp.experts.gate_up_proj_scales"]
    assert blocks.dtype == scales.dtype == torch.uint8
    assert tuple(blocks.shape) == (4, 192, 2, 16) and tuple(scales.shape) == (4, 192, 2)  # [E, out, in/32, (16)]
    assert "model.layers.0.mlp.experts.gate_up_proj" not in tensors
    model = load_gptoss(checkpoint, experts="mxfp4", dtype=torch.float32)
    save_mxfp4(model, tmp_path / "again")
    again = load_file(str(tmp_path / "again" / "model.safetensors"))
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)  # load + save: the same bytes


def test_mxfp4_model_equals_transformers_dequantized_load(checkpoint):
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.mxfp4 import OssExperts, load_gptoss

    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    ours = load_gptoss(checkpoint, experts="mxfp4", dtype=torch.float32)
    experts = ours.model.layers[0].mlp.experts
    assert isinstance(experts, OssExperts) and experts.gate_up_proj_blocks.dtype == torch.uint8
    assert not any(p.dtype == torch.float32 and p.dim() == 3 for p in ours.parameters())  # no dense experts
    torch.testing.assert_close(experts.expert_weight("gate_up_proj").dense(torch.float32),
                               hf.model.layers[0].mlp.experts.gate_up_proj, rtol=0, atol=0)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        ref = hf(ids).logits
        torch.testing.assert_close(ours(ids).logits, ref, rtol=1e-4, atol=1e-4)  # HF forward through OssExperts
        engine = FastGptOss(ours, max_batch_size=1, max_seq_len=32, compile=False)
        torch.testing.assert_close(engine.logits(IDS), ref, rtol=1e-4, atol=1e-4)
        dense = load_gptoss(checkpoint, experts="bf16", dtype=torch.float32)  # dequantized at load
        torch.testing.assert_close(dense(ids).logits, ref, rtol=1e-4, atol=1e-4)


def test_bf16_checkpoint_quantized_at_load(tmp_path):
    from ossgym.agents.gptoss.mxfp4 import convert_experts, load_gptoss
    from ossgym.agents.gptoss.tiny import tiny_model

    model = tiny_model(num_hidden_layers=2)
    model.save_pretrained(tmp_path / "bf16")
    loaded = load_gptoss(tmp_path / "bf16", experts="mxfp4", dtype=torch.float32)
    reference = convert_experts(tiny_model(num_hidden_layers=2), "mxfp4")
    for a, b in zip(loaded.model.layers, reference.model.layers):
        assert torch.equal(a.mlp.experts.down_proj_blocks, b.mlp.experts.down_proj_blocks)
        assert torch.equal(a.mlp.experts.down_proj_scales, b.mlp.experts.down_proj_scales)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits)


# -------------------------------------------------------------------------------------------- split LoRA
def _with_lora(checkpoint):
    from ossgym.agents.gptoss.mxfp4 import add_expert_lora, load_gptoss

    model = load_gptoss(checkpoint, experts="mxfp4", dtype=torch.float32)
    params = add_expert_lora(model, rank=2, alpha=4.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.3)  # B starts at zero: make the adapter do something
    return model, params


def test_split_lora_saves_in_peft_format_and_peft_gives_the_same_logits(checkpoint, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.mxfp4 import save_expert_lora

    model, _ = _with_lora(checkpoint)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        ours = model(ids).logits
        engine = FastGptOss(model, max_batch_size=1, max_seq_len=32, compile=False).logits(IDS)
    torch.testing.assert_close(engine, ours, rtol=1e-4, atol=1e-4)
    save_expert_lora(model, tmp_path / "adapter", rank=2, alpha=4.0)
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    with torch.no_grad():
        base = hf(ids).logits
        peft_model = PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
        theirs = peft_model(ids).logits
    assert (ours - base).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # and the engine reads peft's adapter as split factors too
    with torch.no_grad():
        torch.testing.assert_close(FastGptOss(peft_model, 1, 32, compile=False).logits(IDS), ours,
                                   rtol=1e-4, atol=1e-4)


def test_lora_trains_through_frozen_mxfp4_with_activation_checkpointing(checkpoint):
    model, params = _with_lora(checkpoint)
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    ids = torch.tensor(IDS)
    loss = model(ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    # the gradient equals the one without checkpointing
    grads = [p.grad.clone() for p in params]
    model.gradient_checkpointing_disable()
    for p in params:
        p.grad = None
    model(ids, labels=ids).loss.backward()
    for g, p in zip(grads, params):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_agent_from_pretrained_keeps_mxfp4(checkpoint):
    from ossgym.agents.agent import GptOssAgent
    from ossgym.agents.gptoss.mxfp4 import OssExperts

    agent = GptOssAgent.from_pretrained(str(checkpoint), dtype=torch.float32, device="cpu")
    experts = agent.model.model.layers[1].mlp.experts
    assert isinstance(experts, OssExperts) and experts.format == "mxfp4"
    out = agent.generate_from_ids(IDS, max_new_tokens=3, temperature=0.0)
    assert len(out[0][0]) == 3
    with pytest.raises(ConfigError):
        GptOssAgent.from_pretrained(str(checkpoint), experts="nf4")


def test_export_merged_mxfp4_and_bf16_load_with_stock_transformers(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from ossgym.agents.gptoss.mxfp4 import merge_expert_lora, save_mxfp4, to_hf_experts

    model, _ = _with_lora(checkpoint)
    ids = torch.tensor(IDS)
    with torch.no_grad():
        with_adapter = model(ids).logits
    # merged bf16: stock GptOssExperts, plain save_pretrained, stock loader, same logits
    bf16, _ = _with_lora(checkpoint)
    to_hf_experts(bf16).save_pretrained(tmp_path / "bf16")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"), dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, with_adapter, rtol=1e-4, atol=1e-4)
    # merged MXFP4: re-quantized, error reported, written in the official layout, loads with transformers
    errors = merge_expert_lora(model, "mxfp4")
    assert set(errors) == {"gate_up_proj", "down_proj"} and all(0 < e < 0.2 for e in errors.values())
    save_mxfp4(model, tmp_path / "mxfp4")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "mxfp4"), dtype=torch.float32,
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


def test_experts_of_a_config_without_swiglu_limit_use_gpt_oss_limit():
    """transformers 5.17 (the setup.cfg floor, and the lent GPU's) has no swiglu_limit in GptOssConfig: its experts
    hard-code 7.0, and so do ossgym's then."""
    from types import SimpleNamespace

    from ossgym.agents.gptoss.mxfp4 import OssExperts

    sizes = dict(num_local_experts=2, hidden_size=64, intermediate_size=64)
    assert OssExperts(SimpleNamespace(**sizes, swiglu_limit=3.0), "bf16").limit == 3.0
    assert OssExperts(SimpleNamespace(**sizes), "bf16").limit == 7.0
