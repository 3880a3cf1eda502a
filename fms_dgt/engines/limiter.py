"""How many requests one endpoint may have in flight: a pinned number, or one found by measuring.

``max_concurrency: auto`` (the default for server engines) gives each endpoint an
``AdaptiveLimit``; a number gives it a ``FixedLimit``. The gate (``engines.gate``) asks a limit
whether another request may start and tells it how each request went.

Which algorithm, and why (the three studied):

- AIMD (add one per round trip, halve on a loss) reacts only to losses. A self-hosted vLLM, TGI or
  Ollama server never sends one: past its capacity it queues or slows every request down, so AIMD
  would grow the limit until requests time out. NeMo Data Designer's 429-only adaptation has
  exactly this gap.
- TCP Vegas compares the latency it sees with the no-load latency (the smallest seen) and
  estimates the requests waiting at the server: ``queue = limit * (1 - no_load / latency)``. It
  grows while that queue is small and shrinks when it builds, before anything fails. Netflix's
  VegasLimit nudges the limit by about log10(limit) per sample, which takes hundreds of samples to
  move from 4 to 512.
- Netflix's Gradient2Limit sets ``limit = limit * gradient + sqrt(limit)``, with
  ``gradient = long-term latency / short-term latency`` clamped to [0.5, 1]: one step lands on the
  concurrency the server sustains at its usual latency, plus headroom. Its baseline is a long-term
  average, which drifts up under sustained queueing.

Chosen: a Vegas-style limiter on window averages with the gradient step to shrink. Per window of
about one limit's worth of requests (all started inside the window, so each window measures the
limit it ran at) the average latency is compared with the no-load baseline, the smallest window
average seen (window averages, not single requests, because LM latencies vary with reply length).
The estimated queue decides:

- queue <= ``sqrt(limit)`` and the window used at least 90 % of the limit: grow; doubling (slow
  start, as in TCP) until the first window that shrinks the limit or a loss, then
  ``+ sqrt(limit) / 2`` a window. Slow start ends only after two windows in a row saw a queue
  above the headroom, not at the first rise in latency: the latency seen includes this
  process's own delays (an import in another thread holding the GIL added 90-150 ms to 200 ms
  calls for one window), and ending slow start at 10 % above no-load or at one such window
  left a 64-slot server half used for the first 5 s of a run (benchmarks/server_speed.py);
- queue > ``sqrt(limit)``: ``limit = limit * gradient + sqrt(limit)`` (Gradient2's step, gradient
  clamped at 0.5 so one window at most halves the limit);
- a 429/503, a timeout or a connection error: halve, at most once per window (requests sent
  before the last cut do not cut again), and send nothing to the endpoint before ``Retry-After``;
- every ``PROBE_EVERY`` windows the limit is halved for one window to measure the no-load latency
  again (BBR's ProbeRTT), so a server that became slower for everyone (other users, longer
  prompts late in a run) resets the baseline instead of pushing the limit to the floor.

Everything takes time from an injectable clock, so tests drive it exactly without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

# Limits start here: small enough not to flood an unknown server, doubling reaches 512 in 7 windows.
INITIAL_LIMIT = 8
# Fewest samples a window averages, so one slow reply does not look like queueing.
MIN_WINDOW = 8
# A window must use this share of the limit to count as evidence that more would be served.
BUSY_SHARE = 0.9
# Windows between two baseline probes.
PROBE_EVERY = 50
# Limit changes kept for the run summary (older points are thinned, the first and the peak stay).
SERIES_POINTS = 60


class Limit(Protocol):
    """What the gate needs of a limit."""

    @property
    def limit(self) -> int: ...

    @property
    def probing(self) -> bool:
        """Still finding the capacity (slow start): the limit says nothing yet about idle room."""
        ...

    def may_start(self, in_flight: int) -> bool: ...

    def started(self, in_flight: int) -> float: ...

    def succeeded(self, started: float, latency: float) -> None: ...

    def dropped(self, started: float, retry_after: float | None) -> None: ...

    def resume_at(self) -> float: ...

    def report(self) -> dict[str, object]: ...


class FixedLimit:
    """A pinned number (``max_concurrency: N`` or ``--concurrency N``): never changes."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def probing(self) -> bool:
        return False

    def may_start(self, in_flight: int) -> bool:
        return in_flight < self._limit

    def started(self, in_flight: int) -> float:
        return self._clock()

    def succeeded(self, started: float, latency: float) -> None:
        pass

    def dropped(self, started: float, retry_after: float | None) -> None:
        pass

    def resume_at(self) -> float:
        return 0.0

    def report(self) -> dict[str, object]:
        return {"mode": "fixed", "final": self._limit, "peak": self._limit}


