"""The runner's view of the engines: per-stage accounting, and per conversation (budgets, spares).

Concurrency is the engines' own: each attempt waits at its engine's gate (``engines.gate``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from fms_dgt import caller
from fms_dgt.engines.base import ChatResult, Engine, Message, Schema
from fms_dgt.errors import EngineError
from fms_dgt.spend import charge
from fms_dgt.stats import RunStats
from fms_dgt.usage import Usage

logger = logging.getLogger(__name__)


class LMClient:
    """Routes a stage's call to its named engine and counts what it cost (``counted_chat``)."""

    def __init__(self, engines: dict[str, Engine], stats: RunStats) -> None:
        self.engines = engines
        self.stats = stats
        # Called after every call is counted (the runner's budgets: stop as soon as one is spent).
        self.after_call: Callable[[], None] | None = None

    async def counted_chat(
        self,
        engine: str,
        stage: str,
        messages: list[Message],
        *,
        schema: Schema | None = None,
        **params: Any,
    ) -> ChatResult:
        target = self.engines[engine]
        started = time.perf_counter()
        calling = caller.stage.set(stage)
        try:
            result = await target.layered_chat(messages, schema=schema, **params)
        except EngineError as exc:  # what the failed call still spent is on the error
            self._record(stage, engine, exc.calls, exc.usage, time.perf_counter() - started, failed=True)
            raise
        finally:
            caller.stage.reset(calling)
        logger.debug(
            "%s on %s: %.2f s, %d+%d tokens, %s",
            stage, engine, time.perf_counter() - started,
            result.usage.prompt_tokens, result.usage.completion_tokens, result.finish_reason,
        )
        self._record(stage, engine, result.calls, result.usage, time.perf_counter() - started, failed=False)
        return result

    def _record(self, stage: str, engine: str, calls: int, usage: Usage, seconds: float, *, failed: bool) -> None:
        """Count a call in the run's stats and in its conversation's spend, priced by the engine."""
        prompt, completion, cached = usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens
        price = self.engines[engine].config.price
        cost = price.cost(prompt, completion, cached) if price is not None else 0.0
        self.stats.record_call(
            stage, engine, calls=calls, prompt=prompt, completion=completion, cached=cached,
            seconds=seconds, failed=failed, cost=cost,
        )
        charge(calls=calls, prompt=prompt, completion=completion, cached=cached, cost=cost)
        if self.after_call is not None:
            self.after_call()
