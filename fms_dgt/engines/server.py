"""Engines whose requests go to servers: one or more endpoints, each with its own limit and health.

A server engine type implements ``send`` (one request to one endpoint) and ``check_endpoint``
(is this server usable); which endpoint an attempt goes to, and what its failures mean for the
others, is ``engines.endpoints`` and the gate's business.
"""

from __future__ import annotations

import os
from abc import abstractmethod
from functools import partial
from typing import ClassVar

from fms_dgt.config import EngineConfig
from fms_dgt.engines.base import Engine
from fms_dgt.engines.endpoints import Endpoint, EndpointRoute, Endpoints, check_endpoints
from fms_dgt.engines.request import ChatResult, Request, Send
from fms_dgt.engines.timeout import Deadline


class ServerEngine(Engine):
    """Base for engines that talk to servers (``base_url``: one URL or a list)."""

    # Where requests go when the task sets no ``base_url``: this variable, else the default.
    url_variable: ClassVar[str]
    default_url: ClassVar[str]

    def __init__(self, name: str, config: EngineConfig) -> None:
        super().__init__(name, config)
        urls = config.base_urls() or [os.environ.get(self.url_variable) or self.default_url]
        self.endpoints: Endpoints = Endpoints(name, [url.rstrip("/") for url in urls])

    def environment_variables(self) -> list[str]:
        return [self.url_variable]

    def _routes(self) -> dict[Endpoint | str, Send]:
        return {
            endpoint: EndpointRoute(
                self.endpoints,
                endpoint,
                Deadline(
                    partial(self.send, endpoint=endpoint),
                    seconds=self.config.timeout,
                    error=partial(self.error, url=endpoint.name),
                ),
            )
            for endpoint in self.endpoints.all
        }

    @abstractmethod
    async def send(self, request: Request, endpoint: Endpoint) -> ChatResult:
        """One request to ``endpoint``, no retries: raise ``EngineError`` (``retryable`` when
        worth retrying, ``url=endpoint.name``)."""

    @abstractmethod
    async def check_endpoint(self, endpoint: Endpoint) -> None:
        """Fail with an ``EngineError`` if this server is not usable (``retryable`` if unreachable)."""

    async def check(self) -> None:
        """At least one endpoint must answer; see ``check_endpoints``."""
        await check_endpoints(self.endpoints, self.check_endpoint, self.error)
