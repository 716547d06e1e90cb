"""GRPO adapter (ossgym/training/: rewards, dataset, rollout, config, logprobs) against TRL 1.16, on a tiny gpt-oss built locally (CPU, offline)."""

from __future__ import annotations

import math
import os
import pickle
import types
import warnings

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is "experimental" in TRL 1.16

from ossgym.training import (  # noqa: E402
    GRPORunConfig,
    RolloutSample,
    build_dataset,
    completion_text,
    make_reward_funcs,
    make_rollout_func,
)
from ossgym.training.logprobs import chunked_logprobs  # noqa: E402
from ossgym.errors import ConfigError  # noqa: E402

# ------------------------------------------------------------------------------------------------------
# A tiny tokenizer and a tiny gpt-oss, built locally (no download)
# ------------------------------------------------------------------------------------------------------

WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "go", "a", "b", "c", "d", "e", "f", "g", "h", "x", "y", "z"]
EOS = 1
SPECIAL_IDS = [0, 2, 3]  # never sampled (the real engine likewise masks ids the tokenizer lacks)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        padding_side="left",
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tokenizer


def tiny_gptoss(seed: int = 0, head_std: float = 0.5):
    """Two layers (sliding + full), sinks, 4 experts; a wide LM head so a LoRA on attention can move the policy."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
        max_position_embeddings=64, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        pad_token_id=0, eos_token_id=EOS, bos_token_id=2, tie_word_embeddings=False,
    )
    config._attn_implementation = "eager"
    model = GptOssForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=head_std)
    return model


TOKENIZER = tiny_tokenizer()
TARGET_WORD = "x"


class ToyGenerate:
    """A GenerateFn over the trained model itself: plain sampling, no cache; records its calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, *, num_samples, max_new_tokens, temperature, top_p, seed, model, stop_token_ids,
                 chat_template_kwargs):
        self.calls.append(dict(n_prompts=len(prompts), num_samples=num_samples, seed=seed, training=model.training,
                               stop_token_ids=stop_token_ids, chat_template_kwargs=chat_template_kwargs))
        gen = torch.Generator().manual_seed(seed)
        out = []
        for messages in prompts:
            ids = TOKENIZER.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
            seqs = torch.tensor([ids] * num_samples)
            logps = []
            for _ in range(max_new_tokens):
                logits = model(input_ids=seqs).logits[:, -1].float() / temperature
                logits[:, SPECIAL_IDS] = -math.inf
                logp = torch.log_softmax(logits, -1)
                nxt = torch.multinomial(logp.exp(), 1, generator=gen)
                logps.append(logp.gather(-1, nxt))
                seqs = torch.cat([seqs, nxt], 1)
            logps = torch.cat(logps, 1)
            for i in range(num_samples):
                completion = seqs[i, len(ids):].tolist()
                stops = [j for j, t in enumerate(completion) if t in stop_token_ids]
                n = stops[0] + 1 if stops else len(completion)  # keep the stop token, as TRL does
                out.append(RolloutSample(ids, completion[:n], logps[i, :n].tolist()))
        return out


def target_scorer(texts: list[str], seeds: list[int]) -> list[dict[str, float]]:
    """Toy env: reward = fraction of words that are the target word; a second, constant 'format' component."""
    results = []
    for text in texts:
        words = [w for w in text.split() if not w.startswith("<")]  # special tokens do not count
        results.append({"target": sum(w == TARGET_WORD for w in words) / max(len(words), 1), "format": 0.5})
    return results


class CountingScorer:
    def __init__(self):
        self.batches = []

    def __call__(self, texts, seeds):
        self.batches.append((list(texts), list(seeds)))
        return [{"a": float(len(t)), "b": float(s)} for t, s in zip(texts, seeds)]


def prompt_fn(seed: int):
    return [{"role": "user", "content": "go a"}]


