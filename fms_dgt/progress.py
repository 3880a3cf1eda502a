"""A live progress line on stderr: conversations done / N, drops, LM calls/s, tokens/s, ETA.

Quiet when disabled (``--quiet``). Without a terminal (CI logs, nohup) there is no bar; a log
line instead, every ``log_every`` seconds (a run whose conversations are all being dropped, or
whose first conversation takes minutes, is not silent) and at a kept conversation when kept
conversations are rarer than that, with kept/tried, drops by reason, calls/s, tokens/s and the
forecast.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

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
        log_every: float = LOG_EVERY,
    ) -> None:
        self.stats = stats
        self.started = time.perf_counter()
        self.total = total
        self.done = min(initial, total)
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
            f"drops={dropped} calls/s={self.stats.lm_calls / elapsed:.1f}"
            f" tok/s={self.stats.tokens / elapsed:.0f}"
        )
        forecast = self.describe() if self.describe is not None else ""
        if forecast:
            status += f" {forecast}"
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(n)

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        tried = self.stats.accepted + sum(self.stats.dropped.values())
        drops = ", ".join(f"{k} {v}" for k, v in self.stats.dropped.most_common()) or "none"
        text = (
            f"{self.done}/{self.total} conversations ({self.stats.accepted} kept of {tried} tried in this run),"
            f" {elapsed:.0f} s; drops: {drops}; calls/s={self.stats.lm_calls / elapsed:.1f}"
            f" tok/s={self.stats.tokens / elapsed:.0f}"
        )
        forecast = self.describe() if self.describe is not None else ""
        return f"{text}; {forecast}" if forecast else text

    def log(self) -> None:
        logger.info("%s", self.line())

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.bar.close()
