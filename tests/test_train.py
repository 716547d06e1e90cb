"""GRPO runs of the tiny gpt-oss agent on GptOss2048-v0 (ossgym/training/: run, env, generation, warm start; cli.py): CPU, offline."""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from ossgym.cli import train_main as main  # noqa: E402
from ossgym.errors import ConfigError  # noqa: E402
from ossgym.training import RAW_COMPLETION_FIELD, GRPORunConfig  # noqa: E402
from ossgym.training.env import EnvRewards, EnvScorer  # noqa: E402
from ossgym.training.generation import AgentGenerate  # noqa: E402
from ossgym.training.run import run_training  # noqa: E402
from ossgym.training.warm_start import (  # noqa: E402
    STRATEGY_2048_COMPLETIONS,
    completion_probabilities,
    supervised_warm_start,
)

ENV_OPTIONS = {"num_games": 1}
CODE = '<|channel|>final<|message|>```python\ndef strategy(board):\n    return "W"\n```<|return|>'
NO_CODE = "<|channel|>final<|message|>I cannot write that.<|return|>"


def tiny_agent():
    from ossgym.agents.agent import GptOssAgent

    return GptOssAgent.tiny()


# ------------------------------------------------------------------------------------------------------
# Reward functions from an env id
# ------------------------------------------------------------------------------------------------------


def test_reward_funcs_agree_with_env_score():
    env = EnvRewards("GptOss2048-v0", ENV_OPTIONS)
    assert env.component_names == ("format", "policy", "tile", "score", "win", "failures", "crash")
    funcs = env.reward_funcs()
    assert [f.__name__ for f in funcs] == list(env.component_names)
    raw = list(STRATEGY_2048_COMPLETIONS)
    seeds = [3, 3, 7, 7, 11]
    expected = [env.env.score(text, seed).components for text, seed in zip(raw, seeds)]
    assert len({e["format"] for e in expected}) == 3 and len({e["policy"] for e in expected}) == 3
    # as the ossgym rollout hands them (raw text with special tokens) ...
    got = {f.__name__: f(prompts=[[]] * 5, completions=[[]] * 5, seed=seeds, **{RAW_COMPLETION_FIELD: raw})
           for f in funcs}
    # ... and as TRL's own generation does (decoded without special tokens, conversational)
    decoded = [t.replace("<|channel|>final<|message|>", "assistantfinal").replace("<|return|>", "") for t in raw]
    got_decoded = {f.__name__: f(prompts=[[]] * 5, completions=[[{"role": "assistant", "content": d}] for d in decoded],
                                 seed=seeds) for f in funcs}
    expected_decoded = [env.env.score(text, seed).components for text, seed in zip(decoded, seeds)]
    for name in env.component_names:
        assert got[name] == pytest.approx([e[name] for e in expected])
        assert got_decoded[name] == pytest.approx([e[name] for e in expected_decoded])
    assert [e["format"] for e in expected_decoded] == [e["format"] for e in expected]


def test_env_scorer_pickles_and_prompts_are_the_env_messages():
    scorer = pickle.loads(pickle.dumps(EnvScorer("GptOss2048-v0", ENV_OPTIONS)))
    assert scorer([NO_CODE], [5]) == [{"format": -1.0, "policy": 0.0, "tile": 0.0, "score": 0.0, "win": 0.0,
                                       "failures": 0.0, "crash": 0.0}]
    env = EnvRewards("GptOss2048-v0", ENV_OPTIONS, reasoning_effort="high")
    import gymnasium

    _, info = gymnasium.make("GptOss2048-v0", **ENV_OPTIONS).reset(options={"eval_seed": 9})
    assert env.prompt(9) == info["messages"]
    ds = env.dataset(4, seed=1)
    assert ds["prompt"][0] == env.prompt(ds["seed"][0]) and set(ds["reasoning_effort"]) == {"high"}


@pytest.mark.parametrize("env_id,options,field", [("GptOss2048-v1", {}, "env_id"), ("Game2048-v0", {}, "env_id"),
                                                   ("GptOss2048-v0", {"size": 99}, "size")])
