"""The keep-rate breaker: stop a run whose conversations keep ending without being kept.

Engine errors have their own breakers (the engine's error rate, and conversations failing in a
row on the engine); this one looks at the outcome that matters, whether a finished attempt was
kept, whatever dropped it (a stage, ``min_turns``, the engine, a quality check).

Why a confidence bound on the keep rate and not a timer or a fixed count: a run is hopeless when
we are *sure* its keep rate is below ``min_keep_rate``, and how sure we are depends only on how
many attempts finished and how many of them were kept, not on how fast the server is. The test
is the upper end of the Wilson score interval at 99 % (z = 2.576): with no conversation kept it
trips after 127 finished attempts at the default 5 % (z² / rate - z²), a few seconds against a
fast server and well under a minute against a slow one; with 1 in 10 kept it never trips (the
bound stays above 5 % however long the run). A run that drops 60 % and keeps 40 % is many
standard errors away from tripping at any sample size, so a healthy run is never stopped by
chance. ``min_attempts`` is a floor on the sample for users who raise ``min_keep_rate``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from fms_dgt.errors import DgtError
from fms_dgt.stages.base import Rejection
from fms_dgt.stats import RunStats

Z = 2.576  # 99 % two-sided normal quantile
TOP_REASONS = 3
EXAMPLE_CHARS = 160

# What to try, by the stage a drop reason comes from (its prefix).
_ADVICE = {
    "scenario": "the model does not write a scenario that names the persona's role (lm/scenario):"
    " try a stronger model (--model), or instructions: on the stage",
    "user": "the simulated user's drafts are rejected (lm/user/guided): try a stronger model (--model),"
    " a higher max_attempts, or instructions: on the stage",
    "assistant": "the assistant's replies are empty or repeat themselves (lm/assistant/naive):"
    " try a stronger model (--model) or a larger max_tokens",
    "conversation": "the model does not write the whole chat in the requested shape (lm/conversation):"
    " try a stronger model (--model) or fewer messages",
    "judge": "the judge rejects the conversations: check the rubrics' min_score/max_score",
    "below": "conversations end before min_turns: lower min_turns, or check why the flow controller ends them",
    "engine": "LM calls fail: check the server and the engine errors logged above",
    "target": "target_turns cannot be met: check the attribute that sets the length",
}


class Finished(Protocol):
    """What the breaker reads of a finished conversation (the runner's ``Outcome``)."""

    conv: Any  # the conversation if it was kept, else None
    rejected: Rejection | None
    engine_error: Exception | None


class KeepRateTooLow(DgtError):
    """The run stopped because it was surely keeping too few of its conversations."""


def wilson_upper(kept: int, tried: int, z: float = Z) -> float:
    """Upper end of the Wilson score interval for a proportion ``kept / tried``."""
    if tried <= 0:
        return 1.0
    p = kept / tried
    z2 = z * z
    centre = p + z2 / (2 * tried)
    margin = z * math.sqrt(p * (1 - p) / tried + z2 / (4 * tried * tried))
    return min(1.0, (centre + margin) / (1 + z2 / tried))


class KeepRateBreaker:
    """Checked after every batch of finished attempts; raises ``KeepRateTooLow`` to stop the run."""

    def __init__(self, min_keep_rate: float, min_attempts: int) -> None:
        self.min_keep_rate = min_keep_rate
        self.min_attempts = min_attempts
        self.example: Rejection | None = None  # the latest rejection seen on a dropped conversation
        self.engine_error: str | None = None

    def observe(self, outcome: Finished) -> None:
        """Remember what the latest dropped conversation was dropped for (the message's example)."""
        if outcome.conv is not None:
            return
        if outcome.rejected is not None:
            self.example = outcome.rejected
        if outcome.engine_error is not None:
            self.engine_error = str(outcome.engine_error)

    def check(self, stats: RunStats) -> None:
        if self.min_keep_rate <= 0:
            return
        kept = stats.accepted
        tried = kept + sum(stats.dropped.values())
        if tried < self.min_attempts or wilson_upper(kept, tried) >= self.min_keep_rate:
            return
        raise KeepRateTooLow(self.message(stats, kept, tried))

    def message(self, stats: RunStats, kept: int, tried: int) -> str:
        top = stats.dropped.most_common(TOP_REASONS)
        lines = [
            f"stopping: {kept} of {tried} conversations kept in this run; the keep rate is below"
            f" {self.min_keep_rate * 100:g} % with 99 % confidence (turn this off with --min-keep-rate 0)",
            "  top drops: " + ", ".join(f"{reason} {count}" for reason, count in top),
        ]
        if stats.rejected_drafts:
            lines.append("  rejected drafts: " + ", ".join(
                f"{reason} {count}" for reason, count in stats.rejected_drafts.most_common(TOP_REASONS)
            ))
        if self.example is not None:
            text = self.example.text.replace("\n", " ")
            if len(text) > EXAMPLE_CHARS:
                text = text[:EXAMPLE_CHARS] + "..."
            lines.append(f"  example: {self.example.stage} rejected a draft ({self.example.reason}): {text!r}")
        elif self.engine_error is not None:
            lines.append(f"  example: {self.engine_error}")
        advice = [_ADVICE[key] for key in dict.fromkeys(r.split("_", 1)[0] for r, _ in top) if key in _ADVICE]
        lines.append("  try: " + "; ".join(advice or ["look at the rejected drafts above"]))
        lines.append("  everything kept is saved; run again without --restart to resume")
        return "\n".join(lines)
