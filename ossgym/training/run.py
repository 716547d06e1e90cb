"""One GRPO run of a gpt-oss agent on an ossgym code env: :func:`run_training`, read top to bottom.

One GRPO step, in the order it happens (TRL's ``GRPOTrainer`` drives it; each part is one module here):

1. **Rows.** The sampler takes ``prompts_per_step`` dataset rows (:mod:`~ossgym.training.dataset`: the env's
   chat prompt for an evaluation seed, and that seed) and repeats each ``group_size`` times.
2. **Generation.** TRL calls the ``rollout_func`` (:mod:`~ossgym.training.rollout`) with those prompts. It
   puts the model in eval mode and hands each distinct prompt once, with ``num_samples=group_size``, to the
   generate function (:mod:`~ossgym.training.generation`: the agent's fast engine over the peft model being
   trained, so the current LoRA weights act). It returns prompt ids, completion ids and the engine's
   per-token log-probabilities, plus each completion's text with its special tokens (``raw_completion``).
3. **Scoring.** TRL calls one reward function per component (:mod:`~ossgym.training.rewards`); the first
   scores the whole batch through the env (:mod:`~ossgym.training.env`: extract the code, check the policy,
   run it in the sandbox, the caller keeps state and time and decides the reward) and the others reuse it.
4. **Advantages.** TRL sums the components, and normalises each reward within its group:
   ``(r - mean(group)) / std(group)``. A group whose completions all scored alike teaches nothing
   (``frac_reward_zero_std`` in the log).
5. **Loss.** TRL's training forward recomputes each completion token's log-probability under the policy
   (eager attention with sinks, LoRA on the attention and optionally the experts, which run in checkpointed
   token chunks, stock or ossgym's: :mod:`~ossgym.agents.gptoss.hf_experts`) and forms the clipped
   policy-gradient loss, weighted by the rollout's importance ratio (:mod:`~ossgym.training.long_context`),
   plus ``beta`` x KL against the adapter-free model when ``beta > 0``. On CPU its
   fused LM head scores only the completion positions (:mod:`~ossgym.training.cpu_head`).
6. **Update.** Backward, one optimizer step on the LoRA weights; the engine sees them in place at the next
   generation (it calls the same modules).
7. **Log.** :mod:`~ossgym.training.report` appends the step to ``log.jsonl`` (components, reward, loss, and
   seconds in generation, scoring, forward, backward, optimizer) and rewrites ``rewards.png`` and
   ``report.txt``.

At the end the run saves the adapter (``adapter/``) and the adapter merged into the base model in bf16
(``merged/``); Trainer checkpoints go to ``checkpoint-N``. ``examples/grpo_tiny.py`` is the same step with
TRL called directly, in about sixty lines.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ossgym.agents.peft_utils import base_model
from ossgym.errors import ConfigError
from ossgym.training import distributed
from ossgym.training.config import GRPORunConfig
from ossgym.training.cpu_head import cpu_fused_lm_head
from ossgym.training.dataset import build_dataset
from ossgym.training.env import EnvRewards
from ossgym.training.generation import AgentGenerate
from ossgym.training.long_context import RolloutISCorrection
from ossgym.training.nf4_head import nf4_fused_lm_head
from ossgym.training.report import (
    ADAPTER_DIR,
    LOG_FILE,
    MERGED_DIR,
    TrainResult,
    format_report,
    make_run_log,
    plot_rewards,
    time_forward_backward,
)
from ossgym.training.rollout import make_rollout_func

if TYPE_CHECKING:
    from ossgym.agents.agent import GptOssAgent

logger = logging.getLogger(__name__)


def load_agent(config: GRPORunConfig) -> "GptOssAgent":
    """The agent a run trains: the embedded tiny model (fp32, CPU) or ``config.model`` (bf16 on the GPU if any).

    Experts as ``config.experts`` says (an MXFP4 checkpoint folder stays MXFP4 by default), the parts
    ``config.nf4`` names in NF4 (quantized after loading, one layer at a time); the fast engine's
    cache is sized for one rollout (the step's sequences, prompt + completion), not the model's context."""
    import torch

    from ossgym.agents.agent import AgentConfig, GptOssAgent
    from ossgym.agents.gptoss.mxfp4 import convert_experts

    rows = config.group_size * config.prompts_per_step
    agent_config = AgentConfig(reasoning_effort=config.reasoning_effort,
                               max_seq_len=config.max_prompt_length + config.max_completion_length,
                               max_batch_size=min(64, rows), use_fast_engine=config.generation == "fast")
    if config.model is None:
        agent = GptOssAgent.tiny(config=agent_config)
        if config.experts == "mxfp4":
            convert_experts(agent.model, "mxfp4")
    else:
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        agent = GptOssAgent.from_pretrained(config.model, dtype=dtype, use_fast_engine=config.generation == "fast",
                                            config=agent_config,
                                            experts=None if config.experts == "auto" else config.experts)
    if config.nf4:
        quantize_parts(agent.model, config.nf4, config.nf4_double_quant)
    return agent


def quantize_parts(model: Any, parts: tuple[str, ...], double_quant: bool) -> None:
    """Hold ``parts`` of the model in NF4 (ossgym/agents/gptoss/nf4.py), before peft adds its LoRA; ConfigError
    (field ``nf4``) when bitsandbytes cannot be imported or cannot run NF4 where the model is."""
    try:
        from ossgym.agents.gptoss import nf4
    except Exception as exc:  # noqa: BLE001 - a broken bitsandbytes install fails in many ways at import
        raise ConfigError("nf4", f"bitsandbytes cannot be imported here: {exc!r}"[:600],
                          "Reinstall it (pip install 'ossgym[train]') or leave nf4 out.") from None
    norm = base_model(model).model.norm.weight
    nf4.probe_nf4(norm.device, norm.dtype, double_quant)
    nf4.quantize_nf4(model, parts, double_quant)


def check_memory_options(config: GRPORunConfig, split_targets: tuple[str, ...]) -> None:
    """ConfigError for memory options that cannot work together with this model and machine."""
    import torch

    if "8bit" in config.optim and not torch.cuda.is_available():
        raise ConfigError("optim", f"{config.optim} is a bitsandbytes optimizer for CUDA and there is no GPU",
                          'Use "adamw_torch" on the CPU.')
    if split_targets and not config.lora_targets:
        raise ConfigError("lora_targets", "is empty, and the MXFP4 experts' LoRA is ossgym's split LoRA, which "
                          "needs a peft adapter beside it", 'Keep the attention targets: ("q_proj", ...).')
    if split_targets and config.beta > 0:
        raise ConfigError("beta", f"is {config.beta} with split expert LoRA: the reference pass (peft's disabled "
                          "adapter) would keep the expert LoRA on", "Pass beta=0.0 or experts=bf16.")


def _export(trainer: Any, tokenizer: Any, output_dir: Path, merged: bool) -> tuple[Path, Path | None]:
    """Save the LoRA adapter (split expert LoRA included, under peft's keys), and (``merged``) the adapter
    merged into the base model: bf16, or the official MXFP4 layout when the experts are MXFP4 (NF4 layers are
    dequantized to dense ones first, so the merged model holds them in the model's dtype)."""
    import torch

    from ossgym.agents.gptoss.mxfp4 import add_expert_lora_to_adapter, has_oss_experts, merge_expert_lora, save_mxfp4
    from ossgym.agents.gptoss.offload import restore_embeddings

    adapter_dir = output_dir / ADAPTER_DIR
    model = restore_embeddings(trainer.model)
    model.save_pretrained(adapter_dir)
    if has_oss_experts(model):
        add_expert_lora_to_adapter(model, adapter_dir)
    tokenizer.save_pretrained(adapter_dir)
    if not merged:
        return adapter_dir, None
    merged_dir = output_dir / MERGED_DIR
    if any(getattr(getattr(m, "weight", None), "quant_state", None) is not None for m in model.modules()):
        from ossgym.agents.gptoss.nf4 import dequantize_nf4

        dequantize_nf4(model)  # NF4 layers back to dense nn.Linear, their LoRA merged exactly (peft cannot)
    base = model.merge_and_unload()  # folds the adapter into the base weights (in place)
    if has_oss_experts(base):
        fmt = base_model(base).model.layers[0].mlp.experts.format
        errors = merge_expert_lora(base, fmt)  # re-quantized to MXFP4: the relative error is logged
        logger.info("expert LoRA merged into %s experts (relative error of the re-quantization: %s)", fmt, errors)
        if fmt == "mxfp4":
            save_mxfp4(base, merged_dir)
        else:
            from ossgym.agents.gptoss.mxfp4 import to_hf_experts

            to_hf_experts(base).save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
        trainer.model = base
        return adapter_dir, merged_dir
    # a bf16 model (the GPU case) is saved as it is; a float32 one (the small CPU case) through a bf16 copy
    export = base if base.dtype == torch.bfloat16 else copy.deepcopy(base).to(torch.bfloat16)
    export.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    trainer.model = base
    return adapter_dir, merged_dir


def _expert_lora_checkpoints() -> Any:
    """A callback that completes each Trainer checkpoint's adapter with the split expert LoRA (the Trainer saves
    only peft's part), so a checkpoint holds the whole adapter, as the final export does."""
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    from ossgym.agents.gptoss.mxfp4 import add_expert_lora_to_adapter

    class ExpertLoraCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            if state.is_world_process_zero and model is not None and (folder / "adapter_config.json").exists():
                add_expert_lora_to_adapter(model, folder)

    return ExpertLoraCheckpoints()


def _time_trl_generation(trainer: Any) -> None:
    """Log ``timing/generation_s`` for TRL's own generation too (the ossgym rollout logs its own)."""
    generate = trainer._generate

    def timed(prompts: list):
        start = time.perf_counter()
        out = generate(prompts)
        trainer._log_metric("timing/generation_s", time.perf_counter() - start)
        return out

    trainer._generate = timed


def run_training(
    config: GRPORunConfig,
    agent: "GptOssAgent | None" = None,
    prompt_fn: Callable[[int], list[dict]] | None = None,
    export_merged: bool = True,
    progress: bool = True,
    notes: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
    **grpo_overrides: Any,
) -> TrainResult:
    """Run GRPO as ``config`` says and write the log, plot, report, checkpoints and exports.

    ``agent`` defaults to :func:`load_agent`; ``prompt_fn(seed)`` to the env's own chat messages;
    ``grpo_overrides`` set other ``trl.GRPOConfig`` fields; ``notes`` go into the report; ``callbacks`` are
    extra ``transformers.TrainerCallback`` objects. The plot and report are rewritten after every step and
    when the run is interrupted; at the end ``agent`` holds the trained model (merged when ``export_merged``).
    Scoring (``config.scoring``) uses one pool for the whole run, closed when the run ends, however it ends;
    with Ray and N processes (:mod:`~ossgym.training.distributed`) each rank's pool takes 1/N of the cluster.
    """
    start = time.perf_counter()
    ranks = distributed.world_size() if config.scoring == "ray" else 1
    if ranks > 1 and config.ray_address is None:
        raise ConfigError("ray_address", f"is needed for scoring='ray' in a run of {ranks} processes (each would "
                          "start a Ray instance of its own)", "Start one (ray start --head) and pass --ray-address "
                          "auto.")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    env = EnvRewards(config.env_id, config.env_kwargs, config.reasoning_effort, scoring=config.scoring,
                     ray_address=config.ray_address, ray_options={"ranks": ranks} if ranks > 1 else {})
    try:
        return _train(config, env, start, output_dir, agent, prompt_fn, export_merged, progress, notes, callbacks,
                      grpo_overrides)
    finally:
        env.close()


def _train(config: GRPORunConfig, env: EnvRewards, start: float, output_dir: Path, agent: "GptOssAgent | None",
           prompt_fn: Callable[[int], list[dict]] | None, export_merged: bool, progress: bool, notes: Sequence[str],
           callbacks: Sequence[Any], grpo_overrides: dict[str, Any]) -> TrainResult:
    """The body of :func:`run_training`, given the env it scores through."""
    import os
    import warnings

    import torch

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    from ossgym.agents.gptoss.hf_experts import chunk_stock_experts
    from ossgym.agents.gptoss.mxfp4 import add_expert_lora, split_expert_targets

    if agent is None:
        agent = load_agent(config)
    elif config.nf4:  # an agent passed in gets the NF4 parts too (load_agent's are 4-bit already)
        quantize_parts(agent.model, config.nf4, config.nf4_double_quant)
        agent.reset_engine()  # an engine built before holds CUDA graphs of the replaced layers
    if config.offload_embeddings:
        from ossgym.agents.gptoss.offload import offload_embeddings

        offload_embeddings(agent.model)
    base = base_model(agent.model)
    chunk_stock_experts(base)  # stock HF experts train in token chunks, as ossgym's OssExperts do
    attn = config.attn_implementation
    if attn == "auto":
        attn = "flex_sinks" if torch.cuda.is_available() else "eager"
    if base.config._attn_implementation != attn:
        base.set_attn_implementation(attn)  # the training forward only; the fast engine has its own attention
    config.check_model_fits(int(base.config.max_position_embeddings))
    peft_targets, split_targets = split_expert_targets(base, config.lora_target_parameters)
    check_memory_options(config, split_targets)
    peft_config = dataclasses.replace(config, lora_target_parameters=peft_targets)  # MXFP4 experts: split LoRA
    peft_config.check_lora_targets(base)
    dataset = build_dataset(prompt_fn or env.prompt, config.num_dataset_rows, config.seed, config.reasoning_effort)
    distinct = {json.dumps(p, sort_keys=True): p for p in dataset["prompt"]}.values()
    config.check_prompt_length(max(len(agent.encode_prompt(p, config.reasoning_effort)) for p in distinct))
    generate = AgentGenerate(agent) if config.generation == "fast" else None
    cpu = not torch.cuda.is_available()
    overrides: dict[str, Any] = dict(
        use_cpu=cpu, bf16=not cpu, disable_tqdm=True, lr_scheduler_type="constant",
        save_strategy="steps", save_steps=config.save_steps or config.steps,
    )
    overrides.update(distributed.grpo_overrides(config))  # each rank's share of the batch (multi-process)
    overrides.update(grpo_overrides)
    records: list[dict] = []
    backend = "trl" if generate is None else None
    title = f"GRPO on {config.env_id} ({config.model or 'tiny gpt-oss'})"

    def write_outputs(**paths: Any) -> TrainResult:  # the plot and report, after every step and at the end
        result = TrainResult(output_dir=output_dir, records=records, component_names=env.component_names,
                             report="", generation_backend=backend or (generate.backend or "reference"),
                             wall_s=time.perf_counter() - start, **paths)
        plot_rewards(records, env.component_names, result.plot_path, title=title)
        result.report = format_report(result, config, notes)
        result.report_path.write_text(result.report + "\n")
        return result

    callback = make_run_log(output_dir / LOG_FILE, env.component_names, records, progress, on_step=write_outputs)
    callback = distributed.main_only(callback)  # logs, plot and report written once
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # TRL's gradient_checkpointing field name
        trainer_class, is_kwargs = GRPOTrainer, {}
        if generate is not None and config.rollout_is_mode != "none":
            trainer_class = type("ISCorrectedGRPOTrainer", (RolloutISCorrection, GRPOTrainer), {})
            is_kwargs = {"rollout_is_mode": config.rollout_is_mode, "rollout_is_cap": config.rollout_is_cap,
                         "rollout_is_min": config.rollout_is_min}
        trainer = trainer_class(
            **is_kwargs,
            model=agent.model,
            reward_funcs=env.reward_funcs(),
            args=config.grpo_config(**overrides),
            train_dataset=dataset,
            processing_class=agent.tokenizer,
            peft_config=peft_config.lora_config(),
            rollout_func=distributed.shard_rollout(  # samples independent of which rank draws them
                make_rollout_func(generate, max_prompt_length=config.max_prompt_length)),
            callbacks=[callback, *distributed.callbacks(output_dir), *callbacks],
        )
        if split_targets:  # after peft wrapped the model (it freezes what is not its own); the optimizer comes later
            add_expert_lora(trainer.model, config.lora_rank, config.lora_alpha, targets=split_targets, seed=config.seed)
            trainer.add_callback(_expert_lora_checkpoints())
        if generate is None:
            _time_trl_generation(trainer)
        time_forward_backward(trainer, callback.timings)
        for cls in (PrinterCallback, ProgressCallback):  # our callback logs and shows progress instead
            trainer.remove_callback(cls)
        try:
            with contextlib.ExitStack() as stack:
                if cpu:  # TRL's CPU head scores the prompt positions too, in page-faulting tiles
                    stack.enter_context(cpu_fused_lm_head())
                stack.enter_context(nf4_fused_lm_head())  # an NF4 LM head (config.nf4): its rows block by block
                if config.offload_checkpoints:
                    stack.enter_context(torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()))
                trainer.train()
        except KeyboardInterrupt:
            write_outputs()
            logger.warning("interrupted after %d steps; outputs so far in %s", len(records), output_dir)
            raise
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if not distributed.is_main():  # the main process exports and writes the outputs
        return TrainResult(output_dir, records, env.component_names, "", backend or "fast", time.perf_counter() - start)
    adapter_dir, merged_dir = _export(trainer, agent.tokenizer, output_dir, export_merged)
    agent.model = trainer.model
    agent.reset_engine()
    result = write_outputs(checkpoints=checkpoints, adapter_dir=adapter_dir, merged_dir=merged_dir)
    logger.info("GRPO run done in %.1f s; outputs in %s", result.wall_s, output_dir)
    return result
