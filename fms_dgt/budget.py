"""Per-run budgets: tokens, LM calls, cost and wall time (``limits:`` in the task, ``--max-*``).

Spend is read from the run's stats, so it counts every call: rejected drafts, retries, dropped
and cancelled conversations included. Two checks:

- before starting a conversation: would it likely cross a budget? Expected spend = spent so far
  + half an attempt for each conversation in flight (on average they are half done; what they
  spent already is in "spent so far") + one attempt for the new one, an attempt's cost being the
  measured mean. Time is not additive over conversations running in parallel: the check there is
  "now + one attempt's duration". Before any attempt has finished there is nothing to measure,
  and conversations start while nothing is spent beyond the budget.
- after each finished conversation: is a budget already spent? Then the conversations in flight
  are cancelled (they are not kept; what they cost is counted) and the run ends.

Either way the status is ``budget_exhausted``; what was kept is on disk and a later run resumes
with a budget of its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fms_dgt.config import LimitsConfig
from fms_dgt.forecast import format_quantity
from fms_dgt.stats import RunStats

# (kind, LimitsConfig field, flag, Spend attribute for the per-attempt mean)
KINDS = (
    ("tokens", "max_tokens", "--max-tokens", "tokens"),
    ("calls", "max_calls", "--max-calls", "calls"),
    ("cost", "max_cost", "--max-cost", "cost"),
    ("seconds", "max_time", "--max-time", "seconds"),
)


@dataclass(frozen=True)
class Limit:
    kind: str
    flag: str
    limit: float
    attr: str


class Budget:
    def __init__(self, limits: LimitsConfig, stats: RunStats, started: float | None = None) -> None:
        self.stats = stats
        self.started = time.perf_counter() if started is None else started
        self.limits = [
            Limit(kind, flag, float(getattr(limits, field)), attr)
            for kind, field, flag, attr in KINDS
            if getattr(limits, field) is not None
        ]
        self.exhausted: str | None = None  # the one line saying which budget ended the run
        self.stopped_starting = False

    def spent(self, kind: str) -> float:
        if kind == "tokens":
            return float(self.stats.tokens)
        if kind == "calls":
            return float(self.stats.lm_calls)
        if kind == "cost":
            return self.stats.cost
        return time.perf_counter() - self.started

    def may_start(self, in_flight: int, per_attempt: Callable[[str], float | None]) -> bool:
        """False (and remembered) once the next conversation would likely cross a budget."""
        if self.stopped_starting:
            return False
        for limit in self.limits:
            spent = self.spent(limit.kind)
            mean = per_attempt(limit.attr) or 0.0
            expected = spent + mean if limit.kind == "seconds" else spent + (in_flight / 2 + 1) * mean
            if spent >= limit.limit or expected > limit.limit:
                self.stopped_starting = True
                if self.exhausted is None:
                    self.exhausted = (
                        f"{limit.flag} {format_quantity(limit.kind, limit.limit)}: the next conversation would"
                        f" likely exceed it ({format_quantity(limit.kind, spent)} spent), so no more were started"
                    )
                return False
        return True

    def over(self) -> bool:
        """True once a budget is spent: cancel what is in flight."""
        for limit in self.limits:
            spent = self.spent(limit.kind)
            if spent >= limit.limit:
                self.stopped_starting = True
                self.exhausted = (
                    f"{limit.flag} {format_quantity(limit.kind, limit.limit)} spent"
                    f" ({format_quantity(limit.kind, spent)}), so the conversations in flight were cancelled"
                )
                return True
        return False

    def spent_out(self) -> bool:
        """Whether a budget is spent (no side effects; checked after every LM call)."""
        return any(self.spent(limit.kind) >= limit.limit for limit in self.limits)

    def seconds_left(self) -> float | None:
        """Until the time budget runs out (for the runner's wait), or None without one."""
        for limit in self.limits:
            if limit.kind == "seconds":
                return max(0.0, limit.limit - self.spent("seconds"))
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "limits": {limit.kind: limit.limit for limit in self.limits},
            "spent": {limit.kind: round(self.spent(limit.kind), 6) for limit in self.limits},
            "exhausted": self.exhausted,
        }
