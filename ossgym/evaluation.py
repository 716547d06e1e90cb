"""Scoring a policy: a gpt-oss checkpoint on a code env over seeds, placed in the env's reference ladder;
and the classic baselines of ``Game2048-v0`` (random, greedy, corner, expectimax).

::

    import ossgym.evaluation as ev
    result = ev.evaluate("path/to/checkpoint", "GptOss2048-v0", seeds=range(16))
    print(result.to_markdown()); result.plot("eval.png")

The ladder is the reference table of the env in docs/rewards.md (the bundled reference completions scored
over seeds 0..99); the checkpoint's mean is shown among them.
"""

from __future__ import annotations

import builtins
import logging
import math
import random as _random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

from ossgym.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "evaluate", "load_ladder", "game2048_policy", "play_game2048", "GAME2048_BASELINES",
           "game2048_baseline_table"]

DOCS_REWARDS = Path(__file__).resolve().parent.parent / "docs" / "rewards.md"


# ------------------------------------------------------------------------------------------ the ladder
def load_ladder(env_id: str, path: Path | str = DOCS_REWARDS) -> dict[str, tuple[float, float]]:
    """``{reference: (mean, SE)}`` from the first table with ``reference`` and ``mean`` columns in the
    section of ``path`` (docs/rewards.md) whose heading names ``env_id``; ``{}`` when there is none."""
    path = Path(path)
    if not path.is_file():
        return {}
    section = None
    for block in re.split(r"^## ", path.read_text(encoding="utf-8"), flags=re.MULTILINE):
        if block.split("\n", 1)[0].strip().startswith(env_id):
            section = block
            break
    if section is None:
        return {}
    lines = section.splitlines()
    for i, line in enumerate(lines):
        cells = [c.strip().lower() for c in line.strip().strip("|").split("|")]
        if line.lstrip().startswith("|") and "reference" in cells and "mean" in cells:
            ref_col, mean_col = cells.index("reference"), cells.index("mean")
            se_col = cells.index("se") if "se" in cells else None
            out: dict[str, tuple[float, float]] = {}
            for row in lines[i + 2:]:
                if not row.lstrip().startswith("|"):
                    break
                parts = [c.strip() for c in row.strip().strip("|").split("|")]
                try:
                    mean = float(parts[mean_col])
                    se = float(parts[se_col]) if se_col is not None else 0.0
                except (ValueError, IndexError):
                    continue
                out[parts[ref_col].strip("`*")] = (mean, se)
            return out
    return {}


