"""Several endpoints per engine: balancing, cool-downs, retries elsewhere, checks, the summary."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import CHIT_CHAT, REPO, task_dict, when_true, write_task
from fms_dgt.cli import main
from fms_dgt.engines.endpoints import COOL_DOWN, Endpoints, display_url
from fms_dgt.engines.ollama import OllamaConfig, OllamaEngine
from fms_dgt.engines.openai import OpenAIConfig, OpenAIEngine
from fms_dgt.errors import ConfigError, EngineError
from fms_dgt.loader import EngineOverride, load_task
from fms_dgt.testing.lm_server import Fault, LMServer, PlausibleReplies
from test_engines import MESSAGES, chat_bodies, closed_port

OUT = Path("public/examples/chit_chat")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def retryable(cause: str = "http 503: busy", retry_after: float | None = None) -> EngineError:
    return EngineError(cause, retryable=True, retry_after=retry_after)


# ---- the balancer ------------------------------------------------------------------------------


def test_pick_least_outstanding_with_ties_in_turn() -> None:
    pool = Endpoints("e", ["http://a", "http://b", "http://c"])
    a, b, c = pool.all
    assert [pool.pick().url for _ in range(6)] == ["http://a", "http://b", "http://c"] * 2
    a.outstanding, b.outstanding, c.outstanding = 3, 1, 2
    assert pool.pick() is b


def test_failed_endpoint_rests_then_gets_one_probe_at_a_time() -> None:
    clock = Clock()
    pool = Endpoints("e", ["http://a", "http://b"], clock=clock)
    a, b = pool.all
    pool.failed(b, retryable())
    assert b.counts.errors == 1 and not b.healthy
    assert {pool.pick().url for _ in range(4)} == {"http://a"}  # b rests
    assert pool.has_spare()  # a answers: a retry needs no backoff
    clock.now += COOL_DOWN
    a.outstanding = 5
    probe = pool.pick()
    assert probe is b  # rested long enough: one probe
    b.outstanding = 1
    assert pool.pick() is a  # ...and only one at a time
    b.outstanding = 0
    pool.failed(b, retryable())  # the probe failed: twice as long
    assert b.resting_until == clock.now + 2 * COOL_DOWN
    clock.now += 2 * COOL_DOWN
    pool.succeeded(b)
    assert b.healthy and b.strikes == 0
    a.outstanding = 0
    assert {pool.pick().url for _ in range(2)} == {"http://a", "http://b"}


def test_one_outage_is_one_strike_and_retry_after_is_honoured() -> None:
    clock = Clock()
    pool = Endpoints("e", ["http://a", "http://b"], clock=clock)
    b = pool.all[1]
    for _ in range(30):  # thirty requests in flight fail together: one outage, not thirty
        pool.failed(b, retryable())
    assert b.strikes == 1 and b.counts.errors == 30
    assert b.resting_until == clock.now + COOL_DOWN
    a = pool.all[0]
    pool.failed(a, retryable("http 429: slow down", retry_after=30))
    assert a.resting_until == clock.now + 30


def test_request_errors_do_not_rest_the_endpoint() -> None:
    pool = Endpoints("e", ["http://a", "http://b"])
    a = pool.all[0]
    pool.failed(a, EngineError("http 400: bad request"))
    assert a.counts.errors == 1 and a.strikes == 0 and a.available(time.monotonic())


def test_a_lone_endpoint_is_always_used() -> None:
    pool = Endpoints("e", ["http://a"])
    pool.failed(pool.all[0], retryable())
    assert pool.pick() is pool.all[0]
    assert not pool.has_spare()  # so the engine's backoff applies, as with one URL before


def test_counts_are_taken_and_added() -> None:
    worker = Endpoints("e", ["http://a", "http://b"])
    worker.succeeded(worker.all[0])
    worker.failed(worker.all[1], retryable())
    driver = Endpoints("e", ["http://a", "http://b"])
    driver.add_counts(worker.take_counts())
    driver.add_counts(worker.take_counts())  # nothing new: nothing added twice
    assert {k: v.as_dict() for k, v in driver.counts().items()} == {
        "http://a": {"calls": 1, "errors": 0}, "http://b": {"calls": 1, "errors": 1}}


def test_display_url_hides_passwords() -> None:
    assert display_url("http://user:s3cret@host:8000/v1") == "http://user:***@host:8000/v1"
    assert display_url("http://host:8000/v1") == "http://host:8000/v1"
    assert display_url("user:s3cret@host:11434") == "user:***@host:11434"


# ---- configuration -----------------------------------------------------------------------------


def test_base_url_list_loads_and_one_string_still_works(tmp_path: Path) -> None:
    engines = {"default": {"type": "openai", "model": "m", "base_url": ["http://a/v1", "http://b/v1"]}}
    config = load_task(write_task(tmp_path, task_dict(tmp_path, engines=engines))).config
    assert config.engines["default"].base_urls() == ["http://a/v1", "http://b/v1"]
    single = load_task(write_task(tmp_path, task_dict(tmp_path))).config.engines["default"]
    assert single.base_url == "http://127.0.0.1:9/v1" and single.base_urls() == ["http://127.0.0.1:9/v1"]


@pytest.mark.parametrize(("urls", "problem"), [
    ([], "needs at least one URL"),
    (["http://a/v1", "http://a/v1/"], "lists the same URL twice"),
])
def test_bad_base_url_lists_name_file_line_key(tmp_path: Path, urls: list[str], problem: str) -> None:
    engines = {"default": {"type": "openai", "model": "m", "base_url": urls}}
    path = write_task(tmp_path, task_dict(tmp_path, engines=engines))
    with pytest.raises(ConfigError) as info:
        load_task(path)
    assert f"{path}:" in str(info.value) and "engines.default.base_url" in str(info.value)
    assert problem in str(info.value)


def test_base_url_flag_given_twice_becomes_a_list(tmp_path: Path) -> None:
    path = write_task(tmp_path, task_dict(tmp_path))
    two = load_task(path, EngineOverride(base_url=("http://a/v1", "http://b/v1"))).config.engines["default"]
    one = load_task(path, EngineOverride(base_url=("http://a/v1",))).config.engines["default"]
    assert two.base_url == ["http://a/v1", "http://b/v1"] and one.base_url == "http://a/v1"


# ---- engines over HTTP ---------------------------------------------------------------------------


def two_server_engine(first: LMServer, second: LMServer, **overrides: Any) -> OpenAIEngine:
    settings: dict[str, Any] = {
        "type": "openai", "model": "sim-model", "base_url": [first.url + "/v1", second.url + "/v1"],
        "retry_wait": 0.01, "max_retries": 3, "timeout": 2, **overrides,
    }
    return OpenAIEngine("default", OpenAIConfig(**settings))


async def chats(engine: OpenAIEngine | OllamaEngine, count: int) -> list[Any]:
    """``count`` chats, at most ``engine.capacity`` in flight (as the runner's LM client does)."""
    limit = asyncio.Semaphore(engine.capacity)

    async def one() -> Any:
        async with limit:
            return await engine.layered_chat(MESSAGES)

    return await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)


