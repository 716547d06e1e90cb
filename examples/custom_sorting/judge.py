"""Caller side: the inputs, the expected outputs and the CPU budget live in the driver."""

import random
from dataclasses import dataclass, field

from ossgym.envs.code.base import read_reply, session_cpu


@dataclass
class SortDriver:
    seed: int
    cases: int = 5
    length: int = 50
    call_time_limit_s: float = 0.05
    passed: int = field(init=False, default=0)
    problem: str | None = field(init=False, default=None)
    failure: str | None = field(init=False, default=None)

    def __call__(self, session):
        rng = random.Random(self.seed)  # the caller's generator; the seed never leaves the caller
        for i in range(self.cases):
            xs = [rng.randint(-1000, 1000) for _ in range(self.length)]
            reply = read_reply(session.request({"xs": xs}))
            if not reply.ok:
                self.failure = reply.kind
                return
            if session_cpu(session, "last_cpu_s") > self.call_time_limit_s + 0.02:
                self.problem = f"case {i}: too slow"
                return
            if reply.value != sorted(xs):  # the caller's own answer, compared to a plain list
                self.problem = f"case {i}: not sorted"
                return
            self.passed += 1