class AdaptiveLimit:
    """The limit of one endpoint under ``max_concurrency: auto``; see the module docstring."""

    def __init__(
        self,
        ceiling: int,
        *,
        initial: int = INITIAL_LIMIT,
        floor: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ceiling, self.floor = ceiling, floor
        self._clock = clock
        self._value = float(min(max(initial, floor), ceiling))
        self.baseline: float | None = None  # no-load latency: the smallest window average
        self.slow_start = True
        self._suspect = False  # the last window in slow start looked like queueing
        self._paused_until = 0.0
        self._last_cut = -math.inf  # when the limit was last cut for a loss
        self._windows = 0  # since the last probe
        self._saved: float | None = None  # the limit to restore after a probe window
        self._t0 = clock()
        self.peak = self.limit
        self.series: list[tuple[float, int]] = [(0.0, self.limit)]
        self._new_window()

    @property
    def limit(self) -> int:
        return max(self.floor, int(self._value))

    @property
    def probing(self) -> bool:
        return self.slow_start

    def _new_window(self) -> None:
        self._window_start = self._clock()
        self._sum = 0.0
        self._count = 0
        self._busiest = 0

    def may_start(self, in_flight: int) -> bool:
        return in_flight < self.limit and self._clock() >= self._paused_until

    def resume_at(self) -> float:
        """When a ``Retry-After`` pause ends (0 when there is none)."""
        return self._paused_until

    def started(self, in_flight: int) -> float:
        """A request starts with ``in_flight`` others out (itself included); returns its start time."""
        self._busiest = max(self._busiest, in_flight)
        return self._clock()

    def succeeded(self, started: float, latency: float) -> None:
        if started < self._window_start:
            return  # sent under an earlier limit: it says nothing about this one
        self._sum += latency
        self._count += 1
        if self._count >= max(MIN_WINDOW, self.limit):
            self._end_window()

    def dropped(self, started: float, retry_after: float | None) -> None:
        """A 429/503, timeout or connection error: halve once per window, pause for Retry-After."""
        now = self._clock()
        if retry_after is not None and retry_after > 0:
            self._paused_until = max(self._paused_until, now + retry_after)
        self.slow_start = False
        if started < self._last_cut:
            return  # the same overload the last cut answered
        self._last_cut = now
        if self._saved is not None:  # a loss during a probe: keep the probe's lower limit
            self._saved = None
        self._set(self._value / 2)
        self._new_window()

    def _end_window(self) -> None:
        average = self._sum / self._count
        busy = self._busiest >= BUSY_SHARE * self.limit
        if self._saved is not None:  # the probe window: its average is the no-load latency now
            self.baseline = average
            self._set(self._saved)
            self._saved = None
            self._new_window()
            return
        if self.baseline is None or average < self.baseline:
            self.baseline = average
        gradient = max(0.5, self.baseline / average)
        queue = self._value * (1 - gradient)
        headroom = math.sqrt(self._value)
        if queue > headroom and self.slow_start and not self._suspect:
            self._suspect = True  # in slow start, one window is not enough to end it (see above)
        elif queue > headroom:
            self.slow_start = self._suspect = False
            self._set(self._value * gradient + headroom)
        elif busy:
            self._suspect = False
            self._set(self._value * 2 if self.slow_start else self._value + headroom / 2)
        self._windows += 1
        if self._windows >= PROBE_EVERY and not self.slow_start:
            self._windows = 0
            self._saved = self._value
            self._set(self._value / 2)
        self._new_window()

    def _set(self, value: float) -> None:
        self._value = min(max(value, float(self.floor)), float(self.ceiling))
        limit = self.limit
        self.peak = max(self.peak, limit)
        if limit != self.series[-1][1]:
            self.series.append((round(self._clock() - self._t0, 3), limit))
            if len(self.series) > SERIES_POINTS:
                del self.series[1::2]  # thin the history, keep the first point and the latest

    def report(self) -> dict[str, object]:
        return {
            "mode": "auto",
            "final": self.limit,
            "peak": self.peak,
            "ceiling": self.ceiling,
            "no_load_latency_s": round(self.baseline, 4) if self.baseline is not None else None,
            "series": [list(point) for point in self.series],
        }
