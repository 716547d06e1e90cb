"""Serve any ossgym environment as an OpenEnv environment (HTTP and WebSocket, localhost by default).

::

    ossgym.integrations.openenv.serve("GptOss2048-v0", port=8000)      # or: python -m ossgym.integrations.openenv ENV_ID

    from openenv.core.generic_client import GenericEnvClient
    with GenericEnvClient(base_url="http://127.0.0.1:8000").sync() as client:
        r = client.reset(eval_seed=7)                          # the prompt: r.observation["prompt"], ["messages"]
        r = client.step({"completion": text})                   # r.reward, r.observation["info"]["feedback"]

Sessions: a WebSocket client (OpenEnv's ``EnvClient``) holds one environment for its whole session, so
multi-turn code episodes and 2048 games go on across steps; sessions are independent and concurrent
(``max_concurrent_envs``). OpenEnv's HTTP ``/reset`` and ``/step`` are stateless (a fresh environment per
request), so the evaluation seed travels with the action: ``{"completion": ..., "eval_seed": 7}`` resets to
that evaluation before it is scored, and a plain HTTP ``POST /step`` gets the same reward as a session.
``eval_seed`` in ``reset`` fixes a code env's evaluation (``seed`` seeds its generator, as in Gymnasium);
for ``Game2048-v0`` both seed the game.

Actions: ``completion`` (text, code envs) or ``move`` (0..3, ``Game2048-v0``). Observations: ``prompt`` and
``messages`` (code envs), ``board`` (2048 exponents), ``info`` (plain JSON: feedback, outcome, reward
components, eval seed, action mask, score), with OpenEnv's ``reward`` and ``done``.
"""

from __future__ import annotations

import uuid
from typing import Any

import gymnasium
import numpy as np

try:
    from openenv.core.env_server import Action, Environment, Observation, State, create_fastapi_app
except ImportError as e:  # pragma: no cover - only without the extra
    raise ImportError("ossgym.integrations.openenv needs OpenEnv: pip install 'ossgym[openenv]'") from e
from pydantic import Field

__all__ = ["OssgymAction", "OssgymObservation", "OssgymEnvironment", "make_app", "serve"]


class OssgymAction(Action):
    """One step: a completion for a code env, or a move for Game2048-v0; ``eval_seed`` for stateless calls."""

    completion: str | None = Field(default=None, description="the completion text (code envs)")
    move: int | None = Field(default=None, ge=0, le=3, description="0 up, 1 right, 2 down, 3 left (Game2048-v0)")
    eval_seed: int | None = Field(default=None, ge=0,
                                  description="reset to this evaluation (code envs) or game seed first")


class OssgymObservation(Observation):
    """What an ossgym env returned, as plain JSON."""

    prompt: str = Field(default="", description="the task prompt (code envs)")
    messages: list[dict[str, Any]] = Field(default_factory=list, description="the prompt as chat messages")
    board: list[list[int]] | None = Field(default=None, description="2048 board exponents")
    info: dict[str, Any] = Field(default_factory=dict, description="the env's info as plain data")


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


class OssgymEnvironment(Environment):
    """An OpenEnv ``Environment`` around ``gymnasium.make(env_id, **env_kwargs)`` (one per session)."""

    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(self, env_id: str, **env_kwargs: Any):
        import ossgym  # noqa: F401

        super().__init__()
        self.env_id = env_id
        self.env = gymnasium.make(env_id, **env_kwargs)
        self.is_code_env = hasattr(self.env.unwrapped, "score_batch")
        self._state = State(episode_id=None, step_count=0)
        self._started = False

    def _observation(self, obs: Any, info: dict, reward: float | None = None, done: bool = False) -> OssgymObservation:
        if self.is_code_env:
            info = dict(info)
            messages = info.pop("messages", [])
            return OssgymObservation(prompt=obs, messages=messages, info=_plain(info), reward=reward, done=done)
        return OssgymObservation(board=np.asarray(obs).tolist(), info=_plain(info), reward=reward, done=done)

    def reset(self, seed: int | None = None, episode_id: str | None = None, eval_seed: int | None = None,
              **kwargs: Any) -> OssgymObservation:
        """Start an episode; ``eval_seed`` fixes a code env's evaluation (Game2048: the game's seed)."""
        if self.is_code_env:
            options = {"eval_seed": int(eval_seed)} if eval_seed is not None else None
            obs, info = self.env.reset(seed=seed, options=options)
        else:
            obs, info = self.env.reset(seed=eval_seed if eval_seed is not None else seed)
        self._state = State(episode_id=episode_id or str(uuid.uuid4()), step_count=0)
        self._started = True
        return self._observation(obs, info)

    def step(self, action: OssgymAction, timeout_s: float | None = None, **kwargs: Any) -> OssgymObservation:
        """Score a completion (or play a move); resets first when ``action.eval_seed`` is given or none was made."""
        if action.eval_seed is not None or not self._started:
            self.reset(eval_seed=action.eval_seed)
        if self.is_code_env:
            if action.completion is None:
                raise ValueError(f"{self.env_id} takes {{'completion': text}}")
            act: Any = action.completion
        else:
            if action.move is None:
                raise ValueError(f"{self.env_id} takes {{'move': 0..3}}")
            act = action.move
        obs, reward, terminated, truncated, info = self.env.step(act)
        self._state.step_count += 1
        done = bool(terminated or truncated)
        if done:
            self._started = False
        return self._observation(obs, info, reward=float(reward), done=done)

    @property
    def state(self) -> State:
        return self._state

    def close(self) -> None:
        self.env.close()


def make_app(env_id: str, max_concurrent_envs: int = 8, **env_kwargs: Any):
    """The FastAPI app (OpenEnv's HTTP + WebSocket server) for ``env_id``."""

    def factory() -> OssgymEnvironment:
        return OssgymEnvironment(env_id, **env_kwargs)

    return create_fastapi_app(factory, OssgymAction, OssgymObservation, max_concurrent_envs=max_concurrent_envs,
                              env_name=env_id)


def serve(env_id: str, host: str = "127.0.0.1", port: int = 8000, max_concurrent_envs: int = 8,
          **env_kwargs: Any) -> None:
    """Run the server (blocking) on ``host:port`` (localhost by default)."""
    import uvicorn

    uvicorn.run(make_app(env_id, max_concurrent_envs, **env_kwargs), host=host, port=port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(description="Serve an ossgym env as an OpenEnv environment")
    ap.add_argument("env_id")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--max-concurrent-envs", type=int, default=8)
    a = ap.parse_args()
    serve(a.env_id, a.host, a.port, a.max_concurrent_envs)
