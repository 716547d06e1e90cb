"""NF4 (bitsandbytes 4-bit) attention projections and LM head (ossgym/agents/gptoss/nf4.py, training/nf4_head.py):
the quantization error is NF4's, the fast engine equals the HF forward on the NF4 model, LoRA trains over NF4,
the chunked log-probs and TRL's fused head score an NF4 head exactly, and the merged export is plain transformers.
CPU, fp32 (bf16 where said), the tiny gpt-oss model (hidden 64: one NF4 block of 64 weights per row)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import ossgym.agents  # noqa: E402,F401  (silences bitsandbytes' CPU-kernel warning before it is imported)
from ossgym.agents.gptoss import nf4  # noqa: E402
from ossgym.agents.gptoss.engine import FastGptOss  # noqa: E402
from ossgym.agents.gptoss.tiny import tiny_model  # noqa: E402
from ossgym.errors import ConfigError  # noqa: E402
from tensor_probe import LargestTensor  # noqa: E402


class LargestAllocation(LargestTensor):
    """LargestTensor, not counting views (reading ``weight.data`` returns a view of all the packed bytes)."""

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if func.is_view:
            return func(*args, **(kwargs or {}))
        return super().__torch_dispatch__(func, types_, args, kwargs)


# NF4's 16 levels (bitsandbytes' code, in units of the block's absmax): the widest gap is -1 .. -0.6962, so no
# weight moves by more than half of it times its block's absmax
NF4_LEVELS = torch.tensor([-1.0, -0.6961928, -0.52507305, -0.3949175, -0.28444138, -0.18477343, -0.09105004, 0.0,
                           0.0795803, 0.1609302, 0.2461123, 0.33791524, 0.44070983, 0.562617, 0.72295684, 1.0])
HALF_GAP = float((NF4_LEVELS[1:] - NF4_LEVELS[:-1]).max()) / 2
VOCAB = 201_088
TOL = 1e-4  # fp32: the engine against the HF forward, as tests/test_fast_engine.py


def ids(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 200_000, (rows, length), generator=torch.Generator().manual_seed(seed))


def dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """The layer's weight as bitsandbytes itself dequantizes it (the whole matrix: the reference)."""
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(module.weight.data, module.weight.quant_state)


