"""A live progress line on stderr: conversations done / N, drops, LM calls/s, tokens/s, ETA.

Quiet when stderr is not a terminal or when disabled (``--quiet``).
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from fms_dgt.stats import RunStats


class Progress:
    def __init__(self, total: int, *, initial: int, enabled: bool, stats: RunStats) -> None:
        self.stats = stats
        self.started = time.perf_counter()
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
        if self.bar.disable:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        dropped = sum(self.stats.dropped.values())
        self.bar.set_postfix_str(
            f"drops={dropped} calls/s={self.stats.lm_calls / elapsed:.1f}"
            f" tok/s={self.stats.tokens / elapsed:.0f}",
            refresh=False,
        )
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()
