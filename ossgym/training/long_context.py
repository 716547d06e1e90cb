"""Long-context pieces of the GRPO loss: chunked per-token log-probs of a causal LM, and the rollout/training
mismatch correction (importance sampling with the fast engine's per-token log-probs).

TRL 1.16 applies its importance-sampling (IS) correction only when it generates with vLLM. The fast engine
returns per-token sampling log-probs as well; :func:`rollout_is_ratio` computes TRL's correction from them,
with TRL's own definitions (``GRPOTrainer._generate_and_score_completions``; ``C_max`` is ``cap``, TRL's
``vllm_importance_sampling_clip_max``, and ``C_min`` is ``clip_min``, TRL's ``vllm_importance_sampling_clip_min``):

- ``sequence_mask`` (default): ``r = exp(sum_t m_t (logp_train - logp_rollout))`` per sequence, set to 0 (the
  sequence dropped) where ``r`` is outside ``[C_min, C_max]``;
- ``token_truncate``: ``r_t = clamp(exp(m_t (logp_train - logp_rollout)), C_min, C_max)`` per token
  (also ``sequence_truncate`` and ``token_mask``);

and the per-token policy loss is multiplied by ``r``. NaN rollout log-probs count as no correction (ratio 1).

**Ratios far below 1.** ``C_min`` defaults to None, TRL's default: no lower bound, so a sequence the trainer
finds far less likely than the engine did (on a random model ratios of ~5e-8 occur) is kept with its small
weight ``r``. That is the IS estimator's own weight: small weights add no variance (only large ones do, and
``C_max`` handles those), and dropping them would bias the batch towards sequences the trainer prefers; a
sequence kept at 5e-8 and one masked to 0 give the same loss, since TRL keeps masked sequences in the loss's
token count. What must not happen is that this goes unseen, so the metrics count it (below). verl's
rejection sampling drops both tails instead (its ``rollout_is_threshold_lower`` defaults to 1/upper):
``rollout_is_min=1/rollout_is_cap`` gives that window in the mask modes. In the truncate modes ``C_min``
raises small ratios up to it (TRL's clamp), which truncated IS as published never does.

:func:`mismatch_metrics` is what is logged every step: mean and max |delta logp| and the k3 KL estimate over the
completion tokens, and, over the ratio's units (sequences in the ``sequence_*`` modes, completion tokens in the
``token_*`` modes), the mean of the applied ratio, the min and max of the ratio before its bounds, the fraction
below ``1/cap`` and above ``cap`` (``is_low_frac``, ``is_high_frac``: how far apart the engine and the trainer
are, whatever the bounds) and the fraction the mask dropped (``is_dropped_frac``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ossgym.errors import ConfigError

if TYPE_CHECKING:
    import torch

IS_MODES = ("sequence_mask", "sequence_truncate", "token_mask", "token_truncate")
DEFAULT_IS_MODE = "sequence_mask"
DEFAULT_IS_CAP = 3.0


def check_is_bounds(cap: float, clip_min: float | None) -> None:
    """ConfigError unless ``0 < clip_min < cap`` (or clip_min is None)."""
    if clip_min is not None and not 0 < clip_min < cap:
        raise ConfigError("rollout_is_min", f"is {clip_min}, outside (0, rollout_is_cap = {cap})",
                          f"Pass a lower bound below the cap, e.g. {1 / cap:.4g} (1/cap), or none for no lower bound.")


def raw_is_ratio(train_logps: torch.Tensor, rollout_logps: torch.Tensor, mask: torch.Tensor,
                 mode: str = DEFAULT_IS_MODE) -> torch.Tensor:
    """TRL's IS ratio before its bounds: ``exp`` of the masked log-prob difference per token, or its sum per
    sequence in the ``sequence_*`` modes: [B, T] or [B, 1]."""
    import torch

    if mode not in IS_MODES:
        raise ConfigError("is_mode", f"unknown mode {mode!r}", f"Use one of {', '.join(IS_MODES)}.")
    diff = torch.nan_to_num((train_logps.detach() - rollout_logps) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(dim=-1, keepdim=True)
    return torch.exp(diff)


def bound_is_ratio(ratio: torch.Tensor, mode: str = DEFAULT_IS_MODE, cap: float | None = DEFAULT_IS_CAP,
                   clip_min: float | None = None) -> torch.Tensor:
    """TRL's bounds on a raw ratio: clamped to ``[clip_min, cap]`` (``*_truncate``) or set to 0 outside it
    (``*_mask``); None: no bound on that side."""
    import torch

    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=cap)
    lo = clip_min if clip_min is not None else -math.inf
    hi = cap if cap is not None else math.inf
    return ratio.masked_fill((ratio < lo) | (ratio > hi), 0.0)


def rollout_is_ratio(train_logps: torch.Tensor, rollout_logps: torch.Tensor, mask: torch.Tensor,
                     mode: str = DEFAULT_IS_MODE, cap: float | None = DEFAULT_IS_CAP,
                     clip_min: float | None = None) -> torch.Tensor:
    """TRL's IS ratio from the training forward's log-probs (no grad) and the rollout's: [B, 1] or [B, T]."""
    return bound_is_ratio(raw_is_ratio(train_logps, rollout_logps, mask, mode), mode, cap, clip_min)


