"""A plugin from outside the package: one engine and one stage, in this one file.

Installed (``[project.entry-points."fms_dgt.plugins"] hello = "fms_dgt_hello"``), it lets a task file
say ``type: hello/echo`` for an engine and ``name: hello/exchange`` for a stage. tests/test_plugins.py
installs it into a temporary folder on ``PYTHONPATH`` and runs a task that uses both.
"""

from __future__ import annotations

from typing import Literal

from fms_dgt import LMStage, register_engine, register_stage
from fms_dgt.config import EngineConfig, LMStageOptions
from fms_dgt.conversation import Conversation, MessageStep
from fms_dgt.engines.base import ChatResult, InProcessEngine, Request, Usage
from fms_dgt.stages.base import ConversationContext


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
        result = await self.chat(ctx, [{"role": "user", "content": user}])
        conv.steps.append(
            MessageStep(role="assistant", content=result.text, stage_name=self.name, metadata=self.provenance(result))
        )
