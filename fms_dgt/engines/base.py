"""The engine contract: one async ``chat`` call, with retries, timeouts and structured output here.

Engines only translate a request into their server's API (``_send``) and say whether the server is
up (``check``). Engines that talk to servers set ``endpoints``. Every attempt waits at the engine's
``gate`` (``engines.gate``) for room under an endpoint's limit (``engines.limiter``: pinned, or
adaptive with ``max_concurrency: auto``), which also picks the endpoint; its outcome and latency
go back to that limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from fms_dgt.config import EngineConfig
from fms_dgt.engines.endpoints import Endpoint, EndpointCounts, Endpoints
from fms_dgt.engines.gate import Gate
from fms_dgt.engines.limiter import AdaptiveLimit, FixedLimit, Limit
from fms_dgt.engines.retry import retrying
from fms_dgt.errors import EngineError, StructuredOutputError
from fms_dgt.registry import Registry

logger = logging.getLogger(__name__)

Message = dict[str, str]
# Circuit breaker: stop the run when more than this share of the last ERROR_WINDOW requests
# failed (after at least ERROR_WINDOW // 2 of them), instead of burning through retries.
ERROR_WINDOW = 40
MAX_ERROR_RATE = 0.5
Schema = type[BaseModel] | dict[str, Any]
# The gate's key for the one limit of an engine without servers (the embedded one).
IN_PROCESS = "local"


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the server reused from its cache instead of processing (when it says so).
    cached_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """From an OpenAI-style ``usage`` object (llama.cpp and vLLM report cached tokens too)."""
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
        )


@dataclass(slots=True)
class ChatResult:
    """What one chat call returned; ``parsed`` is set when a schema was requested."""

    text: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    parsed: Any = None
    # Calls made for this result: retries after failures plus structured-output re-asks.
    calls: int = 1


@dataclass
class EngineCounts:
    """What an engine counted besides LM calls: retries by cause, requests per endpoint."""

    retries: Counter[str] = field(default_factory=Counter)
    endpoints: dict[str, EndpointCounts] = field(default_factory=dict)


class Engine(ABC):
    """Base class for LM engines. Subclasses declare ``Config`` and implement ``_send``/``check``."""

    Config: ClassVar[type[EngineConfig]] = EngineConfig
    registry_name: ClassVar[str]
    # True when the engine's slots share this machine's CPU (the embedded model): a free slot is
    # not idle capacity, since another conversation there slows the ones already decoding.
    shares_compute: ClassVar[bool] = False

    def __init__(self, name: str, config: EngineConfig) -> None:
        self.name = name
        self.config = config
        # Why calls were retried, e.g. {"http 429": 3, "timeout": 1}; read by the run summary.
        self.retry_reasons: Counter[str] = Counter()
        self._recent: deque[bool] = deque(maxlen=ERROR_WINDOW)  # True = the request failed
        # The servers requests go to; None for engines that run in this process.
        self.endpoints: Endpoints | None = None
        self._gate: Gate[Endpoint | str] | None = None
        # Requests abandoned while the server worked on them (spare conversations cancelled at N).
        self.requests_cancelled = 0

    @property
    def url(self) -> str | None:
        """Where requests go, for messages and provenance (never includes credentials)."""
        if self.endpoints is None:
            return None
        return ", ".join(e.name for e in self.endpoints.all)

    @property
    def capacity(self) -> int:
        """The most requests this engine may ever have in flight: ``max_concurrency`` (with
        ``auto``, its ceiling ``max_concurrency_limit``) for each endpoint. The current limit is
        ``gate.limit``."""
        per_endpoint = self.config.max_concurrency
        if per_endpoint == "auto":
            per_endpoint = self.config.max_concurrency_limit
        return per_endpoint * (len(self.endpoints) if self.endpoints is not None else 1)

    @property
    def gate(self) -> Gate[Endpoint | str]:
        """The priority queue in front of the endpoints' limits (made at first use, once
        ``endpoints`` is set)."""
        if self._gate is None:
            if self.endpoints is None:
                self._gate = Gate({IN_PROCESS: self._new_limit()})
            else:
                endpoints = self.endpoints
                self._gate = Gate({e: self._new_limit() for e in endpoints.all}, choose=endpoints.pick)
        return self._gate

    def _new_limit(self) -> Limit:
        if self.config.max_concurrency == "auto":
            return AdaptiveLimit(self.config.max_concurrency_limit)
        return FixedLimit(self.config.max_concurrency)

    def concurrency_report(self) -> dict[str, dict[str, object]]:
        """Each endpoint's limit (final, peak, and for ``auto`` a short series) for the summary;
        empty when this engine sent nothing from this process (the Ray driver's)."""
        if self._gate is None or not self._gate.used:
            return {}
        return {key.name if isinstance(key, Endpoint) else key: r for key, r in self._gate.report().items()}

    def environment_variables(self) -> list[str]:
        """Names of the environment variables this engine reads (the Ray executor copies them to
        its workers, so an engine there reaches the same server with the same key)."""
        return []

    def describe(self) -> dict[str, Any]:
        """Engine type, model and URL (a list for several endpoints) for the run summary: no secrets."""
        names = [e.name for e in self.endpoints.all] if self.endpoints is not None else []
        base_url = names if len(names) > 1 else names[0] if names else None
        return {"type": self.registry_name, "model": self.config.model, "base_url": base_url}

    def report(self) -> dict[str, Any]:
        """``describe()`` plus retries by cause and, for server engines, calls and errors per endpoint."""
        report = {**self.describe(), "retries": dict(self.retry_reasons)}
        if self.endpoints is not None:
            report["endpoints"] = {name: c.as_dict() for name, c in self.endpoints.counts().items()}
        concurrency = self.concurrency_report()
        if concurrency:
            report["concurrency"] = concurrency
            report["requests_cancelled"] = self.requests_cancelled
        return report

    def take_counts(self) -> EngineCounts:
        """Retries and endpoint counters so far, zeroed here: what a Ray worker reports to the driver."""
        taken = EngineCounts(retries=self.retry_reasons.copy())
        self.retry_reasons.clear()
        if self.endpoints is not None:
            taken.endpoints = self.endpoints.take_counts()
        return taken

    def add_counts(self, counts: EngineCounts) -> None:
        self.retry_reasons.update(counts.retries)
        if self.endpoints is not None:
            self.endpoints.add_counts(counts.endpoints)

    def error(self, cause: str, *, url: str | None = None, **kwargs: Any) -> EngineError:
        return EngineError(cause, engine=self.name, model=self.config.model, url=url or self.url, **kwargs)

    async def chat(
        self, messages: list[Message], *, schema: Schema | None = None, **params: Any
    ) -> ChatResult:
        """Send one chat request and return its reply.

        ``params`` are decoding parameters (temperature, top_p, max_tokens, seed, stop) that
        override the engine's defaults for this call. With ``schema`` (a pydantic model class or
        a JSON schema dict) the server is asked for JSON that fits it, the reply is validated, and
        an invalid reply is asked for again up to ``structured_retries`` times.
        """
        call_params = {**self.config.decoding(), **{k: v for k, v in params.items() if v is not None}}
        json_schema = _json_schema(schema) if schema is not None else None
        usage = Usage()
        calls = 0
        attempts = 1 + (self.config.structured_retries if schema is not None else 0)
        problem = ""
        for _ in range(attempts):
            result = await self._send_with_retries(messages, json_schema, call_params)
            usage.add(result.usage)
            calls += result.calls
            if schema is None:
                result.usage, result.calls = usage, calls
                return result
            try:
                result.parsed = parse_structured(result.text, schema)
            except ValueError as exc:
                problem = str(exc)
                self.retry_reasons["invalid structured output"] += 1
                continue
            result.usage, result.calls = usage, calls
            return result
        error = StructuredOutputError(
            f"no reply fit the JSON schema after {attempts} calls: {problem}",
            engine=self.name,
            model=self.config.model,
            url=self.url,
        )
        error.usage = usage  # type: ignore[attr-defined]
        error.calls = calls  # type: ignore[attr-defined]
        raise error

    async def _send_with_retries(
        self, messages: list[Message], json_schema: dict[str, Any] | None, params: dict[str, Any]
    ) -> ChatResult:
        attempt_number = 0
        try:
            async for attempt in retrying(
                self.name,
                max_retries=self.config.max_retries,
                retry_wait=self.config.retry_wait,
                reasons=self.retry_reasons,
                has_spare=self.endpoints.has_spare if self.endpoints is not None else None,
            ):
                with attempt:
                    attempt_number = attempt.retry_state.attempt_number
                    result = await self._gated_attempt(messages, json_schema, params)
                    result.calls = attempt_number
                    return result
        except EngineError as exc:
            if exc.fatal:
                raise
            if attempt_number > 1 or exc.retryable:
                plural = "s" if attempt_number > 1 else ""
                raise self.error(
                    f"gave up after {attempt_number} attempt{plural}: {exc.cause}", url=exc.url
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _gated_attempt(
        self, messages: list[Message], json_schema: dict[str, Any] | None, params: dict[str, Any]
    ) -> ChatResult:
        """One attempt once the gate grants a slot. The gate picks the endpoint, so a retry goes
        where the last attempt did not fail; the outcome goes back to that endpoint's limit."""
        key, started = await self.gate.acquire()
        endpoint = key if isinstance(key, Endpoint) else None
        latency, dropped, retry_after = None, False, None
        try:
            result = await self._attempt(endpoint, messages, json_schema, params)
            latency = time.monotonic() - started
            return result
        except EngineError as exc:
            # Overload signs (429, 5xx, timeouts, refused connections) cut the limit; a 400 does not.
            dropped, retry_after = exc.retryable, exc.retry_after
            raise
        except asyncio.CancelledError:
            self.requests_cancelled += 1
            raise
        finally:
            self.gate.release(key, started, latency=latency, dropped=dropped, retry_after=retry_after)

    async def _attempt(
        self,
        endpoint: Endpoint | None,
        messages: list[Message],
        json_schema: dict[str, Any] | None,
        params: dict[str, Any],
    ) -> ChatResult:
        """One request under the timeout; its outcome goes to the endpoint balancer and the breaker."""
        if endpoint is not None:
            endpoint.outstanding += 1
        try:
            try:
                async with asyncio.timeout(self.config.timeout):
                    result = await self._send(messages, json_schema, params, endpoint)
            except TimeoutError:
                raise self.error(
                    f"no reply within {self.config.timeout:g} s",
                    retryable=True,
                    url=endpoint.name if endpoint is not None else None,
                ) from None
        except EngineError as exc:
            if endpoint is not None:
                assert self.endpoints is not None
                self.endpoints.failed(endpoint, exc)
            self._trip_if_failing(exc.cause)
            raise
        finally:
            if endpoint is not None:
                endpoint.outstanding -= 1
        if endpoint is not None:
            assert self.endpoints is not None
            self.endpoints.succeeded(endpoint)
        self._recent.append(False)
        return result

    def _trip_if_failing(self, cause: str) -> None:
        """Record a failed request; raise a fatal error if most recent requests failed (and, with
        several endpoints, none of them answered its latest request)."""
        self._recent.append(True)
        if self.endpoints is not None and self.endpoints.any_healthy():
            return  # another endpoint still answers: the balancer routes around this one
        failures = sum(self._recent)
        if len(self._recent) >= ERROR_WINDOW // 2 and failures > MAX_ERROR_RATE * len(self._recent):
            raise self.error(
                f"stopping: {failures} of the last {len(self._recent)} requests failed"
                f" (last: {cause})",
                fatal=True,
            )

    @abstractmethod
    async def _send(
        self,
        messages: list[Message],
        json_schema: dict[str, Any] | None,
        params: dict[str, Any],
        endpoint: Endpoint | None,
    ) -> ChatResult:
        """One request to ``endpoint`` (None for engines without servers), no retries.
        Raise ``EngineError`` (``retryable`` when worth retrying)."""

    @abstractmethod
    async def check(self) -> None:
        """Fail fast with an ``EngineError`` if the server or model is not usable."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or the loaded model."""


ENGINES: Registry[type[Engine]] = Registry("engine type")


def register_engine(name: str) -> Any:
    """Class decorator: make an engine available to task files as ``type: name``."""
    return ENGINES.register(name)

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def _json_schema(schema: Schema) -> dict[str, Any]:
    if isinstance(schema, dict):
        return schema
    return _model_schema(schema)


@lru_cache(maxsize=512)
def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    # Generating a schema costs ~1 ms of CPU; a stage asks for the same few models on every call.
    return model.model_json_schema()


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
