"""How many conversations run at once, and what the tail costs.

Conversations in flight follow the engines' current limits (``Engine.gate.limit``): twice the
largest one on a server, so an adaptive limit that grows always finds requests waiting for it,
and the gate's priority queue (earliest conversation first) keeps the extra conversations from
slowing the early ones; one per slot on the embedded engine (see ``Pacer.wanted``). The runner wakes up when a limit grows, not only when a conversation ends.

No idle tail: when a server has idle capacity (request slots under its current limit that no
request uses or waits for) while fewer conversations are still needed than run, the runner starts
spare ones on it. These spares have the
latest attempt numbers, so at the gate they only get capacity no earlier conversation wants. The first to finish are kept; at exactly N the
rest are cancelled (or, if finished in the same batch, discarded) and counted here as spare,
with the LM calls and tokens they had used (counted where the conversation ran: with Ray, on the
workers, so the driver reports the spare conversations but not their tokens).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from fms_dgt.engines import gate
from fms_dgt.spend import Spend

if TYPE_CHECKING:
    from fms_dgt.engines import Engine

# Conversations in flight per request slot of the busiest engine.
CONVERSATIONS_PER_SLOT = 2
# With Ray the driver cannot see the workers' adaptive limits: conversations per worker assume
# this many requests per server for an engine on ``max_concurrency: auto``.
RAY_AUTO_GUESS = 64


class Pacer:
    """The runner's pacing: conversations wanted in flight, wake-ups, spares, first kept."""

    def __init__(self, engines: dict[str, Engine], clock: Any = time.perf_counter) -> None:
        self.engines = engines
        self._clock = clock
        self._t0 = clock()
        self._wake: asyncio.Future[None] | None = None
        self._attempts: dict[asyncio.Task[Any], int] = {}
        self._tracked: set[int] = set()
        self._spends: dict[int, Spend] = {}  # of the conversations this loop tracks
        self.first_kept: float | None = None
        self.peak_in_flight = 0
        self.spare_conversations = 0
        self.spare_calls = 0
        self.spare_tokens = 0
        for engine in engines.values():
            engine.gate.listeners.append(self._poke)

    def wanted(self) -> int:
        """Conversations to keep in flight now: per request slot of the busiest engine, two on a
        server and one on an engine that shares this machine's CPU. There a slot is never idle
        for want of requests (a conversation's next call follows its last within milliseconds),
        and a second conversation per slot would only take the slot in that gap: the early
        conversations would share the CPU with twice as many and be kept later."""
        return max(
            (e.gate.limit * (1 if e.shares_compute else CONVERSATIONS_PER_SLOT) for e in self.engines.values()),
            default=CONVERSATIONS_PER_SLOT * 4,
        )

    def in_flight_cap(self, remaining: int, in_flight: int) -> int:
        """Conversations that may be in flight while ``remaining`` are still needed and
        ``in_flight`` run: no more than that, unless a server has idle capacity (request slots
        under its limit with no request in them or waiting for them, once the limit is found);
        then spares may take it,
        but at most half as many as remain (every spare's tokens are paid for: filling a limit of
        44 for the last 10 conversations spent 68 % of a run's tokens on spares). Idle, not merely
        more than ``remaining``: at N=100 on a 64-slot server the whole run fits under the limit,
        and spares started from the first second took 24 % of its tokens and made it slower
        (8.7 s against 7.7 s without; benchmarks/server_speed.py --tail). The embedded engine's
        free slots are not idle capacity (they share the CPU): no spares there; one needed
        conversation with 3 spares beside it took 608 s in a real run."""
        idle = max((e.gate.idle for e in self.engines.values() if not e.shares_compute), default=0)
        if idle <= 0:
            return remaining
        return max(remaining, min(in_flight + idle, remaining + -(-remaining // 2)))

    @property
    def limits_found(self) -> bool:
        """No engine's limit is still probing (an adaptive one in slow start)."""
        return not any(limit.probing for e in self.engines.values() for limit in e.gate.limits.values())

    def nominal(self) -> int:
        """Conversations per Ray worker: from pinned limits, or ``RAY_AUTO_GUESS`` for auto ones."""
        def per_engine(engine: Engine) -> int:
            per = engine.config.max_concurrency
            if per == "auto":
                per = min(RAY_AUTO_GUESS, engine.config.max_concurrency_limit)
            return per * (len(engine.endpoints) if engine.endpoints is not None else 1)
        return CONVERSATIONS_PER_SLOT * max((per_engine(e) for e in self.engines.values()), default=4)

    # -- in the conversation's own task -----------------------------------------------------

    def enter(self, attempt: int, spend: Spend) -> None:
        """Called first thing in a conversation: its requests get its attempt as priority, and
        what it spends is kept in case it turns out to be spare."""
        gate.priority.set(attempt)
        if attempt in self._tracked:  # not on a Ray worker, whose driver does the tracking
            self._spends[attempt] = spend

    # -- in the runner's loop ---------------------------------------------------------------

    def track(self, task: asyncio.Task[Any], attempt: int, in_flight: int) -> None:
        """A conversation was submitted (before its task first runs, so before ``enter``)."""
        self._attempts[task] = attempt
        self._tracked.add(attempt)
        self.peak_in_flight = max(self.peak_in_flight, in_flight)

    def attempt(self, task: asyncio.Task[Any]) -> int:
        return self._attempts.get(task, -1)

    def finished(self, task: asyncio.Task[Any]) -> None:
        attempt = self._attempts.pop(task, -1)
        self._tracked.discard(attempt)
        self._spends.pop(attempt, None)

    def kept(self) -> None:
        if self.first_kept is None:
            self.first_kept = self._clock() - self._t0

    def spare(self, tasks: Iterable[asyncio.Task[Any]]) -> None:
        """Conversations not needed at exactly N: finished too late, or cancelled."""
        for task in tasks:
            self.spare_conversations += 1
            attempt = self._attempts.pop(task, -1)
            self._tracked.discard(attempt)
            used = self._spends.pop(attempt, None)
            if used is not None:
                self.spare_calls += used.calls
                self.spare_tokens += used.tokens

    def waker(self) -> asyncio.Future[None]:
        """A future that resolves when an engine's limit grows, so the runner's wait for a
        finished conversation also ends then and it can start more."""
        self._wake = asyncio.get_running_loop().create_future()
        return self._wake

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def limits(self) -> str:
        """The engines' current limits, for the progress line."""
        parts = [f"{name}:{e.gate.limit}" for name, e in self.engines.items()]
        return parts[0].split(":", 1)[1] if len(parts) == 1 else ",".join(parts)

    def report(self, remote: bool) -> dict[str, Any]:
        return {
            "time_to_first_kept_seconds": round(self.first_kept, 3) if self.first_kept is not None else None,
            "conversations_in_flight_peak": self.peak_in_flight,
            "spare": {
                "conversations": self.spare_conversations,
                "lm_calls": None if remote else self.spare_calls,
                "tokens": None if remote else self.spare_tokens,
            },
        }
