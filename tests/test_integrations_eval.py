"""ossgym.evaluate: a policy scored on a code env over seeds and placed in the reference ladder."""

import pytest

from ossgym.evaluation import EvalResult, evaluate, load_ladder

try:
    from ossgym.envs.code.references import REFERENCES_2048, as_completion
except ImportError:  # per-task layout
    from ossgym.envs.code.strategy2048.references import REFERENCES_2048, as_completion


def test_ladder_is_read_from_docs_rewards():
    ladder = load_ladder("GptOss2048-v0")
    assert {"random", "corner", "expectimax2"} <= set(ladder)
    assert ladder["random"][0] < ladder["corner"][0] < ladder["expectimax2"][0]
    assert load_ladder("NoSuchEnv-v0") == {}


def test_a_reference_completion_lands_where_its_ladder_row_is(tmp_path):
    corner = as_completion(REFERENCES_2048["corner"])
    res = evaluate(lambda messages: corner, "GptOss2048-v0", seeds=[0, 1], name="corner-agent", progress=False)
    assert isinstance(res, EvalResult) and len(res.rewards) == 2 and res.outcomes == {"ok": 2}
    assert abs(sum(res.components.values()) - res.mean) < 1e-9
    names = [r[0] for r in res.rank()]
    # between greedy_merge and expectimax2, as the corner reference itself is
    assert names.index("greedy_merge") < names.index("corner-agent") < names.index("expectimax2")
    assert "between" in res.placement()
    table = res.to_markdown()
    assert "| **corner-agent** |" in table and "| expectimax2 |" in table
    png = res.plot(tmp_path / "eval.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_agent_checkpoint_is_scored(capsys):
    res = evaluate("tiny", "GptOss2048-v0", seeds=[3], max_new_tokens=8, progress=True)
    assert len(res.completions) == 1 and len(res.rewards) == 1
    assert res.outcomes == {"no_code": 1} and res.mean == pytest.approx(-1.0)
    assert res.rank()[0][0] == "tiny"  # below every reference
    assert "eval GptOss2048-v0" in capsys.readouterr().err  # tqdm progress


def test_saved_checkpoint_folder_is_loaded(tmp_path):
    from ossgym.agents.agent import GptOssAgent

    agent = GptOssAgent.tiny()
    agent.model.save_pretrained(tmp_path / "ckpt")
    res = evaluate(str(tmp_path / "ckpt"), "GptOss2048-v0", seeds=[0], max_new_tokens=4, progress=False,
                   agent_kwargs={"device": "cpu", "use_fast_engine": False})
    assert len(res.rewards) == 1


def test_eval_command_line_writes_table_and_plot(tmp_path, capsys):
    from ossgym.evaluation import main

    assert main(["tiny", "GptOss2048-v0", "--seeds", "1", "--max-new-tokens", "4", "--plot", str(tmp_path / "p.png"),
                 "--markdown", str(tmp_path / "t.md")]) == 0
    out = capsys.readouterr().out
    assert "| **tiny** |" in out and "below every reference" in out
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG" and "expectimax2" in (tmp_path / "t.md").read_text()


def test_adapter_folder_is_loaded_on_its_base(tmp_path):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from ossgym.agents.agent import GptOssAgent

    GptOssAgent.tiny().model.save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    lora.save_pretrained(tmp_path / "adapter")
    res = evaluate(str(tmp_path / "adapter"), "GptOss2048-v0", seeds=[0], max_new_tokens=4, progress=False,
                   agent_kwargs={"device": "cpu", "use_fast_engine": False})
    assert len(res.rewards) == 1 and res.name.endswith("adapter")
