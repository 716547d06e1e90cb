"""MXFP4 in training and the engine's memory savings (CPU, fp32): agreement with stock transformers on random
MXFP4 weights across the sliding window, the shared-prefix prefill, releasing the cache, offloaded
embeddings, and ``run_training`` on MXFP4 experts with split expert LoRA (config fields, adapter, export)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from ossgym.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def random_mxfp4(tmp_path_factory):
    """A tiny gpt-oss checkpoint in the official layout with random nibbles and E8M0 scales (the benchmark's
    weights, not quantized Gaussians): every FP4 code and several exponents occur."""
    from safetensors.torch import load_file, save_file

    from ossgym.agents.gptoss.mxfp4 import save_mxfp4
    from ossgym.agents.gptoss.tiny import tiny_model

    path = tmp_path_factory.mktemp("mxfp4") / "random"
    save_mxfp4(tiny_model(num_hidden_layers=4), path)
    tensors = load_file(str(path / "model.safetensors"))
    g = torch.Generator().manual_seed(11)
    for key in list(tensors):
        if key.endswith("_blocks"):
            tensors[key] = torch.randint(0, 256, tensors[key].shape, dtype=torch.uint8, generator=g)
        elif key.endswith("_scales"):
            tensors[key] = torch.randint(122, 127, tensors[key].shape, dtype=torch.uint8, generator=g)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 200_000, (n,), generator=g).tolist() for n in lengths]


def _padded(prompts):
    length = max(map(len, prompts))
    ids = torch.zeros(len(prompts), length, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, length - len(p):] = torch.tensor(p)
        mask[row, length - len(p):] = 1
    return ids, mask


def test_random_mxfp4_matches_transformers_across_the_window_left_padded(random_mxfp4):
    """The benchmark's bf16 disagreement is not in the code: in fp32, on random MXFP4 weights, with 300-token
    rows (window 128 crossed) left-padded, the engine and the HF forward through OssExperts equal stock
    transformers' dequantized model."""
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.mxfp4 import load_gptoss

    hf = AutoModelForCausalLM.from_pretrained(str(random_mxfp4), dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True)).eval()
    ours = load_gptoss(random_mxfp4, experts="mxfp4", dtype=torch.float32)
    prompts = _prompts([300, 217])
    ids, mask = _padded(prompts)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=positions).logits
        mine = ours(ids, attention_mask=mask, position_ids=positions).logits
        engine = FastGptOss(ours, max_batch_size=2, max_seq_len=320, compile=False).logits(prompts)
    real = mask.bool()
    assert ref[real].std() > 0.5  # logits that differ from token to token: the comparison means something
    torch.testing.assert_close(mine[real], ref[real], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(engine[real], ref[real], rtol=1e-4, atol=1e-4)
    # and decoding token by token past the window gives the same next-token logits as the full forward
    with torch.no_grad():
        steps = FastGptOss(ours, max_batch_size=1, max_seq_len=320, compile=False).decode_logits(
            [prompts[1][:150]], [prompts[1][150:217]])
        full = hf(torch.tensor([prompts[1]])).logits
    torch.testing.assert_close(steps[0], full[0, 149:217], rtol=1e-4, atol=1e-4)


def test_shared_prefix_prefill_equals_prefilling_every_row():
    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.tiny import tiny_model

    model = tiny_model()
    a, b = _prompts([150, 90], seed=3)
    rows = [a, b, a, a, b]  # a GRPO batch: two prompts, repeated
    engine = FastGptOss(model, max_batch_size=5, max_seq_len=200, compile=False)
    ids, pad = engine._batch(rows, 8)
    with torch.no_grad():
        shared = engine._prefill_shared(ids, pad)
        cache_shared = [t[:5].clone() for t in engine.cache.k + engine.cache.v]
        engine.release()
        every = engine._prefill(ids, pad, all_logits=False)
        cache_every = [t[:5].clone() for t in engine.cache.k + engine.cache.v]
    torch.testing.assert_close(shared, every, rtol=1e-5, atol=1e-5)
    for x, y in zip(cache_shared, cache_every):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)
    # greedy generation: the repeated rows equal their prompt generated alone
    with torch.no_grad():
        group = engine.generate(rows, max_new_tokens=6, temperature=0.0)
        alone = engine.generate([a], max_new_tokens=6, temperature=0.0)
    assert group.tokens[0] == group.tokens[2] == group.tokens[3] == alone.tokens[0]
    torch.testing.assert_close(torch.tensor(group.logprobs[2]), torch.tensor(alone.logprobs[0]), rtol=1e-4,
                               atol=1e-4)