def test_env_rewards_reject_bad_env(env_id, options, field):
    with pytest.raises(ConfigError) as info:
        EnvRewards(env_id, options)
    assert info.value.field == field


# ------------------------------------------------------------------------------------------------------
# Warm start and the generate function
# ------------------------------------------------------------------------------------------------------


def test_warm_start_fits_the_head_and_agent_generate_samples_from_it():
    agent = tiny_agent()
    prompt = [{"role": "user", "content": "Write strategy(board)."}]
    head_before = agent.model.lm_head.weight.detach().clone()
    body_before = agent.model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    losses = supervised_warm_start(agent, [prompt], [CODE, NO_CODE], steps=100)
    assert losses[-1] < 0.2 * losses[0] and losses[-1] < 1.0
    changed_rows = (agent.model.lm_head.weight != head_before).any(dim=1).nonzero().flatten().tolist()
    used = set(agent.tokenizer.encode(CODE + NO_CODE, add_special_tokens=False))
    assert changed_rows and set(changed_rows) <= used  # only the rows of the completions' tokens moved
    assert torch.equal(agent.model.model.layers[0].self_attn.q_proj.weight, body_before)
    generate = AgentGenerate(agent)
    out = generate([prompt], num_samples=6, max_new_tokens=20, temperature=1.0, top_p=1.0, seed=1, model=agent.model,
                   stop_token_ids=[200002], chat_template_kwargs={"reasoning_effort": "low"})
    assert generate.backend == "fast"  # the agent's default: the fast engine
    assert {g.text for g in out} <= {CODE, NO_CODE}
    # after "<|channel|>final<|message|>" the two completions part: the warm start made that a fair choice
    assert all(abs(math.exp(g.logprobs[3]) - 0.5) < 0.2 for g in out), [g.logprobs[3] for g in out]
    assert all(g.completion_ids[-1] == 200002 and len(g.logprobs) == len(g.completion_ids) for g in out)
    with pytest.raises(ConfigError, match="chat_template_kwargs"):
        generate([prompt], num_samples=1, max_new_tokens=2, temperature=1.0, top_p=1.0, seed=1, model=agent.model,
                 stop_token_ids=[], chat_template_kwargs={"enable_thinking": True})


