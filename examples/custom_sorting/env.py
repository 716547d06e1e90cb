"""SortNumbers: the model writes ``sort_numbers(xs)``; the reward is the fraction of cases sorted."""

from dataclasses import dataclass

from ossgym.envs.code.base import CodeEnv, CodeTask, TaskConfig, check_seconds
from ossgym.sandbox import Outcome

from custom_sorting.judge import SortDriver


@dataclass(frozen=True)
class SortConfig(TaskConfig):
    cases: int = 5
    call_time_limit_s: float = 0.05
    correct_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_seconds(self, "call_time_limit_s")


class SortTask(CodeTask):
    entrypoint = "sort_numbers"
    component_names = ("format", "policy", "sorted", "crash")
    handler = "custom_sorting.handler:handle"
    seed_namespace = "example.SortNumbers"

    def __init__(self, config):
        super().__init__(config)
        self.call_time_limit_s = config.call_time_limit_s

    def instructions(self):
        return ("Write `def sort_numbers(xs):` returning a new list of the ints in `xs`, ascending.\n\n"
                f"{self.rules()}\n\nAnswer with the complete code in one ```python block.")

    def user_prompt(self):
        return "Sort a list of ints without calling sorted() if you can."

    def driver(self, seed):
        c = self.config
        return SortDriver(self.derived_seed("cases", seed), cases=c.cases, call_time_limit_s=c.call_time_limit_s)

    def judge(self, result, driver, baseline=None):
        crashed = result.outcome is not Outcome.OK or driver.failure is not None
        components = {"sorted": self.config.correct_weight * driver.passed / driver.cases,
                      "crash": self.weights.crash if crashed else 0.0}
        feedback = f"{driver.passed} of {driver.cases} cases sorted." + (f" {driver.problem}" if driver.problem else "")
        return components, feedback, {"passed": driver.passed}


class SortEnv(CodeEnv):
    """SortNumbers-v0: reward = format + policy + fraction of cases sorted + crash."""

    config_class = SortConfig
    task_class = SortTask
