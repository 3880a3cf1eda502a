"""The simulated LM server, exercised over a real socket with httpx and the official ollama client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import httpx
import ollama
import pytest
from pydantic import BaseModel, Field

from fms_dgt.testing.lm_server import Fault, LMServer, PlausibleReplies, instance_for_schema

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the sea."}]


@pytest.fixture
def server():
    with LMServer() as s:
        yield s


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=5) as c:
        yield c


def chat(client: httpx.Client, **extra) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "m1", "messages": MESSAGES, **extra})


class Step(BaseModel):
    action: Literal["ask", "answer", "clarify"]
    detail: str = Field(min_length=12, max_length=60)


class Plan(BaseModel):
    title: str = Field(min_length=5)
    topics: list[Literal["math", "art", "music", "code", "law"]] = Field(min_length=1, max_length=3)
    steps: list[Step] = Field(min_length=3)
    turns: int = Field(ge=2, le=4)
    score: float = Field(gt=0, lt=1)
    note: str | None = None
    kind: Literal["plan"] = "plan"
    done: bool


def test_openai_chat_shape_and_usage(server, client):
    first, second = chat(client), chat(client)
    assert first.status_code == 200 and first.headers["content-type"] == "application/json"
    data = first.json()
    assert data["object"] == "chat.completion" and data["model"] == "m1" and data["id"]
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    text = choice["message"]["content"]
    assert text.startswith("Simulated reply #1 to: Tell me about the sea.")
    assert second.json()["choices"][0]["message"]["content"] != text  # unique per request
    usage = data["usage"]
    prompt_chars = sum(len(m["content"]) for m in MESSAGES)
    assert usage["prompt_tokens"] == prompt_chars // 4
    assert usage["completion_tokens"] == max(1, len(text) // 4) == 20  # padded to completion_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert server.requests[0]["path"] == "/v1/chat/completions" and server.requests[0]["method"] == "POST"
    assert server.requests[0]["body"]["model"] == "m1"
    assert server.requests[0]["headers"]["content-type"] == "application/json"
    assert server.stats["requests"] == server.stats["chat_requests"] == 2


def test_max_tokens_truncates(client):
    data = chat(client, max_tokens=3).json()
    assert data["choices"][0]["finish_reason"] == "length"
    assert len(data["choices"][0]["message"]["content"]) == 12
    assert data["usage"]["completion_tokens"] == 3
    data = chat(client, max_completion_tokens=5).json()
    assert data["usage"]["completion_tokens"] == 5 and data["choices"][0]["finish_reason"] == "length"
    assert chat(client, max_tokens=500).json()["choices"][0]["finish_reason"] == "stop"


def test_json_schema_reply_is_valid_and_varies(client):
    rf = {"type": "json_schema", "json_schema": {"name": "plan", "schema": Plan.model_json_schema()}}
    plans = [Plan.model_validate_json(chat(client, response_format=rf).json()["choices"][0]["message"]["content"])
             for _ in range(8)]
    assert all(len(set(p.topics)) == len(p.topics) for p in plans)  # distinct enum picks
    assert len({tuple(p.topics) for p in plans}) > 1  # different requests, different subsets
    assert len({p.title for p in plans}) == len(plans)
    assert chat(client, response_format={"type": "json_object"}).json()["choices"][0]["message"]["content"] == "{}"
    rf = {"type": "json_object", "schema": {"type": "object", "properties": {"a": {"const": 7}}}}
    assert json.loads(chat(client, response_format=rf).json()["choices"][0]["message"]["content"]) == {"a": 7}


def test_instance_generator_refs_and_combinators():
    schema = {
        "type": "object",
        "required": ["pet", "ids", "either"],
        "properties": {
            "pet": {"$ref": "#/definitions/Pet"},
            "ids": {"type": "array", "items": {"type": "integer", "minimum": 10}, "minItems": 4},
            "either": {"oneOf": [{"type": "string", "enum": ["x"]}, {"type": "integer"}]},
            "none": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 0},
        },
        "definitions": {"Pet": {"type": "object", "properties": {"name": {"$ref": "#/$defs/Name"}}}},
        "$defs": {"Name": {"type": "string", "minLength": 100, "maxLength": 100}},
    }
    value = instance_for_schema(schema, seed=3)
    assert len(value["pet"]["name"]) == 100 and value["either"] == "x" and value["none"] == []
    assert len(value["ids"]) == 4 and all(isinstance(i, int) and i >= 10 for i in value["ids"])


@pytest.mark.asyncio
async def test_ollama_client_chat_format_and_num_predict():
    async with LMServer() as server:
        client = ollama.AsyncClient(host=server.url)
        schema = Plan.model_json_schema()
        response = await client.chat(model="granite4:3b", messages=MESSAGES, format=schema)
        Plan.model_validate_json(response.message.content)
        assert response.done and response.done_reason == "stop" and response.eval_count >= 1
        capped = await client.chat(model="granite4:3b", messages=MESSAGES, format=schema, options={"num_predict": 5})
        assert capped.done_reason == "length" and capped.eval_count == 5
        assert len(capped.message.content) == 20 and capped.prompt_eval_count == sum(len(m["content"]) for m in MESSAGES) // 4
        assert server.requests[-1]["body"]["format"] == schema
        assert server.requests[-1]["body"]["options"]["num_predict"] == 5
        assert (await client.chat(model="x", messages=MESSAGES, format="json")).message.content == "{}"
        assert "granite4:3b" in {m.model for m in (await client.list()).models}
        server.faults.append(Fault(status=503))
        with pytest.raises(ollama.ResponseError) as info:
            await client.chat(model="granite4:3b", messages=MESSAGES)
        assert info.value.status_code == 503 and info.value.error == "injected fault"
        await client._client.aclose()


def test_scripted_replies_then_callable():
    with LMServer(reply=lambda body, stage: "cb:" + body["messages"][-1]["content"]) as server, \
            httpx.Client(base_url=server.url) as client:
        server.replies.extend(["first", "second"])
        texts = [chat(client).json()["choices"][0]["message"]["content"] for _ in range(3)]
        assert texts == ["first", "second", "cb:Tell me about the sea."]


def test_500_fault_then_success(server, client):
    server.faults.append(Fault(status=500))
    failed = chat(client)
    assert failed.status_code == 500
    assert failed.json() == {"error": {"message": "injected fault", "code": 500}}
    assert chat(client).status_code == 200  # same keep-alive connection still works
    assert server.stats["errors_injected"] == 1 and server.stats["chat_requests"] == 2


def test_429_fault_sets_retry_after(server, client):
    server.faults.append(Fault(status=429, retry_after=1.5))
    response = chat(client)
    assert response.status_code == 429 and response.headers["retry-after"] == "1.5"
    assert "retry-after" not in chat(client).headers


def test_broken_body_and_slow_faults(server, client):
    server.faults.extend([Fault(status=200, body='{"choices": [{"mess'), Fault(delay=0.3)])
    broken = chat(client)
    assert broken.status_code == 200 and broken.text == '{"choices": [{"mess'
    with pytest.raises(httpx.ReadTimeout):
        client.post("/v1/chat/completions", json={"messages": MESSAGES}, timeout=0.1)


def test_connection_reset_fault(server, client):
    server.faults.append(Fault(status=0))
    with pytest.raises(httpx.TransportError):
        chat(client)
    assert chat(client).status_code == 200  # the client reconnects
    assert server.stats["errors_injected"] == 1


def test_other_endpoints(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/").text == "Ollama is running"
    assert client.get("/api/version").json()["version"]
    assert client.get("/api/tags").json()["models"][0]["name"] == "granite4:3b"
    assert client.get("/v1/models").json() == {"object": "list", "data": [{"id": "sim-model", "object": "model"}]}
    missing = client.get("/v1/nope")
    assert missing.status_code == 404 and "error" in missing.json()
    assert client.post("/v1/chat/completions", content=b"not json").status_code == 400


@pytest.mark.asyncio
async def test_slots_queue_requests():
    async with LMServer(slots=2, latency=0.2) as server, httpx.AsyncClient(base_url=server.url) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(*(
            client.post("/v1/chat/completions", json={"messages": MESSAGES}) for _ in range(6)))
        elapsed = time.perf_counter() - started
        assert all(r.status_code == 200 for r in responses)
        assert elapsed >= 0.55
        stats = server.stats
        assert stats["peak_active"] == 2 and stats["peak_concurrency"] == 6
        server.reset_stats()
        assert server.stats == {"requests": 0, "chat_requests": 0, "peak_concurrency": 0,
                                "peak_active": 0, "errors_injected": 0, "rate_limited": 0}


def test_subprocess_mode():
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--port", "0", "--latency", "0.01", "--slots", "4"],
        stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True)
    try:
        url = json.loads(proc.stdout.readline())["url"]
        with httpx.Client(base_url=url, timeout=5) as client:
            assert chat(client).status_code == 200
            stats = client.get("/stats").json()
            assert stats["chat_requests"] == 1 and stats["peak_active"] == 1
            client.post("/stats/reset")
            assert client.get("/stats").json()["chat_requests"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()


def test_plausible_replies_answer_by_stage_not_by_prompt_wording() -> None:
    """The scenario stage's reply names the persona's role the prompt shows, however it is worded;
    no other stage's does."""
    replies = PlausibleReplies()
    persona = {"messages": [{"role": "user", "content": "Anything at all.\n\nRole: astronomer.\nGoals: see Mars."}]}
    assert replies(persona, "lm/scenario").startswith("An astronomer wants to chat about the ")
    assert replies(persona, "lm/user/guided").startswith("Reply 1 mentions the ")
    assert replies(persona, None).startswith("Reply 2 mentions the ")
    assert replies({"messages": [{"role": "user", "content": "No persona."}]}, "lm/scenario").startswith("Reply 3 ")
