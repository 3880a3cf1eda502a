"""The runner's view of the engines: per-stage accounting (and per conversation, for spares).

Concurrency is the engines' own: each attempt waits at its engine's gate (``engines.gate``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from fms_dgt.engines.base import ChatResult, Engine, Message, Schema
from fms_dgt.errors import EngineError
from fms_dgt.pacing import tally
from fms_dgt.stats import RunStats

logger = logging.getLogger(__name__)


class LMClient:
    """Routes a stage's call to its named engine and counts what it cost."""

    def __init__(self, engines: dict[str, Engine], stats: RunStats) -> None:
        self.engines = engines
        self.stats = stats

    async def chat(
        self,
        engine: str,
        stage: str,
        messages: list[Message],
        *,
        schema: Schema | None = None,
        **params: Any,
    ) -> ChatResult:
        target = self.engines[engine]
        conversation = tally.get()
        started = time.perf_counter()
        try:
            result = await target.chat(messages, schema=schema, **params)
        except EngineError as exc:
            usage = getattr(exc, "usage", None)
            self.stats.record_call(
                stage,
                engine,
                calls=getattr(exc, "calls", 1),
                prompt=usage.prompt_tokens if usage else 0,
                completion=usage.completion_tokens if usage else 0,
                seconds=time.perf_counter() - started,
                failed=True,
            )
            if conversation is not None and usage is not None:
                conversation.add(getattr(exc, "calls", 1), usage.prompt_tokens + usage.completion_tokens)
            raise
        if conversation is not None:
            conversation.add(result.calls, result.usage.prompt_tokens + result.usage.completion_tokens)
        logger.debug(
            "%s on %s: %.2f s, %d+%d tokens, %s",
            stage, engine, time.perf_counter() - started,
            result.usage.prompt_tokens, result.usage.completion_tokens, result.finish_reason,
        )
        self.stats.record_call(
            stage,
            engine,
            calls=result.calls,
            prompt=result.usage.prompt_tokens,
            completion=result.usage.completion_tokens,
            cached=result.usage.cached_tokens,
            seconds=time.perf_counter() - started,
            failed=False,
        )
        return result
