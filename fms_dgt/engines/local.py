"""``type: local``: llama.cpp embedded in this process (xllamacpp); no server, no network.

The weights come from data-only packages (see ``local_models``). Requests run on a small thread
pool, one thread per llama.cpp slot, so ``n_parallel`` conversations are decoded in one batch.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import Field

from fms_dgt.config import EngineConfig
from fms_dgt.engines import local_models
from fms_dgt.engines.base import ENGINES, ChatResult, InProcessEngine, Request, Usage


class LocalConfig(EngineConfig):
    model: str | None = Field(
        None,
        description=f"Catalogue name ({', '.join(sorted(local_models.MODELS))}) or a .gguf path;"
        f" default {local_models.DEFAULT_MODEL}.",
    )
    max_concurrency: int = Field(4, ge=1, description="llama.cpp slots decoded together (n_parallel).")
    # A CPU model shares two cores among all slots: a long reply can legitimately take minutes.
    timeout: float = Field(600.0, gt=0, description="Seconds before one request is abandoned.")
    context_per_slot: int = Field(4096, ge=512, description="Tokens of context each slot holds.")
    threads: int | None = Field(None, ge=1, description="CPU threads; default all cores.")


@ENGINES.register("local")
class LocalEngine(InProcessEngine):
    Config = LocalConfig
    config: LocalConfig
    shares_compute = True

    def __init__(self, name: str, config: LocalConfig) -> None:
        super().__init__(name, config)
        self._server: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self.model_path: str | None = None

    @property
    def url(self) -> str | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "type": "local",
            "model": self.config.model or local_models.DEFAULT_MODEL,
            "model_path": self.model_path,
        }

    def _load(self) -> Any:
        try:
            import xllamacpp
        except ImportError:
            raise self.error(
                "the embedded engine is not installed; run: pip install 'fms_dgt[local]'"
            ) from None
        path = local_models.resolve(self.config.model)
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        slots = self.config.max_concurrency
        params.n_parallel = slots
        params.n_ctx = self.config.context_per_slot * slots
        threads = self.config.threads or os.cpu_count() or 2
        for cpu in (params.cpuparams, params.cpuparams_batch):
            cpu.n_threads = threads
            # No busy-waiting between ops: spinning threads collapse throughput as soon as
            # anything else wants a core (a second process, the event loop, the OS).
            cpu.poll = 0
        params.verbosity = -1
        params.port = 0  # the library also serves HTTP on 127.0.0.1; a free port avoids clashes
        try:
            server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise self.error(f"could not load {path}: {exc}") from None
        self.model_path = str(path)
        return server

    async def _ensure_loaded(self) -> None:
        async with self._lock:
            if self._server is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.config.max_concurrency, thread_name_prefix="fms_dgt-local"
                )
                self._server = await asyncio.get_running_loop().run_in_executor(self._pool, self._load)

    async def check(self) -> None:
        """Loading the model is the check: a missing package or bad file fails here, before any turn."""
        await self._ensure_loaded()

    @staticmethod
    def body(request: Request) -> dict[str, Any]:
        """The llama.cpp chat-completion request for ``request`` (``benchmarks/verifier_scores.py``
        sends it with log-probabilities added and reads the raw reply)."""
        body: dict[str, Any] = {"messages": request.messages, **request.params}
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.json_schema, "strict": True},
            }
        return body

    async def send(self, request: Request) -> ChatResult:
        if self._server is None:
            await self._ensure_loaded()
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._pool, self._server.handle_chat_completions, self.body(request))
        if "error" in reply:
            error = reply["error"]
            code = int(error.get("code") or 500)
            raise self.error(f"llama.cpp {code}: {error.get('message', error)}", retryable=code >= 500)
        choice = reply["choices"][0]
        return ChatResult(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage.from_openai(reply.get("usage")),
        )

    async def aclose(self) -> None:
        self._server = None  # the library frees the model when the server object goes
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
