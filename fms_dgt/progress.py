"""A live progress line on stderr: conversations done / N, drops, LM calls/s, tokens/s, ETA.

Quiet when stderr is not a terminal or when disabled (``--quiet``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

from tqdm import tqdm

from fms_dgt.stats import RunStats

logger = logging.getLogger(__name__)


class Progress:
    def __init__(
        self, total: int, *, initial: int, enabled: bool, stats: RunStats, limits: Callable[[], str] | None = None
    ) -> None:
        self.stats = stats
        self.limits = limits  # the engines' current concurrency limits, shown as limit=...
        self.started = time.perf_counter()
        self.total = total
        self.done = min(initial, total)
        # Without a terminal (CI logs, nohup), one log line per kept conversation instead.
        self.log_lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(
            total=total,
            initial=min(initial, total),
            unit="conv",
            file=sys.stderr,
            disable=(not enabled) or None,  # None: off automatically when not a TTY
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def update(self, n: int) -> None:
        self.done += n
        if self.bar.disable and not (self.log_lines and n):
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        dropped = sum(self.stats.dropped.values())
        status = (
            f"drops={dropped} calls/s={self.stats.lm_calls / elapsed:.1f}"
            f" tok/s={self.stats.tokens / elapsed:.0f}"
        )
        if self.limits is not None:
            status += f" limit={self.limits()}"
        if self.bar.disable:
            logger.info("%d/%d conversations, %.0f s, %s", self.done, self.total, elapsed, status)
            return
        self.bar.set_postfix_str(status, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
