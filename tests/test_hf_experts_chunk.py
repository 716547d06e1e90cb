"""Stock Hugging Face experts with peft ``target_parameters`` LoRA, chunked (hf_experts.py), CPU fp32: the same
logits and LoRA gradients as HF's unchunked forward, peft's disabled adapter honoured, memory bounded by the
chunk, and a GRPO run on stock experts (beta > 0) whose adapter stock peft loads."""

from __future__ import annotations

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from ossgym.agents.gptoss.hf_experts import ChunkedGptOssMLP, chunk_stock_experts  # noqa: E402
from ossgym.agents.gptoss.mxfp4 import convert_experts, set_expert_chunk_tokens  # noqa: E402
from ossgym.agents.gptoss.tiny import tiny_model  # noqa: E402

EXPERT_TARGETS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def _peft_model(layers=2, model=None):
    """The tiny model (or `model`) with peft LoRA on q_proj and both expert projections, the same seeded
    factors each time, every B random (so every A has a gradient), in training mode."""
    model = model if model is not None else tiny_model(num_hidden_layers=layers)
    model.config.attention_dropout = 0.0
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], target_parameters=EXPERT_TARGETS)
    torch.manual_seed(0)  # peft's A init
    wrapped = peft.get_peft_model(model, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return wrapped.train()


def _ids(length, seed=0):
    return torch.randint(0, 200_000, (2, length), generator=torch.Generator().manual_seed(seed))


def _step(model, ids):
    """Logits and the gradient of every LoRA parameter of one loss (a fixed projection of the logits)."""
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    for p in lora.values():
        p.grad = None
    logits = model(input_ids=ids).logits
    weight = torch.linspace(-1, 1, logits.shape[-1])
    (logits * weight).mean().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in lora.items()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_chunked_stock_experts_equal_hf_in_logits_and_every_lora_gradient(checkpointing):
    """Chunks of 5 tokens over a 23-token sequence (x2 rows): HF's forward through peft's ParamWrappers and the
    chunked forward give the same logits and gradients of every LoRA parameter (experts' A and B included),
    with and without the layers' activation checkpointing around the chunks' own checkpoints."""
    model = _peft_model()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    ids = _ids(23)
    ref_logits, ref_grads = _step(model, ids)  # HF's stock forward
    assert chunk_stock_experts(model) == 2
    assert all(type(layer.mlp) is ChunkedGptOssMLP for layer in model.base_model.model.model.layers)
    assert set_expert_chunk_tokens(model, 5) == 2
    logits, grads = _step(model, ids)
    # fp32 rounding: HF folds W + s*A@B before its product (peft), the chunked path adds s*(x@A)@B after it;
    # logits reach |23| and differ by up to ~1.5e-5, the gradients by ~1e-9
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=2e-5)
    experts = [n for n in ref_grads if ".experts." in n]
    assert len(experts) == 2 * 2 * 2  # layers x (gate_up_proj, down_proj) x (A, B)
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        assert ref.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], ref, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_disabled_adapter_is_the_base_model_and_merge_keeps_the_logits():
    """peft's disable_adapter (TRL's reference pass for beta > 0) turns the expert LoRA off in the chunked forward
    too; merge_and_unload leaves stock experts that the chunked forward runs without factors."""
    base_logits = tiny_model(num_hidden_layers=2)(input_ids=_ids(19)).logits.detach()
    model = _peft_model().eval()
    chunk_stock_experts(model)
    set_expert_chunk_tokens(model, 4)
    ids = _ids(19)
    with torch.no_grad():
        adapted = model(input_ids=ids).logits
        with model.disable_adapter():
            disabled = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert (adapted - base_logits).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(disabled, base_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_chunking_bounds_the_largest_tensor_of_a_layer():
    """One MoE layer, forward + backward over 1,024 tokens: HF's path (through peft's wrappers) makes at least one
    expert's routed gate_up rows at once (all experts' with its default grouped_mm), more than the [tokens, hidden]
    input; chunks of 16 tokens make nothing larger than that input and its gradient."""
    from tensor_probe import LargestTensor

    tokens, hidden, inter = 1024, 64, 96
    model = _peft_model(layers=1)
    mlp = model.base_model.model.model.layers[0].mlp
    x = torch.randn(1, tokens, hidden, generator=torch.Generator().manual_seed(2), requires_grad=True)

    def run():
        out, _ = mlp(x)
        out.sum().backward()

    with LargestTensor() as hf:
        run()
    chunk_stock_experts(model)
    set_expert_chunk_tokens(model, 16)
    with LargestTensor() as chunked:
        run()
    one_expert_rows = tokens * 2 // 4 * 2 * inter  # the average expert's share of top-2 of 4, x 2 * intermediate
    assert hf.largest >= one_expert_rows > tokens * hidden
    assert chunked.largest <= tokens * hidden


def test_install_before_peft_is_the_same_and_ossgym_experts_are_left_alone():
    """Installed before peft wraps the model the forward is the same; layers with OssExperts are not touched."""
    ids = _ids(17)
    ref, _ = _step(_peft_model(), ids)
    model = tiny_model(num_hidden_layers=2)
    assert chunk_stock_experts(model) == 2 and chunk_stock_experts(model) == 2  # idempotent
    set_expert_chunk_tokens(model, 3)
    logits, _ = _step(_peft_model(model=model), ids)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=2e-5)  # fp32 rounding, as above
    own = convert_experts(tiny_model(num_hidden_layers=2), "bf16")
    assert chunk_stock_experts(own) == 0
    assert not any(isinstance(layer.mlp, ChunkedGptOssMLP) for layer in own.model.layers)