def add_lora(model, seed: int = 0):
    """peft LoRA r4 on the attention projections, B given values (peft starts it at zero)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(nf4.ATTENTION_PROJECTIONS)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return peft_model


# ------------------------------------------------------------------------------------------ quantization
@pytest.mark.parametrize("double_quant", [False, True])
def test_only_the_named_parts_become_nf4_and_each_weight_moves_by_at_most_nf4s_rounding(double_quant):
    import bitsandbytes as bnb

    import weakref

    model = tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    targets = set(nf4.target_names(model, nf4.PARTS))
    dense = [weakref.ref(model.get_submodule(name).weight) for name in targets]
    nf4.quantize_nf4(model, ("attention", "lm_head"), double_quant)
    assert all(ref() is None for ref in dense)  # each dense weight is freed as soon as its layer is replaced
    assert len(targets) == 4 * 4 + 1
    for name, module in model.named_modules():
        assert isinstance(module, bnb.nn.Linear4bit) == (name in targets), name
    assert isinstance(model.lm_head, nf4.NF4Head)
    for name in targets:  # |w - nf4(w)| <= half the widest level gap x the block's absmax, elementwise
        module = model.get_submodule(name)
        w = before[name + ".weight"]
        err = (dense_weight(module) - w).abs().view(-1, nf4.BLOCKSIZE)
        absmax = w.abs().view(-1, nf4.BLOCKSIZE).amax(-1, keepdim=True)
        state = module.weight.quant_state
        used = state.absmax  # the scale the block is stored with: its absmax, 8-bit rounded under double quant
        if state.nested:
            used = bnb.functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
        used = used.view(-1, 1)
        assert bool(((used - absmax).abs() <= (0.02 if double_quant else 1e-6) * absmax).all()), name
        # the level is chosen with the true absmax and read back with the stored one
        assert bool((err <= HALF_GAP * absmax + (absmax - used).abs() + 1e-6).all()), name
        rel = ((dense_weight(module) - w).norm() / w.norm()).item()
        assert 0.05 < rel < 0.12, (name, rel)  # NF4 on Gaussian weights: about 9%
        assert module.weight.requires_grad is False
        if module.bias is not None:
            assert torch.equal(module.bias, before[name + ".bias"])
    for name, p in model.named_parameters():  # the router, the embedding, norms, sinks and experts are untouched
        if not any(name.startswith(t + ".") for t in targets):
            assert torch.equal(p, before[name]), name


@pytest.mark.parametrize("double_quant", [False, True])
def test_row_blocks_are_slices_of_bitsandbytes_own_dequantization(double_quant):
    model = nf4.quantize_nf4(tiny_model(), ("lm_head",), double_quant)
    weight, full = model.lm_head.weight, dense_weight(model.lm_head)
    for start, stop in [(0, 256), (256, 16384), (4096, 4352), (196_608, VOCAB)]:
        assert torch.equal(nf4.dense_rows(weight, start, stop), full[start:stop]), (start, stop)
    x = torch.randn(3, 64)
    torch.testing.assert_close(nf4.nf4_linear(x, weight, chunk_rows=512), x @ full.t(), atol=1e-5, rtol=1e-5)
    if double_quant:  # a block must start on a 256-absmax boundary (here every 256 rows)
        with pytest.raises(ValueError):
            nf4.weight_rows(weight, 100, 356)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_bytes_and_the_docstrings_savings_are_what_bitsandbytes_holds(double_quant):
    from ossgym.agents.gptoss.presets import gpt_oss_20b_config

    model = nf4.quantize_nf4(tiny_model(), nf4.PARTS, double_quant)
    for name in nf4.target_names(model, nf4.PARTS):
        module = model.get_submodule(name)
        assert nf4.module_nf4_bytes(module) == nf4.nf4_bytes(*module.weight.quant_state.shape, double_quant), name
    savings = nf4.nf4_savings(gpt_oss_20b_config(), double_quant)
    table = {line.split()[0]: line.split() for line in nf4.__doc__.splitlines() if line.startswith(nf4.PARTS)}
    assert set(table) == set(nf4.PARTS)
    for part, row in table.items():  # part, weights M, bf16 GiB, NF4 GiB, saved GiB, saved with double quant GiB
        assert f"{savings[part]['saved_bytes'] / 2**30:.3f}" == row[9 if double_quant else 7], part
        assert f"{savings[part]['weights'] / 1e6:.1f}" == row[1]
        assert f"{savings[part]['dense_bytes'] / 2**30:.3f}" == row[3]
        if not double_quant:
            assert f"{savings[part]['nf4_bytes'] / 2**30:.3f}" == row[5]


def test_lm_head_alone_moves_the_logits_by_its_weight_error():
    """With the body exact, logits change by (W - nf4(W)) h: relative to W h, about the weights' relative error."""
    x = ids(2, 12)
    with torch.no_grad():
        ref = tiny_model()(x).logits
        model = nf4.quantize_nf4(tiny_model(), ("lm_head",))
        out = model(x).logits
    w = tiny_model().lm_head.weight
    weight_rel = ((dense_weight(model.lm_head) - w).norm() / w.norm()).item()
    logit_rel = ((out - ref).norm() / ref.norm()).item()
    assert 0.8 * weight_rel < logit_rel < 1.2 * weight_rel, (logit_rel, weight_rel)


def test_the_nf4_model_is_the_dense_model_on_the_dequantized_weights():
    model = nf4.quantize_nf4(tiny_model(), nf4.PARTS)
    dense = tiny_model()
    with torch.no_grad():
        for name in nf4.target_names(model, nf4.PARTS):
            dense.get_submodule(name).weight.copy_(dense_weight(model.get_submodule(name)))
        x = ids(2, 10)
        torch.testing.assert_close(model(x).logits, dense(x).logits, atol=TOL, rtol=0)
    reference = tiny_model()(x).logits
    assert (model(x).logits - reference).abs().max() > 0.1  # the NF4 rounding is there (not a dense model)


