"""``type: scripted``: a test double that answers from a queue and records every call."""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fms_dgt import caller
from fms_dgt.config import EngineConfig
from fms_dgt.engines.base import ChatResult, InProcessEngine, Message, Request, Usage

Reply = str | dict[str, Any] | Exception | ChatResult


@dataclass
class RecordedCall:
    messages: list[Message]
    schema: dict[str, Any] | None
    params: dict[str, Any]
    stage: str | None = None  # the calling stage's name (``caller.stage``), e.g. "lm/user/guided"


Responder = Callable[[RecordedCall], Reply]


class ScriptedEngine(InProcessEngine):
    """Replies come from ``replies`` (in order), else from ``responder(call)``, which answers by
    ``call.stage`` (the calling stage's name) rather than by prompt wording; dicts are sent as JSON.

    An ``Exception`` in the queue is raised instead of answering, to script failures; a
    ``ChatResult`` is returned as it is (to script a ``finish_reason``). Not in the
    engine registry: tests build it directly and hand it to the runner.
    """

    registry_name = "scripted"

    def __init__(
        self,
        name: str = "default",
        config: EngineConfig | None = None,
        *,
        replies: list[Reply] | None = None,
        responder: Responder | None = None,
    ) -> None:
        super().__init__(name, config or EngineConfig(type="scripted", model="scripted", retry_wait=0))
        self.replies: deque[Reply] = deque(replies or [])
        self.responder = responder
        self.calls: list[RecordedCall] = []

    async def send(self, request: Request) -> ChatResult:
        call = RecordedCall(
            [dict(m) for m in request.messages], request.json_schema, dict(request.params), caller.stage.get()
        )
        self.calls.append(call)
        if self.replies:
            reply = self.replies.popleft()
        elif self.responder is not None:
            reply = self.responder(call)
        else:
            raise AssertionError("scripted engine: no reply queued for this call")
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, ChatResult):
            return reply
        text = json.dumps(reply) if isinstance(reply, dict) else reply
        prompt_tokens = sum(len(m["content"]) for m in request.messages) // 4
        return ChatResult(text=text, finish_reason="stop", usage=Usage(prompt_tokens, len(text) // 4))

    async def check(self) -> None:
        return None
