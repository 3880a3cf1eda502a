"""What the rest of a run will likely cost: tokens, calls, money and time for N kept conversations.

The estimate is a ratio: spend per kept conversation = total spend of the sampled attempts /
conversations they kept, so rejected drafts and dropped conversations are paid for by the ones
kept. The sample is the longest run of attempts, in the order they were started, that have all
finished: the first attempts to *finish* are the short ones (fewer exchanges, fewer tokens), so
taking them as they come would forecast too low; the first ones *started* are a fair sample.

The spread is a 90 % interval from the delta method for a ratio estimator: with d_i = s_i - R k_i
(an attempt's spend minus what its keeps account for), the remaining spend for M more kept
conversations has variance var(d) * M / k̄ * (1 + M / (n k̄)) (the new attempts' own variation,
plus the uncertainty of R from n sampled attempts with a mean keep k̄).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fms_dgt.spend import Spend

Z90 = 1.645
MIN_KEPT = 3  # kept conversations in the sample before a forecast is shown
# Quantities forecast, as (name, attribute of Spend).
QUANTITIES = (("tokens", "tokens"), ("calls", "calls"), ("cost", "cost"), ("seconds", "seconds"))


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float


@dataclass(frozen=True)
class Projection:
    """Totals expected for a run of ``total`` kept conversations (seconds: wall time)."""

    total: int
    sample_attempts: int
    sample_kept: int
    estimates: dict[str, Estimate]

    @property
    def keep_rate(self) -> float:
        return self.sample_kept / self.sample_attempts

    def as_dict(self) -> dict[str, object]:
        return {
            "for": self.total,
            "sample_attempts": self.sample_attempts,
            "sample_kept": self.sample_kept,
            "keep_rate": round(self.keep_rate, 4),
            **{name: {"value": round(e.value, 6), "low": round(e.low, 6), "high": round(e.high, 6)}
               for name, e in self.estimates.items()},
        }


class Forecast:
    """Fed with every started and finished attempt; projects the run's totals on demand."""

    def __init__(self) -> None:
        self._order: list[int] = []  # attempts in the order they were started
        self._finished: dict[int, tuple[Spend, bool]] = {}
        self._prefix = 0  # self._order[:self._prefix] have all finished
        self.finished_spend = Spend()  # every finished attempt, sampled or not
        self.finished = 0

    def started(self, attempt: int) -> None:
        self._order.append(attempt)

    def finished_attempt(self, attempt: int, spend: Spend, kept: bool) -> None:
        self._finished[attempt] = (spend, kept)
        self.finished += 1
        total = self.finished_spend
        for attr in ("calls", "prompt_tokens", "completion_tokens", "cached_tokens", "cost", "seconds"):
            setattr(total, attr, getattr(total, attr) + getattr(spend, attr))
        while self._prefix < len(self._order) and self._order[self._prefix] in self._finished:
            self._prefix += 1

    def sample(self) -> list[tuple[Spend, bool]]:
        """The fair sample: attempts started before any attempt still unfinished."""
        return [self._finished[a] for a in self._order[: self._prefix]]

    def per_attempt(self, attr: str) -> float | None:
        """Mean spend of one attempt (sampled if possible), for the budget's look-ahead."""
        sample = self.sample() or list(self._finished.values())
        if not sample:
            return None
        return sum(getattr(s, attr) for s, _ in sample) / len(sample)

    def project(
        self, total: int, kept_now: int, elapsed: float, concurrency: int, *, fresh: bool = False
    ) -> Projection | None:
        """Totals for this run if it ends with ``total`` kept, ``kept_now`` of them already kept
        (by earlier runs too); with ``fresh``, for a new run of ``total`` from nothing (what
        ``--estimate`` prints). None until the sample holds ``MIN_KEPT`` kept conversations."""
        sample = self.sample()
        n = len(sample)
        kept = sum(k for _, k in sample)
        if kept < MIN_KEPT or n < 2:
            return None
        needed = max(0, total - kept_now)
        kbar = kept / n
        estimates = {}
        for name, attr in QUANTITIES:
            values = [getattr(s, attr) for s, _ in sample]
            ratio = sum(values) / kept
            residuals = [v - ratio * k for v, (_, k) in zip(values, sample)]
            var_d = sum(r * r for r in residuals) / (n - 1)
            remaining = needed * ratio
            spread = Z90 * math.sqrt(var_d * needed / kbar * (1 + needed / (n * kbar))) if needed else 0.0
            if name == "seconds":
                # Conversation-seconds, run ``concurrency`` at a time, on top of the time so far.
                base, remaining, spread = elapsed, remaining / concurrency, spread / concurrency
            else:
                base = getattr(self.finished_spend, attr)
            if fresh:
                base = 0.0
            estimates[name] = Estimate(base + remaining, base + max(0.0, remaining - spread), base + remaining + spread)
        return Projection(total=total, sample_attempts=n, sample_kept=kept, estimates=estimates)


def format_quantity(name: str, value: float) -> str:
    if name == "seconds":
        return format_duration(value)
    if name == "cost":
        return f"{value:,.4g}" if value < 100 else f"{value:,.0f}"
    return format_count(value)


def format_count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe(projection: Projection, priced: bool) -> str:
    """One line: 'for 200: 1.2M tokens (1.1M-1.3M), 2.8k calls (...), 4 min (...)'."""
    parts = []
    for name, _ in QUANTITIES:
        if name == "cost" and not priced:
            continue
        e = projection.estimates[name]
        unit = {"tokens": " tokens", "calls": " calls", "cost": " cost", "seconds": ""}[name]
        parts.append(
            f"{format_quantity(name, e.value)}{unit} ({format_quantity(name, e.low)}-{format_quantity(name, e.high)})"
        )
    return f"forecast for {projection.total}: " + ", ".join(parts)
