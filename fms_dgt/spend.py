"""What one conversation cost: LM calls, tokens, money and wall time, whoever made the calls.

The run's totals live in ``RunStats``; budgets and the forecast also need the spread between
conversations (how much one more attempt will cost), so each conversation gets its own
``Spend`` in a context variable. ``asyncio`` copies the context into every task, so the calls a
conversation's stages make (even from sub-tasks) are charged to that conversation, on the
driver or on a Ray worker alike; the ``Spend`` travels back on the conversation's ``Outcome``.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(slots=True)
class Spend:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0  # wall time of the conversation, set by ``finish``
    _started: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def finish(self) -> Spend:
        self.seconds = time.perf_counter() - self._started
        return self


_CURRENT: ContextVar[Spend | None] = ContextVar("fms_dgt_conversation_spend", default=None)


def track() -> Spend:
    """Start charging this task's LM calls (and those of tasks it starts) to a new ``Spend``."""
    spend = Spend()
    _CURRENT.set(spend)
    return spend


def charge(*, calls: int, prompt: int, completion: int, cached: int, cost: float) -> None:
    """Add one LM call to the current conversation's spend (no-op outside a conversation)."""
    spend = _CURRENT.get()
    if spend is None:
        return
    spend.calls += calls
    spend.prompt_tokens += prompt
    spend.completion_tokens += completion
    spend.cached_tokens += cached
    spend.cost += cost
