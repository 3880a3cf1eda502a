"""Several servers behind one engine: each request goes to the least busy one; failing ones rest.

An engine may list several base URLs (``base_url: [URL, ...]``, or ``--base-url`` given more than
once). Every request attempt goes to the endpoint with the fewest requests outstanding (ties in
turn). An endpoint whose request fails in a way worth retrying (connection error, timeout, 429,
5xx, a broken body) is taken out for a cool-down, so the retry goes to another endpoint at once;
after the cool-down it gets one probe request at a time until one succeeds. The cool-down doubles
with each failed probe. With a single URL nothing changes: a lone endpoint is always used, and
the engine's retry backoff applies as before.

Server engines (``engines.server``) share this: the gate (``engines.gate``) picks an endpoint
per attempt with ``Endpoints.pick``, and the ``EndpointRoute`` layer reports each outcome here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.errors import EngineError


logger = logging.getLogger(__name__)

# Seconds an endpoint is left out after a failure; doubled after each failed probe, up to the cap.
COOL_DOWN = 2.0
MAX_COOL_DOWN = 60.0


def display_url(url: str) -> str:
    """The URL without a password (``user:secret@host`` -> ``user:***@host``), for logs and summaries."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    shown = urlunsplit(parts._replace(netloc=netloc))
    return shown if "://" in url else shown.removeprefix("http://")


@dataclass
class EndpointCounts:
    """Completed requests and failed ones, per endpoint, for the run summary."""

    calls: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"calls": self.calls, "errors": self.errors}


@dataclass(eq=False)
class Endpoint:
    url: str  # as configured, used for requests
    name: str  # the URL without credentials, for messages and the summary
    outstanding: int = 0
    counts: EndpointCounts = field(default_factory=EndpointCounts)
    # Whether the latest completed request succeeded; an endpoint starts out trusted.
    healthy: bool = True
    # Failures since the last success that each started a cool-down (1 = first cool-down).
    strikes: int = 0
    resting_until: float = 0.0

    def available(self, now: float) -> bool:
        """Not cooling down; after a cool-down, only one probe request at a time."""
        if self.strikes == 0:
            return True
        return now >= self.resting_until and self.outstanding == 0


