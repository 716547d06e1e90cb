"""Baseline table of Game2048-v0 (random, greedy, corner, expectimax) for docs/baselines.md.

    python scripts/baselines_game2048.py --seeds 200 [--write docs/baselines.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ossgym.evaluation import GAME2048_BASELINES, game2048_baseline_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=200, help="games per policy (seeds 0..N-1)")
    ap.add_argument("--max-episode-steps", type=int, default=10_000, help="episode limit")
    ap.add_argument("--write", type=Path, default=None, help="write the Markdown page here")
    args = ap.parse_args()
    table = game2048_baseline_table(range(args.seeds), GAME2048_BASELINES, args.max_episode_steps, progress=True)
    cmd = f"python scripts/baselines_game2048.py --seeds {args.seeds}"
    page = f"""# Game2048-v0 baselines

One game per seed (seeds 0..{args.seeds - 1}), `gymnasium.make("Game2048-v0", max_episode_steps={args.max_episode_steps})`
with the defaults (4x4, score reward, illegal moves are no-ops). `random` picks uniformly among the legal
moves; `greedy`, `corner` and `expectimax` are the reference strategies of GptOss2048-v0
(`greedy_merge`, `corner`, `expectimax2` in the code env's references; see docs/rewards.md), run in-process
through `ossgym.evaluation.game2048_policy`. An RL agent on Game2048-v0 (SB3 PPO, MaskablePPO) can be read
against these rows.

{table}

Produced by `{cmd} --write docs/baselines.md` on {datetime.date.today().isoformat()}
({platform.python_implementation()} {platform.python_version()}); the games are deterministic, so the table
is the same on any machine.
"""
    print(table)
    if args.write:
        args.write.write_text(page, encoding="utf-8")


if __name__ == "__main__":
    main()
