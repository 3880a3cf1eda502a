"""A live progress line on stderr: conversations done / N, exchanges, drops, LM calls/s, tokens/s, ETA.

Quiet when disabled (``--quiet``). Without a terminal (CI logs, nohup) there is no bar; a log
line instead, every ``log_every`` seconds (a run whose conversations are all being dropped, or
whose first conversation takes minutes, is not silent) and at a kept conversation when kept
conversations are rarer than that, with kept/tried, drops by reason, calls/s, tokens/s and the
forecast.

Until the forecast has its sample of kept conversations (minutes, on a CPU model), the ETA comes
from the rate of exchanges written so far: the work left is the conversations still needed times
the exchanges a kept one has (the task's mid length until one is kept), minus what is written.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from fms_dgt.forecast import format_duration
from fms_dgt.stats import RunStats

logger = logging.getLogger(__name__)

LOG_EVERY = 30.0  # seconds between log lines without a terminal


class Progress:
    def __init__(
        self,
        total: int,
        *,
        initial: int,
        enabled: bool,
        stats: RunStats,
        describe: Callable[[], str] | None = None,
        limits: Callable[[], str] | None = None,
        log_every: float = LOG_EVERY,
        exchanges_per_conversation: float = 1.0,
    ) -> None:
        self.stats = stats
        self.exchanges_per_conversation = exchanges_per_conversation
        self.limits = limits  # the engines' current concurrency limits, shown as limit=...
        self.started = time.perf_counter()
        self.total = total
        self.done = min(initial, total)
        self.initial = self.done
        self.describe = describe  # the forecast, '' until there is one
        self.log_every = log_every
        self.log_lines = enabled and not sys.stderr.isatty()
        self._last_kept = self.started
        self._ticker: asyncio.Task[None] | None = None
        self.bar = tqdm(
            total=total,
            initial=min(initial, total),
            unit="conv",
            file=sys.stderr,
            disable=(not enabled) or None,  # None: off automatically when not a TTY
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def start(self) -> None:
        """Start the steady log lines (on the running event loop), if there is no bar."""
        if self.log_lines and self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.log_every)
            self.log()

    def update(self, n: int) -> None:
        self.done += n
        if self.bar.disable:
            now = time.perf_counter()
            if self.log_lines and n and now - self._last_kept >= self.log_every:
                self.log()  # kept conversations are rarer than the steady lines: show each
            if n:
                self._last_kept = now
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        dropped = sum(self.stats.dropped.values())
        status = (
            f"exchanges={self.stats.exchanges} drops={dropped} calls/s={self.stats.lm_calls / elapsed:.1f}"
            f" tok/s={self.stats.tokens / elapsed:.0f}"
        )
        if self.limits is not None:
            status += f" limit={self.limits()}"
        forecast = self.describe() if self.describe is not None else ""
        if forecast:
            status += f" {forecast}"
        elif eta := self.eta():
            status += f" {eta}"
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(n)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tried = self.stats.accepted + sum(self.stats.dropped.values())
        drops = ", ".join(f"{k} {v}" for k, v in self.stats.dropped.most_common()) or "none"
        text = (
            f"{self.done}/{self.total} conversations ({self.stats.accepted} kept of {tried} tried in this run),"
            f" {self.stats.exchanges} exchanges, {elapsed:.0f} s; drops: {drops};"
            f" calls/s={self.stats.lm_calls / elapsed:.1f} tok/s={self.stats.tokens / elapsed:.0f}"
        )
        if self.limits is not None:
            text += f" limit={self.limits()}"
        forecast = (self.describe() if self.describe is not None else "") or self.eta()
        return f"{text}; {forecast}" if forecast else text

    def eta(self) -> str:
        """Time left from the rate of exchanges so far ('' before the first one)."""
        written = self.stats.exchanges
        if not written or self.done >= self.total:
            return ""
        kept = self.stats.accepted
        kept_turns = sum(turns * n for turns, n in self.stats.turns.items())
        per_kept = kept_turns / kept if kept else self.exchanges_per_conversation
        needed = (self.total - self.initial) * per_kept
        elapsed = time.perf_counter() - self.started
        left = max(needed - written, per_kept * (self.total - self.done) / 2)
        return f"eta ~{format_duration(elapsed * left / written)} (from {written} exchanges)"

    def log(self) -> None:
        logger.info("%s", self.line())

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.bar.close()