class Endpoints:
    """The endpoints of one engine, with least-outstanding-requests balancing and cool-downs."""

    def __init__(self, engine: str, urls: Sequence[str], clock: Callable[[], float] = time.monotonic) -> None:
        if not urls:
            raise ValueError("an engine needs at least one endpoint")
        self.engine = engine
        self.all = [Endpoint(url=url, name=display_url(url)) for url in urls]
        self._clock = clock
        self._turn = 0

    def __len__(self) -> int:
        return len(self.all)

    def pick(self, among: Sequence[Endpoint] | None = None) -> Endpoint | None:
        """The endpoint for the next attempt: the least busy available one (ties in turn); if every
        endpoint is resting, the least busy of all, so a lone endpoint is always used.

        ``among``: only these (the ones whose concurrency limit has room). None when none of them
        is available but another endpoint is: the request waits for room there rather than going
        to a resting one."""
        now = self._clock()
        count = len(self.all)
        start = self._turn
        self._turn = (start + 1) % count
        ordered = [self.all[(start + i) % count] for i in range(count)]
        candidates = [e for e in ordered if e.available(now)]
        if among is not None:
            allowed = [e for e in candidates if e in among]
            if not allowed and candidates:
                return None
            candidates = allowed or [e for e in ordered if e in among]
        candidates = candidates or ordered
        return min(candidates, key=lambda e: e.outstanding)

    def succeeded(self, endpoint: Endpoint) -> None:
        if endpoint.strikes and len(self.all) > 1:
            logger.info("engine %s: endpoint %s answers again", self.engine, endpoint.name)
        endpoint.counts.calls += 1
        endpoint.healthy = True
        endpoint.strikes = 0
        endpoint.resting_until = 0.0

    def failed(self, endpoint: Endpoint, error: EngineError) -> None:
        """Count a failed request; one worth retrying takes the endpoint out for a cool-down."""
        endpoint.counts.calls += 1
        endpoint.counts.errors += 1
        endpoint.healthy = False
        if not error.retryable:
            return  # the request was at fault (e.g. 400), not the server
        now = self._clock()
        if now < endpoint.resting_until:
            return  # sent before the endpoint was taken out: the same outage, not a new one
        self._rest(endpoint, now, error.retry_after, error.cause)

    def rest(self, endpoint: Endpoint, cause: str) -> None:
        """Take an endpoint out as if a request had failed (e.g. unreachable at the start)."""
        endpoint.healthy = False
        self._rest(endpoint, self._clock(), None, cause)

    def _rest(self, endpoint: Endpoint, now: float, retry_after: float | None, cause: str) -> None:
        endpoint.strikes += 1
        seconds = min(COOL_DOWN * 2 ** (endpoint.strikes - 1), MAX_COOL_DOWN)
        if retry_after is not None:
            seconds = max(seconds, min(retry_after, MAX_COOL_DOWN))
        endpoint.resting_until = now + seconds
        if len(self.all) > 1:
            logger.warning(
                "engine %s: endpoint %s failed (%s); no new requests to it for %.0f s",
                self.engine, endpoint.name, cause, seconds,
            )

    def has_spare(self) -> bool:
        """Is some endpoint available and answering? Then a failed request is retried there at once."""
        now = self._clock()
        return any(e.healthy and e.available(now) for e in self.all)

    def any_healthy(self) -> bool:
        """Did some endpoint answer its latest request? The engine's circuit breaker waits until none did."""
        return any(e.healthy for e in self.all)

    # -- counters, for the summary and for Ray workers reporting to the driver -----------------

    def counts(self) -> dict[str, EndpointCounts]:
        return {e.name: e.counts for e in self.all}

    def take_counts(self) -> dict[str, EndpointCounts]:
        """The counters so far, zeroed here (a worker sends what it counted since its last report)."""
        taken = {}
        for endpoint in self.all:
            taken[endpoint.name] = endpoint.counts
            endpoint.counts = EndpointCounts()
        return taken

    def add_counts(self, counts: dict[str, EndpointCounts]) -> None:
        by_name = {e.name: e for e in self.all}
        for name, more in counts.items():
            endpoint = by_name.get(name)
            if endpoint is not None:
                endpoint.counts.calls += more.calls
                endpoint.counts.errors += more.errors


class EndpointRoute:
    """Adds to ``inner`` (a send to ``endpoint``): the attempt counted as outstanding there while it
    runs, and its outcome reported to the balancer, which rests an endpoint that fails."""

    def __init__(self, endpoints: Endpoints, endpoint: Endpoint, inner: Send) -> None:
        self._endpoints = endpoints
        self._endpoint = endpoint
        self._inner = inner

    async def __call__(self, request: Request) -> ChatResult:
        endpoint = self._endpoint
        endpoint.outstanding += 1
        try:
            result = await self._inner(request)
        except EngineError as exc:
            self._endpoints.failed(endpoint, exc)
            raise
        finally:
            endpoint.outstanding -= 1
        self._endpoints.succeeded(endpoint)
        return result


async def check_endpoints(
    endpoints: Endpoints,
    check_one: Callable[[Endpoint], Awaitable[None]],
    make_error: Callable[..., EngineError],
) -> None:
    """Check every endpoint at once. The engine can start if at least one answers: unreachable
    ones (``retryable`` errors) are named in a warning and rested, to be probed later. Any other
    problem (a refused API key, a missing model) stops the run: that server is misconfigured."""
    results = await asyncio.gather(*(check_one(e) for e in endpoints.all), return_exceptions=True)
    failures: list[tuple[Endpoint, EngineError]] = []
    for endpoint, result in zip(endpoints.all, results):
        if isinstance(result, EngineError):
            failures.append((endpoint, result))
        elif isinstance(result, BaseException):
            raise result
    for _, error in failures:
        if not error.retryable:
            raise error
    if not failures:
        return
    if len(failures) == len(endpoints.all):
        if len(failures) == 1:
            raise failures[0][1]
        raise make_error(
            "no endpoint reachable: " + "; ".join(f"{e.name}: {error.cause}" for e, error in failures),
            url=", ".join(e.name for e in endpoints.all),
        )
    for endpoint, error in failures:
        endpoints.rest(endpoint, error.cause)
