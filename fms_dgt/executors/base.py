"""The executor contract: run ``Pipeline.run(attempt)`` somewhere and hand back its ``Outcome``.

The driver (``runner``) decides which attempts to start, writes every finished conversation itself
and stops at exactly N; so exact N, unique ids, resume and ``--restart`` do not depend on the
executor, and a conversation is the same whichever executor ran it (it is fixed by the seed and
its attempt). An executor never sees the driver: it gets a pipeline, or on other processes the
``PipelineFactory`` that builds one there.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fms_dgt.pipeline import Outcome


class Executor(ABC):
    @property
    @abstractmethod
    def capacity(self) -> int:
        """Conversations it can run at once."""

    @abstractmethod
    async def start(self) -> None:
        """Get ready to run conversations: check the engines where they will run."""

    @abstractmethod
    def submit(self, attempt: int) -> asyncio.Task[Outcome]:
        """Start one conversation; cancelling the task abandons it."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers; add what they counted to the driver's pipeline."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """For the run summary."""