def make_trainer(tmp_path, steps, learning_rate, generate, *, model=None, group_size=8, prompts_per_step=2,
                 scorer=target_scorer, trainer_class=None, **options):
    from trl import GRPOTrainer

    trainer_class = trainer_class or GRPOTrainer
    config = GRPORunConfig(
        env_id="Game2048-v0", steps=steps, group_size=group_size, prompts_per_step=prompts_per_step,
        max_prompt_length=8, max_completion_length=8, max_seq_len=64, learning_rate=learning_rate,
        output_dir=str(tmp_path / "run"), **options,
    )
    funcs = make_reward_funcs(scorer, ["target", "format"])
    args = config.grpo_config(use_cpu=True, bf16=False, lr_scheduler_type="constant", disable_tqdm=True)
    trainer = trainer_class(
        model=model if model is not None else tiny_gptoss(),
        reward_funcs=funcs,
        args=args,
        train_dataset=build_dataset(prompt_fn, 64, seed=0, reasoning_effort="low"),
        processing_class=TOKENIZER,
        peft_config=config.lora_config(),
        rollout_func=make_rollout_func(generate, max_prompt_length=config.max_prompt_length),
    )
    return trainer, funcs


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


# ------------------------------------------------------------------------------------------------------
# Reward functions
# ------------------------------------------------------------------------------------------------------


def test_reward_funcs_are_named_and_score_each_batch_once():
    scorer = CountingScorer()
    fa, fb = make_reward_funcs(scorer, ["a", "b"])
    assert (fa.__name__, fb.__name__) == ("a", "b")
    completions = [[{"role": "assistant", "content": "hello"}], [{"role": "assistant", "content": "hi"}]]
    kwargs = dict(prompts=[[{"role": "user", "content": "p"}]] * 2, completions=completions, seed=[7, 7],
                  trainer_state=types.SimpleNamespace(global_step=3))
    assert fa(**kwargs) == [5.0, 2.0]
    assert fb(**kwargs) == [7.0, 7.0]
    assert len(scorer.batches) == 1  # the second component reused the first scoring
    assert scorer.batches[0] == (["hello", "hi"], [7, 7])
    # a new step (same texts) or a different batch is scored again
    fa(**{**kwargs, "trainer_state": types.SimpleNamespace(global_step=4)})
    fb(prompts=["p", "p"], completions=["abc", "hi"], seed=[1, 2])
    assert len(scorer.batches) == 3
    assert scorer.batches[-1] == (["abc", "hi"], [1, 2])


def test_reward_funcs_report_missing_seed_and_component():
    fa, = make_reward_funcs(CountingScorer(), ["a"])
    with pytest.raises(KeyError, match="seed"):
        fa(prompts=["p"], completions=["x"])
    fz, = make_reward_funcs(CountingScorer(), ["zzz"])
    with pytest.raises(KeyError, match="zzz"):
        fz(prompts=["p"], completions=["x"], seed=[0])
    with pytest.raises(ConfigError):
        make_reward_funcs(CountingScorer(), ["a", "a"])


def test_reward_funcs_pickle_and_log_scoring_time():
    funcs = pickle.loads(pickle.dumps(make_reward_funcs(target_scorer, ["target", "format"])))
    metrics = []
    assert funcs[0](completions=["x y", "x"], seed=[0, 0], log_metric=lambda n, v: metrics.append(n)) == [0.5, 1.0]
    assert funcs[1](completions=["x y", "x"], seed=[0, 0], log_metric=lambda n, v: metrics.append(n)) == [0.5, 0.5]
    assert metrics == ["timing/scoring_s"]


