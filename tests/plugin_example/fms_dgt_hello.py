"""A plugin from outside the package: one engine, one stage and one executor, in this one file.

Installed (``[project.entry-points."fms_dgt.plugins"] hello = "fms_dgt_hello"``), it lets a task file
say ``type: hello/echo`` for an engine and ``name: hello/exchange`` for a stage, and the command
line say ``--executor hello/one-by-one`` (with its own flag ``--hello-pause``). tests/test_plugins.py
installs it into a temporary folder on ``PYTHONPATH`` and runs a task that uses all three.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from fms_dgt import LMStage, register_engine, register_executor, register_stage
from fms_dgt.config import EngineConfig, LMStageOptions
from fms_dgt.conversation import Conversation, MessageStep
from fms_dgt.engines.base import ChatResult, InProcessEngine, Request, Usage
from fms_dgt.executors.base import Executor
from fms_dgt.stages.base import ConversationContext

if TYPE_CHECKING:  # the pipeline imports the task model, which loads this plugin
    from fms_dgt.pipeline import Outcome, Pipeline


class EchoConfig(EngineConfig):
    type: Literal["hello/echo"] = "hello/echo"
    prefix: str = "echo"


@register_engine("hello/echo")
class EchoEngine(InProcessEngine):
    """Answers every request with its last message, prefixed: ``send`` and ``check`` are all an
    engine implements (retries, re-asks, limits and timeouts are the layers around ``send``)."""

    Config = EchoConfig
    config: EchoConfig

    async def send(self, request: Request) -> ChatResult:
        text = f"{self.config.prefix}: {request.messages[-1]['content']}"
        return ChatResult(text=text, finish_reason="stop", usage=Usage(len(request.messages), len(text.split())))

    async def check(self) -> None:
        return None


class ExchangeOptions(LMStageOptions):
    opener: str = "hello"


@register_stage("hello/exchange")
class ExchangeStage(LMStage):
    """Writes one whole exchange: the user's message is the opener and the turn number, the
    assistant's is the engine's reply."""

    Options = ExchangeOptions
    options: ExchangeOptions

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        user = f"{self.options.opener} {ctx.turn + 1}"
        conv.steps.append(MessageStep(role="user", content=user, stage_name=self.name))
        result = await self.chat_with_settings(ctx, [{"role": "user", "content": user}])
        conv.steps.append(
            MessageStep(role="assistant", content=result.text, stage_name=self.name, metadata=self.provenance(result))
        )


@register_executor("hello/one-by-one")
class OneByOneExecutor(Executor):
    """Runs one conversation at a time on the driver's pipeline, after ``--hello-pause`` seconds:
    ``build``, ``capacity``, ``start``, ``submit`` and ``describe`` are all an executor implements
    (the driver picks the attempts, writes the output and stops at N)."""

    def __init__(self, pipeline: Pipeline, pause: float) -> None:
        self.pipeline = pipeline
        self.pause = pause
        self.ran = 0

    @classmethod
    def build(cls, pipeline: Pipeline, options: Any, in_flight: Callable[[], int]) -> OneByOneExecutor:
        return cls(pipeline, options if options is not None else 0.0)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> list[argparse.Action]:
        return [group.add_argument("--hello-pause", type=float, metavar="SECONDS",
                                   help="with --executor hello/one-by-one: wait this long before each conversation")]

    @classmethod
    def options_from(cls, args: argparse.Namespace) -> float | None:
        return args.hello_pause

    @property
    def capacity(self) -> int:
        return 1

    async def start(self) -> None:
        await self.pipeline.check()

    def submit(self, attempt: int) -> asyncio.Task[Outcome]:
        return asyncio.create_task(self._run(attempt))

    async def _run(self, attempt: int) -> Outcome:
        await asyncio.sleep(self.pause)
        self.ran += 1
        return await self.pipeline.run(attempt)

    def describe(self) -> dict[str, Any]:
        return {"type": "hello/one-by-one", "pause": self.pause, "conversations_run": self.ran}
