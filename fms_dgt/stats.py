"""Counters for the run summary: LM calls and tokens per stage and engine, drops by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class CallStats:
    calls: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    seconds: float = 0.0
    cost: float = 0.0  # from the engine's ``price``; 0 when it has none

    def add(self, other: CallStats) -> None:
        self.calls += other.calls
        self.failed += other.failed
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.seconds += other.seconds
        self.cost += other.cost

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "failed": self.failed,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_prompt_tokens": self.cached_tokens,
            "seconds": round(self.seconds, 3),
            "cost": round(self.cost, 6),
        }


# The RunStats fields that count events by key.
_COUNTERS = ("dropped", "rescued", "stop_reasons", "turns", "fallbacks", "rejected_drafts", "verdicts", "repairs")


@dataclass
class RunStats:
    """Everything counted during one run; plain counters so the hot path stays cheap."""

    per_stage: dict[str, CallStats] = field(default_factory=dict)
    per_engine: dict[str, CallStats] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    rescued: Counter[str] = field(default_factory=Counter)
    stop_reasons: Counter[str] = field(default_factory=Counter)
    turns: Counter[int] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    rejected_drafts: Counter[str] = field(default_factory=Counter)
    # The per-turn verifier's answers, "role:verdict" (passes as "role:ok"), and drafts fixed in
    # place instead of rewritten ("assistant:trimmed_for_length").
    verdicts: Counter[str] = field(default_factory=Counter)
    repairs: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    attempts: int = 0
    # Complete user/assistant exchanges written, in kept, dropped and unfinished conversations
    # alike: the progress line's sign of life and its early ETA, before any conversation is kept.
    exchanges: int = 0

    def record_call(
        self,
        stage: str,
        engine: str,
        *,
        calls: int,
        prompt: int,
        completion: int,
        seconds: float,
        failed: bool,
        cached: int = 0,
        cost: float = 0.0,
    ) -> None:
        for table, key in ((self.per_stage, stage), (self.per_engine, engine)):
            stats = table.get(key)
            if stats is None:
                stats = table[key] = CallStats()
            stats.calls += calls
            stats.failed += failed
            stats.prompt_tokens += prompt
            stats.completion_tokens += completion
            stats.cached_tokens += cached
            stats.seconds += seconds
            stats.cost += cost

    def merge(self, other: RunStats) -> None:
        """Add another run's counters to these (a Ray worker's, on the driver)."""
        for mine, theirs in ((self.per_stage, other.per_stage), (self.per_engine, other.per_engine)):
            for key, more in theirs.items():
                mine.setdefault(key, CallStats()).add(more)
        for counter in _COUNTERS:
            getattr(self, counter).update(getattr(other, counter))
        self.accepted += other.accepted
        self.attempts += other.attempts
        self.exchanges += other.exchanges

    def take(self) -> RunStats:
        """The counters so far, zeroed here in place (stages keep a reference to this object)."""
        taken = RunStats(
            per_stage=dict(self.per_stage),
            per_engine=dict(self.per_engine),
            accepted=self.accepted,
            attempts=self.attempts,
            exchanges=self.exchanges,
            **{counter: getattr(self, counter).copy() for counter in _COUNTERS},
        )
        for table in (self.per_stage, self.per_engine):
            table.clear()
        for counter in _COUNTERS:
            getattr(self, counter).clear()
        self.accepted = self.attempts = self.exchanges = 0
        return taken

    @property
    def lm_calls(self) -> int:
        return sum(s.calls for s in self.per_engine.values())

    @property
    def tokens(self) -> int:
        return sum(s.prompt_tokens + s.completion_tokens for s in self.per_engine.values())

    @property
    def cost(self) -> float:
        return sum(s.cost for s in self.per_engine.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "attempts": self.attempts,
            "exchanges": self.exchanges,
            "dropped": dict(self.dropped),
            "rescued": dict(self.rescued),
            "stop_reasons": dict(self.stop_reasons),
            "turns": {str(k): v for k, v in sorted(self.turns.items())},
            "flow_controller_fallbacks": dict(self.fallbacks),
            "rejected_drafts": dict(self.rejected_drafts),
            "verifier_verdicts": dict(self.verdicts),
            "repaired_drafts": dict(self.repairs),
            "lm_calls": self.lm_calls,
            "per_stage": {k: v.as_dict() for k, v in self.per_stage.items()},
            "per_engine": {k: v.as_dict() for k, v in self.per_engine.items()},
        }
