"""The breaker layer: stop the run when most of an engine's recent requests failed.

Retries hide a server that is down or refusing every request: each conversation would spend its
whole retry budget before failing, one after another. This layer looks at the outcome of every
attempt (retries included) and raises a fatal ``EngineError`` once more than ``MAX_ERROR_RATE`` of
the last ``ERROR_WINDOW`` attempts failed (after at least half a window of them), unless some
endpoint still answers (``still_answering``; with several endpoints the balancer routes around a
failing one). The keep-rate breaker of the whole run is ``fms_dgt.breaker``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.errors import EngineError

ERROR_WINDOW = 40
MAX_ERROR_RATE = 0.5


class ErrorRateBreaker:
    """Adds to ``inner``: a fatal error instead of the attempt's own once most attempts fail."""

    def __init__(
        self,
        inner: Send,
        *,
        error: Callable[..., EngineError],
        still_answering: Callable[[], bool] | None = None,
    ) -> None:
        self._inner = inner
        self._error = error  # the engine's error for a cause (names engine, model and URL)
        self._still_answering = still_answering
        self._recent: deque[bool] = deque(maxlen=ERROR_WINDOW)  # True = the attempt failed

    async def __call__(self, request: Request) -> ChatResult:
        try:
            result = await self._inner(request)
        except EngineError as exc:
            self._recent.append(True)
            self._trip_if_failing(exc.cause)
            raise
        self._recent.append(False)
        return result

    def _trip_if_failing(self, cause: str) -> None:
        if self._still_answering is not None and self._still_answering():
            return  # another endpoint still answers: the balancer routes around this one
        failures = sum(self._recent)
        if len(self._recent) >= ERROR_WINDOW // 2 and failures > MAX_ERROR_RATE * len(self._recent):
            raise self._error(
                f"stopping: {failures} of the last {len(self._recent)} requests failed (last: {cause})",
                fatal=True,
            )