def test_release_frees_the_cache_and_the_next_call_rebuilds_it():
    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.tiny import tiny_model

    engine = FastGptOss(tiny_model(), max_batch_size=2, max_seq_len=64, compile=False)
    prompts = _prompts([20, 31], seed=4)
    with torch.no_grad():
        first = engine.generate(prompts, max_new_tokens=5, temperature=0.0)
        engine.release()
        assert engine.cache is None and not engine._graphs
        again = engine.generate(prompts, max_new_tokens=5, temperature=0.0)
    assert engine.cache is not None and again.tokens == first.tokens


def test_offloaded_embeddings_give_the_same_logits_and_stay_on_the_cpu():
    from ossgym.agents.gptoss.engine import FastGptOss
    from ossgym.agents.gptoss.offload import OffloadedEmbedding, offload_embeddings, restore_embeddings
    from ossgym.agents.gptoss.tiny import tiny_model

    model = tiny_model()
    prompts = _prompts([40, 25], seed=5)
    ids, mask = _padded(prompts)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        ref_gen = FastGptOss(model, 2, 64, compile=False).generate(prompts, max_new_tokens=4, temperature=0.0)
    offload_embeddings(model)
    embed = model.model.embed_tokens
    assert isinstance(embed, OffloadedEmbedding)
    assert not any("embed_tokens" in n for n, _ in model.named_parameters())  # model.to() leaves it alone
    model.to(torch.float32)
    assert embed.table.device.type == "cpu"
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, ref)
        gen = FastGptOss(model, 2, 64, compile=False).generate(prompts, max_new_tokens=4, temperature=0.0)
    assert gen.tokens == ref_gen.tokens
    restore_embeddings(model)
    assert "model.embed_tokens.weight" in model.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, ref)


# ------------------------------------------------------------------------------------------- config, run
def test_memory_options_are_config_fields_with_choices(tmp_path):
    from ossgym.training import GRPORunConfig

    config = GRPORunConfig(output_dir=str(tmp_path), experts="mxfp4", offload_embeddings=True,
                           optim="paged_adamw_8bit")
    assert config.grpo_config(use_cpu=True).optim == "paged_adamw_8bit"
    with pytest.raises(ConfigError, match="experts"):
        GRPORunConfig(output_dir=str(tmp_path), experts="nf4")
    with pytest.raises(ConfigError, match="optim"):
        GRPORunConfig(output_dir=str(tmp_path), optim="adam")


def test_split_expert_targets_only_on_ossgym_experts():
    from ossgym.agents.gptoss.mxfp4 import convert_experts, split_expert_targets
    from ossgym.agents.gptoss.tiny import tiny_model

    targets = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj", "self_attn.sinks")
    model = tiny_model(num_hidden_layers=2)
    assert split_expert_targets(model, targets) == (targets, ())  # stock experts: peft wraps them
    convert_experts(model, "mxfp4")
    assert split_expert_targets(model, targets) == (("self_attn.sinks",), ("gate_up_proj", "down_proj"))


def test_memory_options_that_cannot_work_raise_config_errors(tmp_path):
    from ossgym.training import GRPORunConfig
    from ossgym.training.run import check_memory_options

    base = dict(output_dir=str(tmp_path), lora_target_parameters=("mlp.experts.gate_up_proj",))
    with pytest.raises(ConfigError, match="beta"):
        check_memory_options(GRPORunConfig(beta=0.1, **base), ("gate_up_proj",))
    with pytest.raises(ConfigError, match="lora_targets"):
        check_memory_options(GRPORunConfig(lora_targets=(), **base), ("gate_up_proj",))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="optim"):
            check_memory_options(GRPORunConfig(optim="adamw_8bit", output_dir=str(tmp_path)), ())
    check_memory_options(GRPORunConfig(beta=0.1, output_dir=str(tmp_path)), ())  # dense experts: fine