# ---------------------------------------------------------------------------------------------- engine
@pytest.mark.parametrize("double_quant", [False, True])
def test_engine_equals_the_hf_forward_on_the_nf4_model_with_lora(double_quant):
    model = add_lora(nf4.quantize_nf4(tiny_model(), nf4.PARTS, double_quant))
    model.eval()
    batch = [ids(1, 9, 1)[0].tolist(), ids(1, 5, 2)[0].tolist()]
    continuation = [ids(1, 3, 3)[0].tolist(), ids(1, 3, 4)[0].tolist()]
    engine = FastGptOss(model, max_batch_size=2, max_seq_len=16, compile=False)
    assert engine.dtype == torch.float32
    logits = engine.logits(batch)
    steps = engine.decode_logits(batch, continuation)
    with torch.no_grad():
        for row, (prompt, extra) in enumerate(zip(batch, continuation)):
            hf = model(input_ids=torch.tensor([prompt + extra])).logits[0]
            torch.testing.assert_close(logits[row, logits.shape[1] - len(prompt):], hf[: len(prompt)], atol=TOL, rtol=0)
            torch.testing.assert_close(steps[row], hf[len(prompt) - 1:], atol=TOL, rtol=0)
    with torch.no_grad(), model.disable_adapter():  # the LoRA acts in both: without it the logits differ
        plain = model(input_ids=torch.tensor([batch[0]])).logits[0]
    assert (plain - logits[0]).abs().max() > 1e-2


def test_engine_runs_a_bf16_nf4_model_in_bf16():
    model = nf4.quantize_nf4(tiny_model(dtype=torch.bfloat16), nf4.PARTS)
    engine = FastGptOss(model, max_batch_size=1, max_seq_len=12, compile=False)
    assert engine.dtype == torch.bfloat16
    prompt = ids(1, 8)[0].tolist()
    with torch.no_grad():
        hf = model(input_ids=torch.tensor([prompt])).logits[0].float()
    out = engine.logits([prompt])[0]
    assert (out - hf).abs().max() <= 0.05 * hf.abs().max()  # bf16 rounding of two attention implementations
    assert (out.argmax(-1) == hf.argmax(-1)).float().mean() >= 0.85


def test_the_nf4_head_never_dequantizes_more_than_one_block_of_rows():
    model = nf4.quantize_nf4(tiny_model(), ("lm_head",))
    hidden = torch.randn(3, 64)
    with torch.no_grad(), LargestAllocation() as probe:
        out = model.lm_head(hidden)
    assert out.shape == (3, VOCAB)
    assert probe.largest <= nf4.HEAD_CHUNK_ROWS * 64 < VOCAB * 64 // 10
    torch.testing.assert_close(out, hidden @ dense_weight(model.lm_head).t(), atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------------- training
def test_lora_on_nf4_attention_trains():
    import bitsandbytes as bnb

    from ossgym.training.logprobs import chunked_logprobs

    model = add_lora(nf4.quantize_nf4(tiny_model(), nf4.PARTS))
    model.train()
    wrapped = model.base_model.model.model.layers[0].self_attn.q_proj
    assert isinstance(wrapped.get_base_layer(), bnb.nn.Linear4bit) and "default" in wrapped.lora_A  # QLoRA
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    optimizer = torch.optim.SGD(params, lr=0.5)
    x = ids(2, 12, 5)

    def loss() -> torch.Tensor:
        hidden = model.base_model.model.model(input_ids=x).last_hidden_state[:, :-1]
        return -chunked_logprobs(hidden, model.base_model.model.lm_head.weight, x[:, 1:], chunk_size=7).mean()

    first = loss()
    first.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_A" in n)
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        second = loss()
    assert second < first - 1e-3, (first.item(), second.item())


def reference_logprobs(hidden, weight, targets, temperature=1.0):
    logits = (hidden @ weight.t()).float() / temperature
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, targets[:, None])[:, 0], entropy