async def test_requests_are_spread_over_endpoints() -> None:
    async with LMServer(latency=0.02) as first, LMServer(latency=0.02) as second:
        engine = two_server_engine(first, second, max_concurrency=4)
        assert engine.capacity == 8  # max_concurrency per endpoint
        await chats(engine, 40)
        await engine.aclose()
    assert len(chat_bodies(first)) + len(chat_bodies(second)) == 40
    assert 15 <= len(chat_bodies(first)) <= 25
    report = engine.report()
    assert report["base_url"] == [first.url + "/v1", second.url + "/v1"]
    assert sum(c["calls"] for c in report["endpoints"].values()) == 40


async def test_failed_request_is_retried_at_once_on_another_endpoint() -> None:
    async with LMServer() as first, LMServer() as second:
        first.faults.append(Fault(status=503))
        # A backoff of 30 s would show if the retry waited instead of going elsewhere.
        engine = two_server_engine(first, second, retry_wait=30)
        engine.endpoints._turn = 0  # type: ignore[union-attr]  # the first attempt goes to `first`
        started = time.monotonic()
        result = await engine.layered_chat(MESSAGES)
        elapsed = time.monotonic() - started
        await engine.aclose()
    assert elapsed < 2 and result.calls == 2
    assert len(chat_bodies(first)) == 1 and len(chat_bodies(second)) == 1
    assert engine.retry_reasons == {"http 503": 1}
    endpoints = engine.report()["endpoints"]
    assert endpoints[first.url + "/v1"] == {"calls": 1, "errors": 1}
    assert endpoints[second.url + "/v1"] == {"calls": 1, "errors": 0}


async def test_an_endpoint_failing_everything_does_not_trip_the_breaker() -> None:
    """A burst of failures from one dead endpoint while the other answers: no fatal stop."""
    async with LMServer(latency=0.01) as good, LMServer(latency=0.01) as bad:
        bad.faults.extend(Fault(status=500) for _ in range(10_000))
        engine = two_server_engine(good, bad, max_concurrency=32)
        results = await chats(engine, 200)
        await engine.aclose()
    assert all(not isinstance(r, BaseException) for r in results)
    assert 1 <= bad.stats["chat_requests"] < 100  # rested, then probed now and then


