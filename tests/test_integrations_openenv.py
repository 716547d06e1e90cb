"""ossgym.integrations.openenv: an ossgym env served on 127.0.0.1, driven by OpenEnv's own client."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("openenv")
uvicorn = pytest.importorskip("uvicorn")

from openenv.core.generic_client import GenericEnvClient  # noqa: E402

import ossgym  # noqa: F401,E402
from ossgym.integrations.openenv import make_app  # noqa: E402

try:
    from ossgym.envs.code.references import REFERENCES_2048, as_completion
except ImportError:  # per-task layout
    from ossgym.envs.code.strategy2048.references import REFERENCES_2048, as_completion


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers():
    """Servers of GptOss2048-v0 (2 games per evaluation, to keep it quick) and Game2048-v0 on localhost."""
    running, urls = [], {}
    for env_id, kw in (("GptOss2048-v0", {"num_games": 2}), ("Game2048-v0", {})):
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(make_app(env_id, 4, **kw), host="127.0.0.1", port=port,
                                               log_level="warning"))
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        running.append((server, t))
        urls[env_id] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not all(s.started for s, _ in running):
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield urls
    for s, t in running:
        s.should_exit = True
        t.join(timeout=10)


def _direct(completion: str, seed: int) -> float:
    import gymnasium

    env = gymnasium.make("GptOss2048-v0", num_games=2).unwrapped
    return env.score(completion, seed=seed).reward


def test_session_reset_and_step_through_the_openenv_client(servers):
    corner = as_completion(REFERENCES_2048["corner"])
    with GenericEnvClient(base_url=servers["GptOss2048-v0"]).sync() as client:
        r = client.reset(eval_seed=11)
        assert "strategy" in r.observation["prompt"] and r.observation["messages"][0]["role"] == "system"
        assert r.observation["info"]["eval_seed"] == 11 and not r.done
        r = client.step({"completion": corner})
        assert r.done and r.reward == pytest.approx(_direct(corner, 11))
        assert r.observation["info"]["outcome"] == "ok"
        assert set(r.observation["info"]["reward_components"]) >= {"format", "policy", "tile"}


def test_concurrent_sessions_are_independent(servers):
    corner, bad = as_completion(REFERENCES_2048["corner"]), "no code here"

    def episode(args):
        seed, completion = args
        with GenericEnvClient(base_url=servers["GptOss2048-v0"]).sync() as client:
            client.reset(eval_seed=seed)
            return client.step({"completion": completion}).reward

    jobs = [(3, corner), (4, bad), (5, corner)]
    with ThreadPoolExecutor(3) as pool:
        rewards = list(pool.map(episode, jobs))
    assert rewards[1] == pytest.approx(-1.0)
    assert rewards[0] == pytest.approx(_direct(corner, 3)) and rewards[2] == pytest.approx(_direct(corner, 5))


def test_stateless_http_step_carries_the_eval_seed(servers):
    import requests

    corner = as_completion(REFERENCES_2048["corner"])
    base = servers["GptOss2048-v0"]
    r = requests.post(f"{base}/step", json={"action": {"completion": corner, "eval_seed": 8}}, timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reward"] == pytest.approx(_direct(corner, 8)) and body["done"]
    r = requests.post(f"{base}/reset", json={"eval_seed": 8}, timeout=60)
    assert r.json()["observation"]["info"]["eval_seed"] == 8
    assert requests.post(f"{base}/step", json={"action": {"completion": 1}}, timeout=60).status_code == 422


def test_game2048_session_plays_moves(servers):
    import gymnasium

    with GenericEnvClient(base_url=servers["Game2048-v0"]).sync() as client:
        r = client.reset(seed=3)
        local = gymnasium.make("Game2048-v0")
        obs, info = local.reset(seed=3)
        assert r.observation["board"] == obs.tolist()
        for move in (3, 2, 3, 2, 1):
            r = client.step({"move": move})
            obs, reward, *_ , info = local.step(move)
            assert r.observation["board"] == obs.tolist() and r.reward == reward
            assert r.observation["info"]["action_mask"] == info["action_mask"].tolist()
