"""``type: ollama``: an Ollama server through the official ``ollama`` client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import Field

from fms_dgt import caller
from fms_dgt.config import EngineConfig
from fms_dgt.engines.base import ENGINES
from fms_dgt.engines.endpoints import Endpoint
from fms_dgt.engines.request import ChatResult, Request
from fms_dgt.engines.server import ServerEngine
from fms_dgt.usage import Usage

if TYPE_CHECKING:
    import ollama

DEFAULT_HOST = "http://127.0.0.1:11434"


class OllamaConfig(EngineConfig):
    model: str = Field(description="Model tag as shown by `ollama list`, e.g. granite4:3b.")
    num_ctx: int | None = Field(None, ge=256, description="Context window the server allocates.")
    keep_alive: str | float | None = Field(None, description="How long the server keeps the model loaded.")


async def name_stage(request: httpx.Request) -> None:
    """Add the calling stage's name to a request (``caller.HEADER``: for server logs and the
    simulated server); the ollama client takes its headers once, but runs httpx's request hooks."""
    for key, value in caller.headers():
        request.headers[key.decode()] = value.decode()


@ENGINES.register("ollama")
class OllamaEngine(ServerEngine):
    Config = OllamaConfig
    config: OllamaConfig
    url_variable = "OLLAMA_HOST"
    default_url = DEFAULT_HOST

    def __init__(self, name: str, config: OllamaConfig, **client_kwargs: Any) -> None:
        """``client_kwargs`` go to the underlying ``httpx.AsyncClient`` (e.g. ``transport=`` in tests;
        ``event_hooks`` there replace the one that sends the stage's name)."""
        super().__init__(name, config)
        self._client_kwargs = client_kwargs
        self._clients: dict[str, ollama.AsyncClient] = {}  # one per host: the client is bound to it
        # Imported here, not with the module: every run imports every engine's module, and the
        # client's import (0.17 s) would delay the start of runs that never use it.
        import ollama

        self._ollama = ollama

    def client(self, endpoint: Endpoint) -> ollama.AsyncClient:
        client = self._clients.get(endpoint.url)
        if client is None:
            client = self._clients[endpoint.url] = self._ollama.AsyncClient(
                host=endpoint.url, timeout=self.config.timeout,
                **{"event_hooks": {"request": [name_stage]}, **self._client_kwargs},
            )
        return client

    def _options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        options = {k: v for k, v in params.items() if k in ("temperature", "top_p", "seed", "stop")}
        if "max_tokens" in params:
            options["num_predict"] = params["max_tokens"]
        if self.config.num_ctx is not None:
            options["num_ctx"] = self.config.num_ctx
        return options

    async def send(self, request: Request, endpoint: Endpoint) -> ChatResult:
        try:
            response = await self.client(endpoint).chat(
                model=self.config.model,
                messages=request.messages,
                format=request.json_schema,
                options=self._options(request.params),
                keep_alive=self.config.keep_alive,
            )
        except self._ollama.ResponseError as exc:
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

    async def check_endpoint(self, endpoint: Endpoint) -> None:
        """The server must answer and already have the model (we never pull)."""
        try:
            listed = await self.client(endpoint).list()
        except (ConnectionError, httpx.TransportError) as exc:
            raise self.error(
                f"server unreachable ({type(exc).__name__}); start it with `ollama serve`",
                retryable=True,
                url=endpoint.name,
            ) from None
        except self._ollama.ResponseError as exc:
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
