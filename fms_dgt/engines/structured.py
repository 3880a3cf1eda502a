"""The structured-output layer: a reply asked for with a schema comes back validated, or is asked again.

Servers that enforce a JSON schema still return text that does not fit it now and then (a
Markdown fence, a value out of range, a json_object server that ignores the schema), so the reply
is parsed and validated here, and an invalid one is asked for again up to ``structured_retries``
times. Every call's tokens are counted, also when no reply fits or a later call fails.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from fms_dgt.engines.request import ChatResult, Request, Schema, Send
from fms_dgt.errors import EngineError, StructuredOutputError
from fms_dgt.usage import Usage

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
INVALID = "invalid structured output"  # the retry cause counted for each reply that did not fit


class StructuredOutput:
    """Adds to ``inner``: validation against the request's schema, and re-asks when it fails."""

    def __init__(
        self,
        inner: Send,
        *,
        retries: int,
        reasons: Counter[str],
        error: Callable[..., EngineError],
    ) -> None:
        self._inner = inner
        self._retries = retries
        self._reasons = reasons
        self._error = error  # the engine's error for a cause (names engine, model and URL)

    async def __call__(self, request: Request) -> ChatResult:
        if request.schema is None:
            return await self._inner(request)
        usage, calls, problem = Usage(), 0, ""
        attempts = 1 + self._retries
        for _ in range(attempts):
            try:
                result = await self._inner(request)
            except EngineError as exc:
                exc.usage.add(usage)  # the earlier replies were paid for too
                exc.calls += calls
                raise
            usage.add(result.usage)
            calls += result.calls
            try:
                result.parsed = parse_structured(result.text, request.schema)
            except ValueError as exc:
                problem = str(exc)
                self._reasons[INVALID] += 1
                continue
            result.usage, result.calls = usage, calls
            return result
        raise self._error(
            f"no reply fit the JSON schema after {attempts} calls: {problem}",
            kind=StructuredOutputError, calls=calls, usage=usage,
        )


def parse_structured(text: str, schema: Schema) -> Any:
    """Parse a JSON reply (tolerating a Markdown code fence) and validate it against ``schema``."""
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        data = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ValueError(f"reply is not JSON ({exc.msg}): {text[:80]!r}") from None
    if isinstance(schema, dict):
        return data
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "reply"
        raise ValueError(f"{loc}: {first['msg']}") from None