def mismatch_metrics(train_logps: torch.Tensor, rollout_logps: torch.Tensor, mask: torch.Tensor,
                     mode: str | None = None, cap: float = DEFAULT_IS_CAP,
                     clip_min: float | None = None) -> dict[str, float]:
    """Rollout/training mismatch over the completion tokens: mean/max |delta logp|, KL(rollout||train) (k3); with
    ``mode``, the IS ratio of that mode over its units (see the module docstring)."""
    import torch

    m = mask.bool() & ~torch.isnan(rollout_logps)
    delta = (train_logps.detach() - rollout_logps)[m]
    out = {"mismatch/abs_logp_diff_mean": 0.0, "mismatch/abs_logp_diff_max": 0.0, "mismatch/kl": 0.0}
    if delta.numel():
        out = {
            "mismatch/abs_logp_diff_mean": delta.abs().mean().item(),
            "mismatch/abs_logp_diff_max": delta.abs().max().item(),
            # k3 estimator of KL(rollout || train) with samples from the rollout: E[exp(d) - 1 - d], d = train - rollout
            "mismatch/kl": (torch.exp(delta) - 1 - delta).mean().item(),
        }
    if mode is None:
        return out
    applied = bound_is_ratio(raw_is_ratio(train_logps, rollout_logps, mask, mode), mode, cap, clip_min)
    raw = raw_is_ratio(train_logps.double(), rollout_logps.double(), mask, mode)  # finite to e^+-709
    units = mask.bool().any(-1, keepdim=True) if mode.startswith("sequence") else mask.bool()
    raw, applied = raw[units], applied[units].float()
    if raw.numel() == 0:
        return out
    out.update({
        "mismatch/is_ratio_mean": applied.mean().item(),
        "mismatch/is_ratio_min": raw.min().item(),
        "mismatch/is_ratio_max": raw.max().item(),
        "mismatch/is_low_frac": (raw < 1.0 / cap).float().mean().item(),
        "mismatch/is_high_frac": (raw > cap).float().mean().item(),
        "mismatch/is_dropped_frac": (applied == 0).float().mean().item(),
    })
    return out


def completion_logprobs(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                        logits_to_keep: int, chunk_size: int = 1024, temperature: float = 1.0) -> torch.Tensor:
    """Per-token log-probs of the last ``logits_to_keep`` tokens, through the LM head in chunks (no full logits).

    ``model`` is a transformers causal LM (or a peft model around one); position ids follow the padding, so
    left-padded rows score as unpadded ones.
    """
    from ossgym.training.logprobs import chunked_logprobs

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    body, head = inner.model, inner.lm_head
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    hidden = hidden[:, -logits_to_keep - 1:-1]
    return chunked_logprobs(hidden, head.weight, input_ids[:, -logits_to_keep:], chunk_size, temperature)


