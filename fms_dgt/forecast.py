"""What the rest of a run will likely cost: tokens, calls, money and time for N kept conversations.

The estimate is a ratio: spend per kept conversation = total spend of the sampled attempts /
conversations they kept, so rejected drafts and dropped conversations are paid for by the ones
kept. The sample is the longest run of attempts, in the order they were started, that have all
finished: the first attempts to *finish* are the short ones (fewer exchanges, fewer tokens), so
taking them as they come would forecast too low; the first ones *started* are a fair sample.

The spread is a 90 % interval from the delta method for a ratio estimator: with d_i = s_i - R k_i
(an attempt's spend minus what its keeps account for), the remaining spend for M more kept
conversations has variance var(d) * M / k̄ * (1 + M / (n k̄)) (the new attempts' own variation,
plus the uncertainty of R from n sampled attempts with a mean keep k̄), with Student's t
for the quantile, since the first forecasts rest on a handful of attempts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fms_dgt.spend import Spend

MIN_KEPT = 5  # kept conversations in the sample before a forecast is shown
# One-sided 95 % quantiles of Student's t by degrees of freedom (a 90 % interval): small samples
# get wider intervals than the normal's 1.645.
_T95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812,
        1.796, 1.782, 1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725)


def t95(df: int) -> float:
    if df <= len(_T95):
        return _T95[df - 1]
    return 1.645 + 1.6 / df  # close to the table's tail, and to 1.645 for large samples
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


class _Sums:
    """Running sums over the sampled attempts, so each update and projection is O(1)."""

    def __init__(self) -> None:
        self.n = 0
        self.kept = 0
        self.s = dict.fromkeys(ATTRS, 0.0)  # sum of s_i
        self.ss = dict.fromkeys(ATTRS, 0.0)  # sum of s_i squared
        self.sk = dict.fromkeys(ATTRS, 0.0)  # sum of s_i over kept attempts

    def add(self, spend: Spend, kept: bool) -> None:
        self.n += 1
        self.kept += kept
        for attr in ATTRS:
            value = float(getattr(spend, attr))
            self.s[attr] += value
            self.ss[attr] += value * value
            if kept:
                self.sk[attr] += value


ATTRS = tuple(attr for _, attr in QUANTITIES)


class Forecast:
    """Fed with every started and finished attempt; projects the run's totals on demand."""

    def __init__(self) -> None:
        self._order: list[int] = []  # attempts in the order they were started
        self._finished: dict[int, tuple[Spend, bool]] = {}  # finished, not yet in the sample
        self._prefix = 0  # self._order[:self._prefix] have all finished: the sample
        self.sampled = _Sums()
        self.all = _Sums()  # every finished attempt, sampled or not

    def started(self, attempt: int) -> None:
        self._order.append(attempt)

    def finished_attempt(self, attempt: int, spend: Spend, kept: bool) -> None:
        self.all.add(spend, kept)
        self._finished[attempt] = (spend, kept)
        while self._prefix < len(self._order) and self._order[self._prefix] in self._finished:
            self.sampled.add(*self._finished.pop(self._order[self._prefix]))
            self._prefix += 1

    def per_attempt(self, attr: str) -> float | None:
        """Mean spend of one attempt (sampled if possible), for the budget's look-ahead."""
        sums = self.sampled if self.sampled.n else self.all
        return sums.s[attr] / sums.n if sums.n else None

    def project(
        self, total: int, kept_now: int, elapsed: float, concurrency: int, *, fresh: bool = False
    ) -> Projection | None:
        """Totals for this run if it ends with ``total`` kept, ``kept_now`` of them already kept
        (by earlier runs too); with ``fresh``, for a new run of ``total`` from nothing (what
        ``--estimate`` prints). None until the sample holds ``MIN_KEPT`` kept conversations."""
        sums = self.sampled
        n, kept = sums.n, sums.kept
        if kept < MIN_KEPT or n < 2:
            return None
        needed = max(0, total - kept_now)
        kbar = kept / n
        estimates = {}
        for name, attr in QUANTITIES:
            ratio = sums.s[attr] / kept
            # sum of (s_i - R k_i)^2, with k_i in {0, 1}
            squares = sums.ss[attr] - 2 * ratio * sums.sk[attr] + ratio * ratio * kept
            var_d = max(0.0, squares) / (n - 1)
            remaining = needed * ratio
            spread = t95(n - 1) * math.sqrt(var_d * needed / kbar * (1 + needed / (n * kbar))) if needed else 0.0
            if name == "seconds":
                # Conversation-seconds, run ``concurrency`` at a time, on top of the time so far.
                base, remaining, spread = elapsed, remaining / concurrency, spread / concurrency
            else:
                base = self.all.s[attr]
            if fresh:
                base = 0.0
            estimates[name] = Estimate(base + remaining, base + max(0.0, remaining - spread), base + remaining + spread)
        return Projection(total=total, sample_attempts=n, sample_kept=kept, estimates=estimates)

    @property
    def sample_size(self) -> int:
        return self.sampled.n


def format_quantity(name: str, value: float) -> str:
    if name == "seconds":
        return format_duration(value)
    if name == "cost":
        return f"{value:,.4g}" if value < 100 else f"{value:,.0f}"
    return format_count(value)


def format_count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size * 0.9995:  # 999,600 is "1M", not "1e+03k"
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
