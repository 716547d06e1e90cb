"""ossgym.integrations.trl: the environment_factory for TRL's multi-turn GRPO, and the router aux loss."""

import os

import pytest

pytest.importorskip("trl")

from ossgym.integrations.trl import CodeEnvironment, dataset, disable_router_aux_loss, grpo_config  # noqa: E402

try:
    from ossgym.envs.code.references import REFERENCES_2048
except ImportError:  # per-task layout
    from ossgym.envs.code.strategy2048.references import REFERENCES_2048


def test_submit_scores_code_and_returns_feedback_as_the_tool_result():
    env = CodeEnvironment.factory("GptOss2048-v0")()
    hint = env.reset(eval_seed=5, prompt=[{"role": "user", "content": "x"}])
    assert "submit" in hint
    assert env.get_reward() == pytest.approx(-1.0)  # nothing submitted: the no-code score
    out = env.submit("def strategy(board):\n    return 'W' +\n")
    assert "syntax" in out.lower() and env.get_reward() < 0
    out = env.submit(REFERENCES_2048["corner"])
    assert out.startswith("reward ") and "(ok)" in out
    corner = env.get_reward()
    assert corner > 2.0 and abs(sum(env.last_components.values()) - corner) < 1e-9
    # the same seed and code give the same reward in a fresh instance (TRL pools and reuses instances)
    other = CodeEnvironment("GptOss2048-v0")
    other.reset(eval_seed=5)
    other.submit(REFERENCES_2048["corner"])
    assert other.get_reward() == corner
    env.submit(REFERENCES_2048["corner"])
    assert "No more submissions" in env.submit("def strategy(board):\n    return 'W'\n")
    env.reset(eval_seed=6)
    assert env.submissions == 0 and env.get_reward() == pytest.approx(-1.0)


def test_submit_has_a_tool_schema():
    from transformers.utils import get_json_schema

    schema = get_json_schema(CodeEnvironment("GptOss2048-v0").submit)
    fn = schema["function"]
    assert fn["name"] == "submit" and fn["parameters"]["required"] == ["code"]
    assert fn["parameters"]["properties"]["code"]["type"] == "string"


def test_grpo_trainer_accepts_the_factory_and_the_router_loss_is_off():
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl import GRPOConfig, GRPOTrainer

    from ossgym.agents.agent import GptOssAgent

    agent = GptOssAgent.tiny()
    agent.tokenizer.padding_side = "left"
    common = dict(output_dir="/tmp/ossgym-test-trl", max_steps=1, per_device_train_batch_size=2, num_generations=2,
                  max_completion_length=8, report_to="none", use_cpu=True, gradient_checkpointing=False)
    rows = dataset("GptOss2048-v0", seeds=range(4))
    assert rows[2]["eval_seed"] == 2 and rows[2]["prompt"][0]["role"] == "system"
    trainer = GRPOTrainer(model=agent.model, processing_class=agent.tokenizer, args=grpo_config(**common),
                          train_dataset=rows, environment_factory=CodeEnvironment.factory("GptOss2048-v0"))
    assert [t.__name__ for t in trainer.tools] == ["submit"]
    assert trainer.reward_func_names == ["CodeEnvironment"]
    assert trainer.router_aux_loss_coef == 0.0 and not trainer.aux_loss_enabled
    # plain GRPOConfig: TRL would take the model's own coefficient, unless it is disabled on the model
    assert agent.model.config.router_aux_loss_coef > 0
    disable_router_aux_loss(agent.model)
    plain = GRPOTrainer(model=agent.model, processing_class=agent.tokenizer, args=GRPOConfig(**common),
                        train_dataset=rows, environment_factory=CodeEnvironment.factory("GptOss2048-v0"))
    assert not plain.aux_loss_enabled


def test_a_gpt_oss_tool_call_is_parsed_by_trl_into_a_submit_call():
    """The path of one TRL tool turn: the gpt-oss template shows the tool, TRL parses the model's
    commentary-channel call, calls the method with its arguments, and the result is the tool message."""
    from trl.chat_template_utils import add_response_schema, parse_response

    from ossgym.agents.gptoss.tokenizer import load_tokenizer

    env = CodeEnvironment("GptOss2048-v0", num_games=2)
    env.reset(eval_seed=1)
    tok = add_response_schema(load_tokenizer())
    prompt = tok.apply_chat_template([{"role": "user", "content": "Play."}], tools=[env.submit],
                                     add_generation_prompt=True, tokenize=False)
    assert "type submit = (_: {" in prompt and "code: string" in prompt
    code = REFERENCES_2048["corner"]
    import json

    text = ("<|channel|>analysis<|message|>Submit corner.<|end|><|start|>assistant to=functions.submit"
            f"<|channel|>commentary json<|message|>{json.dumps({'code': code})}<|call|>")
    parsed = parse_response(tok, tok(text, add_special_tokens=False)["input_ids"],
                            prefix=tok(prompt, add_special_tokens=False)["input_ids"], tools=[env.submit])
    (call,) = parsed["tool_calls"]
    assert call["function"]["name"] == "submit"
    result = getattr(env, call["function"]["name"])(**call["function"]["arguments"])
    assert "(ok)" in result and env.get_reward() > 2.0
