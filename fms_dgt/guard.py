"""The runner's one handle on when to stop by itself: the keep-rate breaker, the budgets and the
forecast, fed by the few hooks in ``Runner._generate``.

``may_start`` is asked before each conversation starts; ``observe`` gets every batch of
finished conversations (it may raise ``KeepRateTooLow``, and returns True when a budget is spent
and the conversations in flight should be cancelled); ``status`` is the forecast line that the
progress display shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from fms_dgt.breaker import Finished, KeepRateBreaker
from fms_dgt.budget import Budget
from fms_dgt.config import LimitsConfig
from fms_dgt.errors import ConfigError, Problem
from fms_dgt.forecast import Forecast, Projection, describe
from fms_dgt.spend import Spend
from fms_dgt.stats import RunStats



class Outcome(Finished, Protocol):
    """What the guard reads of a finished conversation (the runner's ``Outcome``)."""

    attempt: int
    spend: Spend | None

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LimitOverrides:
    """``--min-keep-rate``, ``--keep-rate-min-attempts`` and the ``--max-*`` flags: each set one
    wins over the task's ``limits:``."""

    min_keep_rate: float | None = None
    min_attempts: int | None = None
    max_tokens: int | None = None
    max_calls: int | None = None
    max_cost: float | None = None
    max_time: float | None = None

    def apply(self, limits: LimitsConfig) -> LimitsConfig:
        changed = {k: v for k, v in self.__dict__.items() if v is not None}
        return LimitsConfig.model_validate({**limits.model_dump(), **changed}) if changed else limits


class RunGuard:
    def __init__(
        self,
        limits: LimitsConfig,
        stats: RunStats,
        *,
        target: int,
        priced: bool,
        concurrency: Callable[[], int],
        max_attempts: int | None = None,
    ) -> None:
        if limits.max_cost is not None and not priced:
            raise ConfigError(Problem(
                "a cost budget (--max-cost or limits.max_cost) needs a price on the engines:"
                " engines.<name>.price: {prompt_per_million: ..., completion_per_million: ...}",
                key="limits.max_cost",
            ))
        self.limits = limits
        self.stats = stats
        self.target = target
        self.priced = priced
        self.concurrency = concurrency
        self.max_attempts = max_attempts  # --estimate: start this many attempts, then stop
        self.started_at = time.perf_counter()
        self.breaker = KeepRateBreaker(limits.min_keep_rate, limits.min_attempts)
        self.budget = Budget(limits, stats, self.started_at)
        self.forecast = Forecast()
        self.kept_total = 0  # kept in the folder, earlier runs included (set by the runner)
        self._started = 0
        self._warned = False
        self._status, self._status_at = "", float("-inf")
        self._spent = asyncio.Event()

    # -- hooks -------------------------------------------------------------------------------

    def may_start(self, attempt: int, in_flight: int) -> bool:
        """Whether to start ``attempt`` now; records it as started when the answer is yes."""
        if self.max_attempts is not None and self._started >= self.max_attempts:
            return False
        if not self.budget.may_start(in_flight, self.forecast.per_attempt):
            return False
        self._started += 1
        self.forecast.started(attempt)
        return True

    async def wait(self, pending: set[asyncio.Task[Outcome]]) -> tuple[set[Any], set[Any]]:
        """``asyncio.wait`` for the first finished conversation, cut short when the time budget
        runs out or an LM call spends a budget (``after_call``), so the conversations in flight
        are cancelled then rather than at the next finished one."""
        self._spent.clear()
        waiter = asyncio.ensure_future(self._spent.wait())
        try:
            done, rest = await asyncio.wait(
                pending | {waiter}, timeout=self.budget.seconds_left(), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        return done - {waiter}, rest - {waiter}

    def after_call(self) -> None:
        """Hooked to the LM client: wake the runner when a budget has just been spent."""
        if self.budget.limits and not self._spent.is_set() and self.budget.spent_out():
            self._spent.set()

    def observe(self, done: Iterable[asyncio.Task[Outcome]], kept_total: int) -> bool:
        """Take in finished conversations; True when a budget is spent and the rest should stop."""
        self.kept_total = kept_total
        for task in done:
            if task.cancelled() or task.exception() is not None:
                continue
            outcome = task.result()
            self.breaker.observe(outcome)
            self.forecast.finished_attempt(outcome.attempt, outcome.spend or Spend(), outcome.conv is not None)
        self.breaker.check(self.stats)
        self._warn_if_over_budget()
        return self.budget.over()

    # -- what the run shows ------------------------------------------------------------------

    def projection(self, total: int | None = None, *, fresh: bool = False) -> Projection | None:
        return self.forecast.project(
            total if total is not None else self.target,
            0 if fresh else self.kept_total,
            time.perf_counter() - self.started_at,
            self.concurrency(),
            fresh=fresh,
        )

    def status(self) -> str:
        """The forecast for N, for the progress line ('' until there is one); recomputed at
        most once a second, as the bar may ask for it at every finished conversation."""
        now = time.perf_counter()
        if now - self._status_at >= 1.0:
            projection = self.projection()
            self._status = describe(projection, self.priced) if projection is not None else ""
            self._status_at = now
        return self._status

    def _warn_if_over_budget(self) -> None:
        if self._warned or not self.budget.limits:
            return
        projection = self.projection()
        if projection is None:
            return
        for limit in self.budget.limits:
            estimate = projection.estimates[limit.kind]
            if estimate.value > limit.limit:
                self._warned = True
                logger.warning(
                    "%s; that is more than %s %g: the run will likely stop at the budget before N",
                    describe(projection, self.priced), limit.flag, limit.limit,
                )
                return

    def cost(self) -> dict[str, Any] | None:
        """Cost per stage, per engine and per kept conversation (None when no engine has a price).
        Everything spent counts, so a kept conversation also pays for the drafts and the
        conversations that were dropped."""
        if not self.priced:
            return None
        total = self.stats.cost
        return {
            "total": round(total, 6),
            "per_stage": {k: round(v.cost, 6) for k, v in self.stats.per_stage.items()},
            "per_engine": {k: round(v.cost, 6) for k, v in self.stats.per_engine.items()},
            "per_kept_conversation": round(total / self.stats.accepted, 6) if self.stats.accepted else None,
        }

    def summary(self) -> dict[str, Any]:
        projection = self.projection()
        return {
            "limits": self.limits.model_dump(),
            "budget": self.budget.as_dict(),
            "forecast": projection.as_dict() if projection is not None else None,
            "cost": self.cost(),
        }
