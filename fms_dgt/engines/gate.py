"""The way in to an engine: one priority queue in front of the limits of its endpoints.

Every request attempt waits here until some endpoint's limit (``engines.limiter``) has room; the
waiting request with the best priority goes first. The priority is the conversation's attempt
number (``priority`` below, set by the runner for each conversation), so requests of conversations
that started earlier are served first: conversations finish in a steady stream from the start
instead of all together at the end, and spare conversations started for the tail only ever use
capacity nobody earlier wants. Ties (and requests outside a conversation) go in arrival order.

``Gated`` is the engine layer around it: each attempt waits here, goes to the place (endpoint)
the gate granted, and its outcome and latency go back to that place's limit.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Generic, TypeVar

from fms_dgt.engines.limiter import Limit
from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.errors import EngineError

# The priority of LM requests made from the current task (lower goes first); the runner sets it
# to the conversation's attempt number. Unset (-1), a request goes before every conversation's.
priority: ContextVar[float] = ContextVar("fms_dgt_request_priority", default=-1.0)

Key = TypeVar("Key")


class Gate(Generic[Key]):
    """Grants request slots on keyed limits (one per endpoint, or one for an in-process engine).

    ``choose`` picks the key among those with room (the engine's balancer), or None to wait
    (a healthy endpoint is full and only resting ones have room); ``listeners`` are called when a
    limit grew, so the runner can start conversations for it.
    """

    def __init__(
        self,
        limits: dict[Key, Limit],
        choose: Callable[[Sequence[Key]], Key | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.in_flight: dict[Key, int] = dict.fromkeys(limits, 0)
        self._choose = choose or (lambda keys: min(keys, key=lambda k: self.in_flight[k]))
        self._clock = clock
        self._waiting: list[tuple[float, int, asyncio.Future[tuple[Key, float]]]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self.listeners: list[Callable[[], None]] = []
        self.used = False  # has any request come through (the Ray driver's engines send none)

    @property
    def limit(self) -> int:
        """Requests the engine may have in flight now: the sum over its endpoints."""
        return sum(limit.limit for limit in self.limits.values())

    @property
    def idle(self) -> int:
        """Request slots under the limits that no request uses or waits for; none while a limit
        is still probing (in slow start it doubles past what the server serves, so its room is
        not capacity anyone has measured)."""
        if any(limit.probing for limit in self.limits.values()):
            return 0
        return max(0, self.limit - sum(self.in_flight.values()) - self.waiting)

    @property
    def waiting(self) -> int:
        return sum(1 for *_, future in self._waiting if not future.done())

    def _open(self) -> list[Key]:
        return [k for k, limit in self.limits.items() if limit.may_start(self.in_flight[k])]

    async def acquire(self) -> tuple[Key, float]:
        """Wait for a slot; returns the endpoint's key and the start time its limit noted."""
        rank = priority.get()
        self.used = True
        if not self._waiting:
            open_keys = self._open()
            key = self._choose(open_keys) if open_keys else None
            if key is not None:
                return self._take(key)
        future: asyncio.Future[tuple[Key, float]] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (rank, next(self._order), future))
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted as we were cancelled: give it back
                self.in_flight[future.result()[0]] -= 1
                self._dispatch()
            raise

    def _take(self, key: Key) -> tuple[Key, float]:
        self.in_flight[key] += 1
        return key, self.limits[key].started(self.in_flight[key])

    def release(self, key: Key, started: float, *, latency: float | None = None,
                dropped: bool = False, retry_after: float | None = None) -> None:
        """A request ended: ``latency`` when it succeeded, ``dropped`` for an overload sign."""
        self.in_flight[key] -= 1
        limit = self.limits[key]
        before = limit.limit
        if dropped:
            limit.dropped(started, retry_after)
        elif latency is not None:
            limit.succeeded(started, latency)
        self._dispatch()
        if limit.limit > before:
            for listener in self.listeners:
                listener()

    def _dispatch(self) -> None:
        """Hand free slots to the best waiting requests; wake up after a Retry-After pause."""
        while self._waiting:
            if self._waiting[0][2].done():  # cancelled while waiting
                heapq.heappop(self._waiting)
                continue
            open_keys = self._open()
            key = self._choose(open_keys) if open_keys else None
            if key is None:
                break
            # Started when granted, not when the waiting task next runs: a request granted under
            # a limit belongs to that limit's window, and its in-flight count is the one it got.
            heapq.heappop(self._waiting)[2].set_result(self._take(key))
        if self._waiting and self._timer is None:
            now = self._clock()
            resume = min(limit.resume_at() for limit in self.limits.values())
            if resume > now:
                self._timer = asyncio.get_running_loop().call_later(resume - now, self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._dispatch()

    def report(self) -> dict[Key, dict[str, object]]:
        return {key: limit.report() for key, limit in self.limits.items()}


class Gated(Generic[Key]):
    """Adds to the ``routes`` (one per key of ``gate``): a wait for room under a key's limit, which
    also picks the route, so a retry goes where the last attempt did not fail. Overload signs
    (429, 5xx, timeouts, refused connections) cut that limit; a 400 does not."""

    def __init__(self, gate: Gate[Key], routes: dict[Key, Send]) -> None:
        self.gate = gate
        self._routes = routes
        # Requests abandoned while the server worked on them (spare conversations cancelled at N).
        self.cancelled = 0

    async def __call__(self, request: Request) -> ChatResult:
        key, started = await self.gate.acquire()
        latency, dropped, retry_after = None, False, None
        try:
            result = await self._routes[key](request)
            latency = time.monotonic() - started
            return result
        except EngineError as exc:
            dropped, retry_after = exc.retryable, exc.retry_after
            raise
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.gate.release(key, started, latency=latency, dropped=dropped, retry_after=retry_after)
