"""A GRPO-shaped step with flex_sinks + chunked log-probs equals eager + full logits; the IS correction formula."""

import math

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from ossgym.agents.gptoss import flex_sinks  # noqa: E402
from ossgym.agents.gptoss.tiny import tiny_model  # noqa: E402
from ossgym.training.long_context import completion_logprobs, mismatch_metrics, rollout_is_ratio  # noqa: E402


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


def test_perturbed_rollout_logprob_changes_loss_by_the_formula():
    train = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.7, -1.1, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    per_token_loss = torch.tensor([[0.2, -0.1, 0.4, 9.0], [0.3, 0.3, -0.2, 0.1]])
    rollout = train.clone()
    r0 = rollout_is_ratio(train, rollout, mask)
    assert torch.equal(r0, torch.ones(2, 1))
    loss0 = ((per_token_loss * r0 * mask).sum(-1) / mask.sum(-1)).mean()

    rollout[0, 1] -= 0.4  # the engine gave token 1 of row 0 a lower probability than the trainer
    r = rollout_is_ratio(train, rollout, mask)
    assert r[0, 0].item() == pytest.approx(math.exp(0.4)) and r[1, 0].item() == 1.0
    loss = ((per_token_loss * r * mask).sum(-1) / mask.sum(-1)).mean()
    row0 = (per_token_loss[0] * mask[0]).sum() / mask[0].sum()
    assert (loss - loss0).item() == pytest.approx(((math.exp(0.4) - 1) * row0 / 2).item())

    rollout[0, 2] -= 1.0  # sequence ratio exp(1.4) > cap 3: the sequence is masked out
    assert rollout_is_ratio(train, rollout, mask)[0, 0].item() == 0.0
    tok = rollout_is_ratio(train, rollout, mask, mode="token_truncate", cap=2.0)
    assert tok[0, 1].item() == pytest.approx(math.exp(0.4)) and tok[0, 2].item() == 2.0
    assert tok[0, 3].item() == 1.0  # padding: no correction

    m = mismatch_metrics(train, rollout, mask, r)
    assert m["mismatch/abs_logp_diff_mean"] == pytest.approx(1.4 / 7)
    assert m["mismatch/abs_logp_diff_max"] == pytest.approx(1.0)
    assert m["mismatch/kl"] > 0


def test_rollout_is_mixin_sets_ratio_logs_mismatch_and_restores_flags():
    from collections import defaultdict

    from ossgym.training.long_context import RolloutISCorrection

    train = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    rollout = torch.tensor([[-1.0, -2.5], [-0.5, -0.5]])
    seen = {}

    class FakeTrainer:
        def __init__(self):
            self.use_vllm, self.vllm_importance_sampling_correction = False, False
            self._metrics = {"train": defaultdict(list)}
            self.model = torch.nn.Linear(1, 1)
            self.args = type("A", (), {"per_device_train_batch_size": 2})()

        def _generate_and_score_completions(self, inputs):
            return {"prompt_ids": torch.zeros(2, 3, dtype=torch.long), "prompt_mask": torch.ones(2, 3),
                    "completion_ids": torch.zeros(2, 2, dtype=torch.long), "completion_mask": torch.ones(2, 2),
                    "sampling_per_token_logps": rollout}

        def _get_per_token_logps_and_entropies(self, model, ids, mask, keep, batch_size=None):
            assert keep == 2 and ids.shape == (2, 5)
            return train, None, None

        def _compute_loss(self, model, inputs):
            seen["flags"] = (self.use_vllm, self.vllm_importance_sampling_correction)
            return torch.tensor(0.0)

    class Trainer(RolloutISCorrection, FakeTrainer):
        pass

    t = Trainer(rollout_is_mode="sequence_mask", rollout_is_cap=3.0)
    out = t._generate_and_score_completions({})
    assert out["importance_sampling_ratio"][:, 0].tolist() == pytest.approx([math.exp(0.5), 1.0])
    assert t._metrics["train"]["mismatch/abs_logp_diff_max"] == [pytest.approx(0.5)]
    t._compute_loss(None, out)
    assert seen["flags"] == (True, True) and (t.use_vllm, t.vllm_importance_sampling_correction) == (False, False)


def test_micro_batches_accumulate_inside_one_step():
    from ossgym.errors import ConfigError
    from ossgym.training.config import GRPORunConfig

    kw = dict(env_id="GptOssMatmul-v0", group_size=4, prompts_per_step=3, steps=2, output_dir="/tmp/unused-grpo")
    args = GRPORunConfig(micro_batch_size=2, **kw).grpo_config(use_cpu=True)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (2, 6, 6)
    assert GRPORunConfig(**kw).attn_implementation == "auto"
    with pytest.raises(ConfigError, match="micro_batch_size"):
        GRPORunConfig(micro_batch_size=5, **kw)
