"""One LM call as every engine layer sees it: a typed request in, a typed result out.

A backend (``send`` of an engine type) turns a ``Request`` into its server's API and the answer
into a ``ChatResult``; the layers around it (``engines.structured``, ``retry``, ``breaker``,
``gate``, ``endpoints``, ``timeout``) all take and return these same two types, so each can be
read, tested and reordered without knowing what the others do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydantic import BaseModel

from fms_dgt.usage import Usage

Message = dict[str, str]
# A pydantic model class (the reply is validated into it) or a JSON schema dict (parsed only).
Schema = type[BaseModel] | dict[str, Any]


@dataclass(frozen=True, slots=True)
class Request:
    """What to ask: the chat so far, the shape the reply must have, the decoding parameters.

    ``params`` are the engine's defaults merged with the call's own (temperature, top_p,
    max_tokens, seed, stop), ready to send."""

    messages: list[Message]
    schema: Schema | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The schema as JSON schema, for the server; None when any text will do."""
        if self.schema is None or isinstance(self.schema, dict):
            return self.schema
        return _model_schema(self.schema)


@lru_cache(maxsize=512)
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    # Generating a schema costs ~1 ms of CPU; a stage asks for the same few models on every call.
    return model.model_json_schema()


@dataclass(slots=True)
class ChatResult:
    """What one chat call returned; ``parsed`` is set when a schema was requested."""

    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    parsed: Any = None
    # Calls made for this result: retries after failures plus structured-output re-asks.
    calls: int = 1


# One step of the way from the engine's ``layered_chat`` to the server: a backend's bound ``send``, or a
# layer around one. Failures raise ``EngineError`` (``retryable`` when worth another attempt).
Send = Callable[[Request], Awaitable[ChatResult]]