def test_completion_text_forms():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "final"}]) == "final"
    multi = [{"role": "assistant", "content": "call"}, {"role": "tool", "content": "r"},
             {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert completion_text(multi) == "ab"


# ------------------------------------------------------------------------------------------------------
# Dataset
# ------------------------------------------------------------------------------------------------------


def test_build_dataset_rows_and_determinism():
    seen = []

    def fn(seed):
        seen.append(seed)
        return [{"role": "system", "content": "rules"}, {"role": "user", "content": f"task {seed}"}]

    ds = build_dataset(fn, num_rows=20, seed=5, reasoning_effort="high")
    assert set(ds.column_names) == {"prompt", "seed", "reasoning_effort"} and len(ds) == 20
    assert len(set(ds["seed"])) == 20 and seen == ds["seed"]
    row = ds[3]
    assert row["prompt"] == [{"role": "system", "content": "rules"}, {"role": "user", "content": f"task {row['seed']}"}]
    assert set(ds["reasoning_effort"]) == {"high"}
    assert build_dataset(fn, 20, 5, "high")["seed"] == ds["seed"]
    assert build_dataset(fn, 20, 6, "high")["seed"] != ds["seed"]
    with pytest.raises(ConfigError, match="reasoning_effort"):
        build_dataset(fn, 2, 0, "max")
    with pytest.raises(ConfigError, match="num_rows"):
        build_dataset(fn, 0, 0, "low")


# ------------------------------------------------------------------------------------------------------
# Chunked log-probabilities
# ------------------------------------------------------------------------------------------------------


def naive_logprobs(hidden, weight, ids, temperature=1.0):
    return torch.log_softmax((hidden @ weight.t()).float() / temperature, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("chunk_size,temperature", [(7, 1.0), (64, 0.7), (1000, 1.0)])
def test_chunked_logprobs_match_naive_values_and_grads(chunk_size, temperature):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 11, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=g, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 50, (3, 11), generator=g)
    upstream = torch.randn(3, 11, generator=g, dtype=torch.float64)
    out = chunked_logprobs(hidden, weight, ids, chunk_size=chunk_size, temperature=temperature)
    ref = naive_logprobs(hidden, weight, ids, temperature)
    assert out.shape == (3, 11) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref.double(), rtol=1e-5, atol=1e-5)
    gh, gw = torch.autograd.grad((out.double() * upstream).sum(), (hidden, weight))
    rh, rw = torch.autograd.grad((ref.double() * upstream).sum(), (hidden, weight))
    torch.testing.assert_close(gh, rh, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gw, rw, rtol=1e-4, atol=1e-5)


def test_chunked_logprobs_agree_with_trl_training_kernel():
    from trl.kernels import ChunkedLogProbFunction

    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(40, 16, generator=g), torch.randn(300, 16, generator=g)
    ids = torch.randint(0, 300, (40,), generator=g)
    ours = chunked_logprobs(hidden, weight, ids, chunk_size=9, temperature=0.8)
    theirs = ChunkedLogProbFunction.apply(hidden, weight, None, ids, 0.8, 64, None, 1.0, ())[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_chunked_logprobs_never_materialise_full_logits():
    from tensor_probe import LargestTensor

    batch, seq, vocab, chunk = 4, 32, 500, 16
    hidden = torch.randn(batch, seq, 8, requires_grad=True)
    weight = torch.randn(vocab, 8, requires_grad=True)
    ids = torch.randint(0, vocab, (batch, seq))
    with LargestTensor() as mode:
        chunked_logprobs(hidden, weight, ids, chunk_size=chunk).sum().backward()
    assert hidden.grad is not None and weight.grad is not None
    assert mode.largest <= chunk * vocab < batch * seq * vocab
    with LargestTensor() as naive_mode:
        naive_logprobs(hidden, weight, ids).sum().backward()
    assert naive_mode.largest >= batch * seq * vocab  # the probe does see full logits when they exist


# ------------------------------------------------------------------------------------------------------
# Rollout adapter (unit level, with a stand-in trainer)
# ------------------------------------------------------------------------------------------------------


def fake_trainer(group_size=4, training=True):
    model = torch.nn.Linear(1, 1)
    model.train(training)
    return types.SimpleNamespace(
        model=model,
        accelerator=types.SimpleNamespace(unwrap_model=lambda m: m, process_index=0),
        num_generations=group_size, num_generations_eval=2,
        args=types.SimpleNamespace(seed=3, max_completion_length=5, temperature=0.9, top_p=0.95, top_k=0, min_p=None,
                                   repetition_penalty=1.0, chat_template_kwargs={"reasoning_effort": "high"}),
        state=types.SimpleNamespace(global_step=2),
        eos_token_ids=[1, 9],
    )


class RecordingGenerate:
    def __init__(self, completion=(5, 1)):
        self.calls, self.completion = [], list(completion)

    def __call__(self, prompts, *, num_samples, max_new_tokens, temperature, top_p, seed, model, stop_token_ids,
                 chat_template_kwargs):
        self.calls.append(dict(prompts=prompts, num_samples=num_samples, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, seed=seed, training=model.training,
                               grad=torch.is_grad_enabled(), stop=stop_token_ids, kwargs=chat_template_kwargs))
        return [{"prompt_ids": list(range(len(p[0]["content"]))), "completion_ids": list(self.completion),
                 "logprobs": [-0.5] * len(self.completion)} for p in prompts for _ in range(num_samples)]


def test_rollout_func_groups_prompts_and_returns_trl_keys():
    p0, p1 = [{"role": "user", "content": "aa"}], [{"role": "user", "content": "bbb"}]
    gen = RecordingGenerate()
    trainer = fake_trainer(group_size=4)
    out = make_rollout_func(gen)([p0] * 4 + [p1] * 4, trainer)
    assert set(out) == {"prompt_ids", "completion_ids", "logprobs"}
    assert out["prompt_ids"] == [[0, 1]] * 4 + [[0, 1, 2]] * 4
    assert out["completion_ids"] == [[5, 1]] * 8 and out["logprobs"] == [[-0.5, -0.5]] * 8
    call = gen.calls[0]
    assert call["prompts"] == [p0, p1] and call["num_samples"] == 4
    assert (call["max_new_tokens"], call["temperature"], call["top_p"]) == (5, 0.9, 0.95)
    assert call["stop"] == [1, 9] and call["kwargs"] == {"reasoning_effort": "high"}
    assert call["training"] is False and call["grad"] is False  # generation runs in eval mode, without grad
    assert trainer.model.training is True  # and the training mode is restored
    # the seed follows the step; prompts that are not whole groups are sampled one by one
    trainer.state.global_step = 3
    make_rollout_func(gen)([p0, p1, p0], trainer)
    assert gen.calls[1]["num_samples"] == 1 and gen.calls[1]["prompts"] == [p0, p1, p0]
    assert gen.calls[1]["seed"] != call["seed"]


def test_rollout_func_rejects_bad_generations():
    p = [{"role": "user", "content": "aa"}]
    with pytest.raises(ValueError, match="empty completion"):
        make_rollout_func(RecordingGenerate(completion=()))([p] * 4, fake_trainer())
    with pytest.raises(ConfigError, match="max_prompt_length"):
        make_rollout_func(RecordingGenerate(), max_prompt_length=1)([p] * 4, fake_trainer())
    short = RecordingGenerate()
    with pytest.raises(ValueError, match="samples"):
        make_rollout_func(lambda prompts, **kw: short(prompts, **kw)[:-1])([p] * 4, fake_trainer())
    assert make_rollout_func(None) is None  # None: TRL's own generation
    trainer = fake_trainer()
    trainer.args.top_k = 20  # a sampling option the generate function would silently ignore
    with pytest.raises(ConfigError, match="top_k"):
        make_rollout_func(RecordingGenerate())([p] * 4, trainer)


# ------------------------------------------------------------------------------------------------------
# Run configuration
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,field",
    [
        ({"group_size": 1}, "group_size"),
        ({"steps": 0}, "steps"),
        ({"steps": -3}, "steps"),
        ({"env_id": "GptOss2048-v9"}, "env_id"),
        ({"max_prompt_length": 4000, "max_completion_length": 512, "max_seq_len": 4096}, "max_completion_length"),
        ({"max_completion_length": 0}, "max_completion_length"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"lora_targets": (), "lora_target_parameters": ()}, "lora_targets"),
        ({"lora_targets": ("q_proj", "lm_head")}, "lora_targets"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"generation": "vllm"}, "generation"),
        ({"attn_implementation": "kernels-community/vllm-flash-attn3"}, "attn_implementation"),
        ({"top_p": 0.0}, "top_p"),
        ({"beta": -0.1}, "beta"),
        ({"lora_dropout": 0.1, "lora_target_parameters": ("mlp.experts.gate_up_proj",)}, "lora_dropout"),
    ],
)
def test_run_config_rejects_bad_options(options, field):
    with pytest.raises(ConfigError) as info:
        GRPORunConfig(**options)
    assert info.value.field == field and info.value.fix