@pytest.mark.parametrize("double_quant", [False, True])
def test_chunked_logprobs_and_the_vocab_blocked_head_score_an_nf4_head_exactly(double_quant):
    from ossgym.training.logprobs import chunked_logprobs
    from ossgym.training.nf4_head import nf4_head_logprobs

    model = nf4.quantize_nf4(tiny_model(), ("lm_head",), double_quant)
    weight = model.lm_head.weight
    dense = dense_weight(model.lm_head)
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(10, 64, generator=g, requires_grad=True)
    targets = torch.randint(0, VOCAB, (10,), generator=g)
    ref, ref_entropy = reference_logprobs(hidden, dense, targets, temperature=0.7)
    (ref_grad,) = torch.autograd.grad((ref * torch.arange(10)).sum() + ref_entropy.sum(), hidden)

    chunked = chunked_logprobs(hidden, weight, targets, chunk_size=3, temperature=0.7)
    torch.testing.assert_close(chunked, ref, atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad((chunked * torch.arange(10)).sum(), hidden)
    (ref_grad_lp,) = torch.autograd.grad((reference_logprobs(hidden, dense, targets, 0.7)[0] * torch.arange(10)).sum(),
                                         hidden)
    torch.testing.assert_close(grad, ref_grad_lp, atol=1e-4, rtol=1e-3)  # fp32 sums in another order

    with LargestAllocation() as probe:  # blocks of 4,096 rows: never the [positions, vocab] logits
        logp, entropy, *rest = nf4_head_logprobs(hidden, weight, None, targets, 0.7, 4096,
                                                 outputs=("log_probs", "entropy"))
        (grad,) = torch.autograd.grad((logp * torch.arange(10)).sum() + entropy.sum(), hidden)
    assert rest == [None, None, None]
    torch.testing.assert_close(logp, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, ref_entropy, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-3)
    assert probe.largest <= 4096 * 64 < 10 * VOCAB  # one block's dequantized rows; its logits are 10 x 4,096


def test_the_nf4_head_trains_with_checkpoints_offloaded():
    """Saved tensors that come back as plain tensors (what save_on_cpu's pinned copies are on CUDA, which
    offload_checkpoints turns on) must not lose the NF4 weight's quantization state in the recompute."""
    from ossgym.training.logprobs import chunked_logprobs
    from ossgym.training.nf4_head import nf4_head_logprobs

    model = nf4.quantize_nf4(tiny_model(), ("lm_head",))
    weight = model.lm_head.weight
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(6, 64, generator=g, requires_grad=True)
    targets = torch.randint(0, VOCAB, (6,), generator=g)
    ref, _ = reference_logprobs(hidden, dense_weight(model.lm_head), targets, temperature=1.0)
    (ref_grad,) = torch.autograd.grad(ref.sum(), hidden)

    def pack(t):
        return t.device, torch.empty(t.size(), dtype=t.dtype, layout=t.layout).copy_(t)

    for score in (lambda: nf4_head_logprobs(hidden, weight, None, targets, 1.0, 4096)[0],  # TRL's fused head
                  lambda: chunked_logprobs(hidden, weight, targets, chunk_size=4)):  # ossgym's chunked log-probs
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda packed: packed[1].to(packed[0])):
            logp = score()
            (grad,) = torch.autograd.grad(logp.sum(), hidden)
        torch.testing.assert_close(logp, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-4, rtol=1e-3)


def test_completion_logprobs_of_an_nf4_model_are_its_logits_log_softmax():
    from ossgym.training.long_context import completion_logprobs

    model = add_lora(nf4.quantize_nf4(tiny_model(), nf4.PARTS))
    model.eval()
    x = ids(2, 11, 9)
    mask = torch.ones_like(x)
    mask[1, :3] = 0  # a left-padded row
    with torch.no_grad():
        ours = completion_logprobs(model, x, mask, logits_to_keep=5, chunk_size=4)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=x, attention_mask=mask, position_ids=positions).logits[:, -6:-1].float()
    expected = logits.log_softmax(-1).gather(-1, x[:, -5:, None])[..., 0]
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_trl_fused_head_scores_an_nf4_head_through_the_patch_only():
    from trl.trainer.utils import add_fused_lm_head

    from ossgym.training.cpu_head import cpu_fused_lm_head
    from ossgym.training.nf4_head import nf4_fused_lm_head

    model = nf4.quantize_nf4(tiny_model(), nf4.PARTS)
    add_fused_lm_head(model, temperature=1.0, outputs=("log_probs", "entropy"))
    x = ids(2, 9, 11)
    labels = x.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        logp = model(input_ids=x).logits[:, :-1].float().log_softmax(-1)
    expected = logp.gather(-1, x[:, 1:, None])[..., 0] * (labels[:, 1:] != -100)
    with cpu_fused_lm_head(), nf4_fused_lm_head() as applies:
        out = model(input_ids=x, labels=labels, fused_lm_head=True)
    assert applies
    torch.testing.assert_close(out.log_probs, expected, atol=1e-5, rtol=1e-5)
    assert out.entropy is not None and bool(torch.isfinite(out.entropy).all())
    with pytest.raises(RuntimeError):  # TRL alone slices the packed 4-bit data as if it were the matrix
        model(input_ids=x, labels=labels, fused_lm_head=True)


# ---------------------------------------------------------------------------------------------- a run
CODE = '<|channel|>final<|message|>```python\ndef strategy(board):\n    return "W"\n```<|return|>'
NO_CODE = "<|channel|>final<|message|>I cannot write that.<|return|>"


