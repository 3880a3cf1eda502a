"""One keep-alive HTTP connection per request in flight, handed out from a stack per server.

Why not one ``httpx.AsyncClient`` with a pool of hundreds of connections: on every request,
httpcore's pool walks all its connections (checking each idle one for expiry with a poll of its
socket), so its cost per request grows with the pool. Splitting it into small pools picked in
turn made that flat but let one pool get more requests than it keeps connections for, and every
surplus connection was opened for one request and closed after it. Profiled at 512 requests in
flight (benchmarks/cpu_per_call.py), both cost more CPU than the LM call's own HTTP work.

Here each slot is exactly one connection of httpcore (httpx's own transport layer): a request
takes a free slot of its server (the most recently used one, whose connection is warm), is sent
on it, and gives the slot back. No connection is opened while an idle one exists, and the number
of slots follows the peak of requests in flight (the runner bounds it), whatever limit the engine
has now. The request goes to the connection itself, not through ``httpx.AsyncHTTPTransport``
around it: the transport's request and response models, its pool of one and its exception
mapping add about 40 % to the CPU of the exchange (``benchmarks/http_cpu.py``: 1.7 ms of CPU per
request through the transport, 1.2 ms on the connection, same server, same machine). A server
behind a proxy (``HTTP(S)_PROXY``) gets httpcore's proxy connection instead, with one connection.
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from fms_dgt.engines.network import AsyncioBackend

# What a failed exchange raises: the engine turns these into retryable errors.
TIMEOUTS = (httpcore.TimeoutException,)
TRANSPORT_ERRORS = (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError, httpcore.UnsupportedProtocol)


def proxy_for(url: str) -> str | None:
    """The proxy for ``url`` from HTTP(S)_PROXY / ALL_PROXY / NO_PROXY, as ``httpx.AsyncClient``
    would honour them (the connections here are built directly, so this is done by hand)."""
    parsed = httpx.URL(url)
    if urllib.request.proxy_bypass(parsed.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parsed.scheme) or proxies.get("all")


@dataclass(frozen=True, slots=True)
class Reply:
    """A response read to the end: what the engine needs of it, and nothing to build per request."""

    status_code: int
    headers: list[tuple[bytes, bytes]]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)

    def header(self, name: str) -> str | None:
        key = name.lower().encode("latin-1")
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


class ConnectionSlots:
    """Free single-connection slots per server; ``await slots.send(method, url, headers, body, timeout)``."""

    def __init__(self) -> None:
        self._free: dict[tuple[bytes, bytes], list[httpcore.AsyncConnectionInterface]] = {}
        self._all: set[httpcore.AsyncConnectionInterface] = set()
        self._tls: ssl.SSLContext | None = None
        self._network = AsyncioBackend()

    def __len__(self) -> int:
        """Connections open: the peak of requests in flight, less those the server closed."""
        return len(self._all)

    async def send(
        self, method: bytes, url: httpx.URL, headers: list[tuple[bytes, bytes]], content: bytes | None,
        timeout: dict[str, float | None],
    ) -> Reply:
        """One request on a free connection to ``url``'s server, read to the end. A connection
        that failed or was closed by the server is closed and not used again."""
        server = (url.raw_scheme, url.netloc)
        free = self._free.get(server)
        if free is None:
            free = self._free[server] = []
        connection = None
        while free:
            candidate = free.pop()
            if isinstance(candidate, httpcore.AsyncConnectionPool) or (
                candidate.is_available() and not candidate.has_expired()
            ):  # a proxy's pool checks its one connection itself
                connection = candidate
                break
            await self._discard(candidate)
        if connection is None:
            connection = self._new(url)
        request = httpcore.Request(
            method, httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path),
            headers=[(b"Host", url.netloc), *headers]
            + ([] if content is None else [(b"Content-Length", str(len(content)).encode())]),
            content=content, extensions={"timeout": timeout},
        )
        try:
            response = await connection.handle_async_request(request)
            try:
                body = await response.aread()
            finally:
                await response.aclose()
        except BaseException:
            await self._discard(connection)
            raise
        free.append(connection)
        return Reply(response.status, response.headers, body)

    def _new(self, url: httpx.URL) -> httpcore.AsyncConnectionInterface:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # one for all slots: building one costs ~30 ms
        origin = httpcore.Origin(url.raw_scheme, url.raw_host, url.port or (443 if url.scheme == "https" else 80))
        proxy = proxy_for(str(url))
        connection: httpcore.AsyncConnectionInterface
        if proxy is None:
            connection = httpcore.AsyncHTTPConnection(origin, ssl_context=self._tls, network_backend=self._network)
        else:
            proxied = httpx.URL(proxy)
            kind = httpcore.AsyncSOCKSProxy if proxied.scheme.startswith("socks") else httpcore.AsyncHTTPProxy
            connection = kind(
                proxy_url=proxy, ssl_context=self._tls, max_connections=1, network_backend=self._network
            )  # type: ignore[assignment]
        self._all.add(connection)
        return connection

    async def _discard(self, connection: httpcore.AsyncConnectionInterface) -> None:
        self._all.discard(connection)
        try:
            await connection.aclose()
        except Exception:  # noqa: BLE001 - a connection already broken has nothing left to close
            pass

    async def aclose(self) -> None:
        for connection in list(self._all):
            await self._discard(connection)
        self._free.clear()