# ------------------------------------------------------------------------------------------ evaluate
@dataclass
class EvalResult:
    """What :func:`evaluate` measured: one reward per (seed, sample), with components and outcomes."""

    name: str
    env_id: str
    seeds: list[int]
    rewards: list[float]
    components: dict[str, float]  # mean of each reward component
    outcomes: dict[str, int]
    ladder: dict[str, tuple[float, float]] = field(default_factory=dict)
    completions: list[str] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.rewards)) if self.rewards else float("nan")

    @property
    def se(self) -> float:
        n = len(self.rewards)
        return float(np.std(self.rewards, ddof=1) / math.sqrt(n)) if n > 1 else 0.0

    def rank(self) -> list[tuple[str, float, float, bool]]:
        """The ladder with this result inserted, worst first: (name, mean, SE, is_this_result)."""
        rows = [(k, m, s, False) for k, (m, s) in self.ladder.items()] + [(self.name, self.mean, self.se, True)]
        return sorted(rows, key=lambda r: (r[1], r[3]))

    def placement(self) -> str:
        """One line: between which references the result lands."""
        rows = self.rank()
        i = next(j for j, r in enumerate(rows) if r[3])
        below = rows[i - 1][0] if i > 0 else None
        above = rows[i + 1][0] if i + 1 < len(rows) else None
        if not self.ladder:
            return f"{self.name}: {self.mean:.4f} (no reference ladder for {self.env_id})"
        if below is None:
            return f"{self.name}: {self.mean:.4f}, below every reference (lowest: {above})"
        if above is None:
            return f"{self.name}: {self.mean:.4f}, above every reference (highest: {below})"
        return f"{self.name}: {self.mean:.4f}, between {below} and {above}"

    def to_markdown(self) -> str:
        """The ladder with this result as a Markdown table (the result in bold)."""
        lines = [f"{self.env_id}, {len(self.rewards)} evaluations (seeds {_span(self.seeds)})", "",
                 "| policy | mean | SE |", "|---|---|---|"]
        for name, mean, se, me in reversed(self.rank()):
            label = f"**{name}**" if me else name
            lines.append(f"| {label} | {mean:.4f} | {se:.4f} |")
        lines += ["", "components: " + ", ".join(f"{k} {v:+.3f}" for k, v in self.components.items()),
                  "outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes.items())), "",
                  self.placement()]
        return "\n".join(lines)

    def plot(self, path: Path | str) -> Path:
        """A PNG bar chart of the ladder with this result highlighted; returns the path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = self.rank()
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
        ax.barh([r[0] for r in rows], [r[1] for r in rows], xerr=[r[2] for r in rows],
                color=["tab:orange" if r[3] else "tab:gray" for r in rows])
        ax.set_xlabel("mean reward")
        ax.set_title(f"{self.env_id}: {self.name} among the references")
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, format="png", dpi=100)
        plt.close(fig)
        return path


def _span(seeds: Sequence[int]) -> str:
    s = sorted(set(seeds))
    return f"{s[0]}..{s[-1]}" if s and s == list(range(s[0], s[-1] + 1)) else ", ".join(map(str, s))


def _load_agent(agent_or_path: Any, **kwargs: Any) -> Any:
    """An agent from a GptOssAgent, ``"tiny"``, a local model folder, or a peft adapter folder."""
    if not isinstance(agent_or_path, (str, Path)):
        return agent_or_path
    from ossgym.agents.agent import GptOssAgent

    if str(agent_or_path) == "tiny":
        return GptOssAgent.tiny(**kwargs)
    path = Path(agent_or_path)
    adapter_cfg = path / "adapter_config.json"
    if adapter_cfg.is_file():
        import json

        base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
        if not base:
            raise ConfigError("agent_or_path", f"{adapter_cfg} names no base_model_name_or_path",
                              "Pass a merged checkpoint, or an adapter saved by peft with its base model.")
        return GptOssAgent.from_pretrained(base, adapter=str(path), **kwargs)
    return GptOssAgent.from_pretrained(str(path), **kwargs)


def evaluate(agent_or_path: Any, env_id: str = "GptOss2048-v0", seeds: Iterable[int] = range(8), *,
             num_samples: int = 1, max_new_tokens: int | None = None, batch_size: int = 8,
             env_kwargs: dict | None = None, ladder: dict[str, tuple[float, float]] | None = None,
             name: str | None = None, progress: bool = True, agent_kwargs: dict | None = None,
             sample_seed: int = 0) -> EvalResult:
    """Score a policy on a code env over evaluation seeds and place it in the env's reference ladder.

    ``agent_or_path``: a :class:`~ossgym.agents.agent.GptOssAgent`, ``"tiny"`` (the tiny random model), a
    local model folder (merged checkpoint) or a peft adapter folder (its base is read from
    ``adapter_config.json``), or any callable ``f(list of chat messages) -> completion text``.
    Each seed is one evaluation (``reset(options={"eval_seed": s})``), sampled ``num_samples`` times.
    """
    import ossgym  # noqa: F401
    from tqdm.auto import tqdm

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("seeds", "is empty", "Pass e.g. seeds=range(16).")
    agent = _load_agent(agent_or_path, **(agent_kwargs or {}))
    label = name or (str(agent_or_path) if isinstance(agent_or_path, (str, Path)) else type(agent).__name__)
    env = gymnasium.make(env_id, **(env_kwargs or {})).unwrapped
    if not hasattr(env, "score_batch"):
        raise ConfigError("env_id", f"{env_id} is not a code env (it has no score_batch)",
                          "Pass GptOss2048-v0 or GptOssMatmul-v0; for Game2048-v0 see play_game2048.")
    rewards, completions, outcomes = [], [], Counter()
    comp_sums: dict[str, float] = {}
    try:
        bar = tqdm(total=len(seeds) * num_samples, desc=f"eval {env_id}", disable=not progress, unit="completion")
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start:start + batch_size]
            prompts = []
            for s in chunk:
                _, info = env.reset(options={"eval_seed": s})
                prompts.append(info["messages"])
            if callable(agent) and not hasattr(agent, "generate"):
                texts = [agent(p) for p in prompts for _ in range(num_samples)]
            else:
                gens = agent.generate(prompts, num_samples=num_samples, max_new_tokens=max_new_tokens,
                                      seed=sample_seed + start)
                texts = [g.text for g in gens]
            flat_seeds = [s for s in chunk for _ in range(num_samples)]
            for res in env.score_batch(texts, flat_seeds):
                rewards.append(float(res.reward))
                outcomes[res.outcome] += 1
                for k, v in res.components.items():
                    comp_sums[k] = comp_sums.get(k, 0.0) + float(v)
            completions += texts
            bar.update(len(texts))
        bar.close()
    finally:
        env.close()
    n = len(rewards)
    result = EvalResult(label, env_id, seeds, rewards, {k: v / n for k, v in comp_sums.items()}, dict(outcomes),
                        load_ladder(env_id) if ladder is None else dict(ladder), completions)
    log.info("%s", result.placement())
    return result


# ------------------------------------------------------------------------------ Game2048-v0 baselines
#: baseline policies of Game2048-v0, worst to best (greedy/corner/expectimax are the code env's references)
GAME2048_BASELINES = ("random", "greedy", "corner", "expectimax")
_REFERENCE_OF = {"greedy": "greedy_merge", "corner": "corner", "expectimax": "expectimax2"}
_KEY_TO_ACTION = {"W": 0, "D": 1, "S": 2, "A": 3}


def _references_2048() -> dict[str, str]:
    try:
        from ossgym.envs.code.references import REFERENCES_2048
    except ImportError:  # per-task layout
        from ossgym.envs.code.strategy2048.references import REFERENCES_2048  # type: ignore[no-redef]
    return REFERENCES_2048


def game2048_policy(name: str, seed: int = 0) -> Callable[[np.ndarray, np.ndarray], int]:
    """A baseline policy ``f(exponent board, action mask) -> action`` for ``Game2048-v0``.

    ``random`` picks uniformly among the legal moves; the others are the reference strategies of
    ``GptOss2048-v0`` (trusted sources, run here in-process) with their ``random`` seeded by ``seed``.
    """
    if name not in GAME2048_BASELINES:
        raise ConfigError("name", f"{name!r} is not a baseline", f"Pick one of {GAME2048_BASELINES}.")
    if name == "random":
        rng = np.random.default_rng(seed)
        return lambda board, mask: int(rng.choice(np.flatnonzero(mask))) if mask.any() else 0
    seeded = _random.Random(seed)

    def _import(mod, *args, **kwargs):
        return seeded if mod == "random" else builtins.__import__(mod, *args, **kwargs)

    namespace: dict[str, Any] = {"__builtins__": {**builtins.__dict__, "__import__": _import}}
    exec(compile(_references_2048()[_REFERENCE_OF[name]], f"<reference {name}>", "exec"), namespace)
    strategy = namespace["strategy"]

    def policy(board: np.ndarray, mask: np.ndarray) -> int:
        tiles = tuple(tuple(int(1 << int(e)) if e else 0 for e in row) for row in board)
        return _KEY_TO_ACTION[strategy(tiles)]

    return policy


def play_game2048(name: str, seeds: Iterable[int], max_episode_steps: int = 10_000, progress: bool = False
                  ) -> list[dict[str, int]]:
    """Play one ``Game2048-v0`` game per seed with a baseline; ``[{score, max_tile, steps}]``."""
    import ossgym  # noqa: F401
    from tqdm.auto import tqdm

    out = []
    for seed in tqdm(list(seeds), desc=name, disable=not progress):
        env = gymnasium.make("Game2048-v0", max_episode_steps=max_episode_steps)
        policy = game2048_policy(name, seed)
        obs, info = env.reset(seed=seed)
        steps, done = 0, False
        while not done:
            obs, _, terminated, truncated, info = env.step(policy(obs, info["action_mask"]))
            steps += 1
            done = terminated or truncated
        out.append({"score": int(info["score"]), "max_tile": int(info["max_tile"]), "steps": steps})
        env.close()
    return out


def game2048_baseline_table(seeds: Sequence[int], names: Sequence[str] = GAME2048_BASELINES,
                            max_episode_steps: int = 10_000, progress: bool = False) -> str:
    """A Markdown table of the baselines over ``seeds`` (mean score with SE, median, max tile reached)."""
    lines = ["| policy | games | mean score | SE | median score | reached 512 | reached 1024 | reached 2048 | "
             "best tile | mean moves |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        games = play_game2048(name, seeds, max_episode_steps, progress)
        scores = np.array([g["score"] for g in games], dtype=np.float64)
        tiles = np.array([g["max_tile"] for g in games])
        se = scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0
        frac = lambda t: f"{(tiles >= t).mean():.0%}"  # noqa: E731
        lines.append(f"| {name} | {len(games)} | {scores.mean():.0f} | {se:.0f} | {np.median(scores):.0f} | "
                     f"{frac(512)} | {frac(1024)} | {frac(2048)} | {tiles.max()} | "
                     f"{np.mean([g['steps'] for g in games]):.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ command line
def add_eval_arguments(ap: Any) -> Any:
    """Add the arguments of ``ossgym eval`` to an ``argparse.ArgumentParser``."""
    ap.add_argument("checkpoint", help="'tiny', a local model folder (merged) or a peft adapter folder")
    ap.add_argument("env_id", nargs="?", default="GptOss2048-v0", help="the code env (default GptOss2048-v0)")
    ap.add_argument("--seeds", type=int, default=16, help="evaluation seeds 0..N-1 (default 16)")
    ap.add_argument("--first-seed", type=int, default=0, help="first evaluation seed (default 0)")
    ap.add_argument("--num-samples", type=int, default=1, help="completions per seed (default 1)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the agent config's")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts generated together (default 8)")
    ap.add_argument("--plot", default=None, help="write the ladder as a PNG here")
    ap.add_argument("--markdown", default=None, help="write the ladder table here")
    return ap


EVAL_DESCRIPTION = ("Score a checkpoint on a code env over evaluation seeds and place it in the env's reference "
                    "ladder (docs/rewards.md).")


def eval_command(args: Any) -> int:
    """Run ``ossgym eval`` on parsed arguments: print the ladder table, write the plot and table if asked."""
    result = evaluate(args.checkpoint, args.env_id, range(args.first_seed, args.first_seed + args.seeds),
                      num_samples=args.num_samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    table = result.to_markdown()
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n", encoding="utf-8")
    if args.plot:
        print(f"plot: {result.plot(args.plot)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ossgym.evaluation CHECKPOINT [ENV_ID] --seeds N --plot eval.png`` (what ``ossgym eval`` runs)."""
    import argparse

    ap = add_eval_arguments(argparse.ArgumentParser(prog="ossgym eval", description=EVAL_DESCRIPTION))
    return eval_command(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