def test_cpu_fused_lm_head_scores_only_labelled_positions_with_the_same_result(monkeypatch):
    from trl.trainer import utils as trl_utils
    from trl.trainer.utils import add_fused_lm_head

    from ossgym.agents.gptoss.tiny import tiny_model
    from ossgym.training.cpu_head import cpu_fused_lm_head

    model = tiny_model()
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :7] = -100  # a 7-token prompt; the second row's completion ends 2 tokens early (padding)
    labels[1, -2:] = -100
    scored = []
    apply = trl_utils._ChunkedLogProbFunction.apply

    def counting_apply(hidden, *args):
        scored.append(hidden.shape[0])
        return apply(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", counting_apply)

    def run():
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        return out.log_probs.detach(), out.entropy.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    before = run()
    with cpu_fused_lm_head(tile_columns=1000) as applied:
        after = run()
    assert applied and scored == [2 * 11, 5 + 3]  # every shifted position before; only the labelled ones after
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 32768 and not trl_utils._use_triton(torch.device("cpu"))


# ------------------------------------------------------------------------------------------------------
# End to end: two GRPO steps on GptOss2048-v0 through the ossgym rollout
# ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    torch.manual_seed(0)
    agent = tiny_agent()
    out = tmp_path_factory.mktemp("grpo")
    config = GRPORunConfig(env_id="GptOss2048-v0", env_kwargs=ENV_OPTIONS, steps=2, group_size=4,
                           max_prompt_length=1024, max_completion_length=20, max_seq_len=2048, learning_rate=1e-2,
                           num_dataset_rows=8, output_dir=str(out), seed=0)
    env = EnvRewards(config.env_id, config.env_kwargs)
    supervised_warm_start(agent, [env.prompt(0)], [CODE, NO_CODE], steps=100)
    return run_training(config, agent=agent, progress=False), config


def test_two_steps_log_every_component_and_write_outputs(two_step_run):
    result, config = two_step_run
    assert result.generation_backend == "fast"
    lines = result.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert records == result.records and [r["step"] for r in records] == [1, 2]
    for r in records:
        assert set(r["components"]) == set(result.component_names)
        assert all(isinstance(v, float) and math.isfinite(v) for v in r["components"].values())
        assert math.isfinite(r["loss"]) and r["kl"] is None  # beta = 0: TRL computes no KL
        assert r["reward"] == pytest.approx(sum(r["components"].values()), abs=1e-5)
        for key in ("completion_length", "generation_s", "scoring_s", "forward_s", "backward_s", "step_s"):
            assert r[key] > 0
    assert any(r["reward_std"] > 0 for r in records)  # the warm-started model samples code and no code
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    checkpoint = result.output_dir / "checkpoint-2"
    assert result.checkpoints == [checkpoint] and (checkpoint / "adapter_model.safetensors").exists()
    assert (checkpoint / "trainer_state.json").exists()
    report = (result.output_dir / "report.txt").read_text()
    assert "reward (sum)" in report and all(name in report for name in result.component_names)
    assert "TRL forward" in report and "backward" in report  # the step time is named, not left as a remainder


def test_two_steps_train_the_lora_and_export_it(two_step_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ossgym.agents.gptoss.tiny import tiny_model

    result, _ = two_step_run
    loaded = PeftModel.from_pretrained(tiny_model(), result.adapter_dir)
    lora_b = {n: p for n, p in loaded.named_parameters() if "lora_B" in n}
    assert len(lora_b) == 16  # 4 layers x q, k, v, o
    assert all(p.abs().sum() > 0 for p in lora_b.values())  # peft starts B at zero: training moved every one
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    assert next(merged.parameters()).dtype == torch.bfloat16
    expected = loaded.merge_and_unload().state_dict()
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.3.self_attn.o_proj.weight"):
        torch.testing.assert_close(merged.state_dict()[name].float(), expected[name].bfloat16().float())
        assert not torch.equal(expected[name], tiny_model().state_dict()[name])
    assert (result.merged_dir / "tokenizer.json").exists() and (result.adapter_dir / "adapter_config.json").exists()


def test_run_writes_plot_and_report_after_each_step_and_on_interrupt(tmp_path):
    from transformers import TrainerCallback

    seen = []

    class StopInStepTwo(TrainerCallback):  # runs after the run's own callback, which writes the outputs
        def on_log(self, args, state, control, logs=None, **kwargs):
            report = tmp_path / "report.txt"
            seen.append((state.global_step, report.exists() and "1 steps" in report.read_text(),
                         (tmp_path / "rewards.png").exists()))

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                (tmp_path / "report.txt").unlink()
                (tmp_path / "rewards.png").unlink()
                raise KeyboardInterrupt

    config = GRPORunConfig(env_id="GptOss2048-v0", env_kwargs=ENV_OPTIONS, steps=3, group_size=2,
                           max_prompt_length=256, max_completion_length=4, max_seq_len=512, num_dataset_rows=4,
                           gradient_checkpointing=False, output_dir=str(tmp_path), seed=0)
    prompt = [{"role": "user", "content": "Write strategy(board)."}]
    with pytest.raises(KeyboardInterrupt):
        run_training(config, agent=tiny_agent(), prompt_fn=lambda seed: prompt, progress=False,
                     callbacks=[StopInStepTwo()])
    assert seen == [(1, True, True)]  # written after step 1 ...
    assert "1 steps" in (tmp_path / "report.txt").read_text() and (tmp_path / "rewards.png").exists()  # ... and again
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------------------------
# Learning: after a warm start on completions of different quality, GRPO moves towards the good ones
# ------------------------------------------------------------------------------------------------------


# Budgets no honest strategy of the warm start comes near, so a loaded machine cannot cut a game or time out a
# move: each game ends by the work it did (the board filling up, max_moves), and the rewards depend only on the
# seeds and the completions.
LOAD_PROOF_OPTIONS = {"num_games": 1, "move_time_limit_s": 2.0, "time_budget_s": 120.0}


def test_grpo_learns_which_strategy_block_pays(tmp_path):
    """8 GRPO steps move the warm-started tiny policy onto the completion that scores best.

    What makes the run a function of its seeds: one torch thread (a thread count changes float sums, and a
    sampled token can flip on the last bit), one dataset row (every step scores the same games, so each
    completion's reward is a constant: the curve moves only with what the policy samples), work budgets far
    above what the completions use. What makes the signal robust: plain SGD with TRL's gradient clipping
    (every step moves the LoRA by at most ``learning_rate``; Adam's first steps move every weight by the
    learning rate whatever its gradient, which scrambled the warm start's fitted continuations: lr 1e-3
    lost 90% of the five completions' probability after one step), and an exact check besides the sampled
    one (the policy's probability of each completion before and after).

    Recorded 2026-12-02 on the 2-core machine, 5 runs with both cores kept busy by two other processes and
    once in the file's full order: every run gave the same curve, rewards -0.165, 1.233, 0.999, 1.078, 1.885,
    2.225, 1.958, 2.225 (last three 2.14 vs first two 0.53), best completion 0.155 -> 0.873; two threads gave
    the same curve too. Other seeds of the same set-up (probe runs): the best completion ended at 0.88, 0.93,
    0.91 (seeds 1, 2, 3); the sampled margin (last three minus first two; the test needs > 0.8) was +1.08 and +1.31
    for seeds 1 and 3 but +0.20 for seed 2 (it learned within one step: first two 1.33), so the exact check is the
    one that carries across seeds, the sampled one is the curve a user sees. Before (Adam, lr 1e-3, the
    best completion parting late): 0.27, 1.22, -0.81, 0.22, 0.85, 0.71, 2.0, 2.01, and its format check failed
    in a fresh process as after the file's other tests (nothing leaked between tests: the curve was the same).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        agent = tiny_agent()
        prompt = [{"role": "user", "content": "Write strategy(board) for 2048."}]  # short: keeps the CPU run small
        supervised_warm_start(agent, [prompt], STRATEGY_2048_COMPLETIONS)
        config = GRPORunConfig(env_id="GptOss2048-v0", env_kwargs=LOAD_PROOF_OPTIONS, steps=8, group_size=8,
                               max_prompt_length=256, max_completion_length=32, max_seq_len=512, learning_rate=0.07,
                               gradient_checkpointing=False, num_dataset_rows=1, output_dir=str(tmp_path), seed=0, optim="sgd")
        env = EnvRewards(config.env_id, config.env_kwargs)
        row_seed = env.dataset(1, config.seed)["seed"][0]  # the games every step is scored on
        scores = [env.env.score(text, row_seed).reward for text in STRATEGY_2048_COMPLETIONS]
        before = completion_probabilities(agent, prompt, STRATEGY_2048_COMPLETIONS)
        result = run_training(config, agent=agent, prompt_fn=lambda seed: prompt, export_merged=False, progress=False)
        after = completion_probabilities(agent, prompt, STRATEGY_2048_COMPLETIONS)
    finally:
        torch.set_num_threads(threads)
    assert scores[0] > scores[1] + 0.5 and scores[1] > max(scores[2:]) + 1.0, scores  # ~2.2, 1.2, -0.5, -0.5, -1

    def expected(p):  # the policy's mean reward over the five completions (normalised over them)
        return sum(pi * r for pi, r in zip(p, scores)) / sum(p)

    # exact: the best completion went from about one in five to most of the policy's mass
    assert before[0] < 0.3 and after[0] > 0.6, (before, after)
    assert expected(after) > expected(before) + 1.0, (expected(before), expected(after))
    # sampled: the rewards the run logged climb, and so does the format component
    rewards = [r["reward"] for r in result.records]
    print("rewards", [round(r, 3) for r in rewards], "best completion", round(before[0], 3), "->", round(after[0], 3))
    assert len(rewards) == 8
    first, last = sum(rewards[:2]) / 2, sum(rewards[-3:]) / 3
    assert last > first + 0.8, rewards  # the best completion scores about 2.2, the worst -1
    formats = [r["components"]["format"] for r in result.records]
    assert sum(formats[-3:]) / 3 > sum(formats[:2]) / 2, formats


# ------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv,field",
    [
        (["--env", "GptOss2048-v9"], "env_id"),
        (["--env", "Game2048-v0"], "env_id"),
        (["--group-size", "1"], "group_size"),
        (["--max-prompt-length", "4000", "--max-completion-length", "512", "--max-seq-len", "4096"],
         "max_completion_length"),
        (["--learning-rate", "0"], "learning_rate"),
        (["--generation", "vllm"], "generation"),
        (["--env-option", "size=99"], "size"),
        (["--max-prompt-length", "64"], "max_prompt_length"),  # the 2048 prompt has about 530 tokens
        (["--lora-targets", "q_proj,qproj"], "lora_targets"),  # a misspelt target among good ones
        (["--lora-target-parameters", "mlp.experts.gate_up"], "lora_target_parameters"),
        (["--lora-target-parameters", "mlp.experts.gate_up_proj", "--lora-dropout", "0.1"], "lora_dropout"),
    ],
)
def test_cli_rejects_bad_options_naming_the_field(argv, field, capsys, tmp_path):
    assert main([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ossgym train: error: {field}:"), err


def test_cli_parses_every_run_option():
    import argparse

    from ossgym.cli import add_train_parser, config_from_args

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--env", "GptOss2048-v0", "--env-option", "num_games=3", "--env-option",
                              "target=512", "--lora-rank", "4", "--lora-targets", "q_proj,v_proj",
                              "--lora-target-parameters", "mlp.experts.gate_up_proj", "--steps", "3",
                              "--group-size", "4", "--learning-rate", "2e-5", "--no-gradient-checkpointing",
                              "--reasoning-effort", "high", "--generation", "trl", "--output-dir", "/tmp/x"])
    config = config_from_args(args)
    assert config.env_kwargs == {"num_games": 3, "target": 512}
    assert (config.lora_rank, config.lora_targets, config.lora_target_parameters) == (
        4, ("q_proj", "v_proj"), ("mlp.experts.gate_up_proj",))
    assert (config.steps, config.group_size, config.learning_rate) == (3, 4, 2e-5)
    assert config.gradient_checkpointing is False and config.reasoning_effort == "high" and config.generation == "trl"
    assert args.func.__name__ == "_train_command"
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--steps", "many"])


def test_train_parser_does_not_import_torch():
    import subprocess
    import sys

    code = ("import argparse, sys\nfrom ossgym.cli import add_train_parser\n"
            "add_train_parser(argparse.ArgumentParser().add_subparsers())\n"
            "print(sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_train_help_shows_each_fields_meaning_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "completions sampled per prompt" in out and "{low,medium,high}" in out and "one of fast, trl" in out
    assert "``" not in out and ":func:" not in out


def test_ossgym_help_is_plain_text(capsys):
    from ossgym.cli import main as ossgym_main

    with pytest.raises(SystemExit):
        ossgym_main(["--help"])
    out = capsys.readouterr().out
    assert "ossgym demo" in out and "``" not in out and ":func:" not in out and ":mod:" not in out


def test_import_layers():
    """sandbox imports none of envs/agents/training; envs and agents never import training (nor each other)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "ossgym"
    forbidden = {"sandbox": ("ossgym.envs", "ossgym.agents", "ossgym.training"),
                 "envs": ("ossgym.agents", "ossgym.training"), "agents": ("ossgym.envs", "ossgym.training")}
    bad = []
    for package, banned in forbidden.items():
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                bad += [f"{path.relative_to(root)}: {n}" for n in names if n.startswith(banned)]
    assert bad == []


def test_example_trains_the_tiny_agent_with_trl(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "grpo_tiny.py"
    spec = importlib.util.spec_from_file_location("grpo_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rewards = module.main(["--steps", "1", "--group-size", "2", "--completion-tokens", "8",
                           "--output-dir", str(tmp_path)])
    assert len(rewards) == 1 and math.isfinite(rewards[0])
