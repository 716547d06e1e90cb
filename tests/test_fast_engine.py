"""The fast gpt-oss engine against the Hugging Face eager implementation (tiny random configs, CPU, fp32)."""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import GptOssConfig, GptOssForCausalLM

from ossgym.agents.gptoss.attention import attend, flex_prefill, prefill_mask
from ossgym.agents.gptoss.engine import FastGptOss
from ossgym.agents.gptoss.sampling import sample, top_p_filter
from ossgym.errors import ConfigError

TOL = 1e-4
VOCAB = 96


def tiny_model(window: int, seed: int = 0) -> GptOssForCausalLM:
    """4 layers (sliding, full, sliding, full), 4 experts top-2, GQA 4/2, sinks large enough to matter."""
    torch.manual_seed(seed)
    config = GptOssConfig(
        num_hidden_layers=4, num_local_experts=4, num_experts_per_tok=2, vocab_size=VOCAB, hidden_size=64,
        intermediate_size=32, head_dim=16, num_attention_heads=4, num_key_value_heads=2, sliding_window=window,
        max_position_embeddings=4096, initializer_range=0.1, attn_implementation="eager",
    )
    model = GptOssForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.5)
            layer.mlp.experts.gate_up_proj_bias.normal_(0.0, 0.1)
            layer.mlp.experts.down_proj_bias.normal_(0.0, 0.1)
    assert set(config.layer_types) == {"sliding_attention", "full_attention"}
    return model


@pytest.fixture(scope="module")
def model16() -> GptOssForCausalLM:
    return tiny_model(window=16)


@pytest.fixture(scope="module")
def model128() -> GptOssForCausalLM:
    return tiny_model(window=128, seed=1)


def prompts(lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]


@torch.no_grad()
def hf_logits(model: GptOssForCausalLM, ids: list[int]) -> torch.Tensor:
    return model(input_ids=torch.tensor([ids])).logits[0].float()


def assert_prefill_matches(model: GptOssForCausalLM, batch: list[list[int]]) -> None:
    engine = FastGptOss(model, max_batch_size=len(batch), max_seq_len=max(map(len, batch)) + 1)
    logits = engine.logits(batch)
    assert logits.shape == (len(batch), max(map(len, batch)), VOCAB)
    for row, ids in enumerate(batch):
        diff = (logits[row, logits.shape[1] - len(ids):] - hf_logits(model, ids)).abs().max().item()
        assert diff <= TOL, f"row {row}: max abs diff {diff}"


def assert_engine_matches(engine: FastGptOss, model, batch: list[list[int]], continuation: list[list[int]]
                          ) -> torch.Tensor:
    """The engine's prefill logits of ``batch`` and its decode logits along ``continuation`` equal ``model``'s
    forward (a peft-wrapped model too); returns the prefill logits."""
    logits = engine.logits(batch)
    for row, ids in enumerate(batch):
        assert (logits[row, logits.shape[1] - len(ids):] - hf_logits(model, ids)).abs().max().item() <= TOL
    steps = engine.decode_logits(batch, continuation)
    for row, (ids, extra) in enumerate(zip(batch, continuation)):
        assert (steps[row] - hf_logits(model, ids + extra)[len(ids) - 1:]).abs().max().item() <= TOL
    return logits


def test_unpadded_batch_matches_hf_batch(model16):
    batch = prompts([12, 12, 12], seed=0)
    engine = FastGptOss(model16, max_batch_size=3, max_seq_len=16)
    with torch.no_grad():
        ref = model16(torch.tensor(batch)).logits.float()
    assert (engine.logits(batch) - ref).abs().max().item() <= TOL


def test_left_padded_batch_of_different_lengths(model16):
    assert_prefill_matches(model16, prompts([5, 13, 1, 9], seed=1))


def test_prompts_longer_than_the_window(model16, model128):
    assert_prefill_matches(model16, prompts([50, 37], seed=2))
    assert_prefill_matches(model128, prompts([150, 129, 40], seed=3))


@pytest.mark.parametrize("window,lengths,steps", [(16, [10, 3, 21], 40), (128, [120, 100], 20)])
def test_decode_steps_cross_the_window(model16, model128, window, lengths, steps):
    model = model16 if window == 16 else model128
    batch = prompts(lengths, seed=4)
    continuation = prompts([steps] * len(batch), seed=5)
    engine = FastGptOss(model, max_batch_size=len(batch), max_seq_len=max(lengths) + steps)
    engine.min_span = 8  # full-attention reads grow 8 -> 16 -> 32 -> 64 (-> 128 -> 256) columns on the way
    logits = engine.decode_logits(batch, continuation)
    for row, (ids, cont) in enumerate(zip(batch, continuation)):
        ref = hf_logits(model, ids + cont)[len(ids) - 1:]
        diff = (logits[row] - ref).abs().max().item()
        assert diff <= TOL, f"row {row}: max abs diff {diff}"


