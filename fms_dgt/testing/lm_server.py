"""A simulated LM server (OpenAI + Ollama chat APIs) for tests and benchmarks.

It speaks just enough HTTP/1.1 over ``asyncio.start_server`` to serve the official clients on a real
socket, with scripted replies and scripted faults, so client code (retries, timeouts, concurrency
limits) is exercised the way a real server would exercise it. Three ways to be overloaded:

- ``overload="queue"`` (default): ``slots`` requests are served at once, the rest wait in a queue
  (a server with a fixed batch, e.g. llama.cpp's slots);
- ``overload="slowdown"``: every request is served at once, but past ``slots`` requests the server
  shares its speed among them, so each one slows down (continuous batching past its knee, as vLLM
  or TGI behave): with n > slots requests running, each advances at slots/n of full speed;
- ``rate_limit=R``: past R chat requests per second (a bucket of R), answer 429 with a
  ``Retry-After`` saying when the next one would be accepted (a hosted API's rate limit).

Standard library only; one coroutine per connection, no per-request thread or logging.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import http
import itertools
import json
import math
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from fms_dgt.caller import HEADER

__all__ = ["Fault", "LMServer", "instance_for_schema"]

FILLER = " The quick brown fox jumps over the lazy dog while the model keeps talking."
# Words for varied plain-text replies: distinct enough between requests that a conversation
# pipeline's repetition checks accept them, so benchmarks keep conversations instead of dropping them.
_WORDS = (
    "garden river bread music window travel coffee winter budget puzzle lantern harbor meadow"
    " violin recipe ticket planet mirror pocket signal forest market candle bicycle thunder"
    " library engine blanket orchard canyon festival pepper compass whistle marble glacier"
    " velvet tunnel falcon basket cotton ladder pillow saddle anchor bamboo cactus dolphin"
    " feather hammock jacket kettle lemon magnet noodle oyster parrot quilt rocket sunflower"
).split()
# Header names arrive lower-cased.
STAGE_HEADER = HEADER.lower()
# The sampled persona's role, as the persona stage renders it into prompts ("Role: nurse.").
_PERSONA_ROLE = re.compile(r"^Role: (.+)\.$", re.MULTILINE)
FORMATS = {"date-time": "2026-01-01T00:00:00Z", "date": "2026-01-01", "time": "12:00:00",
           "email": "user@example.com", "uri": "https://example.com/",
           "uuid": "00000000-0000-4000-8000-000000000000"}


@dataclass
class Fault:
    """One scripted failure, consumed by the next chat request."""

    status: int = 500  # 0 = reset the connection without answering
    retry_after: float | None = None  # sets the Retry-After header (seconds)
    delay: float = 0.0  # sleep before answering, e.g. to exceed a client timeout
    body: str | None = None  # raw body sent instead of the JSON error (with 200: a broken success)


def instance_for_schema(schema: dict[str, Any], seed: int = 0) -> Any:
    """A JSON value valid for the (common subset of) JSON Schema; varies with ``seed``."""
    return _Gen(schema, seed).value(schema, "value", 0)


class _Gen:
    """Valid-instance generator; ``seed`` is the request number so answers differ between requests."""

    def __init__(self, root: dict[str, Any], seed: int) -> None:
        self.root, self.seed, self.rng = root, seed, random.Random(seed)

    def resolve(self, s: dict[str, Any]) -> dict[str, Any]:
        while isinstance(s, dict) and isinstance(s.get("$ref"), str) and s["$ref"].startswith("#/"):
            target: Any = self.root
            for part in s["$ref"][2:].split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            s = {**target, **{k: v for k, v in s.items() if k != "$ref"}}
        return s

    def value(self, s: Any, name: str, depth: int) -> Any:
        s = self.resolve(s) if isinstance(s, dict) else {}
        if "const" in s:
            return s["const"]
        if s.get("enum"):
            return s["enum"][self.rng.randrange(len(s["enum"]))]
        for key in ("anyOf", "oneOf"):
            if s.get(key):
                options = s[key]
                if depth > 6:  # break recursive models through their nullable branch
                    options = [o for o in options if self.resolve(o).get("type") == "null"] or options
                return self.value(options[0], name, depth + 1)
        if s.get("allOf"):
            merged: dict[str, Any] = {}
            for part in s["allOf"]:
                part = self.resolve(part)
                props = {**merged.get("properties", {}), **part.get("properties", {})}
                merged = {**merged, **part, "properties": props}
            return self.value({**{k: v for k, v in s.items() if k != "allOf"}, **merged}, name, depth)
        kind = s.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        if kind is None:
            kind = "object" if "properties" in s else "array" if "items" in s else "string"
        if kind == "object":
            props = s.get("properties", {})
            keys = list(props) + [k for k in s.get("required", []) if k not in props]
            return {k: self.value(props.get(k, {}), k, depth + 1) for k in keys}
        if kind == "array":
            return self.array(s, name, depth)
        if kind == "string":
            if s.get("format") in FORMATS:
                return FORMATS[s["format"]]
            text = f"{name.replace('_', ' ')} {self.seed}"
            while len(text) < int(s.get("minLength", 1)):
                text += FILLER
            return text[: int(s["maxLength"])] if "maxLength" in s else text
        if kind in ("integer", "number"):
            return self.number(s, kind == "integer")
        if kind == "boolean":
            return self.seed % 2 == 0
        return None

    def array(self, s: dict[str, Any], name: str, depth: int) -> list[Any]:
        items = self.resolve(s.get("items") or {})
        lo = int(s.get("minItems", 0))
        hi = int(s.get("maxItems", max(lo, 2)))
        if depth > 6:
            hi = lo
        enum = items.get("enum")
        if enum and "const" not in items:  # a distinct, per-request subset of the allowed values
            if hi < 1:
                return []
            n = self.rng.randint(max(lo, 1), max(lo, 1, min(hi, len(enum))))
            picked = self.rng.sample(enum, min(n, len(enum)))
            return picked + [enum[i % len(enum)] for i in range(n - len(picked))]
        n = min(max(lo, 2), hi)
        return [self.value(items, f"{name} {i + 1}", depth + 1) for i in range(n)]

    def number(self, s: dict[str, Any], integer: bool) -> int | float:
        step = 1 if integer else 1e-6
        lo, hi = s.get("minimum"), s.get("maximum")
        if lo is None and _is_num(s.get("exclusiveMinimum")):
            lo = s["exclusiveMinimum"] + step
        if hi is None and _is_num(s.get("exclusiveMaximum")):
            hi = s["exclusiveMaximum"] - step
        lo = lo if lo is not None else min(0, hi - 100) if hi is not None else 0
        hi = hi if hi is not None else lo + 100
        if integer:
            return self.rng.randint(math.ceil(lo), math.floor(hi))
        return min(hi, max(lo, round(self.rng.uniform(lo, hi), 3)))


def _is_num(x: Any) -> bool:
    """A JSON number (draft-4 booleans in exclusiveMinimum/Maximum are not)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _requested_schema(path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a chat request asks for; ``{}`` means 'any JSON object', None means text."""
    if path == "/api/chat":
        fmt = body.get("format")
        return fmt if isinstance(fmt, dict) else {} if fmt == "json" else None
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_schema":
        return (rf.get("json_schema") or {}).get("schema") or {}
    if rf.get("type") == "json_object":
        return rf.get("schema") or {}
    return None


def _text_of(content: Any) -> str:
    """Message content as text (OpenAI allows a list of parts)."""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def _pad(text: str, target: int, number: int) -> str:
    """Extend ``text`` to about ``target`` characters with words that vary per request."""
    rng = random.Random(number)
    words = []
    while len(text) + sum(len(w) + 1 for w in words) < target:
        words.append(rng.choice(_WORDS))
    return f"{text} {' '.join(words)}."[: target + 1]


class PlausibleReplies:
    """A ``reply`` callable for conversation pipelines: every plain-text reply is distinct, and the
    scenario stage's (``lm/scenario``, by the stage header) begins with the sampled persona's
    role ("A nurse wants to chat about ..."), found in the persona the prompt shows.

    With it, a chit-chat run against the simulated server keeps its conversations instead of
    dropping them as repetitive, so benchmarks and end-to-end tests measure the real code path.
    """

    SCENARIO = "lm/scenario"

    def __init__(self, words: int = 14) -> None:
        self.words = words
        self._count = itertools.count()

    def __call__(self, body: dict[str, Any], stage: str | None = None) -> str:
        number = next(self._count)
        if stage is not None and stage.endswith("/verifier"):
            # The writer the stage expects: simulated drafts are acceptable, so simulated runs
            # measure the pipeline, not a coin-flipping judge.
            return json.dumps({"writer": "human" if "/user" in stage else "assistant"})
        path = "/api/chat" if "format" in body or "options" in body else "/v1/chat/completions"
        schema = _requested_schema(path, body)
        if schema is not None:
            return json.dumps(instance_for_schema(schema, number)) if schema else "{}"
        rng = random.Random(number)
        chosen = " ".join(rng.sample(_WORDS, self.words))
        role = self.persona_role(body) if stage == self.SCENARIO else None
        if role is not None:
            subject = f"{'an' if role[:1].lower() in 'aeiou' else 'a'} {role}"  # as the scenario asks
            return f"{subject[0].upper()}{subject[1:]} wants to chat about the {chosen}."
        return f"Reply {number} mentions the {chosen}."

    @staticmethod
    def persona_role(body: dict[str, Any]) -> str | None:
        """The role of the persona a prompt shows, or None if it shows none."""
        for message in body.get("messages") or []:
            found = _PERSONA_ROLE.search(_text_of(message.get("content")) if isinstance(message, dict) else "")
            if found:
                return found.group(1)
        return None


class LMServer:
    """Simulated LM server; ``with LMServer() as s`` (own loop in a thread) or ``async with``.

    ``reply(body, stage)``, if given, writes the text of every chat reply from the request's JSON
    body and the calling stage's name, which fms_dgt's engines send in the ``X-FMS-DGT-Stage``
    header (None without one): a fake that answers by stage keeps working when a prompt is reworded.
    """

    def __init__(
        self,
        *,
        latency: float = 0.0,
        latency_per_token: float = 0.0,
        slots: int = 64,
        reply: Callable[[dict, str | None], str] | None = None,
        completion_tokens: int = 20,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] | None = None,
        record_requests: bool = True,
        overload: str = "queue",
        rate_limit: float | None = None,
    ) -> None:
        if overload not in ("queue", "slowdown"):
            raise ValueError(f"overload must be 'queue' or 'slowdown', not {overload!r}")
        self.latency, self.latency_per_token, self.slots = latency, latency_per_token, slots
        self.overload, self.rate_limit = overload, rate_limit
        self._bucket = rate_limit or 0.0  # tokens of the rate limit's bucket
        self._bucket_at = time.monotonic()
        self.reply, self.completion_tokens = reply, completion_tokens
        self.host, self.port, self.url = host, port, ""
        self.models = list(models) if models else None
        self.record_requests = record_requests
        self.requests: list[dict] = []
        self.faults: collections.deque[Fault] = collections.deque()
        self.replies: collections.deque[str] = collections.deque()
        self._counter = 0  # chat requests ever seen; never reset, so replies stay unique
        self._in_flight = self._active = 0
        self._stats: dict[str, int] = {}
        self.reset_stats()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)

    def reset_stats(self) -> None:
        """Zero the counters in place (in-flight requests hold the dict); peaks restart from now."""
        self._stats.update({"requests": 0, "chat_requests": 0, "peak_concurrency": self._in_flight,
                       "peak_active": self._active, "errors_injected": 0, "rate_limited": 0})

    # ---- lifecycle -------------------------------------------------------------------------

    async def astart(self) -> LMServer:
        self._slots = asyncio.Semaphore(self.slots)
        # A deep backlog so a burst of hundreds of connects is queued rather than refused.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, backlog=2048)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def astop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    def start(self) -> LMServer:
        """Serve from a private event loop in a daemon thread (for synchronous test code)."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lm-server", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.astart(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.astop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> LMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LMServer:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    # ---- HTTP ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One keep-alive connection: read a request, answer it, repeat until the client leaves."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        key, value = line.split(":", 1)
                        headers[key.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length") or 0))
                conn = headers.get("connection", "").lower()
                keep = conn != "close" and (version == "HTTP/1.1" or conn == "keep-alive")
                path = path.split("?", 1)[0]
                if not await self._dispatch(writer, method, path, headers, raw, keep) or not keep:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # client went away or sent garbage: just drop the connection
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()  # never linger on a half-closed socket

    async def _dispatch(self, writer: asyncio.StreamWriter, method: str, path: str,
                        headers: dict[str, str], raw: bytes, keep: bool) -> bool:
        """Route one request; returns False when the connection must be dropped."""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if path.startswith("/stats"):  # the benchmark's probe: not counted, not recorded
            if method == "POST" and path == "/stats/reset":
                self.reset_stats()
            return await self._send(writer, 200, self.stats, keep)
        self._stats["requests"] += 1
        if self.record_requests:
            self.requests.append({"path": path, "method": method, "headers": headers, "body": body})
        route = (method, path)
        if route in (("POST", "/v1/chat/completions"), ("POST", "/api/chat")):
            if not isinstance(body, dict):
                return await self._send(writer, 400, self._error(path, 400, "body must be a JSON object"), keep)
            stage = headers.get(STAGE_HEADER)
            return await self._chat(writer, path, body, keep, unquote(stage) if stage is not None else None)
        names = self.models or ["granite4:3b"]
        if route == ("GET", "/api/tags"):
            return await self._send(writer, 200, {"models": [
                {"name": n, "model": n, "modified_at": "2026-01-01T00:00:00Z", "size": 1,
                 "digest": "sha256:0", "details": {}} for n in names]}, keep)
        if route == ("GET", "/v1/models"):
            ids = self.models or ["sim-model"]
            return await self._send(writer, 200, {"object": "list", "data": [
                {"id": n, "object": "model"} for n in ids]}, keep)
        if route == ("GET", "/api/version"):
            return await self._send(writer, 200, {"version": "0.12.0"}, keep)
        if route == ("GET", "/health"):
            return await self._send(writer, 200, {"status": "ok"}, keep)
        if route == ("GET", "/"):
            return await self._send(writer, 200, "Ollama is running", keep, "text/plain; charset=utf-8")
        return await self._send(writer, 404, self._error(path, 404, f"not found: {method} {path}"), keep)

    @staticmethod
    def _error(path: str, status: int, message: str) -> dict[str, Any]:
        """Ollama errors are ``{"error": "..."}``; OpenAI ones carry a message and code."""
        if path.startswith("/api/"):
            return {"error": message}
        return {"error": {"message": message, "code": status}}

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: Any, keep: bool,
                    content_type: str = "application/json", retry_after: float | None = None) -> bool:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        encoded = data.encode()
        try:
            phrase = http.HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        head = (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(encoded)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n")
        if retry_after is not None:
            head += f"Retry-After: {retry_after:g}\r\n"
        if writer.transport.is_closing():
            return False
        writer.write(head.encode("latin-1") + b"\r\n" + encoded)
        await writer.drain()
        return True

    # ---- chat ------------------------------------------------------------------------------

    async def _chat(self, writer: asyncio.StreamWriter, path: str, body: dict[str, Any], keep: bool,
                    stage: str | None) -> bool:
        self._counter += 1
        number = self._counter
        stats = self._stats
        stats["chat_requests"] += 1
        self._in_flight += 1
        stats["peak_concurrency"] = max(stats["peak_concurrency"], self._in_flight)
        try:
            if self.faults:
                return await self._fault(writer, path, self.faults.popleft(), keep)
            wait = self._over_rate()
            if wait is not None:
                stats["rate_limited"] += 1
                error = self._error(path, 429, "rate limit exceeded")
                return await self._send(writer, 429, error, keep, retry_after=wait)
            if self.overload == "slowdown":
                return await self._slowed(writer, path, body, number, keep, stage)
            async with self._slots:
                self._active += 1
                stats["peak_active"] = max(stats["peak_active"], self._active)
                try:
                    payload = self._answer(path, body, number, stage)
                    delay = self.latency + self.latency_per_token * payload.pop("_tokens")
                    if delay > 0:
                        await asyncio.sleep(delay)
                except Exception as exc:  # a broken `reply` callable: tell the client, keep serving
                    return await self._send(writer, 500, self._error(path, 500, repr(exc)), keep)
                finally:
                    self._active -= 1
            return await self._send(writer, 200, payload, keep)
        finally:
            self._in_flight -= 1

    def _over_rate(self) -> float | None:
        """None if a request may go now (taking a token), else seconds until the next token."""
        if self.rate_limit is None:
            return None
        now = time.monotonic()
        self._bucket = min(self.rate_limit, self._bucket + (now - self._bucket_at) * self.rate_limit)
        self._bucket_at = now
        if self._bucket >= 1:
            self._bucket -= 1
            return None
        return round((1 - self._bucket) / self.rate_limit, 3)

    async def _slowed(self, writer: asyncio.StreamWriter, path: str, body: dict[str, Any], number: int,
                      keep: bool, stage: str | None) -> bool:
        """Continuous batching: start at once; advance at min(1, slots / running) of full speed."""
        stats = self._stats
        self._active += 1
        stats["peak_active"] = max(stats["peak_active"], self._active)
        try:
            payload = self._answer(path, body, number, stage)
            work = self.latency + self.latency_per_token * payload.pop("_tokens")
            # Re-read the load every step of a tenth of the full-speed latency (at least 5 ms).
            step = max(work / 10, 0.005)
            while work > 1e-9:
                speed = min(1.0, self.slots / self._active)
                seconds = min(work / speed, step)
                await asyncio.sleep(seconds)
                work -= seconds * speed
        except Exception as exc:  # a broken `reply` callable: tell the client, keep serving
            return await self._send(writer, 500, self._error(path, 500, repr(exc)), keep)
        finally:
            self._active -= 1
        return await self._send(writer, 200, payload, keep)

    async def _fault(self, writer: asyncio.StreamWriter, path: str, fault: Fault, keep: bool) -> bool:
        self._stats["errors_injected"] += 1
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault.status == 0:
            writer.transport.abort()
            return False
        payload = fault.body if fault.body is not None else self._error(path, fault.status, "injected fault")
        return await self._send(writer, fault.status, payload, keep, retry_after=fault.retry_after)

    def _answer(self, path: str, body: dict[str, Any], number: int, stage: str | None) -> dict[str, Any]:
        """The response document for a chat request (plus ``_tokens`` for the latency model)."""
        messages = body.get("messages") or []
        texts = [_text_of(m.get("content")) for m in messages if isinstance(m, dict)]
        schema = _requested_schema(path, body)
        if self.replies:
            text = self.replies.popleft()
        elif self.reply is not None:
            text = self.reply(body, stage)
        elif schema is not None:
            text = json.dumps(instance_for_schema(schema, number)) if schema else "{}"
        else:
            text = f"Simulated reply #{number} to: {texts[-1][:40] if texts else ''}"
            target = self.completion_tokens * 4  # pad so usage reports ~completion_tokens
            if len(text) < target:
                text = _pad(text, target, number)
        prompt_tokens = max(1, sum(len(t) for t in texts) // 4)
        tokens = max(1, len(text) // 4)
        if path == "/api/chat":
            cap = (body.get("options") or {}).get("num_predict")
        else:
            cap = body.get("max_tokens") or body.get("max_completion_tokens")
        finish = "stop"
        if isinstance(cap, int) and 0 < cap < tokens:
            text, tokens, finish = text[: cap * 4], cap, "length"
        delay_s = self.latency + self.latency_per_token * tokens
        if path == "/api/chat":
            return {"model": body.get("model", ""), "message": {"role": "assistant", "content": text},
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "done": True,
                    "done_reason": finish, "total_duration": int(delay_s * 1e9), "load_duration": 0,
                    "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 0,
                    "eval_count": tokens, "eval_duration": 0, "_tokens": tokens}
        return {"id": f"chatcmpl-sim-{number}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "sim-model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens}, "_tokens": tokens}


async def _main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Simulated OpenAI/Ollama chat server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--latency-per-token", type=float, default=0.0)
    parser.add_argument("--slots", type=int, default=64, help="requests served at full speed at once")
    parser.add_argument(
        "--overload", choices=["queue", "slowdown"], default="queue",
        help="past --slots: queue: the rest wait; slowdown: all run, each slowed by slots/running",
    )
    parser.add_argument("--rate-limit", type=float, default=None, metavar="R",
                        help="answer 429 with Retry-After past R chat requests per second")
    parser.add_argument("--completion-tokens", type=int, default=20)
    parser.add_argument(
        "--plausible", action="store_true",
        help="distinct replies that a conversation pipeline accepts (see PlausibleReplies)",
    )
    args = parser.parse_args(argv)
    server = LMServer(latency=args.latency, latency_per_token=args.latency_per_token, slots=args.slots,
                      completion_tokens=args.completion_tokens, host=args.host, port=args.port,
                      reply=PlausibleReplies() if args.plausible else None,
                      overload=args.overload, rate_limit=args.rate_limit,
                      record_requests=False)  # nobody can read them from another process
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(json.dumps({"url": server.url}), flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
