"""The retry layer, the one retry policy for every engine: timeouts, connection errors, 429 and
5xx are retried with exponential backoff and jitter, ``Retry-After`` is honoured, anything else
fails at once. With several endpoints, a retry goes at once to another endpoint that answers,
when there is one (``has_spare``; the endpoints say)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.errors import EngineError

logger = logging.getLogger(__name__)

# A server asking for more than this is treated as asking for this; a run should not stall for hours.
MAX_RETRY_AFTER = 120.0


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, EngineError) and exc.retryable


class Retries:
    """Adds to ``inner``: another attempt after a failure worth retrying; ``calls`` on the result
    (and on the error, when it gives up) says how many attempts were made."""

    def __init__(
        self,
        inner: Send,
        *,
        engine: str,
        max_retries: int,
        retry_wait: float,
        reasons: Counter[str],
        error: Callable[..., EngineError],
        has_spare: Callable[[], bool] | None = None,
    ) -> None:
        """Waits scale with ``retry_wait``, each retry is counted by cause in ``reasons``, and when
        ``has_spare`` says another endpoint answers, a retry goes there at once."""
        self._inner = inner
        self._engine = engine
        self._stop = stop_after_attempt(max_retries + 1)
        self._backoff = wait_exponential_jitter(multiplier=retry_wait, max=30 * retry_wait + 1e-9, jitter=retry_wait)
        self._reasons = reasons
        self._error = error  # the engine's error for a cause (names engine, model and URL)
        self._has_spare = has_spare

    async def __call__(self, request: Request) -> ChatResult:
        # The first attempt runs outside tenacity. Its loop's objects form reference cycles
        # (about 35 objects a call), which only the garbage collector frees: at 320 calls/s that
        # was a 110-220 ms pause of the event loop every 5 s (benchmarks/server_speed.py, 64
        # slots). A first attempt that fails is replayed into the loop, so the waits, the counts
        # and the attempts are tenacity's as before.
        try:
            result = await self._inner(request)
        except EngineError as exc:
            first: EngineError | None = exc
        else:
            result.calls = 1
            return result
        attempt_number = 0
        try:
            # A new loop per call: tenacity keeps the state of the attempts in it.
            async for attempt in AsyncRetrying(
                stop=self._stop,
                wait=self._wait,
                retry=retry_if_exception(_is_retryable),
                before_sleep=self._count,
                reraise=True,
            ):
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    if first is not None:
                        replay, first = first, None
                        raise replay
                    result = await self._inner(request)
                    result.calls = attempt_number
                    return result
        except EngineError as exc:
            exc.calls = attempt_number
            if exc.fatal or not (attempt_number > 1 or exc.retryable):
                raise
            plural = "s" if attempt_number > 1 else ""
            raise self._error(
                f"gave up after {attempt_number} attempt{plural}: {exc.cause}",
                url=exc.url, calls=attempt_number, usage=exc.usage,
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        if self._has_spare is not None and self._has_spare():
            return 0.0  # the failed endpoint is resting; another one answers: go there now
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, EngineError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), MAX_RETRY_AFTER)
        return self._backoff(state)

    def _count(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.cause if isinstance(exc, EngineError) else repr(exc)
        self._reasons[_reason(cause)] += 1
        logger.warning(
            "engine %s: attempt %d failed (%s); retrying in %.1f s",
            self._engine,
            state.attempt_number,
            cause,
            state.upcoming_sleep,
        )


def _reason(cause: str) -> str:
    """A short, countable reason: 'http 503', 'timeout', 'connection error', ..."""
    if cause.startswith("http "):
        return cause.split(":")[0]
    if cause.startswith("no reply within"):
        return "timeout"
    return cause.split(":")[0][:40]