def test_run_config_suggests_close_env_id_and_checks_lengths():
    with pytest.raises(ConfigError, match="GptOss2048-v0"):
        GRPORunConfig(env_id="GptOss2048-v1")
    config = GRPORunConfig(max_prompt_length=100, max_completion_length=100, max_seq_len=200)
    config.check_prompt_length(100)
    with pytest.raises(ConfigError, match="max_prompt_length"):
        config.check_prompt_length(101)
    with pytest.raises(ConfigError, match="max_seq_len"):
        config.check_model_fits(128)


def test_run_config_maps_onto_trl_and_peft():
    config = GRPORunConfig(env_id="GptOssMatmul-v0", group_size=4, prompts_per_step=3, steps=7, learning_rate=2e-5,
                           max_completion_length=64, reasoning_effort="medium", lora_rank=4, lora_alpha=8,
                           lora_target_parameters=("mlp.experts.gate_up_proj",), output_dir="/tmp/unused-grpo")
    args = config.grpo_config(use_cpu=True)
    assert (args.num_generations, args.per_device_train_batch_size, args.max_steps) == (4, 12, 7)
    assert args.learning_rate == 2e-5 and args.max_completion_length == 64
    assert args.chat_template_kwargs == {"reasoning_effort": "medium"}
    assert args.remove_unused_columns is False and args.router_aux_loss_coef == 0.0
    lora = config.lora_config()
    assert lora.r == 4 and lora.lora_alpha == 8
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert set(lora.target_parameters) == {"mlp.experts.gate_up_proj"}


