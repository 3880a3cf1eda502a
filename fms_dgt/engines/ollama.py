"""``type: ollama``: an Ollama server through the official ``ollama`` client."""

from __future__ import annotations

import os
from typing import Any

import httpx
import ollama
from pydantic import Field

from fms_dgt.config import EngineConfig
from fms_dgt.engines.base import ENGINES, ChatResult, Engine, Message, Usage
from fms_dgt.engines.endpoints import Endpoint, Endpoints, check_endpoints

DEFAULT_HOST = "http://127.0.0.1:11434"


class OllamaConfig(EngineConfig):
    model: str = Field(description="Model tag as shown by `ollama list`, e.g. granite4:3b.")
    num_ctx: int | None = Field(None, ge=256, description="Context window the server allocates.")
    keep_alive: str | float | None = Field(None, description="How long the server keeps the model loaded.")


@ENGINES.register("ollama")
class OllamaEngine(Engine):
    Config = OllamaConfig
    config: OllamaConfig

    def __init__(self, name: str, config: OllamaConfig, **client_kwargs: Any) -> None:
        """``client_kwargs`` go to the underlying ``httpx.AsyncClient`` (e.g. ``transport=`` in tests)."""
        super().__init__(name, config)
        hosts = config.base_urls() or [os.environ.get("OLLAMA_HOST") or DEFAULT_HOST]
        self.endpoints = Endpoints(name, hosts)
        self._client_kwargs = client_kwargs
        self._clients: dict[str, ollama.AsyncClient] = {}  # one per host: the client is bound to it

    def environment_variables(self) -> list[str]:
        return ["OLLAMA_HOST"]

    def client(self, endpoint: Endpoint) -> ollama.AsyncClient:
        client = self._clients.get(endpoint.url)
        if client is None:
            client = self._clients[endpoint.url] = ollama.AsyncClient(
                host=endpoint.url, timeout=self.config.timeout, **self._client_kwargs
            )
        return client

    def _options(self, params: dict[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in params.items() if k in ("temperature", "top_p", "seed", "stop")}
        if "max_tokens" in params:
            options["num_predict"] = params["max_tokens"]
        if self.config.num_ctx is not None:
            options["num_ctx"] = self.config.num_ctx
        return options

    async def _send(
        self,
        messages: list[Message],
        json_schema: dict[str, Any] | None,
        params: dict[str, Any],
        endpoint: Endpoint | None,
    ) -> ChatResult:
        assert endpoint is not None
        try:
            response = await self.client(endpoint).chat(
                model=self.config.model,
                messages=messages,
                format=json_schema,
                options=self._options(params),
                keep_alive=self.config.keep_alive,
            )
        except ollama.ResponseError as exc:
            status = exc.status_code
            raise self.error(
                f"http {status}: {str(exc.error)[:300]}",
                retryable=status in (408, 429) or status >= 500,
                url=endpoint.name,
            ) from None
        except (ConnectionError, httpx.TransportError) as exc:
            # The client turns a refused connection into a builtin ConnectionError.
            kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection error"
            raise self.error(f"{kind}: {type(exc).__name__}", retryable=True, url=endpoint.name) from None
        except ValueError as exc:  # malformed JSON body from the server
            raise self.error(f"malformed response body: {exc}", retryable=True, url=endpoint.name) from None
        return ChatResult(
            text=response.message.content or "",
            finish_reason=response.done_reason,
            usage=Usage(response.prompt_eval_count or 0, response.eval_count or 0),
        )

    async def check(self) -> None:
        """At least one endpoint must answer, and every one that answers must have the model."""
        assert self.endpoints is not None
        await check_endpoints(self.endpoints, self._check_endpoint, self.error)

    async def _check_endpoint(self, endpoint: Endpoint) -> None:
        """The server must answer and already have the model (we never pull)."""
        try:
            listed = await self.client(endpoint).list()
        except (ConnectionError, httpx.TransportError) as exc:
            raise self.error(
                f"server unreachable ({type(exc).__name__}); start it with `ollama serve`",
                retryable=True,
                url=endpoint.name,
            ) from None
        except ollama.ResponseError as exc:
            raise self.error(
                f"http {exc.status_code} from /api/tags: is this an Ollama server? ({str(exc.error)[:200]})",
                url=endpoint.name,
            ) from None
        names = {m.model for m in listed.models if m.model}
        wanted = self.config.model
        if wanted not in names and f"{wanted}:latest" not in names:
            known = ", ".join(sorted(names)) or "none"
            raise self.error(
                f"model not found on the server (has: {known}); run `ollama pull {wanted}`", url=endpoint.name
            )

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client._client.aclose()
        self._clients = {}
