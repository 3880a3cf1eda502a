"""Where conversations run: in this process (``local``) or on the workers of a Ray cluster (``ray``).

The runner decides which attempts to start, writes every finished conversation itself and stops at
exactly N; an executor only runs ``Runner.run_conversation(attempt)`` somewhere and hands back its
``Outcome``. So exact N, unique ids, resume and ``--restart`` do not depend on the executor, and a
conversation is the same whichever executor ran it (it is fixed by the seed and its attempt).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fms_dgt.runner import Outcome, Runner


@dataclass(frozen=True)
class RayOptions:
    """``--executor ray``: which cluster, and how many workers to start on it."""

    address: str | None = None  # None: start a local cluster for this run
    workers: int | None = None  # None: one per CPU of the cluster


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
        """Release workers; add what they counted to the run's stats."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """For the run summary."""


class LocalExecutor(Executor):
    """Every conversation is a task on this process's event loop."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    @property
    def capacity(self) -> int:
        """A fixed number, or twice the engines' current limits (see ``pacing``)."""
        return self.runner.concurrency or self.runner.pacer.wanted()

    async def start(self) -> None:
        for engine in self.runner.engines.values():
            await engine.check()

    def submit(self, attempt: int) -> asyncio.Task[Outcome]:
        return asyncio.create_task(self.runner.run_conversation(attempt))

    def describe(self) -> dict[str, Any]:
        return {"type": "local"}


def make_executor(runner: Runner, ray: RayOptions | None) -> Executor:
    """The local executor, or the Ray one (which needs the ``ray`` extra; a clear error if missing)."""
    if ray is None:
        return LocalExecutor(runner)
    from fms_dgt.executors.ray_cluster import RayExecutor

    return RayExecutor(runner, ray)
