"""The executor contract: run ``Pipeline.run(attempt)`` somewhere and hand back its ``Outcome``.

The driver (``runner``) decides which attempts to start, writes every finished conversation itself
and stops at exactly N; so exact N, unique ids, resume and ``--restart`` do not depend on the
executor, and a conversation is the same whichever executor ran it (it is fixed by the seed and
its attempt). An executor never sees the driver: it gets a pipeline, or on other processes the
``PipelineFactory`` that builds one there.

Executors are a registry like stages and engines: a new one is one module with a class decorated
``@register_executor("name")`` (built in, or from a plugin through the ``fms_dgt.plugins`` entry
point), and ``--executor name`` selects it. Its own flags, if any, are its ``add_arguments``.
"""

from __future__ import annotations

import argparse
import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from fms_dgt.registry import Registry

if TYPE_CHECKING:
    from fms_dgt.pipeline import Outcome, Pipeline


class Executor(ABC):
    registry_name: ClassVar[str]
    # True when conversations run in other processes: the driver cannot see their engines' current
    # limits, so it sends a fixed number of conversations (see ``pacing``).
    remote: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def build(cls, pipeline: Pipeline, options: Any, in_flight: Callable[[], int]) -> Executor:
        """The executor for the driver's ``pipeline``: ``options`` are what ``options_from`` made
        of the command line (None: the defaults); ``in_flight()`` is the number of conversations to
        run at once in this process, or in each worker process."""

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        """Add this executor's own flags (default None) to the CLI's executor group; return them,
        so that the CLI can refuse them with another executor."""
        return []

    @classmethod
    def options_from(cls, args: argparse.Namespace) -> Any:
        """This executor's options from the parsed flags (None: it has none)."""
        return None

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


EXECUTORS: Registry[type[Executor]] = Registry("executor")


def register_executor(name: str) -> Any:
    """Class decorator: make an executor available as ``--executor name``."""
    return EXECUTORS.register(name)
