"""The rollout/training mismatch correction (ossgym/training/long_context.py): TRL's importance-sampling ratio
from the engine's log-probs in every mode, its lower bound (TRL's C_min, ``rollout_is_min``), the metrics that
report ratios far below 1, the mixin's wiring, and TRL's own loss multiplied by the ratio."""

import functools
import math
import os
import warnings

import pytest

torch = pytest.importorskip("torch")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from ossgym.errors import ConfigError  # noqa: E402
from ossgym.training.long_context import (  # noqa: E402
    RolloutISCorrection,
    mismatch_metrics,
    raw_is_ratio,
    rollout_is_ratio,
)


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

    m = mismatch_metrics(train, rollout, mask)
    assert m["mismatch/abs_logp_diff_mean"] == pytest.approx(1.4 / 7)
    assert m["mismatch/abs_logp_diff_max"] == pytest.approx(1.0)
    assert m["mismatch/kl"] > 0
    assert not any(k.startswith("mismatch/is_") for k in m)  # no mode: no ratio metrics


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
    assert t._metrics["train"]["mismatch/is_ratio_min"] == [pytest.approx(1.0)]
    assert t._metrics["train"]["mismatch/is_low_frac"] == [0.0]
    rollout[1] += 1.5  # row 1: exp(-3) < 1/3, dropped by a lower bound of 1/2
    t = Trainer(rollout_is_mode="sequence_mask", rollout_is_cap=3.0, rollout_is_min=0.5)
    out = t._generate_and_score_completions({})
    assert out["importance_sampling_ratio"][:, 0].tolist() == pytest.approx([math.exp(0.5), 0.0])
    metrics = {k: v[0] for k, v in t._metrics["train"].items()}
    assert metrics["mismatch/is_ratio_min"] == pytest.approx(math.exp(-3.0))
    assert metrics["mismatch/is_low_frac"] == metrics["mismatch/is_dropped_frac"] == 0.5
    with pytest.raises(ConfigError, match="rollout_is_min"):
        Trainer(rollout_is_mode="sequence_mask", rollout_is_cap=3.0, rollout_is_min=3.0)
    t._compute_loss(None, out)
    assert seen["flags"] == (True, True) and (t.use_vllm, t.vllm_importance_sampling_correction) == (False, False)