async def test_all_endpoints_failing_still_trips_the_breaker() -> None:
    async with LMServer() as first, LMServer() as second:
        for server in (first, second):
            server.faults.extend(Fault(status=500) for _ in range(10_000))
        engine = two_server_engine(first, second, max_retries=1, retry_wait=0.001)
        outcomes = await chats(engine, 60)
        await engine.aclose()
    assert any(isinstance(o, EngineError) and o.fatal for o in outcomes)


async def test_check_skips_an_unreachable_endpoint_and_names_it(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    async with LMServer() as server:
        engine = OpenAIEngine("default", OpenAIConfig(
            type="openai", model="sim-model", base_url=[dead, server.url + "/v1"], retry_wait=30))
        await engine.check()
        results = [await engine.layered_chat(MESSAGES) for _ in range(3)]
        await engine.aclose()
    assert all(r.calls == 1 for r in results)  # nothing was sent to the resting endpoint
    assert any(dead in r.message and "server unreachable" in r.message for r in caplog.records)


async def test_check_with_no_endpoint_reachable_names_them_all() -> None:
    dead = [f"http://127.0.0.1:{closed_port()}/v1" for _ in range(2)]
    engine = OpenAIEngine("default", OpenAIConfig(type="openai", model="m", base_url=dead))
    with pytest.raises(EngineError) as info:
        await engine.check()
    await engine.aclose()
    message = str(info.value)
    assert "no endpoint reachable" in message and dead[0] in message and dead[1] in message


async def test_ollama_hosts_spread_and_a_host_without_the_model_stops_the_check() -> None:
    async with LMServer() as first, LMServer(models=["llama3:latest"]) as second:
        engine = OllamaEngine("default", OllamaConfig(type="ollama", model="granite4:3b", base_url=[first.url, second.url]))
        with pytest.raises(EngineError) as info:
            await engine.check()
        assert second.url in str(info.value) and "ollama pull granite4:3b" in str(info.value)
        await chats(engine, 10)
        await engine.aclose()
    assert len(chat_bodies(first)) == len(chat_bodies(second)) == 5


def test_cli_with_two_endpoints_one_stopped_mid_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The local executor: one of two servers goes away mid-run; the run still ends with exactly N."""
    n = 30
    final = tmp_path / OUT / "final_data.jsonl"
    with LMServer(latency=0.01, reply=PlausibleReplies()) as keep, LMServer(latency=0.01, reply=PlausibleReplies()) as stop:
        # Stopped after a quarter of its share of the calls (about 12 a conversation, half of them
        # here), not after some lines are kept: the first kept conversation waits for datasketch's
        # import, and by the time 5 lines were there every call could be done.
        watcher = when_true(lambda: stop.stats["chat_requests"] >= n * 12 // 8, stop.stop)
        code = main([
            "--task-paths", str(CHIT_CHAT), "--num-outputs-to-generate", str(n), "--restart",
            "--output-dir", str(tmp_path), "--engine", "openai", "--model", "sim-model",
            "--base-url", keep.url + "/v1", "--base-url", stop.url + "/v1", "--seed", "5", "--concurrency", "8",
        ])
        watcher.join(timeout=5)
        stopped_url = stop.url + "/v1"
    assert code == 0
    lines = final.read_text().splitlines()
    assert len(lines) == n and len({json.loads(line)["conversation_id"] for line in lines}) == n
    summary = json.loads((tmp_path / OUT / "run_summary.json").read_text())
    endpoints = summary["engines"]["default"]["endpoints"]
    assert endpoints[stopped_url]["calls"] > 0 and endpoints[stopped_url]["errors"] >= 1
    assert endpoints[keep.url + "/v1"]["errors"] == 0
    # Endpoints count every finished attempt; per_engine counts the attempts of finished calls, so
    # a failed attempt of a spare conversation's call cancelled at exactly N is only in the former.
    calls = summary["per_engine"]["default"]["calls"]
    assert calls <= sum(c["calls"] for c in endpoints.values()) <= calls + endpoints[stopped_url]["errors"]
    assert f"endpoints of default: {keep.url}/v1" in capsys.readouterr().err


def test_password_in_a_url_never_reaches_the_summary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    with LMServer(reply=PlausibleReplies()) as server:
        task = yaml.safe_load(CHIT_CHAT.read_text())
        secret_url = server.url.replace("http://", "http://me:hunter2@") + "/v1"
        task["engines"] = {"default": {"type": "openai", "model": "sim-model",
                                       "base_url": [secret_url, server.url + "/v1"]}}
        path = write_task(tmp_path, yaml.safe_dump(task))
        code = main(["--task-paths", str(path), "--num-outputs-to-generate", "2", "--restart",
                     "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    summary = (tmp_path / "out" / OUT / "run_summary.json").read_text()
    assert "hunter2" not in summary and "me:***@" in summary
