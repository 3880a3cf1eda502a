"""The one retry policy for every engine: timeouts, connection errors, 429 and 5xx are retried
with exponential backoff and jitter, ``Retry-After`` is honoured, anything else fails at once.
With several endpoints, a retry goes at once to another endpoint that answers, when there is one."""

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

from fms_dgt.errors import EngineError

logger = logging.getLogger(__name__)

# A server asking for more than this is treated as asking for this; a run should not stall for hours.
MAX_RETRY_AFTER = 120.0


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, EngineError) and exc.retryable


def retrying(
    engine: str,
    *,
    max_retries: int,
    retry_wait: float,
    reasons: Counter[str],
    has_spare: Callable[[], bool] | None = None,
) -> AsyncRetrying:
    """Build the retry loop for one call on the engine named ``engine``: waits scale with
    ``retry_wait``, each retry is counted by cause in ``reasons``, and when ``has_spare`` says
    another endpoint answers, a retry goes there at once."""
    base_wait = retry_wait
    backoff = wait_exponential_jitter(multiplier=base_wait, max=30 * base_wait + 1e-9, jitter=base_wait)

    def wait(state: RetryCallState) -> float:
        if has_spare is not None and has_spare():
            return 0.0  # the failed endpoint is resting; another one answers: go there now
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, EngineError) and exc.retry_after is not None:
            return min(max(exc.retry_after, 0.0), MAX_RETRY_AFTER)
        return backoff(state)

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        cause = exc.cause if isinstance(exc, EngineError) else repr(exc)
        reasons[_reason(cause)] += 1
        logger.warning(
            "engine %s: attempt %d failed (%s); retrying in %.1f s",
            engine,
            state.attempt_number,
            cause,
            state.upcoming_sleep,
        )

    return AsyncRetrying(
        stop=stop_after_attempt(max_retries + 1),
        wait=wait,
        retry=retry_if_exception(_is_retryable),
        before_sleep=before_sleep,
        reraise=True,
    )


def _reason(cause: str) -> str:
    """A short, countable reason: 'http 503', 'timeout', 'connection error', ..."""
    if cause.startswith("http "):
        return cause.split(":")[0]
    if cause.startswith("no reply within"):
        return "timeout"
    return cause.split(":")[0][:40]
