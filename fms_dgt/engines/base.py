"""The engine contract: ``layered_chat``, the backend's ``send`` inside the layers that make it dependable.

An engine type implements one method, ``send``: one typed ``Request`` to one place, one typed
``ChatResult`` back (``InProcessEngine`` here; ``ServerEngine`` in ``engines.server`` also gets
the endpoint). ``Engine`` composes the layers around it, each in the module named after it and
knowing only the ``Send`` shape of the next (outermost first):

- ``structured.StructuredOutput``: validates a reply against its schema and asks again;
- ``retry.Retries``: another attempt after a failure worth retrying;
- ``breaker.ErrorRateBreaker``: stops the run when most attempts fail;
- ``gate.Gated``: waits for room under a place's limit (``limiter``), which picks the place;
- ``endpoints.EndpointRoute`` (servers only): the balancer's view of each endpoint;
- ``timeout.Deadline``: no reply within ``timeout`` is a retryable failure.

What remains here is the engine's face to the runner: ``layered_chat``, its counters and its report.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fms_dgt.config import EngineConfig
from fms_dgt.engines.breaker import ErrorRateBreaker
from fms_dgt.engines.endpoints import Endpoint, EndpointCounts, Endpoints
from fms_dgt.engines.gate import Gate, Gated
from fms_dgt.engines.limiter import AdaptiveLimit, FixedLimit, Limit
from fms_dgt.engines.request import ChatResult, Message, Request, Schema, Send
from fms_dgt.engines.retry import Retries
from fms_dgt.engines.structured import StructuredOutput
from fms_dgt.engines.timeout import Deadline
from fms_dgt.errors import EngineError
from fms_dgt.registry import Registry
from fms_dgt.usage import Usage

__all__ = [
    "ENGINES", "ChatResult", "Engine", "EngineCounts", "InProcessEngine", "Message", "Request", "Schema",
    "Usage", "register_engine",
]

# The gate's key for the one limit of an engine without servers (the embedded one).
IN_PROCESS = "local"


@dataclass
class EngineCounts:
    """What an engine counted besides LM calls: retries by cause, requests per endpoint."""

    retries: Counter[str] = field(default_factory=Counter)
    endpoints: dict[str, EndpointCounts] = field(default_factory=dict)


class Engine(ABC):
    """Base class for LM engines: subclass ``InProcessEngine`` or ``engines.server.ServerEngine``."""

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
        # The servers requests go to; None for engines that run in this process.
        self.endpoints: Endpoints | None = None
        self._gated: Gated[Endpoint | str] | None = None
        self._layers: Send | None = None

    @abstractmethod
    def _routes(self) -> dict[Endpoint | str, Send]:
        """Where attempts go, each place with its own limit at the gate: one per endpoint, or one
        for an engine in this process."""

    @property
    def gate(self) -> Gate[Endpoint | str]:
        """The priority queue in front of the places' limits (the pacer reads and listens to it)."""
        self._composed()
        assert self._gated is not None
        return self._gated.gate

    def _composed(self) -> Send:
        """The backend with its layers around it (made at first use, once ``endpoints`` is set)."""
        if self._layers is None:
            self._layers = self._compose()
        return self._layers

    def _compose(self) -> Send:
        endpoints = self.endpoints
        routes = self._routes()
        gate = Gate(
            {key: self._new_limit() for key in routes}, choose=endpoints.pick if endpoints is not None else None
        )
        self._gated = Gated(gate, routes)
        breaker = ErrorRateBreaker(
            self._gated, error=self.error, still_answering=endpoints.any_healthy if endpoints is not None else None
        )
        retries = Retries(
            breaker,
            engine=self.name,
            max_retries=self.config.max_retries,
            retry_wait=self.config.retry_wait,
            reasons=self.retry_reasons,
            error=self.error,
            has_spare=endpoints.has_spare if endpoints is not None else None,
        )
        return StructuredOutput(
            retries, retries=self.config.structured_retries, reasons=self.retry_reasons, error=self.error
        )

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

    def _new_limit(self) -> Limit:
        if self.config.max_concurrency == "auto":
            return AdaptiveLimit(self.config.max_concurrency_limit)
        return FixedLimit(self.config.max_concurrency)

    def concurrency_report(self) -> dict[str, dict[str, object]]:
        """Each endpoint's limit (final, peak, and for ``auto`` a short series) for the summary;
        empty when this engine sent nothing from this process (the Ray driver's)."""
        if self._gated is None or not self._gated.gate.used:
            return {}
        report = self._gated.gate.report()
        return {key.name if isinstance(key, Endpoint) else key: r for key, r in report.items()}

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
            assert self._gated is not None
            report["concurrency"] = concurrency
            report["requests_cancelled"] = self._gated.cancelled
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

    def error(
        self, cause: str, *, url: str | None = None, kind: type[EngineError] = EngineError, **kwargs: Any
    ) -> EngineError:
        """An ``EngineError`` (or ``kind``) naming this engine, its model and ``url`` (default all of them)."""
        return kind(cause, engine=self.name, model=self.config.model, url=url or self.url, **kwargs)

    async def layered_chat(
        self, messages: list[Message], *, schema: Schema | None = None, **params: Any
    ) -> ChatResult:
        """Send one chat request through the layers above and return its reply.

        ``params`` are decoding parameters (temperature, top_p, max_tokens, seed, stop) that
        override the engine's defaults for this call. With ``schema`` (a pydantic model class or
        a JSON schema dict) the server is asked for JSON that fits it, the reply is validated, and
        an invalid reply is asked for again up to ``structured_retries`` times. A failure raises
        ``EngineError``, whose ``calls`` and ``usage`` say what the call still spent.
        """
        overrides = {k: v for k, v in params.items() if v is not None}
        return await self._composed()(Request(messages, schema, {**self.config.decoding(), **overrides}))

    @abstractmethod
    async def check(self) -> None:
        """Fail fast with an ``EngineError`` if the server or model is not usable."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections or the loaded model."""


class InProcessEngine(Engine):
    """An engine that answers in this process (the embedded model, test doubles): one place, no
    endpoints. A new one implements ``send`` and ``check``."""

    def _routes(self) -> dict[Endpoint | str, Send]:
        return {IN_PROCESS: Deadline(self.send, seconds=self.config.timeout, error=self.error)}

    @abstractmethod
    async def send(self, request: Request) -> ChatResult:
        """One request, no retries: raise ``EngineError`` (``retryable`` when worth retrying)."""


ENGINES: Registry[type[Engine]] = Registry("engine type")


def register_engine(name: str) -> Any:
    """Class decorator: make an engine available to task files as ``type: name``."""
    return ENGINES.register(name)
