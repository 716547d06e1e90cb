"""GptOssAgent on the tiny model: formatting, seeded sampling, log-probabilities, stops, masking, padding, LoRA."""

import copy

import pytest
import torch

from ossgym.agents.agent import AgentConfig, Generation, GptOssAgent
from ossgym.harmony import parse_harmony
from ossgym.agents.gptoss.tiny import MODEL_VOCAB_SIZE, tiny_model
from ossgym.agents.gptoss.tokenizer import RETURN_ID, VOCAB_SIZE, load_tokenizer
from ossgym.errors import ConfigError

PROMPTS = ["Write a function.", "hi", "Explain " + "the board " * 60]  # the last crosses the 128-token window
ENGINES = [pytest.param(False, id="reference"), pytest.param(True, id="fast")]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a shared 2-core machine are an order of magnitude faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def make_agent(model, tok, fast=False, **cfg):
    return GptOssAgent(model, tok, AgentConfig(use_fast_engine=fast, max_new_tokens=cfg.pop("max_new_tokens", 10),
                                               **cfg))


def recomputed_logprobs(model, gen: Generation, temperature: float = 1.0) -> torch.Tensor:
    """log_softmax(logits / T) of each completion token, from one HF forward over prompt + completion."""
    ids = torch.tensor([gen.prompt_ids + gen.completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()
    n = len(gen.prompt_ids)
    scaled = logits[n - 1: -1] / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(scaled, -1).gather(-1, torch.tensor(gen.completion_ids)[:, None]).squeeze(-1)


def greedy_first_token(model, prompt_ids: list[int]) -> tuple[int, torch.Tensor]:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
    return int(logits[:VOCAB_SIZE].argmax()), logits


def test_tiny_model_is_gpt_oss_shaped_and_deterministic(model):
    cfg = model.config
    assert cfg.model_type == "gpt_oss" and cfg.vocab_size == MODEL_VOCAB_SIZE == 201_088
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert cfg.num_local_experts == 4 and cfg.num_experts_per_tok == 2
    assert all(layer.self_attn.sinks.abs().sum() > 0 for layer in model.model.layers)
    again = tiny_model()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    other = tiny_model(seed=1)
    assert not torch.equal(model.lm_head.weight, other.lm_head.weight)


def test_prompt_is_harmony_with_reasoning_effort(model, tok):
    agent = make_agent(model, tok, reasoning_effort="high", instructions="Answer with code.")
    text = agent.format_prompt("Sort a list.")
    assert text.startswith("<|start|>system<|message|>") and "Reasoning: high\n\n" in text
    assert "<|start|>developer<|message|># Instructions\n\nAnswer with code.\n\n<|end|>" in text
    assert text.endswith("<|start|>user<|message|>Sort a list.<|end|><|start|>assistant")
    assert agent.encode_prompt("Sort a list.") == tok.encode(text, add_special_tokens=False)
    conversation = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}]
    text = agent.format_prompt(conversation)
    assert "<|start|>assistant<|channel|>final<|message|>b<|end|><|start|>user<|message|>c<|end|>" in text


def test_generation_fields_and_seed_determinism(model, tok):
    agent = make_agent(model, tok)
    a = agent.generate(PROMPTS[:2], num_samples=2, seed=7)
    b = agent.generate(PROMPTS[:2], num_samples=2, seed=7)
    c = agent.generate(PROMPTS[:2], num_samples=2, seed=8)
    assert a == b
    assert [g.completion_ids for g in a] != [g.completion_ids for g in c]
    assert [(g.prompt_index, g.sample_index) for g in a] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for g in a:
        assert isinstance(g, Generation)
        assert g.prompt_ids == agent.encode_prompt(PROMPTS[g.prompt_index])
        assert len(g.completion_ids) == len(g.logprobs) == 10 and g.finish_reason == "length"
        assert g.text == tok.decode(g.completion_ids, skip_special_tokens=False)
        assert all(lp <= 0 for lp in g.logprobs)
    assert a[0].completion_ids != a[1].completion_ids  # two samples of one prompt differ


