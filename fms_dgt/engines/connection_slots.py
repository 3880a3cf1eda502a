"""One keep-alive HTTP connection per request in flight, handed out from a stack per server.

Why not one ``httpx.AsyncClient`` with a pool of hundreds of connections: on every request,
httpcore's pool walks all its connections (checking each idle one for expiry with a poll of its
socket), so its cost per request grows with the pool. Splitting it into small pools picked in
turn made that flat but let one pool get more requests than it keeps connections for, and every
surplus connection was opened for one request and closed after it. Profiled at 512 requests in
flight (benchmarks/cpu_per_call.py), both cost more CPU than the LM call's own HTTP work.

Here each slot is an ``httpx.AsyncHTTPTransport`` holding exactly one connection: a request takes
a free slot of its server (the most recently used one, whose connection is warm), sends through
the transport, and gives the slot back. No pool ever has more than one connection to look at,
no connection is opened while an idle one exists, and the number of slots follows the peak of
requests in flight (the runner bounds it), whatever limit the engine has now. Going through the
transport rather than the client also skips work an LM call does not need on every request
(merging the client's URL and headers, cookies, auth and redirect handling, event hooks).
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx


def proxy_for(url: str) -> str | None:
    """The proxy for ``url`` from HTTP(S)_PROXY / ALL_PROXY / NO_PROXY, as ``httpx.AsyncClient``
    would honour them (the transports here are built directly, so this is done by hand)."""
    parsed = httpx.URL(url)
    if urllib.request.proxy_bypass(parsed.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parsed.scheme) or proxies.get("all")


class ConnectionSlots:
    """Free single-connection transports, per base URL; ``async with slots.take(url) as t``."""

    def __init__(self) -> None:
        self._free: dict[str, list[httpx.AsyncHTTPTransport]] = {}
        self._all: list[httpx.AsyncHTTPTransport] = []
        self._tls: ssl.SSLContext | None = None
        self._limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    def __len__(self) -> int:
        """Slots made so far: the peak of requests in flight."""
        return len(self._all)

    @asynccontextmanager
    async def take(self, base_url: str) -> AsyncIterator[httpx.AsyncHTTPTransport]:
        free = self._free.get(base_url)
        if free is None:
            free = self._free[base_url] = []
        transport = free.pop() if free else self._new(base_url)
        try:
            yield transport
        finally:
            free.append(transport)

    def _new(self, base_url: str) -> httpx.AsyncHTTPTransport:
        if self._tls is None:
            self._tls = httpx.create_ssl_context()  # one for all slots: building one costs ~30 ms
        transport = httpx.AsyncHTTPTransport(verify=self._tls, limits=self._limits, proxy=proxy_for(base_url))
        self._all.append(transport)
        return transport

    async def aclose(self) -> None:
        for transport in self._all:
            await transport.aclose()
        self._all.clear()
        self._free.clear()