@torch.no_grad()
def hf_greedy(model: GptOssForCausalLM, ids: list[int], steps: int) -> list[int]:
    seq = list(ids)
    for _ in range(steps):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def test_greedy_64_tokens_equal_an_hf_greedy_loop(model128):
    batch = prompts([100, 70], seed=6)
    engine = FastGptOss(model128, max_batch_size=2, max_seq_len=164)
    out = engine.generate(batch, max_new_tokens=64, temperature=0.0)
    assert out.finish_reasons == ["length", "length"]
    for row, ids in enumerate(batch):
        assert out.tokens[row] == hf_greedy(model128, ids, 64)


def test_warmup_leaves_no_trace_in_later_generations(model16):
    batch = prompts([9, 30], seed=13)
    cold = FastGptOss(model16, max_batch_size=2, max_seq_len=70)
    cold.min_span = 8
    warm = FastGptOss(model16, max_batch_size=2, max_seq_len=70)
    warm.min_span = 8
    warm.warmup(2)
    warm.warmup(1)
    assert warm.generate(batch, max_new_tokens=40, temperature=0.0) == cold.generate(
        batch, max_new_tokens=40, temperature=0.0)


def test_logprobs_equal_hf_recomputation(model16):
    batch = prompts([7, 20], seed=7)
    engine = FastGptOss(model16, max_batch_size=2, max_seq_len=60)
    out = engine.generate(batch, max_new_tokens=30, temperature=0.7, top_p=0.9, seed=3)
    for ids, new, logprobs in zip(batch, out.tokens, out.logprobs):
        ref = torch.log_softmax(hf_logits(model16, ids + new)[len(ids) - 1:-1] / 0.7, dim=-1)
        expected = ref.gather(-1, torch.tensor(new)[:, None]).squeeze(-1)
        assert len(logprobs) == len(new) == 30
        assert torch.allclose(torch.tensor(logprobs), expected, atol=TOL)


def test_sampling_is_deterministic_under_a_seed(model16):
    engine = FastGptOss(model16, max_batch_size=3, max_seq_len=40)
    batch = prompts([5, 8, 2], seed=8)
    first = engine.generate(batch, max_new_tokens=20, temperature=1.0, seed=11)
    again = engine.generate(batch, max_new_tokens=20, temperature=1.0, seed=11)
    other = engine.generate(batch, max_new_tokens=20, temperature=1.0, seed=12)
    assert first == again
    assert first.tokens != other.tokens


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.7, 0.1, 0.1, 0.1]])
    kept = top_p_filter(probs, 0.6) > 0
    assert kept.tolist() == [[False, True, False, True], [True, False, False, False]]
    logits = torch.log(probs[:1]).repeat(4000, 1)
    tokens, _ = sample(logits, 1.0, 0.6, None, torch.Generator().manual_seed(0))
    counts = torch.bincount(tokens, minlength=4)
    assert counts[0] == 0 and counts[2] == 0
    assert abs(counts[1].item() / 4000 - 4 / 7) < 0.03  # renormalised over the kept set


def test_extra_vocab_ids_are_never_sampled(model16):
    logits = torch.zeros(500, 10)
    logits[:, 7:] = 50.0  # the ids beyond the limit would win every draw
    tokens, _ = sample(logits, 1.0, 1.0, 7, torch.Generator().manual_seed(0))
    assert int(tokens.max()) < 7 and len(set(tokens.tolist())) == 7
    greedy, _ = sample(logits, 0.0, 1.0, 7, None)
    assert int(greedy.max()) < 7
    engine = FastGptOss(model16, max_batch_size=2, max_seq_len=70)
    out = engine.generate(prompts([4, 4], seed=9), max_new_tokens=64, temperature=3.0, seed=0, vocab_size_limit=40)
    assert max(max(row) for row in out.tokens) < 40


def test_per_sequence_stop_and_early_exit(model16):
    engine = FastGptOss(model16, max_batch_size=2, max_seq_len=80)
    batch = prompts([6, 9], seed=10)
    free = engine.generate(batch, max_new_tokens=40, temperature=0.0)
    stop = free.tokens[0][4]
    out = engine.generate(batch, max_new_tokens=40, temperature=0.0, stop_token_ids=[stop])
    for row in range(2):
        cut = free.tokens[row].index(stop) + 1 if stop in free.tokens[row] else 40
        assert out.tokens[row] == free.tokens[row][:cut]
        assert out.finish_reasons[row] == ("stop" if cut < 40 or free.tokens[row][-1] == stop else "length")
    assert out.finish_reasons[0] == "stop"
    assert len(out.logprobs[1]) == len(out.tokens[1])


