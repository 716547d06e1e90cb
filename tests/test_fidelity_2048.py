"""Reward fidelity of GptOss2048-v0 (the bar of issue 4), at the env's defaults.

The seven bundled references (invalid output, constant "W", uniform random, greedy one-step merge, corner
heuristic, one-ply expectimax, two-ply expectimax) are scored as completions on evaluation seeds 0..99 through score_batch:
their mean rewards must be strictly ordered worst to best with every gap larger than three standard errors
(of the difference of the two means), and random must never reach the target. This is one of the slowest
tests (about 600 evaluations, most of the time in the expectimax reference): one pool, one batch.
scripts/reward_fidelity.py prints the same numbers as a table (docs/rewards.md).
"""

import pytest

from ossgym.envs.code.fidelity import evaluate_references, format_table, ordering_problems
from ossgym.envs.code.references import REFERENCES_2048
from ossgym.envs.code.strategy2048 import Strategy2048Config, Strategy2048Task
from ossgym.sandbox import SandboxPool

SEEDS = range(100)


@pytest.fixture(scope="module")
def stats():
    task = Strategy2048Task(Strategy2048Config())  # the env's defaults
    with SandboxPool(2) as pool:
        return evaluate_references(task, REFERENCES_2048, SEEDS, pool)


def test_references_are_strictly_ordered_with_gaps_over_three_standard_errors(stats):
    assert [s.name for s in stats] == list(REFERENCES_2048)
    assert all(len(s.rewards) == len(SEEDS) for s in stats)
    assert ordering_problems(stats) == [], "\n" + format_table(stats)


def test_random_never_reaches_the_target(stats):
    random_ref = next(s for s in stats if s.name == "random")
    assert random_ref.wins == 0
    assert next(s for s in stats if s.name == "expectimax2").wins > 0  # the target is reachable at all


def test_every_reference_is_evaluated_not_crashed(stats):
    for s in stats:
        assert s.outcomes == {"ok": len(SEEDS)}, (s.name, s.outcomes)
        assert s.components["format"] == 0.5 and s.components["policy"] == 0.5 and s.components["crash"] == 0.0
    assert next(s for s in stats if s.name == "invalid_output").components["failures"] == -1.0


def test_one_ply_expectimax_finishes_its_games_and_ranks_above_greedy_and_corner(stats):
    by = {s.name: s for s in stats}
    assert by["expectimax1"].components["failures"] == 0.0  # no game cut by the CPU budget
    assert by["expectimax1"].mean > by["corner"].mean > by["greedy_merge"].mean


def test_ordering_problems_detects_ties_and_inversions():
    from ossgym.envs.code.fidelity import ReferenceStats

    def mk(name, mean, se):
        return ReferenceStats(name, (mean,), mean, se, 0, {"x": mean}, {"ok": 1})

    assert ordering_problems([mk("a", 1.0, 0.01), mk("b", 1.1, 0.01)]) == []
    assert len(ordering_problems([mk("a", 1.0, 0.01), mk("b", 1.04, 0.01)])) == 1  # 0.04 < 3 * 0.0141
    assert len(ordering_problems([mk("a", 1.0, 0.01), mk("b", 0.9, 0.01)])) == 1
    assert "| a |" in format_table([mk("a", 1.0, 0.01), mk("b", 1.1, 0.01)])