def test_one_grpo_step_on_mxfp4_experts_trains_split_lora_and_exports_a_peft_adapter(tmp_path):
    """``run_training`` with experts=mxfp4: attention LoRA through peft, expert LoRA as split LoRA on the MXFP4
    experts, both trained; the adapter holds both under peft's keys and stock peft on stock transformers (the
    dequantized experts) gives the trained model's logits; the merged export is the official MXFP4 layout."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Mxfp4Config

    from ossgym.agents.gptoss.mxfp4 import OssExperts, is_mxfp4_checkpoint, load_gptoss, save_mxfp4
    from ossgym.training import GRPORunConfig
    from ossgym.training.env import EnvRewards
    from ossgym.training.run import _export, load_agent, run_training
    from ossgym.training.warm_start import supervised_warm_start

    code = '<|channel|>final<|message|>```python\ndef strategy(board):\n    return "W"\n```<|return|>'
    no_code = "<|channel|>final<|message|>I cannot write that.<|return|>"
    torch.manual_seed(0)
    config = GRPORunConfig(env_id="GptOss2048-v0", env_kwargs={"num_games": 1}, steps=1, group_size=4,
                           max_prompt_length=1024, max_completion_length=16, max_seq_len=2048, learning_rate=1e-2,
                           num_dataset_rows=4, output_dir=str(tmp_path / "run"), seed=0, experts="mxfp4",
                           offload_embeddings=True,
                           lora_target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))
    agent = load_agent(config)
    assert isinstance(agent.model.model.layers[0].mlp.experts, OssExperts)
    assert agent.config.max_seq_len == 1024 + 16 and agent.config.max_batch_size == 4  # cache sized for a rollout
    env = EnvRewards(config.env_id, config.env_kwargs)
    supervised_warm_start(agent, [env.prompt(0)], [code, no_code], steps=100)  # rewards that differ
    save_mxfp4(agent.model, tmp_path / "base")  # the experts the run starts from (embeddings restored inside)
    result = run_training(config, agent=agent, export_merged=False, progress=False)
    assert result.records and any(r["reward_std"] > 0 for r in result.records)
    adapter = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    expert_b = [v for k, v in adapter.items() if ".mlp.experts." in k and "lora_B" in k]
    attention_b = [v for k, v in adapter.items() if "self_attn" in k and "lora_B" in k]
    assert len(expert_b) == 8 and len(attention_b) == 16  # 4 layers x (2 projections; q, k, v, o)
    assert all(v.abs().sum() > 0 for v in expert_b + attention_b)  # B starts at zero: the step moved each
    adapter_config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_parameters"]) == ["mlp.experts.down_proj", "mlp.experts.gate_up_proj"]
    # the Trainer's checkpoint holds the same whole adapter (the Trainer itself saves only peft's part)
    checkpoint = result.checkpoints[-1]
    assert load_file(str(checkpoint / "adapter_model.safetensors")).keys() == adapter.keys()
    assert json.loads((checkpoint / "adapter_config.json").read_text())["target_parameters"] == \
        adapter_config["target_parameters"]
    ids, mask = _padded(_prompts([30], seed=6))
    with torch.no_grad():
        ours = agent.model(ids).logits
        stock = AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), dtype=torch.float32,
                                                     attn_implementation="eager",
                                                     quantization_config=Mxfp4Config(dequantize=True)).eval()
        theirs = PeftModel.from_pretrained(stock, str(result.adapter_dir)).eval()(ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # merged export: official MXFP4 layout (expert LoRA merged and re-quantized), loads with ossgym's loader
    trainer = type("T", (), {"model": agent.model})()
    _, merged_dir = _export(trainer, agent.tokenizer, tmp_path / "export", merged=True)
    assert is_mxfp4_checkpoint(merged_dir)
    merged = load_gptoss(merged_dir, experts="mxfp4", dtype=torch.float32)
    with torch.no_grad():
        again = merged(ids).logits
    assert (again - ours).abs().mean() < 0.1 * ours.std()  # re-quantization error only
