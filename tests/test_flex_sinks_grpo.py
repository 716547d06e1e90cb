"""A GRPO-shaped step with flex_sinks + chunked log-probs equals eager + full logits; micro-batches (the rollout
IS correction: test_rollout_is.py)."""

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from ossgym.agents.gptoss import flex_sinks  # noqa: E402
from ossgym.agents.gptoss.tiny import tiny_model  # noqa: E402
from ossgym.training.long_context import completion_logprobs  # noqa: E402


def _lora_model(impl):
    flex_sinks.register()
    model = tiny_model()
    model.config.attention_dropout = 0.0
    model.set_attn_implementation(impl)
    torch.manual_seed(0)  # the same LoRA weights in both models
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))
    model.train()
    return model


def _grpo_loss(logps, mask, adv):
    """GRPO's per-token loss at the first iteration (ratio exp(logp - logp.detach()) = 1, gradient adv)."""
    per_token = -torch.exp(logps - logps.detach()) * adv[:, None]
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def test_grpo_step_flex_chunked_equals_eager_full():
    g = torch.Generator().manual_seed(3)
    prompt, comp = 150, 60  # 210 tokens: crosses the 128-token window
    ids = torch.randint(0, 1000, (2, prompt + comp), generator=g)
    attn = torch.ones_like(ids)
    attn[1, :40] = 0  # left-padded prompt
    cmask = torch.ones(2, comp)
    cmask[0, 50:] = 0  # right-padded completion
    attn[0, prompt + 50:] = 0
    adv = torch.tensor([1.0, -0.5])

    eager = _lora_model("eager")
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = eager(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, -comp - 1:-1].float()
    lp_e = torch.log_softmax(logits, -1).gather(-1, ids[:, -comp:, None]).squeeze(-1)
    loss_e = _grpo_loss(lp_e, cmask, adv)
    loss_e.backward()

    flex = _lora_model(flex_sinks.NAME)
    lp_f = completion_logprobs(flex, ids, attn, comp, chunk_size=16)
    loss_f = _grpo_loss(lp_f, cmask, adv)
    loss_f.backward()

    torch.testing.assert_close(loss_f, loss_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lp_f[cmask.bool()], lp_e[cmask.bool()], atol=1e-4, rtol=1e-4)
    ge = {n: p.grad for n, p in eager.named_parameters() if p.requires_grad}
    gf = {n: p.grad for n, p in flex.named_parameters() if p.requires_grad}
    assert ge and set(ge) == set(gf)
    for n in ge:
        torch.testing.assert_close(gf[n], ge[n], atol=1e-5, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")


def test_micro_batches_accumulate_inside_one_step():
    from ossgym.errors import ConfigError
    from ossgym.training.config import GRPORunConfig

    kw = dict(env_id="GptOssMatmul-v0", group_size=4, prompts_per_step=3, steps=2, output_dir="/tmp/unused-grpo")
    args = GRPORunConfig(micro_batch_size=2, **kw).grpo_config(use_cpu=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (2, 6, 6)
    assert GRPORunConfig(**kw).attn_implementation == "auto"
    with pytest.raises(ConfigError, match="micro_batch_size"):
        GRPORunConfig(micro_batch_size=5, **kw)