def test_grpo_run_on_stock_experts_with_beta_trains_chunked_and_saves_a_stock_peft_adapter(tmp_path, monkeypatch):
    """``run_training`` on the tiny model's stock experts, expert LoRA through peft, beta > 0 (the reference pass
    through peft's disabled adapter): the layers run chunked, every expert LoRA B moves, the saved adapter is
    stock peft's (stock transformers + PeftModel.from_pretrained give the trained model's logits with HF's own
    unchunked forward), and the merged bf16 export loads with transformers."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ossgym.training import GRPORunConfig
    from ossgym.training.env import EnvRewards
    from ossgym.training.run import load_agent, run_training
    from ossgym.training.warm_start import supervised_warm_start

    code = '<|channel|>final<|message|>```python\ndef strategy(board):\n    return "W"\n```<|return|>'
    no_code = "<|channel|>final<|message|>I cannot write that.<|return|>"
    torch.manual_seed(0)
    config = GRPORunConfig(env_id="GptOss2048-v0", env_kwargs={"num_games": 1}, steps=1, group_size=4,
                           max_prompt_length=1024, max_completion_length=16, max_seq_len=2048, learning_rate=1e-2,
                           num_dataset_rows=4, output_dir=str(tmp_path / "run"), seed=0, beta=0.1,
                           lora_target_parameters=tuple(EXPERT_TARGETS))
    agent = load_agent(config)
    env = EnvRewards(config.env_id, config.env_kwargs)
    supervised_warm_start(agent, [env.prompt(0)], [code, no_code], steps=100)  # rewards that differ
    agent.model.save_pretrained(tmp_path / "base")
    assert not any(isinstance(layer.mlp, ChunkedGptOssMLP) for layer in agent.model.model.layers)
    monkeypatch.setattr(ChunkedGptOssMLP, "chunk_tokens", 256)  # ~1,040-token sequences: 5 chunks a layer
    result = run_training(config, agent=agent, export_merged=True, progress=False)
    assert result.records and any(r["reward_std"] > 0 for r in result.records)
    assert all(r["kl"] is not None and math.isfinite(r["kl"]) for r in result.records)  # the reference pass ran
    assert {"is_ratio_min", "is_low_frac", "is_dropped_frac"} <= set(result.records[0]["mismatch"])  # IS logged
    assert all(type(layer.mlp) is ChunkedGptOssMLP for layer in agent.model.model.layers)
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    expert_b = [v for k, v in adapter.items() if ".mlp.experts." in k and "lora_B" in k]
    assert len(expert_b) == 8 and all(v.abs().sum() > 0 for v in expert_b)  # 4 layers x 2; B starts at zero
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_parameters"]) == sorted(EXPERT_TARGETS)
    ids = _ids(30, seed=6)[:1]
    stock = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        before = stock(ids).logits
        theirs = PeftModel.from_pretrained(stock, str(result.adapter_dir)).eval()(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(str(result.merged_dir), dtype=torch.float32,
                                                      attn_implementation="eager").eval()(ids).logits
        ours = agent.model(ids).logits  # the merged model (the run merged it in place)
    assert (theirs - before).abs().max() > 1e-3  # the adapter moved the model
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (merged - ours).abs().mean() < 0.05 * ours.std()  # the bf16 export's rounding only
