"""``type: openai``: any server speaking the OpenAI chat-completions API (vLLM, TGI, llama.cpp, hosted)."""

from __future__ import annotations

import json
import os
from typing import Any, Literal

import httpx
from pydantic import Field

from fms_dgt.config import EngineConfig
from fms_dgt.engines.base import ENGINES, ChatResult, Engine, Message, Usage
from fms_dgt.engines.endpoints import Endpoint, Endpoints, check_endpoints
from fms_dgt.errors import EngineError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
POOL_SIZE = 16


class OpenAIConfig(EngineConfig):
    model: str = Field(description="Model name the server knows, e.g. gpt-4o-mini or a vLLM model id.")
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (none needed locally)."
    )
    json_mode: Literal["auto", "json_schema", "json_object"] = Field(
        "auto",
        description="How to ask for JSON: json_schema; json_object plus our validation; or auto"
        " (json_schema, falling back to json_object if the server rejects it).",
    )


def retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date; the exponential backoff applies instead


def status_error(engine: Engine, response: httpx.Response, url: str | None = None) -> EngineError:
    """Map an HTTP error status to an EngineError; only 408, 429 and 5xx are worth retrying."""
    status = response.status_code
    detail = response.text.strip().replace("\n", " ")[:300]
    return engine.error(
        f"http {status}: {detail}",
        retryable=status in (408, 429) or status >= 500,
        retry_after=retry_after_seconds(response),
        url=url,
    )


@ENGINES.register("openai")
class OpenAIEngine(Engine):
    Config = OpenAIConfig
    config: OpenAIConfig

    def __init__(
        self, name: str, config: OpenAIConfig, *, client: httpx.AsyncClient | None = None
    ) -> None:
        super().__init__(name, config)
        urls = config.base_urls() or [os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL]
        self.endpoints = Endpoints(name, [url.rstrip("/") for url in urls])
        self._clients: list[httpx.AsyncClient] = [client] if client is not None else []
        self._owns_client = client is None
        self._next = 0
        self._json_mode = "json_schema" if config.json_mode == "auto" else config.json_mode

    def environment_variables(self) -> list[str]:
        return [self.config.api_key_env, "OPENAI_BASE_URL"]

    @property
    def client(self) -> httpx.AsyncClient:
        """A client for the next request, round robin over a few small connection pools.

        httpcore's pool does work proportional to its connections on every request, so one pool
        of hundreds of connections costs milliseconds of CPU per call; pools of at most
        ``POOL_SIZE`` keep that flat however high ``max_concurrency`` goes. A pool serves every
        endpoint (it keeps connections per host).
        """
        if not self._clients:
            headers = {}
            key = os.environ.get(self.config.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            pools = -(-self.capacity // POOL_SIZE)
            tls = httpx.create_ssl_context()  # one for all pools: building one costs ~30 ms
            self._clients = [
                httpx.AsyncClient(
                    headers=headers,
                    verify=tls,
                    timeout=httpx.Timeout(self.config.timeout, connect=min(10.0, self.config.timeout)),
                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=POOL_SIZE),
                )
                for _ in range(pools)
            ]
        self._next = (self._next + 1) % len(self._clients)
        return self._clients[self._next]

    def _body(
        self, messages: list[Message], json_schema: dict[str, Any] | None, params: dict[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.config.model, "messages": messages, **params}
        if json_schema is not None:
            if self._json_mode == "json_schema":
                body["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "reply", "schema": json_schema, "strict": True},
                }
            else:
                body["response_format"] = {"type": "json_object", "schema": json_schema}
        return body

    async def _post(self, endpoint: Endpoint, body: dict[str, Any]) -> httpx.Response:
        try:
            return await self.client.post(f"{endpoint.url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise self.error(
                f"no reply within {self.config.timeout:g} s", retryable=True, url=endpoint.name
            ) from None
        except httpx.TransportError as exc:
            raise self.error(
                f"connection error: {type(exc).__name__} {exc}".strip(), retryable=True, url=endpoint.name
            ) from None

    async def _send(
        self,
        messages: list[Message],
        json_schema: dict[str, Any] | None,
        params: dict[str, Any],
        endpoint: Endpoint | None,
    ) -> ChatResult:
        assert endpoint is not None
        response = await self._post(endpoint, self._body(messages, json_schema, params))
        if (
            response.status_code == 400
            and json_schema is not None
            and self.config.json_mode == "auto"
            and self._json_mode == "json_schema"
            and ("response_format" in response.text or "json_schema" in response.text)
        ):
            # The server does not know json_schema: ask for a JSON object; we validate the reply.
            self._json_mode = "json_object"
            response = await self._post(endpoint, self._body(messages, json_schema, params))
        if response.status_code >= 400:
            raise status_error(self, response, url=endpoint.name)
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            raise self.error(
                f"malformed response body: {response.text[:120]!r}", retryable=True, url=endpoint.name
            ) from None
        return ChatResult(
            text=text, finish_reason=choice.get("finish_reason"), usage=Usage.from_openai(data.get("usage"))
        )

    async def check(self) -> None:
        """At least one endpoint must answer; see ``check_endpoints``."""
        assert self.endpoints is not None
        await check_endpoints(self, self.endpoints, self._check_endpoint)

    async def _check_endpoint(self, endpoint: Endpoint) -> None:
        """Any HTTP answer from ``/models`` proves the server is up; a refused connection does not."""
        try:
            response = await self.client.get(f"{endpoint.url}/models", timeout=10.0)
        except httpx.TransportError as exc:
            raise self.error(
                f"server unreachable ({type(exc).__name__}); is it running?", retryable=True, url=endpoint.name
            ) from None
        if response.status_code in (401, 403):
            raise self.error(
                f"http {response.status_code}: the server refused the API key"
                f" (set {self.config.api_key_env})",
                url=endpoint.name,
            )

    async def aclose(self) -> None:
        if self._owns_client:
            for client in self._clients:
                await client.aclose()
            self._clients = []
