"""The scoring= options without a Ray instance: config and CLI fields, errors, and local scoring staying free of
Ray (tests/test_ray_backend.py runs them on Ray)."""

import subprocess
import sys

import pytest

from ossgym.cli import main
from ossgym.errors import ConfigError
from ossgym.training import GRPORunConfig


def test_config_and_cli_scoring_fields(monkeypatch):
    import ossgym.training.run as run_module

    assert (GRPORunConfig().scoring, GRPORunConfig().ray_address) == ("local", None)
    seen = {}

    def capture(config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt  # stop before any training

    monkeypatch.setattr(run_module, "run_training", capture)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--scoring", "ray", "--ray-address", "auto", "--steps", "1"])
    assert (seen["config"].scoring, seen["config"].ray_address) == ("ray", "auto")
    with pytest.raises(ConfigError, match="^scoring: .*dask"):
        GRPORunConfig(scoring="dask")
    with pytest.raises(ConfigError, match="^ray_address: .*--scoring ray"):
        GRPORunConfig(ray_address="auto")


def test_unknown_or_mixed_scoring_is_a_config_error():
    from ossgym.envs.code.base import score_batch
    from ossgym.sandbox import default_pool
    from ossgym.training.env import EnvRewards

    with pytest.raises(ConfigError, match="^scoring: 'dask' is not one of"):
        EnvRewards("GptOss2048-v0", scoring="dask")
    with pytest.raises(ConfigError, match="^scoring: ray_address"):
        EnvRewards("GptOss2048-v0", ray_address="auto")
    task = EnvRewards("GptOss2048-v0", {"num_games": 1}).env.task
    with pytest.raises(ConfigError, match="^scoring: is given together with pool="):
        score_batch(task, ["x"], [1], default_pool(), scoring="ray")


def test_scoring_ray_without_ray_installed_says_how_to_install(monkeypatch):
    from ossgym.envs.code.base import score_batch
    from ossgym.training.env import EnvRewards

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ConfigError, match=r"^scoring: 'ray' needs Ray.*pip install 'ossgym\[ray\]'"):
        EnvRewards("GptOss2048-v0", scoring="ray")
    task = EnvRewards("GptOss2048-v0", {"num_games": 1}).env.task
    with pytest.raises(ConfigError, match=r"pip install 'ossgym\[ray\]'"):
        score_batch(task, ["x"], [1], scoring="ray")


def test_local_scoring_never_imports_ray():
    code = ("import sys; from ossgym.training.env import EnvRewards; "
            "env = EnvRewards('GptOss2048-v0', {'num_games': 1}); "
            "assert env.pool is None; env.scorer(['no code'], [1]); env.close(); "
            "assert 'ray' not in sys.modules, 'local scoring imported ray'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_ray_scoring_in_a_multi_process_run_needs_an_address(monkeypatch, tmp_path):
    """N ranks would each start a local Ray instance claiming every core: refused before anything starts."""
    import ossgym.training.run as run_module

    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run"
    config = GRPORunConfig(env_kwargs={"num_games": 1}, scoring="ray", output_dir=str(out), steps=1, group_size=2)
    with pytest.raises(ConfigError, match="^ray_address: is needed for scoring='ray' in a run of 2 processes"):
        run_module.run_training(config)
    assert not out.exists()


class _AgentThatFails:
    @property
    def model(self):
        raise RuntimeError("no model here")


def test_run_training_closes_the_env_when_the_run_fails(monkeypatch, tmp_path):
    """Local scoring: no pool to stop, but close() runs all the same (the same finally as for Ray)."""
    import ossgym.training.run as run_module
    from ossgym.training.env import EnvRewards

    closed = []

    class Recorded(EnvRewards):
        def close(self):
            closed.append(self.pool)
            super().close()

    monkeypatch.setattr(run_module, "EnvRewards", Recorded)
    config = GRPORunConfig(env_kwargs={"num_games": 1}, output_dir=str(tmp_path), steps=1, group_size=2)
    with pytest.raises(RuntimeError, match="no model here"):
        run_module.run_training(config, agent=_AgentThatFails())
    assert closed == [None]
