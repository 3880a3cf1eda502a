"""The timeout layer: an attempt that has no reply within the engine's ``timeout`` fails, retryably.

Backends set their own client timeouts too; this one holds for every backend (the embedded model
has none) and counts from when the attempt got its slot, not from when it started waiting at the
gate, so a long queue is not mistaken for a slow server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.errors import EngineError


class Deadline:
    """Adds to ``inner``: a retryable ``EngineError`` after ``seconds`` without a reply."""

    def __init__(self, inner: Send, *, seconds: float, error: Callable[..., EngineError]) -> None:
        self._inner = inner
        self._seconds = seconds
        self._error = error  # the engine's error for a cause, naming where the attempt went

    async def __call__(self, request: Request) -> ChatResult:
        try:
            async with asyncio.timeout(self._seconds):
                return await self._inner(request)
        except TimeoutError:
            raise self._error(f"no reply within {self._seconds:g} s", retryable=True) from None