@pytest.mark.parametrize("fast", ENGINES)
@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_logprobs_equal_hf_recomputation(model, tok, fast, temperature, top_p):
    agent = make_agent(model, tok, fast=fast)
    gens = agent.generate(PROMPTS, num_samples=2, temperature=temperature, top_p=top_p, seed=3)
    for g in gens:
        expected = recomputed_logprobs(model, g, temperature)
        assert torch.allclose(torch.tensor(g.logprobs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("fast", ENGINES)
def test_left_padded_batch_equals_unbatched_greedy(model, tok, fast):
    agent = make_agent(model, tok, fast=fast, max_new_tokens=12)
    batched = agent.generate(PROMPTS, temperature=0.0, seed=0)
    assert len({len(g.prompt_ids) for g in batched}) == 3 and max(len(g.prompt_ids) for g in batched) > 128
    for g in batched:
        alone = agent.generate([PROMPTS[g.prompt_index]], temperature=0.0, seed=0)[0]
        assert alone.completion_ids == g.completion_ids
        assert torch.allclose(torch.tensor(alone.logprobs), torch.tensor(g.logprobs), atol=1e-4, rtol=0)


def test_greedy_follows_argmax(model, tok):
    agent = make_agent(model, tok, max_new_tokens=1)
    g = agent.generate(["hi"], temperature=0.0)[0]
    assert g.completion_ids == [greedy_first_token(model, g.prompt_ids)[0]]


@pytest.mark.parametrize("fast", ENGINES)
def test_stops_on_return_token(model, tok, fast):
    stopping = copy.deepcopy(model)
    agent = make_agent(stopping, tok, fast=fast, max_new_tokens=8)
    free = agent.generate(["hi"], temperature=0.0)[0]
    assert RETURN_ID not in free.completion_ids
    # Make <|return|> outscore the greedy token of step 3 (its logit is positive), so generation stops by then.
    step3 = free.completion_ids[3]
    _, logits = greedy_first_token(stopping, free.prompt_ids + free.completion_ids[:3])
    assert logits[step3] > 0
    with torch.no_grad():
        stopping.lm_head.weight[RETURN_ID] = 1.5 * stopping.lm_head.weight[step3]
    agent.reset_engine()
    stopped = agent.generate(["hi"], temperature=0.0)[0]
    assert stopped.finish_reason == "stop"
    assert stopped.completion_ids[-1] == RETURN_ID and len(stopped.completion_ids) <= 4
    assert stopped.text.endswith("<|return|>")
    assert stopped.completion_ids[:-1] == free.completion_ids[: len(stopped.completion_ids) - 1]


@pytest.mark.parametrize("fast", ENGINES)
def test_ids_beyond_the_tokenizer_are_never_sampled(model, tok, fast):
    masked = copy.deepcopy(model)
    agent = make_agent(masked, tok, fast=fast, max_new_tokens=6)
    prompt_ids = agent.encode_prompt("hi")
    best, _ = greedy_first_token(masked, prompt_ids)
    with torch.no_grad():  # every extra id scores 3x the best real token
        masked.lm_head.weight[VOCAB_SIZE:] = 3 * masked.lm_head.weight[best]
    _, logits = greedy_first_token(masked, prompt_ids)
    assert int(logits.argmax()) >= VOCAB_SIZE  # unmasked, an extra id would win
    agent.reset_engine()
    greedy = agent.generate(["hi"], temperature=0.0)[0]
    assert greedy.completion_ids[0] == best
    sampled = agent.generate(["hi"], num_samples=4, temperature=1.0, seed=0)
    for g in [greedy, *sampled]:
        assert max(g.completion_ids) < VOCAB_SIZE


@pytest.mark.parametrize("fast", ENGINES)
def test_lora_adapter_is_seen_without_merge(model, tok, fast):
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False))
    assert isinstance(lora, PeftModel)
    assert any(p.abs().sum() > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    ids = torch.tensor([tok.encode("hello world, this is a test", add_special_tokens=False)])
    with torch.no_grad():
        assert (lora(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() > 1e-2
    agent = make_agent(lora, tok, fast=fast)
    gens = agent.generate(PROMPTS[:2], num_samples=2, seed=5)
    q = lora.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.equal(q.base_layer.weight, model.model.layers[0].self_attn.q_proj.weight)  # not merged
    for g in gens:
        with_adapter = recomputed_logprobs(lora, g)
        assert torch.allclose(torch.tensor(g.logprobs), with_adapter, atol=1e-4, rtol=0)
        assert (recomputed_logprobs(model, g) - with_adapter).abs().max() > 1e-3


def test_from_pretrained_with_adapter(model, tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    model.save_pretrained(tmp_path / "model")
    lora = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    loaded = GptOssAgent.from_pretrained(str(tmp_path / "model"), dtype=torch.float32, device="cpu",
                                         use_fast_engine=False, adapter=str(tmp_path / "adapter"))
    assert loaded.config.use_fast_engine is False
    expected = make_agent(lora, tok).generate(["hi"], seed=11)
    assert loaded.generate(["hi"], max_new_tokens=10, seed=11) == expected


def test_act_returns_the_completion_text(model, tok):
    a, b = make_agent(model, tok, seed=4), make_agent(model, tok, seed=4)
    text = a.act("Write strategy(board).")
    assert isinstance(text, str) and text
    assert text == b.act("Write strategy(board).")  # same config seed, same call order
    messages = [{"role": "user", "content": "Write strategy(board)."}]
    assert make_agent(model, tok, seed=4).act("ignored", {"messages": messages}) == text


def test_final_text_of_raw_completions():
    """A completion starts right after the prompt's `<|start|>assistant`; its final channel is the answer."""
    raw = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>42<|return|>"
    assert parse_harmony(raw).final == "42"
    assert parse_harmony("<|channel|>final<|message|>cut off").final == "cut off"
    assert parse_harmony("<|channel|>analysis<|message|>only thinking").final is None


def test_bad_arguments_raise_config_errors(model, tok):
    with pytest.raises(ConfigError, match="reasoning_effort"):
        AgentConfig(reasoning_effort="max")
    agent = make_agent(model, tok)
    with pytest.raises(ConfigError, match="top_p"):
        agent.generate(["hi"], top_p=0.0)
    with pytest.raises(ConfigError, match="num_samples"):
        agent.generate(["hi"], num_samples=0)
    with pytest.raises(ConfigError, match="prompts"):
        agent.generate("hi")


def test_model_end_tokens_are_the_agents_stop_tokens():
    """TRL decides 'truncated' from the model's end tokens: they must be the ones the agent stops at."""
    from ossgym.agents.gptoss.presets import gpt_oss_20b_config
    from ossgym.agents.gptoss.tiny import tiny_config
    from ossgym.agents.gptoss.tokenizer import STOP_TOKEN_IDS

    for config in (tiny_config(), gpt_oss_20b_config()):
        assert set(config.eos_token_id) == set(STOP_TOKEN_IDS)
