"""The ossgym command line (ossgym/cli.py): list, --version, --log-level, train's YAML --config, GRPOConfig
passthrough and --report-to, eval and serve wiring. CPU, offline; no GRPO step runs here (tests/test_train.py)."""

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ossgym
from ossgym.cli import build_parser, config_from_args, env_descriptions, main, read_config_file
from ossgym.errors import ConfigError
from ossgym.registration import ENVS

ROOT = Path(__file__).resolve().parents[1]


def train_args(*argv):
    return build_parser().parse_args(["train", *argv])


def run_cli(*argv):
    """``python -m ossgym.cli ARGV`` in a fresh process (the worktree's ossgym): (returncode, stdout, stderr)."""
    out = subprocess.run([sys.executable, "-m", "ossgym.cli", *argv], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return out.returncode, out.stdout, out.stderr


# --- global options, list ------------------------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ossgym {ossgym.__version__}"


def test_list_shows_every_registered_env_with_its_description(capsys):
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(ENVS)
    descriptions = env_descriptions()
    assert "2048 sliding-tile game" in descriptions["Game2048-v0"]
    assert descriptions["GptOss2048-v0"].startswith("The model writes strategy(board)")
    assert all(text and "``" not in text and ":class:" not in text for text in descriptions.values())


def test_log_level_sets_the_root_logger():
    root = logging.getLogger()
    before = root.level
    try:
        assert main(["--log-level", "debug", "list"]) == 0
        assert root.level == logging.DEBUG
        assert main(["--log-level", "error", "list"]) == 0
        assert root.level == logging.ERROR
    finally:
        root.setLevel(before)
    with pytest.raises(SystemExit):
        main(["--log-level", "loud", "list"])


def test_the_whole_parser_stays_light():
    code = ("import sys\nfrom ossgym.cli import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('torch', 'trl', 'transformers', 'openenv') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- train --config run.yaml ---------------------------------------------------------------------------------

RUN_YAML = """\
env_id: GptOss2048-v0
steps: 3
learning_rate: 1e-5        # YAML 1.1 reads this as text; the field's type decides
lora_targets: q_proj,v_proj
lora_target_parameters: [mlp.experts.gate_up_proj]
gradient_checkpointing: false
env_kwargs: {num_games: 2, target: 512}
grpo: {warmup_steps: 2}
"""


def test_yaml_config_sets_fields_and_flags_override_it(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(RUN_YAML)
    config = config_from_args(train_args("--config", str(path)))
    assert (config.steps, config.learning_rate, config.gradient_checkpointing) == (3, 1e-5, False)
    assert config.lora_targets == ("q_proj", "v_proj") and config.lora_target_parameters == ("mlp.experts.gate_up_proj",)
    assert config.env_kwargs == {"num_games": 2, "target": 512} and config.grpo == {"warmup_steps": 2}
    config = config_from_args(train_args("--config", str(path), "--steps", "5", "--gradient-checkpointing",
                                         "--env-option", "num_games=4", "--grpo-option", "lr_scheduler_type=cosine"))
    assert config.steps == 5 and config.gradient_checkpointing is True and config.learning_rate == 1e-5
    assert config.env_kwargs == {"num_games": 4, "target": 512}  # one key overridden, the other kept
    assert config.grpo == {"warmup_steps": 2, "lr_scheduler_type": "cosine"}


def test_without_config_or_flags_the_fields_keep_their_defaults():
    from ossgym.training.config import GRPORunConfig

    assert config_from_args(train_args()) == GRPORunConfig()


@pytest.mark.parametrize("text, field, words", [
    ("stepz: 3\n", "stepz", ["Did you mean steps?"]),
    ("env: GptOss2048-v0\n", "env", ["env_id"]),
    ("steps: many\n", "steps", ["an int"]),
    ("learning_rate: fast\n", "learning_rate", ["finite number"]),
    ("- steps\n", "config", ["not a mapping"]),
    ("steps: [1\n", "config", ["not valid YAML"]),
    ("env_kwargs: {num_game: 2}\n", "num_game", ["Did you mean num_games?"]),  # checked when the env is made
])
def test_bad_config_files_name_the_key(tmp_path, capsys, text, field, words):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ossgym train: error: {field}:"), err
    assert all(w in err for w in words), err


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_config_file(tmp_path / "nope.yaml")
    assert e.value.field == "config" and "nope.yaml" in str(e.value)


# --- GRPOConfig passthrough and --report-to --------------------------------------------------------------------

def test_grpo_options_reach_grpo_config_and_win_over_ossgyms_defaults():
    config = config_from_args(train_args("--grpo-option", "lr_scheduler_type=cosine", "--grpo-option",
                                         "warmup_steps=2", "--grpo-option", "max_grad_norm=0.5"))
    assert config.grpo == {"lr_scheduler_type": "cosine", "warmup_steps": 2, "max_grad_norm": 0.5}
    args = config.grpo_config(use_cpu=True, lr_scheduler_type="constant")  # run.py passes constant
    assert getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type) == "cosine"
    assert args.warmup_steps == 2 and args.max_grad_norm == 0.5
    assert args.max_steps == config.steps and args.report_to in ([], "none", ["none"])


@pytest.mark.parametrize("option, field, words", [
    ("lr_scheduler_typ=cosine", "lr_scheduler_typ", ["trl.GRPOConfig", "lr_scheduler_type"]),
    ("max_steps=5", "max_steps", ["Pass steps instead"]),
    ("remove_unused_columns=true", "remove_unused_columns", ["needs its value"]),
])
def test_bad_grpo_options_name_the_key(tmp_path, capsys, option, field, words):
    assert main(["train", "--grpo-option", option, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ossgym train: error: {field}:"), err
    assert all(w in err for w in words), err


def test_a_value_grpo_config_refuses_is_a_config_error():
    from ossgym.training.config import GRPORunConfig

    with pytest.raises(ConfigError) as e:
        GRPORunConfig(grpo={"lr_scheduler_type": "no-such-schedule"}).grpo_config(use_cpu=True)
    assert e.value.field == "grpo" and "no-such-schedule" in str(e.value)


def test_report_to_reaches_grpo_config_when_its_package_is_installed(monkeypatch):
    import importlib.util

    import trl  # noqa: F401  (imported first: transformers reads which integrations exist at import)

    from ossgym.training.config import GRPORunConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "tensorboard" else real(name, *a))
    config = config_from_args(train_args("--report-to", "tensorboard"))
    assert config.report_to == "tensorboard"
    assert config.grpo_config(use_cpu=True).report_to == ["tensorboard"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("tensorboard", "tensorboardX")
                        else real(name, *a))
    with pytest.raises(ConfigError) as e:
        GRPORunConfig(report_to="tensorboard")
    assert e.value.field == "report_to" and "pip install tensorboard" in str(e.value)


def test_report_to_refuses_unknown_integrations(tmp_path, capsys):
    assert main(["train", "--report-to", "mlflow", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ossgym train: error: report_to:") and "trackio" in err


def test_train_help_lists_the_new_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config RUN.YAML" in out and "--grpo-option KEY=VALUE" in out
    assert "--report-to {none,trackio,tensorboard,wandb}" in out


# --- eval ---------------------------------------------------------------------------------------------------

def test_eval_passes_its_arguments_to_ossgym_evaluate(monkeypatch, tmp_path, capsys):
    import ossgym.evaluation as ev
    from ossgym.envs.code.references import REFERENCES_2048, as_completion

    calls, real = [], ev.evaluate
    corner = as_completion(REFERENCES_2048["corner"])

    def evaluate(checkpoint, env_id, seeds, **kwargs):  # the real scoring, with a fixed policy for the checkpoint
        calls.append((checkpoint, env_id, list(seeds), kwargs))
        return real(lambda messages: corner, env_id, seeds, name="corner-agent", progress=False)

    monkeypatch.setattr(ev, "evaluate", evaluate)
    md = tmp_path / "table.md"
    assert main(["eval", "runs/x/adapter", "GptOss2048-v0", "--seeds", "1", "--first-seed", "4",
                 "--num-samples", "1", "--markdown", str(md)]) == 0
    assert calls == [("runs/x/adapter", "GptOss2048-v0", [4], {"num_samples": 1, "max_new_tokens": None,
                                                                 "batch_size": 8})]
    out = capsys.readouterr().out
    assert "| **corner-agent** |" in out and "| expectimax2 |" in md.read_text()


def test_eval_reports_a_config_error(capsys):
    assert main(["eval", "tiny", "GptOss2048-v0", "--seeds", "0"]) == 2
    assert capsys.readouterr().err.startswith("ossgym eval: error: seeds:")


# --- serve --------------------------------------------------------------------------------------------------

def test_serve_checks_the_env_then_serves_on_localhost(monkeypatch, capsys):
    openenv = pytest.importorskip("ossgym.integrations.openenv")
    calls = []
    monkeypatch.setattr(openenv, "serve", lambda env_id, **kw: calls.append((env_id, kw)))
    assert main(["serve", "GptOss2048-v0", "--port", "8123", "--env-option", "num_games=2"]) == 0
    assert calls == [("GptOss2048-v0", {"host": "127.0.0.1", "port": 8123, "max_concurrent_envs": 8,
                                        "num_games": 2})]
    assert "http://127.0.0.1:8123" in capsys.readouterr().out
    assert main(["serve", "GptOss2048-v0", "--env-option", "num_game=2"]) == 2
    assert capsys.readouterr().err.startswith("ossgym serve: error: num_game:")
    assert main(["serve", "GptOss2048-v9"]) == 2
    assert "Did you mean GptOss2048-v0" in capsys.readouterr().err
    assert len(calls) == 1  # nothing was served for the bad ones


def test_serve_command_answers_openenvs_client():
    pytest.importorskip("ossgym.integrations.openenv")
    from openenv.core.generic_client import GenericEnvClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ossgym.cli", "serve", "Game2048-v0", "--port", str(port)],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.5)
        import gymnasium

        local = gymnasium.make("Game2048-v0")
        obs, _ = local.reset(seed=3)
        with GenericEnvClient(base_url=f"http://127.0.0.1:{port}").sync() as client:
            assert client.reset(seed=3).observation["board"] == obs.tolist()
            for move in (3, 2, 1):
                r = client.step({"move": move})
                obs, reward, *_ = local.step(move)
                assert r.observation["board"] == obs.tolist() and r.reward == reward
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_console_script_module_runs():
    rc, out, err = run_cli("list")
    assert rc == 0 and "GptOssMatmul-v0" in out, err


def test_the_readme_run_file_is_read_as_written(tmp_path):
    import re

    from ossgym.training.config import GRPORunConfig

    block = re.search(r"^```yaml\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.S | re.M).group(1)
    (tmp_path / "run.yaml").write_text(block)
    values = read_config_file(tmp_path / "run.yaml")
    assert values["learning_rate"] == 1e-5 and values["grpo"] == {"lr_scheduler_type": "cosine", "warmup_steps": 5}
    config = GRPORunConfig(**{**values, "report_to": "none"})  # trackio is not installed here
    assert config.lora_targets == ("q_proj", "k_proj", "v_proj", "o_proj") and config.env_kwargs == {"num_games": 8}
