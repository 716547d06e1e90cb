"""The options of one GRPO run (:class:`GRPORunConfig`): each field says what it means and what it accepts.

Fields are declared with :func:`ossgym.options.option`, so one check (:func:`ossgym.options.check_options`)
validates them all on construction and ``ossgym train --help`` prints the same help text. What relates
several fields (lengths that must fit together, LoRA targets, the env id) is checked after that, here.
The config maps onto ``trl.GRPOConfig`` (:meth:`GRPORunConfig.grpo_config`) and ``peft.LoraConfig``
(:meth:`GRPORunConfig.lora_config`).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ossgym.errors import ConfigError
from ossgym.harmony import REASONING_EFFORTS
from ossgym.options import check_options, option
from ossgym.sandbox.ray_backend import SCORING_BACKENDS
from ossgym.training.long_context import check_is_bounds

if TYPE_CHECKING:  # torch is imported where it is used, so the ``ossgym train`` parser stays light
    import torch

# Attentions that give the sink gradient in the backward pass (FlashAttention-3 with sinks drops it; sdpa has no
# sinks): eager (the reference, O(N^2) memory) and ossgym's flex_sinks (ossgym/agents/gptoss/flex_sinks.py: exact
# sinks, O(N) memory, checked against eager); "auto" is flex_sinks on CUDA and eager on CPU.
ATTENTION_IMPLEMENTATIONS = ("auto", "eager", "flex_sinks")
ROLLOUT_IS_MODES = ("none", "sequence_mask", "sequence_truncate", "token_mask", "token_truncate")
GENERATION_BACKENDS = ("fast", "trl")
EXPERT_FORMATS = ("auto", "mxfp4", "bf16")  # auto: MXFP4 for an MXFP4 checkpoint folder (agents/gptoss/mxfp4.py)
OPTIMIZERS = ("adamw_torch", "sgd", "adamw_8bit", "paged_adamw_8bit")  # the Trainer's optim; 8-bit: bitsandbytes
NF4_PARTS = ("attention", "lm_head")  # ossgym/agents/gptoss/nf4.py PARTS (not imported here: it imports bitsandbytes)


def check_env_id(env_id: str) -> None:
    """Raise ConfigError (with the closest registered ids) when ``env_id`` is not a registered environment."""
    import gymnasium

    import ossgym  # noqa: F401  (registers the environments)

    if env_id not in gymnasium.registry:
        close = difflib.get_close_matches(env_id, list(gymnasium.registry), n=3)
        hint = f"Did you mean {', '.join(close)}?" if close else "See gymnasium.registry for the ids."
        raise ConfigError("env_id", f"{env_id!r} is not a registered environment", hint)


#: where TRL may report to, and the module each needs (transformers' integrations)
REPORT_TO = ("none", "trackio", "tensorboard", "wandb")
_REPORT_MODULES = {"trackio": ("trackio",), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}

#: trl.GRPOConfig fields that GRPORunConfig sets from its own fields (or that ossgym's training needs as set),
#: so they cannot be passed through ``grpo``: the run field to use instead
GRPO_FIELDS_OF_THE_RUN = {
    "output_dir": "output_dir", "max_steps": "steps", "num_generations": "group_size",
    "per_device_train_batch_size": "micro_batch_size", "gradient_accumulation_steps": "micro_batch_size",
    "learning_rate": "learning_rate", "max_completion_length": "max_completion_length",
    "temperature": "temperature", "top_p": "top_p", "beta": "beta", "seed": "seed", "data_seed": "seed",
    "gradient_checkpointing": "gradient_checkpointing", "activation_checkpointing": "gradient_checkpointing",
    "router_aux_loss_coef": "router_aux_loss_coef",
    "chat_template_kwargs": "reasoning_effort", "save_strategy": "save_steps", "save_steps": "save_steps",
    "report_to": "report_to", "remove_unused_columns": None,  # the reward functions read the seed column
}


def check_report_to(report_to: str) -> None:
    """Raise ConfigError when the package that ``report_to`` needs is not installed (checked without importing)."""
    import importlib.util

    modules = _REPORT_MODULES.get(report_to, ())
    if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ConfigError("report_to", f"{report_to!r} needs the {modules[0]} package, which is not installed",
                          f"pip install {modules[0]}, or pass report_to='none'.")


def check_bitsandbytes(field: str) -> None:
    """Raise ConfigError naming ``field`` when bitsandbytes is not installed (checked without importing it)."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(field, "needs bitsandbytes, which is not installed",
                          "pip install 'ossgym[train]' (it includes bitsandbytes), or leave the option out.")