class RolloutISCorrection:
    """Mixin for ``trl.GRPOTrainer``: TRL's IS correction with the rollout's own log-probs, without vLLM.

    TRL computes the ratio and multiplies the per-token loss by it only under ``use_vllm``. This mixin takes the
    ``sampling_per_token_logps`` TRL already keeps from a ``rollout_func`` (the fast engine's ``logprobs``),
    scores the completions with the training model (no grad; TRL's own ``_get_per_token_logps_and_entropies``,
    chunked), stores :func:`rollout_is_ratio` as ``importance_sampling_ratio`` and logs
    :func:`mismatch_metrics` every step; in the loss it lets TRL's own multiplication run. Use::

        class Trainer(RolloutISCorrection, GRPOTrainer): ...
        trainer = Trainer(..., rollout_is_mode="sequence_mask", rollout_is_cap=3.0, rollout_is_min=None)

    ``rollout_is_mode=None`` turns it off; ``rollout_is_min`` is TRL's ``C_min`` (None: no lower bound, TRL's
    default). Not applied with ``loss_type="vespo"`` (TRL's own rule) or Liger's loss.
    """

    def __init__(self, *args, rollout_is_mode: str | None = DEFAULT_IS_MODE, rollout_is_cap: float = DEFAULT_IS_CAP,
                 rollout_is_min: float | None = None, **kwargs):
        if rollout_is_mode is not None and rollout_is_mode not in IS_MODES:
            raise ConfigError("rollout_is_mode", f"unknown mode {rollout_is_mode!r}",
                              f"Use one of {', '.join(IS_MODES)}, or None to turn the correction off.")
        check_is_bounds(rollout_is_cap, rollout_is_min)
        super().__init__(*args, **kwargs)
        self.rollout_is_mode = rollout_is_mode
        self.rollout_is_cap = rollout_is_cap
        self.rollout_is_min = rollout_is_min

    def _rollout_is_active(self) -> bool:
        return self.rollout_is_mode is not None and not getattr(self, "use_vllm", False)

    def _generate_and_score_completions(self, inputs):
        out = super()._generate_and_score_completions(inputs)
        if self._rollout_is_active() and out.get("sampling_per_token_logps") is not None:
            self._correct_rollout(out)
        return out

    def _correct_rollout(self, out: dict) -> None:
        """Set ``out["importance_sampling_ratio"]`` for a scored batch from its rollout log-probs and the training
        model's (TRL's ``old_per_token_logps`` when it computed them, else scored here without grad); log the
        mismatch."""
        import torch

        rollout = out["sampling_per_token_logps"]
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
        mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
        keep = out["completion_ids"].size(1)
        train = out.get("old_per_token_logps")
        if train is None:
            with torch.no_grad():
                train, _, _ = self._get_per_token_logps_and_entropies(
                    self.model, ids, mask, keep, batch_size=self.args.per_device_train_batch_size)
        cmask = out["completion_mask"]
        bounds = self.rollout_is_mode, self.rollout_is_cap, self.rollout_is_min
        out["importance_sampling_ratio"] = rollout_is_ratio(train, rollout, cmask, *bounds)
        mode = "train" if self.model.training else "eval"
        for name, value in mismatch_metrics(train, rollout, cmask, *bounds).items():
            self._metrics[mode][name].append(value)

    def _compute_loss(self, model, inputs):
        if not (self._rollout_is_active() and "importance_sampling_ratio" in inputs):
            return super()._compute_loss(model, inputs)
        # TRL multiplies the per-token loss by inputs["importance_sampling_ratio"] only under these two flags,
        # which _compute_loss reads for nothing else (TRL 1.16)
        saved = self.use_vllm, self.vllm_importance_sampling_correction
        self.use_vllm, self.vllm_importance_sampling_correction = True, True
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.use_vllm, self.vllm_importance_sampling_correction = saved
