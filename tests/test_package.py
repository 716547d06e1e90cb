"""The package installs, imports and registers its environments."""

import subprocess
import sys

import gymnasium


def test_import_registers_every_env():
    import ossgym
    from ossgym.registration import ENVS

    for env_id in ENVS:
        assert env_id in gymnasium.registry, env_id
    ossgym.register_envs()  # idempotent


def test_make_without_prior_import():
    code = (
        "import gymnasium, sys\n"
        "assert 'ossgym' not in sys.modules\n"
        "env = gymnasium.make('ossgym:Game2048-v0')\n"
        "obs, info = env.reset(seed=1)\n"
        "print(obs.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(4, 4)"


def test_config_error_names_field_and_fix():
    from ossgym.errors import ConfigError, OssGymError

    err = ConfigError("num_games", "must be at least 1, got 0", "Pass num_games=8 or more.")
    assert isinstance(err, OssGymError) and isinstance(err, ValueError)
    assert "num_games" in str(err) and "Pass num_games" in str(err)


def test_cli_offers_every_command(capsys):
    from ossgym.cli import build_parser, main

    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"demo", "play", "train"} <= set(commands)
    assert main(["train", "--group-size", "1", "--no-progress"]) == 2
    assert "group_size" in capsys.readouterr().err