def _batch():
    """Three sequences (row 0 right-padded), the trainer's log-probs, and a rollout that agrees except: row 0's
    token 1 was e^2 times as likely to the engine (ratio e^-2 < 1/3), row 2's last token e^1.5 times less
    likely (ratio e^1.5 > 3)."""
    train = torch.tensor([[-1.0, -2.0, -0.5, 0.0], [-0.3, -0.7, -1.1, -2.0], [-0.2, -0.4, -0.6, -0.8]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    rollout = train.clone()
    rollout[0, 1] += 2.0
    rollout[2, 3] -= 1.5
    return train, rollout, mask


def test_a_ratio_below_the_lower_bound_is_masked_and_the_loss_changes_by_the_formula():
    """Sequence level: with no lower bound (TRL's default) row 0 keeps its weight e^-2; with rollout_is_min=1/3 it
    is dropped, and the GRPO loss (mean over sequences of the token mean, times the ratio) changes by row 0's
    share times e^-2; row 2 (above the cap) is dropped either way."""
    train, rollout, mask = _batch()
    per_token_loss = torch.tensor([[0.2, -0.1, 0.4, 9.0], [0.3, 0.3, -0.2, 0.1], [0.5, -0.4, 0.2, 0.3]])

    def loss(ratio):
        return ((per_token_loss * ratio * mask).sum(-1) / mask.sum(-1)).mean().item()

    kept = rollout_is_ratio(train, rollout, mask)
    assert kept[:, 0].tolist() == pytest.approx([math.exp(-2.0), 1.0, 0.0])
    dropped = rollout_is_ratio(train, rollout, mask, clip_min=1 / 3)
    assert dropped[:, 0].tolist() == [0.0, 1.0, 0.0]
    row0 = ((per_token_loss[0] * mask[0]).sum() / mask[0].sum()).item()
    assert loss(kept) - loss(dropped) == pytest.approx(math.exp(-2.0) * row0 / 3)
    truncated = rollout_is_ratio(train, rollout, mask, mode="sequence_truncate", clip_min=1 / 3)
    assert truncated[:, 0].tolist() == pytest.approx([1 / 3, 1.0, 3.0])  # TRL's clamp raises it to C_min


def test_token_level_bounds_act_on_the_completion_tokens_only():
    train, rollout, mask = _batch()
    masked = rollout_is_ratio(train, rollout, mask, mode="token_mask", clip_min=0.5)
    assert masked[0].tolist() == [1.0, 0.0, 1.0, 1.0]  # token 1 dropped; padding: ratio 1 (no correction)
    assert masked[2, 3].item() == 0.0  # e^1.5 > 3
    truncated = rollout_is_ratio(train, rollout, mask, mode="token_truncate")
    assert truncated[0, 1].item() == pytest.approx(math.exp(-2.0)) and truncated[2, 3].item() == 3.0
    assert torch.equal(raw_is_ratio(train, rollout, mask, "token_mask")[0, 3], torch.tensor(1.0))


@pytest.mark.parametrize("clip_min", [None, 1 / 3])
def test_metrics_report_ratios_below_one_over_the_cap_whatever_the_bounds(clip_min):
    """A sequence at e^-2 is counted in is_low_frac and is_ratio_min with or without a lower bound, and in
    is_dropped_frac only when the bound masks it (before, a kept e^-2 sequence showed as nothing at all)."""
    train, rollout, mask = _batch()
    seq = mismatch_metrics(train, rollout, mask, "sequence_mask", 3.0, clip_min)
    assert seq["mismatch/is_ratio_min"] == pytest.approx(math.exp(-2.0))
    assert seq["mismatch/is_ratio_max"] == pytest.approx(math.exp(1.5))
    assert seq["mismatch/is_low_frac"] == pytest.approx(1 / 3) and seq["mismatch/is_high_frac"] == pytest.approx(1 / 3)
    dropped = 2 / 3 if clip_min else 1 / 3  # row 2 above the cap; row 0 below the lower bound
    assert seq["mismatch/is_dropped_frac"] == pytest.approx(dropped)
    applied = [0.0 if clip_min else math.exp(-2.0), 1.0, 0.0]
    assert seq["mismatch/is_ratio_mean"] == pytest.approx(sum(applied) / 3)
    tok = mismatch_metrics(train, rollout, mask, "token_mask", 3.0, clip_min)  # over the 11 completion tokens
    assert tok["mismatch/is_low_frac"] == pytest.approx(1 / 11)
    assert tok["mismatch/is_high_frac"] == pytest.approx(1 / 11)
    assert tok["mismatch/is_dropped_frac"] == pytest.approx((2 if clip_min else 1) / 11)
    assert tok["mismatch/is_ratio_min"] == pytest.approx(math.exp(-2.0))


def test_metrics_keep_ratios_fp32_cannot_hold():
    """A sequence 120 nats less likely to the trainer (e^-120 is 0 in fp32) and one 120 nats more likely (e^120 is
    inf in fp32): the reported min and max are the float64 values, not 0 and inf."""
    train = torch.zeros(2, 4)
    rollout = torch.tensor([[30.0] * 4, [-30.0] * 4])
    m = mismatch_metrics(train, rollout, torch.ones(2, 4), "sequence_mask")
    assert m["mismatch/is_ratio_min"] == pytest.approx(math.exp(-120.0))
    assert m["mismatch/is_ratio_max"] == pytest.approx(math.exp(120.0))
    assert m["mismatch/is_low_frac"] == m["mismatch/is_high_frac"] == 0.5
    assert m["mismatch/is_dropped_frac"] == 1.0  # above the cap, and a weight of e^-120 that is 0 in fp32


def test_rollout_is_min_is_a_checked_run_option():
    from ossgym.training.config import GRPORunConfig

    assert GRPORunConfig(output_dir="/tmp/unused-grpo").rollout_is_min is None  # TRL's default: no lower bound
    assert GRPORunConfig(output_dir="/tmp/unused-grpo", rollout_is_min=1 / 3).rollout_is_min == pytest.approx(1 / 3)
    for bad in (0.0, -0.5, 3.0, 5.0):
        with pytest.raises(ConfigError) as info:
            GRPORunConfig(output_dir="/tmp/unused-grpo", rollout_is_min=bad)
        assert info.value.field == "rollout_is_min" and info.value.fix


def test_trl_loss_is_multiplied_by_the_bounded_ratio(tmp_path):
    """TRL 1.16's own _compute_loss on the tiny gpt-oss, the ratio set by the mixin from the training model's
    log-probs: a rollout log-prob raised by 2 on one token of row 0 (sequence ratio e^-2) changes the loss
    -sum_i adv_i r_i n_i / N (TRL's dapo loss at the first iteration) by adv_0 n_0 (1 - e^-2) / N without a lower
    bound, and by adv_0 n_0 / N (row 0 dropped) with rollout_is_min=1/3."""
    from test_grpo_adapter import ToyGenerate, make_trainer
    from trl import GRPOTrainer

    cls = type("ISTrainer", (RolloutISCorrection, GRPOTrainer), {})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer, _ = make_trainer(tmp_path, 1, 1e-2, ToyGenerate(), group_size=4, prompts_per_step=1,
                                  trainer_class=functools.partial(cls, rollout_is_cap=3.0, rollout_is_min=None))
    model = trainer.model.eval()
    g = torch.Generator().manual_seed(0)
    prompt_ids, completion_ids = torch.randint(4, 16, (4, 3), generator=g), torch.randint(4, 16, (4, 5), generator=g)
    cmask = torch.ones(4, 5)
    cmask[3, 3:] = 0
    with torch.no_grad():
        train, _, _ = trainer._get_per_token_logps_and_entropies(
            model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([torch.ones(4, 3), cmask], 1), 5,
            batch_size=4)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    n, total = cmask.sum(-1), cmask.sum()

    def loss(rollout, clip_min):
        trainer.rollout_is_min = clip_min
        out = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(4, 3), "completion_ids": completion_ids,
               "completion_mask": cmask, "sampling_per_token_logps": rollout, "advantages": adv,
               "num_items_in_batch": total}
        trainer._correct_rollout(out)
        with torch.no_grad():
            return trainer._compute_loss(model, out).item(), out["importance_sampling_ratio"][:, 0]

    loss0, r0 = loss(train.clone(), None)
    assert r0.tolist() == pytest.approx([1.0] * 4, abs=1e-5)  # the training model scored its own log-probs
    assert loss0 == pytest.approx(-(adv * n).sum().item() / total.item(), abs=1e-5)
    perturbed = train.clone()
    perturbed[0, 1] += 2.0
    kept, r_kept = loss(perturbed, None)
    assert r_kept[0].item() == pytest.approx(math.exp(-2.0), rel=1e-4)
    assert kept - loss0 == pytest.approx(adv[0].item() * n[0].item() * (1 - math.exp(-2.0)) / total.item(), abs=1e-5)
    dropped, r_dropped = loss(perturbed, 1 / 3)
    assert r_dropped[0].item() == 0.0
    assert dropped - loss0 == pytest.approx(adv[0].item() * n[0].item() / total.item(), abs=1e-5)
    logged = trainer._metrics["eval"]
    assert logged["mismatch/is_low_frac"] == [0.0, 0.25, 0.25] and logged["mismatch/is_dropped_frac"][-1] == 0.25