def test_lora_adapters_change_the_engine_as_they_change_hf():
    peft = pytest.importorskip("peft")
    model = tiny_model(window=16, seed=2)
    batch = prompts([12, 30], seed=11)
    engine_base = FastGptOss(model, max_batch_size=2, max_seq_len=40).logits(batch)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             init_lora_weights=False)
    wrapped = peft.get_peft_model(model, config).eval()
    engine = FastGptOss(wrapped, max_batch_size=2, max_seq_len=40)
    logits = assert_engine_matches(engine, wrapped, batch, prompts([10, 10], seed=12))
    assert (logits - engine_base).abs().max().item() > 1e-2  # the adapter matters


def with_expert_lora(model: GptOssForCausalLM, target_modules: list[str]):
    """`model` under peft LoRA r4 on `target_modules` and on both expert parameters (target_parameters), the B
    factors random (at init they are zero, and the adapter would not show), in eval mode."""
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=target_modules,
                             target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])
    wrapped = peft.get_peft_model(model, config).eval()
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    return wrapped


def test_lora_on_the_experts_target_parameters_is_seen_by_the_engine():
    """peft's target_parameters wraps mlp.experts in ParamWrappers (nested, one per parameter): the engine must
    apply their deltas (GRPO's optional expert LoRA), as the peft forward does, prefill and decode."""
    model = tiny_model(window=16, seed=3)
    batch = prompts([12, 30], seed=13)
    engine_base = FastGptOss(model, max_batch_size=2, max_seq_len=40).logits(batch)
    wrapped = with_expert_lora(model, ["q_proj"])
    engine = FastGptOss(wrapped, max_batch_size=2, max_seq_len=40)
    logits = assert_engine_matches(engine, wrapped, batch, prompts([6, 6], seed=14))
    assert (logits - engine_base).abs().max().item() > 1e-2  # the adapter matters
    with wrapped.disable_adapter():  # adapters disabled (TRL's reference model): the engine sees the base again
        assert (engine.logits(batch) - engine_base).abs().max().item() <= TOL


def test_captured_decode_graphs_are_dropped_when_modules_or_adapters_change():
    """A CUDA graph replays the Python branch peft took at capture: after disabling the adapters (TRL's reference
    pass) or replacing a module, the engine must capture again rather than replay the old step. (Capture needs
    CUDA: a captured graph is stood in for; generate's own check is what runs.)"""
    import copy
    from types import SimpleNamespace

    peft = pytest.importorskip("peft")
    model = tiny_model(window=16, seed=4)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                                         init_lora_weights=False)).eval()
    engine = FastGptOss(wrapped, max_batch_size=1, max_seq_len=40)

    def captured() -> None:
        engine._graphs[(1, 256)] = SimpleNamespace()
        engine._captured_state = engine._module_state()

    captured()
    engine.generate(prompts([5], seed=1), max_new_tokens=2, seed=0)
    assert engine._graphs  # nothing changed: the graphs stay
    with wrapped.disable_adapter():
        engine.generate(prompts([5], seed=1), max_new_tokens=2, seed=0)
        assert not engine._graphs
        captured()
    engine.decode_logits(prompts([5], seed=1), [[3]])  # enabled again
    assert not engine._graphs
    captured()
    attn = engine.base.layers[0].self_attn
    attn.o_proj = copy.deepcopy(attn.o_proj)  # a replaced module (e.g. quantized after the capture)
    engine.warmup(1)
    assert set(engine._graphs) == set()  # on the CPU warmup captures nothing; the stale stand-in is gone


@pytest.mark.parametrize("window", [None, 8])
def test_flex_prefill_with_sink_correction_equals_exact_attention(window):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 40, 16), torch.randn(2, 2, 40, 16), torch.randn(2, 2, 40, 16)
    sinks, pad = torch.randn(4) * 2, torch.tensor([0, 7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex_prefill(q, k, v, pad, window, sinks, 0.25)
    ref = attend(q, k, v, prefill_mask(pad, 40, window), sinks, 0.25)
    assert (out - ref).abs().max().item() <= 1e-5


def test_bad_requests_raise_config_error(model16):
    engine = FastGptOss(model16, max_batch_size=1, max_seq_len=10)
    with pytest.raises(ConfigError):
        engine.generate([[1, 2], [3]], max_new_tokens=2)
    with pytest.raises(ConfigError):
        engine.generate([[1] * 8], max_new_tokens=5)
    with pytest.raises(ConfigError):
        engine.generate([[]], max_new_tokens=1)