def test_load_agent_quantizes_the_parts_the_config_names():
    import bitsandbytes as bnb

    from ossgym.training import GRPORunConfig
    from ossgym.training.run import load_agent

    agent = load_agent(GRPORunConfig(nf4=("lm_head",), nf4_double_quant=True))
    assert isinstance(agent.model.lm_head, nf4.NF4Head) and agent.model.lm_head.weight.quant_state.nested
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in agent.model.model.modules())


@pytest.fixture(scope="module")
def nf4_run(tmp_path_factory):
    """Two GRPO steps of the tiny agent with NF4 attention and head (warm-started first, as tests/test_train.py
    does, so the group's rewards differ and the LoRA gets a gradient: the warm start trains dense head rows)."""
    from ossgym.agents.agent import GptOssAgent
    from ossgym.training import GRPORunConfig
    from ossgym.training.env import EnvRewards
    from ossgym.training.run import run_training
    from ossgym.training.warm_start import supervised_warm_start

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("nf4")
    config = GRPORunConfig(env_id="GptOss2048-v0", env_kwargs={"num_games": 1}, steps=2, group_size=4,
                           max_prompt_length=1024, max_completion_length=20, max_seq_len=2048, learning_rate=1e-2,
                           num_dataset_rows=8, output_dir=str(out), seed=0, nf4=("attention", "lm_head"))
    agent = GptOssAgent.tiny()
    supervised_warm_start(agent, [EnvRewards(config.env_id, config.env_kwargs).prompt(0)], [CODE, NO_CODE], steps=100)
    head = agent.model.lm_head.weight.detach().clone()
    return run_training(config, agent=agent, progress=False), config, head  # quantizes the agent's parts


def test_a_run_with_nf4_trains_and_exports_a_plain_bf16_model(nf4_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, config, head = nf4_run
    assert [r["step"] for r in result.records] == [1, 2]
    assert all(r["mismatch"]["abs_logp_diff_max"] < 1e-3 for r in result.records)  # engine = TRL's NF4 head
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.records)
    assert any(r["reward_std"] > 0 for r in result.records) and result.generation_backend == "fast"
    base = tiny_model()
    with torch.no_grad():
        base.lm_head.weight.copy_(head)  # the warm-started head, quantized again as the run's was
    trained = PeftModel.from_pretrained(nf4.quantize_nf4(base, config.nf4), result.adapter_dir)
    lora_b = {n: p for n, p in trained.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 16 and all(p.abs().sum() > 0 for p in lora_b.values())  # one step moved every B
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    assert all(type(m).__module__.startswith(("torch", "transformers")) for m in merged.modules())
    assert next(merged.parameters()).dtype == torch.bfloat16
    # the merged weight is dequant(W) + the LoRA delta, exactly (rounded once, to bf16)
    layer = trained.base_model.model.model.layers[1].self_attn.v_proj
    expected = dense_weight(layer.base_layer) + layer.get_delta_weight("default")
    torch.testing.assert_close(merged.model.layers[1].self_attn.v_proj.weight, expected.bfloat16(), atol=0, rtol=0)
    torch.testing.assert_close(merged.lm_head.weight, dense_weight(trained.base_model.model.lm_head).bfloat16(),
                               atol=0, rtol=0)
    trained.eval()
    x = ids(2, 10, 21)
    with torch.no_grad():
        ours, theirs = trained(input_ids=x).logits, merged.float()(input_ids=x).logits
        dense = tiny_model()
        dense.lm_head.weight.copy_(head)
        nf4_shift = (dense(input_ids=x).logits - ours).abs().mean()
    # the merged model differs from the NF4 + LoRA model only by bf16 rounding of the dequantized weights: far
    # below what NF4 rounding itself moves the logits
    assert (theirs - ours).abs().mean() < 0.1 * nf4_shift, ((theirs - ours).abs().mean(), nf4_shift)


def test_merged_mxfp4_export_of_an_nf4_model_loads_in_stock_transformers(tmp_path):
    """MXFP4 experts + NF4 attention and head + LoRA: the merged export is the official MXFP4 layout with plain
    dense attention and head (no bitsandbytes keys), and stock transformers gives the NF4 + LoRA model's logits."""
    from types import SimpleNamespace

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from ossgym.agents.gptoss.mxfp4 import convert_experts
    from ossgym.agents.gptoss.tokenizer import load_tokenizer
    from ossgym.training.run import _export

    model = tiny_model()
    convert_experts(model, "mxfp4")
    model = add_lora(nf4.quantize_nf4(model, nf4.PARTS))
    model.eval()
    x = ids(2, 10, 31)
    with torch.no_grad():
        ours = model(input_ids=x).logits
    trainer = SimpleNamespace(model=model)
    _, merged_dir = _export(trainer, load_tokenizer(), tmp_path, merged=True)
    tensors = load_file(str(merged_dir / "model.safetensors"))
    assert not [k for k in tensors if "absmax" in k or "quant" in k or "bitsandbytes" in k]
    assert tensors["lm_head.weight"].shape == (VOCAB, 64) and "model.layers.0.mlp.experts.down_proj_blocks" in tensors
    hf = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    with torch.no_grad():
        theirs = hf(input_ids=x).logits
    torch.testing.assert_close(theirs, ours, atol=1e-3, rtol=0)  # fp32 export: the same weights, summed again


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("kwargs, field", [
    ({"nf4": ("router",)}, "nf4"),
    ({"nf4": ("embed_tokens",)}, "nf4"),
    ({"nf4_double_quant": True}, "nf4_double_quant"),
])
def test_bad_nf4_options_name_the_field(kwargs, field):
    from ossgym.training import GRPORunConfig
    from ossgym.training.config import NF4_PARTS

    assert NF4_PARTS == nf4.PARTS  # the config names them without importing bitsandbytes

    with pytest.raises(ConfigError) as info:
        GRPORunConfig(**kwargs)
    assert info.value.field == field


def test_nf4_without_bitsandbytes_is_a_config_error(monkeypatch):
    import importlib.util

    from ossgym.training import GRPORunConfig

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        find_spec(name, *a))
    with pytest.raises(ConfigError) as info:
        GRPORunConfig(nf4=("attention",))
    assert info.value.field == "nf4" and "pip install" in str(info.value)
    assert GRPORunConfig().nf4 == ()