def check_grpo_options(grpo: dict) -> None:
    """Raise ConfigError for a ``grpo`` key that is not a trl.GRPOConfig field (the closest one named) or that
    the run sets from one of its own fields (imports trl: only called when there are such keys)."""
    import dataclasses

    from trl import GRPOConfig

    from ossgym.options import check_keys

    check_keys(grpo, [f.name for f in dataclasses.fields(GRPOConfig) if f.init], "trl.GRPOConfig")
    for key in grpo:
        if key in GRPO_FIELDS_OF_THE_RUN:
            run_field = GRPO_FIELDS_OF_THE_RUN[key]
            raise ConfigError(key, "is set by ossgym's run, not through grpo",
                              f"Pass {run_field} instead." if run_field else "ossgym's training needs its value.")


@dataclass
class GRPORunConfig:
    """Options of one GRPO run; invalid values raise :class:`ossgym.errors.ConfigError` on construction.

    ``model=None`` means the embedded tiny gpt-oss agent. ``generation="fast"`` samples with the ossgym
    engine through ``rollout_func``; ``"trl"`` uses TRL's own ``generate``. One optimizer step uses
    ``prompts_per_step`` prompts x ``group_size`` completions. ``report_to`` picks TRL's metrics
    reporter; ``grpo`` passes any other ``trl.GRPOConfig`` field through (its keys are checked against
    GRPOConfig's fields; those the run sets from its own fields are refused, naming the field to use).
    ``ossgym train --config run.yaml`` reads these fields from YAML.
    """

    env_id: str = option("GptOss2048-v0", "the ossgym code env to train on (a registered gymnasium id)")
    env_kwargs: dict = option(default_factory=dict, help="options of the env, e.g. {'num_games': 4}", cli=False)
    model: str | None = option(None, "local folder or hub id of a gpt-oss checkpoint (default: the embedded tiny "
                               "gpt-oss)", kind=str)
    lora_rank: int = option(8, "rank of the LoRA adapter", min=1)
    lora_alpha: int = option(16, "LoRA scale numerator (the update is scaled by alpha / rank)", kind=float, min=0,
                             min_open=True)
    lora_dropout: float = option(0.0, "dropout on the LoRA input (not with lora_target_parameters)", min=0.0,
                                 max=1.0, max_open=True)
    lora_targets: tuple[str, ...] = option(("q_proj", "k_proj", "v_proj", "o_proj"),
                                           "module names that get a LoRA adapter (peft target_modules)")
    lora_target_parameters: tuple[str, ...] = option(
        (), "parameter names that get a LoRA adapter (peft target_parameters), e.g. "
        "mlp.experts.gate_up_proj,mlp.experts.down_proj for the experts")
    steps: int = option(20, "optimizer steps of the run", min=1)
    group_size: int = option(8, "completions sampled per prompt and compared with each other", min=2,
                             fix="GRPO compares completions within a group; use group_size=8 (2 at the very least).")
    prompts_per_step: int = option(1, "prompts (each with its group) per optimizer step", min=1)
    max_prompt_length: int = option(1024, "longest templated prompt in tokens (checked, never truncated)", min=1)
    max_completion_length: int = option(512, "most tokens sampled per completion", min=1)
    max_seq_len: int = option(4096, "prompt + completion budget in tokens (at most the model's context)", min=1)
    learning_rate: float = option(1e-5, "optimizer learning rate (constant)", min=0.0, min_open=True)
    beta: float = option(0.0, "weight of the KL term against the reference model (0: none, no reference pass)",
                         min=0.0)
    temperature: float = option(1.0, "sampling temperature (the training forward divides logits by it too)",
                                min=0.0, min_open=True)
    top_p: float = option(1.0, "nucleus-sampling probability mass", min=0.0, min_open=True, max=1.0)
    reasoning_effort: str = option("low", "the Reasoning: line of gpt-oss's system message",
                                   choices=REASONING_EFFORTS)
    generation: str = option("fast", "who samples: fast (the ossgym engine, through rollout_func) or trl (TRL's "
                             "own generate)", choices=GENERATION_BACKENDS,
                             fix='Use "fast" (the ossgym engine) or "trl" (TRL\'s own generate).')
    attn_implementation: str = option(
        "auto", "attention of the training forward (it must give the sink gradient): auto is flex_sinks on CUDA, "
        "eager on CPU", choices=ATTENTION_IMPLEMENTATIONS,
        fix='Use "auto", "flex_sinks" or "eager": gpt-oss training needs attention whose backward includes the '
        "sink gradient (FlashAttention-3 with sinks ignores it; sdpa has no sinks).")
    micro_batch_size: int = option(0, "sequences per forward/backward; one GRPO step accumulates gradients over "
                                   "its micro-batches (0: the whole step at once)", min=0)
    offload_checkpoints: bool = option(False, "keep the activation checkpoints in pinned CPU memory (less GPU "
                                       "memory, slower backward)")
    rollout_is_mode: str = option("sequence_mask", "rollout/training mismatch correction with the engine's "
                                  "logprobs, as TRL defines it for vLLM (none: off)", choices=ROLLOUT_IS_MODES)
    rollout_is_cap: float = option(3.0, "upper bound of the importance ratio (mask or truncate above it)",
                                   min=1.0)
    rollout_is_min: float | None = option(
        None, "lower bound of the importance ratio, TRL's C_min (mask or truncate below it; default: none, as in "
        "TRL, so a ratio far below 1 keeps its small weight and is counted in mismatch/is_low_frac; 1/cap drops "
        "both tails, as verl does)", kind=float, min=0.0, min_open=True)
    gradient_checkpointing: bool = option(True, "recompute activations in the backward (less memory, more time)")
    router_aux_loss_coef: float = option(0.0, "weight of the MoE router load-balancing loss (0 for LoRA runs)",
                                         min=0.0)
    num_dataset_rows: int = option(256, "dataset rows, each a distinct evaluation seed of the env", min=1)
    output_dir: str = option("runs/grpo", "folder for the log, plot, report, checkpoints and exports")
    save_steps: int = option(0, "save a checkpoint every N steps (0: only the final one)", min=0)
    seed: int = option(0, "seeds the dataset, the sampling and the trainer")
    report_to: str = option("none", "where the trainer also reports its metrics (ossgym's own log, plot and report "
                            "are always written)", choices=REPORT_TO)
    grpo: dict = option(default_factory=dict, help="other trl.GRPOConfig fields, passed through as given, e.g. "
                        "{'lr_scheduler_type': 'cosine', 'warmup_steps': 2}", cli=False)
    scoring: str = option("local", "where completions are scored: local (this machine's sandbox pool) or ray "
                          "(sandbox pools in Ray actors; pip install 'ossgym[ray]')", choices=SCORING_BACKENDS)
    ray_address: str | None = option(None, "the Ray cluster to score on with --scoring ray, e.g. auto or "
                                     "ray://head:10001 (default: start a local Ray instance)", kind=str)
    experts: str = option("auto", "how the MoE experts are held: mxfp4 (4-bit blocks + scales, multiplied "
                          "in-kernel; expert LoRA is ossgym's split LoRA), bf16 (dense), auto (mxfp4 for an MXFP4 "
                          "checkpoint folder, else dense)", choices=EXPERT_FORMATS)
    offload_embeddings: bool = option(False, "keep the input embedding table in CPU memory (gpt-oss: 1.08 GiB "
                                      "less on the GPU; the rows of each batch travel)")
    optim: str = option("adamw_torch", "optimizer of the LoRA weights (sgd: TRL clips each step's gradient norm at 1, so a step moves the LoRA by at most "
                        "the learning rate, as the tiny CPU demo wants; 8-bit ones: bitsandbytes, CUDA only)",
                        choices=OPTIMIZERS)
    nf4: tuple[str, ...] = option((), "parts held in bitsandbytes NF4 (4-bit, frozen; LoRA trains beside them): "
                                  "attention (q/k/v/o_proj; gpt-oss-20b: 0.85 GiB less), lm_head (0.78 GiB less)",
                                  choices=NF4_PARTS)
    nf4_double_quant: bool = option(False, "NF4 with double quantization (8-bit absmaxes: gpt-oss-20b 0.05 GiB "
                                    "less again)")

    def __post_init__(self) -> None:
        self.lora_targets = tuple(self.lora_targets)
        self.lora_target_parameters = tuple(self.lora_target_parameters)
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for the first option that cannot work (each field, then how they fit together)."""
        check_env_id(self.env_id)
        check_options(self)
        check_report_to(self.report_to)
        if self.grpo:
            check_grpo_options(self.grpo)
        if not self.output_dir:
            raise ConfigError("output_dir", "is empty", "Pass a folder, e.g. runs/grpo.")
        if self.lora_dropout and self.lora_target_parameters:
            raise ConfigError(
                "lora_dropout",
                f"is {self.lora_dropout} with lora_target_parameters, which peft refuses (a LoRA on a parameter"
                " cannot drop out its input)",
                "Pass lora_dropout=0.0 or leave lora_target_parameters empty.",
            )
        if not self.lora_targets and not self.lora_target_parameters:
            raise ConfigError(
                "lora_targets", "is empty and so is lora_target_parameters", 'Target the attention: ("q_proj", ...).'
            )
        if "lm_head" in self.lora_targets:
            raise ConfigError(
                "lora_targets",
                "includes lm_head, which TRL refuses (it reads lm_head.weight directly: the adapter would not train)",
                "Remove lm_head.",
            )
        step_batch = self.group_size * self.prompts_per_step
        if self.micro_batch_size and step_batch % self.micro_batch_size:
            raise ConfigError(
                "micro_batch_size",
                f"{self.micro_batch_size} does not divide the step's {step_batch} sequences (group_size x "
                "prompts_per_step)",
                f"Pass a divisor of {step_batch}, e.g. 1, or 0 for the whole step at once.",
            )
        if self.max_prompt_length + self.max_completion_length > self.max_seq_len:
            raise ConfigError(
                "max_completion_length",
                f"max_prompt_length {self.max_prompt_length} + max_completion_length {self.max_completion_length}"
                f" = {self.max_prompt_length + self.max_completion_length} exceeds max_seq_len {self.max_seq_len}",
                "Shorten one of the two lengths or raise max_seq_len (at most the model's context length).",
            )
        check_is_bounds(self.rollout_is_cap, self.rollout_is_min)
        self.nf4 = tuple(dict.fromkeys(self.nf4))
        if self.nf4_double_quant and not self.nf4:
            raise ConfigError("nf4_double_quant", "is on but nf4 names no part",
                              "Pass nf4=('attention', 'lm_head') (--nf4 attention,lm_head) as well, or leave it off.")
        if self.nf4:
            check_bitsandbytes("nf4")
        if self.ray_address is not None and self.scoring != "ray":
            raise ConfigError("ray_address", f"is {self.ray_address!r} but scoring is {self.scoring!r}",
                              "Pass scoring='ray' (--scoring ray) as well, or leave ray_address out.")

    def check_prompt_length(self, num_tokens: int) -> None:
        """Raise ConfigError when a templated prompt of ``num_tokens`` tokens does not fit max_prompt_length."""
        if num_tokens > self.max_prompt_length:
            raise ConfigError(
                "max_prompt_length",
                f"the task prompt has {num_tokens} tokens, more than max_prompt_length {self.max_prompt_length}",
                f"Pass max_prompt_length={num_tokens} or more (and keep it + max_completion_length <= max_seq_len).",
            )

    def check_model_fits(self, model_max_positions: int) -> None:
        """Raise ConfigError when max_seq_len exceeds the model's context length."""
        if self.max_seq_len > model_max_positions:
            raise ConfigError(
                "max_seq_len",
                f"{self.max_seq_len} exceeds the model's context length {model_max_positions}",
                f"Pass max_seq_len={model_max_positions} or less.",
            )

    def check_lora_targets(self, model: "torch.nn.Module") -> None:
        """Raise ConfigError for a LoRA target that names no module (or parameter) of ``model``.

        Matched as peft matches them (the full name, or a suffix after a dot); peft itself fails only when
        no target matches at all, so a misspelt one among several would silently train less.
        """
        modules = [name for name, _ in model.named_modules()]
        params = [name for name, _ in model.named_parameters()]
        for field_name, names, targets in (
            ("lora_targets", modules, self.lora_targets),
            ("lora_target_parameters", params, self.lora_target_parameters),
        ):
            for target in targets:
                if not any(name == target or name.endswith("." + target) for name in names):
                    kind = "module" if field_name == "lora_targets" else "parameter"
                    close = difflib.get_close_matches(target, names, n=3, cutoff=0.3)
                    raise ConfigError(
                        field_name, f"{target!r} names no {kind} of the model", f"Use names it has, e.g. {close}."
                    )

    def lora_config(self):
        """The ``peft.LoraConfig`` of this run (attention projections; experts via target_parameters)."""
        from peft import LoraConfig

        return LoraConfig(
            r=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=list(self.lora_targets) or None,
            target_parameters=list(self.lora_target_parameters) or None,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def grpo_config(self, **overrides: Any):
        """The ``trl.GRPOConfig`` of this run; ``overrides`` set any other GRPOConfig field."""
        from trl import GRPOConfig

        kwargs: dict[str, Any] = dict(
            output_dir=self.output_dir,
            max_steps=self.steps,
            num_generations=self.group_size,
            # one generation of the whole step, split into micro-batches whose gradients accumulate
            # (TRL: steps_per_generation defaults to gradient_accumulation_steps)
            per_device_train_batch_size=self.micro_batch_size or self.group_size * self.prompts_per_step,
            gradient_accumulation_steps=(self.group_size * self.prompts_per_step) // (
                self.micro_batch_size or self.group_size * self.prompts_per_step),
            learning_rate=self.learning_rate,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            beta=self.beta,
            seed=self.seed,
            data_seed=self.seed,
            gradient_checkpointing=self.gradient_checkpointing,  # TRL's default is True
            router_aux_loss_coef=self.router_aux_loss_coef,
            chat_template_kwargs={"reasoning_effort": self.reasoning_effort},
            remove_unused_columns=False,
            disable_dropout=True,
            logging_steps=1,
            save_strategy="steps" if self.save_steps else "no",
            save_steps=self.save_steps or 500,
            optim=self.optim,
            report_to=self.report_to,
        )
        kwargs.update(overrides)
        kwargs.update(self.grpo)  # the user's own GRPOConfig fields win over ossgym's defaults for them
        try:
            return GRPOConfig(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError("grpo", f"trl.GRPOConfig refused the run's options: {exc}",
                              "Fix the grpo options (ossgym train --grpo-option KEY=VALUE) or the run field "
                              "it names.") from None
