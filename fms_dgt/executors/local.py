"""``--executor local``: every conversation is a task on this process's event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fms_dgt.executors.base import Executor, register_executor

if TYPE_CHECKING:
    from fms_dgt.pipeline import Outcome, Pipeline


@register_executor("local")
class LocalExecutor(Executor):
    """Runs the conversations on the driver's own pipeline, so its counters are the run's and its
    engines' current limits are the ones the driver's pacing follows."""

    def __init__(self, pipeline: Pipeline, in_flight: Callable[[], int]) -> None:
        self.pipeline = pipeline
        self._in_flight = in_flight

    @classmethod
    def build(cls, pipeline: Pipeline, options: Any, in_flight: Callable[[], int]) -> LocalExecutor:
        return cls(pipeline, in_flight)

    @property
    def capacity(self) -> int:
        """A fixed number, or twice the engines' current limits (see ``pacing``)."""
        return self._in_flight()

    async def start(self) -> None:
        await self.pipeline.check()

    def submit(self, attempt: int) -> asyncio.Task[Outcome]:
        return asyncio.create_task(self.pipeline.run(attempt))

    def describe(self) -> dict[str, Any]:
        return {"type": "local"}