# ------------------------------------------------------------------------------------------------------
# GRPOTrainer end to end on the tiny gpt-oss
# ------------------------------------------------------------------------------------------------------


class RecordingScorer:
    def __init__(self):
        self.texts = []

    def __call__(self, texts, seeds):
        self.texts += texts
        return target_scorer(texts, seeds)


def test_two_grpo_steps_through_rollout_func(tmp_path):
    generate, scorer = ToyGenerate(), RecordingScorer()
    trainer, funcs = make_trainer(tmp_path, steps=2, learning_rate=1e-2, generate=generate, scorer=scorer)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    assert before and all("lora_" not in n or p.requires_grad for n, p in trainer.model.named_parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer.train()
    losses = logged(trainer, "loss")
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = dict(trainer.model.named_parameters())
    changed = [n for n in before if not torch.equal(before[n], after[n].detach())]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)
    frozen = [n for n, p in after.items() if "lora_" not in n and p.requires_grad]
    assert frozen == []  # only the adapter trains
    for name in ("target", "format"):
        values = logged(trainer, f"rewards/{name}/mean")
        assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert logged(trainer, "rewards/format/mean") == [0.5, 0.5]
    assert funcs[0].cache.calls == 2  # one scoring per step for both components
    assert len(logged(trainer, "timing/generation_s")) == 2 and len(logged(trainer, "timing/scoring_s")) == 2
    # the adapter asked for whole groups: 2 prompts x 8 samples per step, in eval mode
    assert [(c["n_prompts"], c["num_samples"], c["training"]) for c in generate.calls] == [(2, 8, False)] * 2
    assert generate.calls[0]["stop_token_ids"] == [EOS]
    assert generate.calls[0]["chat_template_kwargs"] == {"reasoning_effort": "low"}
    # the reward functions scored the raw text, stop token included, not TRL's stripped decode
    assert len(scorer.texts) == 32 and any(t.endswith("<eos>") for t in scorer.texts)


def test_trl_own_generation_fallback(tmp_path):
    scorer = RecordingScorer()
    trainer, funcs = make_trainer(tmp_path, steps=1, learning_rate=1e-2, generate=None, prompts_per_step=1,
                                  group_size=4, scorer=scorer)
    assert trainer.rollout_func is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer.train()
    assert math.isfinite(logged(trainer, "loss")[0])
    assert len(logged(trainer, "rewards/target/mean")) == 1 and funcs[0].cache.calls == 1
    assert len(scorer.texts) == 4 and not any("<eos>" in t for t in scorer.texts)  # TRL's decode strips specials


def test_lora_on_the_experts_through_target_parameters(tmp_path):
    trainer, _ = make_trainer(tmp_path, steps=1, learning_rate=1e-2, generate=ToyGenerate(), group_size=4,
                              prompts_per_step=1, lora_targets=("q_proj",),
                              lora_target_parameters=("mlp.experts.gate_up_proj", "mlp.experts.down_proj"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "experts" in n and "lora_B" in n}
    assert len(before) == 4  # 2 layers x (gate_up_proj, down_proj)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in before)
    assert math.isfinite(logged(trainer, "loss")[0])


def test_grpo_learns_to_say_the_target_word(tmp_path):
    """Reward = fraction of target words; a LoRA on attention learns it within a dozen steps."""
    trainer, _ = make_trainer(tmp_path, steps=12, learning_rate=1e-2, generate=ToyGenerate())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer.train()
    rewards = logged(trainer, "rewards/target/mean")
    assert len(rewards) == 12
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    assert last > first + 0.4, rewards  # seed 0 goes 0.05 -> 1.0; model seeds 0-7 all clear this bar
