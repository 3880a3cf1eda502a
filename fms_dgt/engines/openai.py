"""``type: openai``: any server speaking the OpenAI chat-completions API (vLLM, TGI, llama.cpp, hosted)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Literal

import httpx
from pydantic import Field

from fms_dgt import __version__, caller
from fms_dgt.config import EngineConfig
from fms_dgt.engines.base import ENGINES, Engine
from fms_dgt.engines.connection_slots import TIMEOUTS, TRANSPORT_ERRORS, ConnectionSlots, Reply
from fms_dgt.engines.endpoints import Endpoint
from fms_dgt.engines.request import ChatResult, Message, Request
from fms_dgt.engines.server import ServerEngine
from fms_dgt.errors import EngineError
from fms_dgt.usage import Usage

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"


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


def retry_after_seconds(response: Reply) -> float | None:
    value = response.header("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # an HTTP date; the exponential backoff applies instead


def status_error(engine: Engine, response: Reply, url: str | None = None) -> EngineError:
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
class OpenAIEngine(ServerEngine):
    Config = OpenAIConfig
    config: OpenAIConfig
    url_variable = "OPENAI_BASE_URL"
    default_url = DEFAULT_BASE_URL

    def __init__(self, name: str, config: OpenAIConfig) -> None:
        super().__init__(name, config)
        self._slots = ConnectionSlots()
        self._json_mode = "json_schema" if config.json_mode == "auto" else config.json_mode
        # Built once, not per request: URLs, headers and the timeouts httpx reads from each request.
        self._chat_urls = {e.url: httpx.URL(f"{e.url}/chat/completions") for e in self.endpoints.all}
        self._headers: list[tuple[bytes, bytes]] | None = None  # on the first request (see _base_headers)
        self._timeout = httpx.Timeout(config.timeout, connect=min(10.0, config.timeout)).as_dict()

    def environment_variables(self) -> list[str]:
        return [self.config.api_key_env, *super().environment_variables()]

    def _base_headers(self) -> list[tuple[bytes, bytes]]:
        """Headers of every request; the key is read when the first request goes out (a Ray worker
        sets the driver's environment variables after building its engines). ``identity``: the
        replies are short and local; decompressing them would cost more CPU than it saves."""
        headers = [("Accept", "application/json"), ("Accept-Encoding", "identity"),
                   ("User-Agent", f"fms_dgt/{__version__}")]
        key = os.environ.get(self.config.api_key_env)
        if key:
            headers.append(("Authorization", f"Bearer {key}"))
        self._headers = [(k.encode(), v.encode()) for k, v in headers]
        return self._headers

    async def _request(
        self, method: bytes, url: httpx.URL, body: dict[str, Any] | None = None,
        timeout: dict[str, float | None] | None = None,
    ) -> Reply:
        """One request on a free connection of the server, read to the end (see connection_slots)."""
        headers = self._headers or self._base_headers()
        content = None
        if body is not None:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
            # The calling stage's name too (``caller.HEADER``: for server logs and the simulated server).
            headers = [*headers, (b"Content-Type", b"application/json"), *caller.headers()]
        return await self._slots.send(method, url, headers, content, timeout or self._timeout)

    def _body(
        self, messages: list[Message], json_schema: dict[str, Any] | None, params: Mapping[str, Any]
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

    async def _post(self, endpoint: Endpoint, body: dict[str, Any]) -> Reply:
        try:
            return await self._request(b"POST", self._chat_urls[endpoint.url], body)
        except TIMEOUTS:
            raise self.error(
                f"no reply within {self.config.timeout:g} s", retryable=True, url=endpoint.name
            ) from None
        except TRANSPORT_ERRORS as exc:
            raise self.error(
                f"connection error: {type(exc).__name__} {exc}".strip(), retryable=True, url=endpoint.name
            ) from None

    async def send(self, request: Request, endpoint: Endpoint) -> ChatResult:
        messages, json_schema, params = request.messages, request.json_schema, request.params
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
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):  # ValueError: bad JSON or UTF-8
            raise self.error(
                f"malformed response body: {response.text[:120]!r}", retryable=True, url=endpoint.name
            ) from None
        return ChatResult(
            text=text, finish_reason=choice.get("finish_reason"), usage=Usage.from_openai(data.get("usage"))
        )

    async def check_endpoint(self, endpoint: Endpoint) -> None:
        """Any HTTP answer from ``/models`` proves the server is up; a refused connection does not."""
        try:
            response = await self._request(
                b"GET", httpx.URL(f"{endpoint.url}/models"), timeout=httpx.Timeout(10.0).as_dict()
            )
        except (*TIMEOUTS, *TRANSPORT_ERRORS) as exc:
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
        await self._slots.aclose()