def test_layers_that_cannot_be_nf4_are_config_errors():
    from peft import LoraConfig, get_peft_model
    from transformers import GptOssConfig, GptOssForCausalLM

    odd = GptOssForCausalLM(GptOssConfig(num_hidden_layers=2, num_local_experts=2, num_experts_per_tok=1,
                                         vocab_size=96, hidden_size=96, intermediate_size=32, head_dim=16,
                                         num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ConfigError, match="multiple of NF4's block") as info:  # o_proj/q_proj: 96 inputs
        nf4.quantize_nf4(odd, ("attention",))
    assert info.value.field == "nf4"
    tied = GptOssForCausalLM(GptOssConfig(num_hidden_layers=2, num_local_experts=2, num_experts_per_tok=1,
                                          vocab_size=96, hidden_size=64, intermediate_size=32, head_dim=16,
                                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    with pytest.raises(ConfigError, match="ties"):
        nf4.quantize_nf4(tied, ("lm_head",))
    wrapped = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ConfigError, match="before adding LoRA"):
        nf4.quantize_nf4(wrapped, ("attention",))
    with pytest.raises(ConfigError) as info:  # bitsandbytes' 4-bit has no float64
        nf4.probe_nf4("cpu", torch.float64)
    assert info.value.field == "nf4"
    nf4.probe_nf4("cpu", torch.float32)  # and it works here


def test_the_warm_start_refuses_an_nf4_head():
    from ossgym.agents.agent import GptOssAgent
    from ossgym.training.warm_start import supervised_warm_start

    agent = GptOssAgent.tiny()
    nf4.quantize_nf4(agent.model, ("lm_head",))
    with pytest.raises(ConfigError) as info:
        supervised_warm_start(agent, ["hi"], ["<|channel|>final<|message|>ok<|return|>"], steps=1)
    assert info.value.field == "nf4"


def test_cli_takes_nf4_parts(tmp_path, capsys):
    import argparse

    from ossgym.cli import add_train_parser, config_from_args, train_main

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    config = config_from_args(parser.parse_args(["train", "--nf4", "attention,lm_head", "--nf4-double-quant",
                                                 "--output-dir", str(tmp_path)]))
    assert config.nf4 == ("attention", "lm_head") and config.nf4_double_quant
    assert train_main(["--nf4", "attention,router", "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("ossgym train: error: nf4:")
