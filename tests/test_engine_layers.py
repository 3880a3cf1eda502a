"""Each engine layer on its own, around a plain async function: no engine, no server, no other layer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from fms_dgt.engines.breaker import ERROR_WINDOW, ErrorRateBreaker
from fms_dgt.engines.endpoints import EndpointRoute, Endpoints
from fms_dgt.engines.gate import Gate, Gated
from fms_dgt.engines.limiter import FixedLimit
from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.engines.retry import Retries
from fms_dgt.engines.scripted import ScriptedEngine
from fms_dgt.engines.structured import StructuredOutput
from fms_dgt.engines.timeout import Deadline
from fms_dgt.errors import EngineError, StructuredOutputError
from fms_dgt.lm_client import LMClient
from fms_dgt.stats import RunStats
from fms_dgt.usage import Usage

REQUEST = Request([{"role": "user", "content": "hi"}])


class Answer(BaseModel):
    score: int


def error(cause: str, *, kind: type[EngineError] = EngineError, **kwargs: Any) -> EngineError:
    return kind(cause, engine="e", **kwargs)


def replies(*items: str | EngineError) -> Callable[[Request], Any]:
    """An inner step that answers (or fails) from a queue, ten tokens a reply."""
    queue = list(items)

    async def send(request: Request) -> ChatResult:
        item = queue.pop(0)
        if isinstance(item, EngineError):
            raise item
        return ChatResult(item, "stop", Usage(10, 10))

    return send


async def test_structured_output_asks_again_and_counts_every_call() -> None:
    reasons: Counter[str] = Counter()
    layer = StructuredOutput(replies("not json", '{"score": 3}'), retries=2, reasons=reasons, error=error)
    result = await layer(Request(REQUEST.messages, Answer))
    assert result.parsed == Answer(score=3)
    assert (result.calls, result.usage.completion_tokens) == (2, 20)
    assert reasons == {"invalid structured output": 1}


async def test_structured_output_that_never_fits_carries_what_it_spent() -> None:
    layer = StructuredOutput(replies("{}", "{}", "{}"), retries=2, reasons=Counter(), error=error)
    with pytest.raises(StructuredOutputError) as info:
        await layer(Request(REQUEST.messages, Answer))
    assert "after 3 calls" in str(info.value) and "score" in str(info.value)
    assert (info.value.calls, info.value.usage.prompt_tokens) == (3, 30)


async def test_a_failure_after_an_invalid_reply_still_counts_that_reply() -> None:
    """The first reply came back (and was paid for) but did not fit; the re-ask failed for good."""
    inner = Retries(
        replies("nope", error("http 500", retryable=True), error("http 500", retryable=True)),
        engine="e", max_retries=1, retry_wait=0, reasons=Counter(), error=error,
    )
    layer = StructuredOutput(inner, retries=2, reasons=Counter(), error=error)
    with pytest.raises(EngineError, match="gave up after 2 attempts") as info:
        await layer(Request(REQUEST.messages, Answer))
    assert info.value.calls == 3  # the invalid reply, then two failed attempts
    assert info.value.usage.completion_tokens == 10


async def test_retries_count_attempts_on_the_result_and_on_the_error() -> None:
    reasons: Counter[str] = Counter()
    layer = Retries(
        replies(error("http 503: busy", retryable=True), "ok"),
        engine="e", max_retries=3, retry_wait=0, reasons=reasons, error=error,
    )
    assert (await layer(REQUEST)).calls == 2
    assert reasons == {"http 503": 1}
    refused = Retries(replies(error("http 400: bad")), engine="e", max_retries=3, retry_wait=0,
                      reasons=Counter(), error=error)
    with pytest.raises(EngineError, match="http 400") as info:
        await refused(REQUEST)
    assert info.value.calls == 1  # not worth retrying: raised as it was


async def test_breaker_stops_once_most_attempts_fail_unless_someone_answers() -> None:
    async def failing(request: Request) -> ChatResult:
        raise error("http 500", retryable=True)

    answering = [True]
    layer = ErrorRateBreaker(failing, error=error, still_answering=lambda: answering[0])
    for _ in range(ERROR_WINDOW):
        with pytest.raises(EngineError) as info:
            await layer(REQUEST)
        assert not info.value.fatal  # another endpoint still answers
    answering[0] = False
    with pytest.raises(EngineError) as info:
        await layer(REQUEST)
    assert info.value.fatal and "of the last 40 requests failed" in str(info.value)


async def test_gated_sends_to_the_granted_route_and_reports_to_its_limit() -> None:
    sent: list[str] = []

    def route(name: str) -> Send:
        async def send(request: Request) -> ChatResult:
            sent.append(name)
            await asyncio.sleep(0.01)
            return ChatResult(name)

        return send

    gate: Gate[str] = Gate({"a": FixedLimit(1), "b": FixedLimit(1)})
    layer = Gated(gate, {"a": route("a"), "b": route("b")})
    results = await asyncio.gather(layer(REQUEST), layer(REQUEST), layer(REQUEST))
    assert sorted(sent) == ["a", "a", "b"] or sorted(sent) == ["a", "b", "b"]
    assert {r.text for r in results} == {"a", "b"}
    assert gate.in_flight == {"a": 0, "b": 0}
    waiting = asyncio.ensure_future(layer(REQUEST))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert layer.cancelled == 1 and gate.in_flight == {"a": 0, "b": 0}


async def test_endpoint_route_reports_failures_to_the_balancer() -> None:
    endpoints = Endpoints("e", ["http://a", "http://b"])
    first = endpoints.all[0]
    route = EndpointRoute(endpoints, first, replies(error("http 503", retryable=True), "ok"))
    with pytest.raises(EngineError):
        await route(REQUEST)
    assert (first.healthy, first.strikes, first.outstanding) == (False, 1, 0)
    assert endpoints.pick() is endpoints.all[1]  # the failed one rests
    await route(REQUEST)
    assert first.healthy and first.counts.as_dict() == {"calls": 2, "errors": 1}


async def test_deadline_turns_a_slow_reply_into_a_retryable_failure() -> None:
    async def slow(request: Request) -> ChatResult:
        await asyncio.sleep(5)
        return ChatResult("late")

    with pytest.raises(EngineError, match="no reply within 0.05 s") as info:
        await Deadline(slow, seconds=0.05, error=error)(REQUEST)
    assert info.value.retryable


async def test_the_run_counts_what_a_failed_call_spent() -> None:
    """``LMClient`` reads the typed ``calls`` and ``usage`` of the error into the run's stats."""
    invalid = '{"score": "not a number at all"}'  # 32 characters: 8 tokens to the scripted engine
    engine = ScriptedEngine(replies=[invalid] * 3)
    stats = RunStats()
    messages = [{"role": "user", "content": "x" * 40}]  # 10 prompt tokens
    with pytest.raises(StructuredOutputError):
        await LMClient({"default": engine}, stats).counted_chat("default", "judge", messages, schema=Answer)
    judge = stats.per_stage["judge"]
    assert (judge.calls, judge.failed, judge.prompt_tokens, judge.completion_tokens) == (3, 1, 30, 24)
