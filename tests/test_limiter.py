"""Adaptive concurrency: the limiter on a fake clock, the priority gate, the engine against the
simulated server's three ways of being overloaded, the override rules, and spares at exactly N."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ChitChatResponder, task_dict, write_task
from fms_dgt.config import EngineConfig
from fms_dgt.engines import limiter
from fms_dgt.engines.gate import Gate, priority
from fms_dgt.engines.limiter import AdaptiveLimit, FixedLimit
from fms_dgt.engines.openai import OpenAIConfig, OpenAIEngine
from fms_dgt.engines.scripted import ScriptedEngine
from fms_dgt.errors import EngineError
from fms_dgt.loader import EngineOverride, load_task
from fms_dgt.runner import RunOptions, Runner
from fms_dgt.testing.lm_server import LMServer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_window(limit: AdaptiveLimit, clock: Clock, latency: float, busy: bool = True) -> None:
    """One window of requests, all started after the window began, each taking ``latency``."""
    clock.now += 0.001
    count = max(limiter.MIN_WINDOW, limit.limit)
    in_flight = limit.limit if busy else 1
    starts = [limit.started(in_flight) for _ in range(count)]
    clock.now += latency
    for start in starts:
        limit.succeeded(start, latency)


def test_grows_by_doubling_while_latency_stays_at_its_no_load_level() -> None:
    clock = Clock()
    assert AdaptiveLimit(512, clock=clock).limit == limiter.INITIAL_LIMIT
    limit = AdaptiveLimit(512, initial=4, clock=clock)  # the window counts below start from 4
    seen = []
    for _ in range(5):
        run_window(limit, clock, 0.2)
        seen.append(limit.limit)
    assert seen == [8, 16, 32, 64, 128]
    assert limit.baseline == pytest.approx(0.2)


def test_does_not_grow_when_the_limit_is_not_used() -> None:
    clock = Clock()
    limit = AdaptiveLimit(512, initial=4, clock=clock)
    for _ in range(5):
        run_window(limit, clock, 0.2, busy=False)
    assert limit.limit == 4


def test_backs_off_when_latency_climbs_then_grows_additively() -> None:
    clock = Clock()
    limit = AdaptiveLimit(512, initial=4, clock=clock)
    for _ in range(4):
        run_window(limit, clock, 0.2)  # 4 -> 64
    assert limit.limit == 64
    # A server with 32 slots: at 64 in flight requests queue and take twice as long. In slow
    # start one such window only holds the limit; the second in a row cuts it.
    run_window(limit, clock, 0.4)
    assert limit.slow_start and limit.limit == 64
    run_window(limit, clock, 0.4)
    assert not limit.slow_start
    assert limit.limit == int(64 * 0.5 + 8)  # limit * gradient + sqrt(limit)
    before = limit.limit
    run_window(limit, clock, 0.2)  # no queue any more: additive growth, not doubling
    assert before < limit.limit <= before + 4


def test_one_slow_window_does_not_end_slow_start() -> None:
    """A pause of this process (an import holding the GIL, a garbage collection) slows one
    window's replies; the server is not queueing, so the limit keeps doubling after it."""
    clock = Clock()
    limit = AdaptiveLimit(512, initial=4, clock=clock)
    for _ in range(3):
        run_window(limit, clock, 0.2)  # 4 -> 32
    run_window(limit, clock, 0.35)
    assert limit.slow_start and limit.limit == 32
    run_window(limit, clock, 0.2)
    assert limit.slow_start and limit.limit == 64


def test_429_halves_once_per_window_and_honours_retry_after() -> None:
    clock = Clock()
    limit = AdaptiveLimit(512, initial=4, clock=clock)
    for _ in range(3):
        run_window(limit, clock, 0.1)
    assert limit.limit == 32
    starts = [limit.started(32) for _ in range(5)]
    clock.now += 0.05
    limit.dropped(starts[0], retry_after=2.0)
    for start in starts[1:]:  # the same burst: no further cuts
        limit.dropped(start, retry_after=2.0)
    assert limit.limit == 16
    assert not limit.may_start(0)  # paused until Retry-After
    assert limit.resume_at() == pytest.approx(clock.now + 2.0)
    clock.now += 2.01
    assert limit.may_start(0) and not limit.may_start(16)
    later = limit.started(1)
    limit.dropped(later, retry_after=None)  # sent after the cut: a new overload
    assert limit.limit == 8


def test_timeouts_cut_the_limit_through_the_gate() -> None:
    clock = Clock()
    limit = AdaptiveLimit(512, initial=40, clock=clock)

    async def scenario() -> None:
        gate: Gate[str] = Gate({"local": limit}, clock=clock)
        key, started = await gate.acquire()
        gate.release(key, started, dropped=True)  # how the Gated layer reports a timeout
        assert limit.limit == 20

    asyncio.run(scenario())


def test_ceiling_and_floor() -> None:
    clock = Clock()
    limit = AdaptiveLimit(10, clock=clock)
    for _ in range(4):
        run_window(limit, clock, 0.1)
    assert limit.limit == 10 and limit.peak == 10
    for _ in range(10):
        limit.dropped(limit.started(1), retry_after=None)
        clock.now += 1
    assert limit.limit == 1


def test_probe_window_relearns_a_slower_no_load_latency() -> None:
    clock = Clock()
    limit = AdaptiveLimit(512, initial=4, clock=clock)
    run_window(limit, clock, 0.1)
    limit.dropped(limit.started(1), retry_after=None)  # leave slow start at 4
    clock.now += 1
    # The server got twice as slow for everyone: windows look like queueing and cut the limit...
    for _ in range(limiter.PROBE_EVERY):
        run_window(limit, clock, 0.2)
    # ...until a probe window measures 0.2 s as the new no-load latency.
    run_window(limit, clock, 0.2)
    assert limit.baseline == pytest.approx(0.2)


def test_fixed_limit_never_moves() -> None:
    fixed = FixedLimit(6)
    fixed.dropped(fixed.started(1), retry_after=5)
    fixed.succeeded(fixed.started(1), 10.0)
    assert fixed.limit == 6 and fixed.may_start(5) and not fixed.may_start(6)


async def test_gate_serves_earlier_conversations_first_and_returns_cancelled_slots() -> None:
    gate: Gate[str] = Gate({"local": FixedLimit(1)})
    holder = await gate.acquire()
    order: list[int] = []

    async def request(rank: int) -> None:
        priority.set(rank)
        key, started = await gate.acquire()
        order.append(rank)
        await asyncio.sleep(0)
        gate.release(key, started, latency=0.0)

    tasks = [asyncio.create_task(request(rank)) for rank in (5, 3, 9, 1)]
    await asyncio.sleep(0.01)
    tasks[2].cancel()  # rank 9 gives up while waiting
    gate.release(*holder, latency=0.0)
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [1, 3, 5]
    assert gate.in_flight["local"] == 0


# -- the OpenAI engine against the simulated server --------------------------------------------


async def drive(server: LMServer, callers: int, seconds: float, **config: Any) -> OpenAIEngine:
    """``callers`` concurrent loops of chat calls for ``seconds``, on an auto-limited engine."""
    engine = OpenAIEngine("default", OpenAIConfig(type="openai", model="m", base_url=server.url + "/v1",
                                                 retry_wait=0.01, max_retries=8, **config))
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def caller() -> None:
        while loop.time() < end:
            await engine.layered_chat([{"role": "user", "content": "hi"}])

    try:
        await asyncio.gather(*(caller() for _ in range(callers)))
    finally:
        await engine.aclose()
    return engine


def endpoint_limit(engine: OpenAIEngine) -> dict[str, Any]:
    (report,) = engine.concurrency_report().values()
    return report


# Latencies of 0.1 s keep these meaningful on a loaded 2-core machine (a request's own CPU time
# is a few ms); the bounds are the benchmark's (peak at most 3x the server's slots).


async def test_adaptive_limit_finds_a_queueing_servers_slots() -> None:
    async with LMServer(latency=0.1, slots=6) as server:
        engine = await drive(server, 48, 3.0)
        report = endpoint_limit(engine)
    assert report["mode"] == "auto"
    assert report["peak"] > 8  # grew past its start (8) while the server kept up
    assert server.stats["peak_concurrency"] <= 18  # and never flooded its queue
    assert report["final"] <= 18


async def test_adaptive_limit_stops_at_the_knee_of_a_slowing_server() -> None:
    async with LMServer(latency=0.1, slots=6, overload="slowdown") as server:
        engine = await drive(server, 48, 3.0)
        report = endpoint_limit(engine)
    assert report["peak"] >= 8
    assert server.stats["peak_active"] <= 18
    assert report["final"] <= 18


async def test_adaptive_limit_backs_off_on_429_and_every_call_succeeds() -> None:
    # 20 requests/s at 50 ms is one request in flight; slow start overshoots and must come back.
    async with LMServer(latency=0.05, slots=64, rate_limit=20) as server:
        engine = await drive(server, 32, 3.0)  # raises if any call failed for good
        report = endpoint_limit(engine)
        stats = server.stats
    assert stats["rate_limited"] > 0
    assert engine.retry_reasons["http 429"] == stats["rate_limited"]
    assert report["final"] <= 4 and report["peak"] <= 16


async def test_an_explicit_number_pins_the_limit() -> None:
    async with LMServer(latency=0.02, slots=64) as server:
        engine = await drive(server, 32, 1.5, max_concurrency=5)
        report = endpoint_limit(engine)
    assert report == {"mode": "fixed", "final": 5, "peak": 5}
    assert 1 <= server.stats["peak_concurrency"] <= 5  # 32 callers, never more than the pin


async def test_the_slowdown_server_slows_every_request_past_its_slots() -> None:
    async with LMServer(latency=0.05, slots=2, overload="slowdown") as server:
        engine = OpenAIEngine("d", OpenAIConfig(type="openai", model="m", base_url=server.url + "/v1",
                                               max_concurrency=8))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await asyncio.gather(*(engine.layered_chat([{"role": "user", "content": "x"}]) for _ in range(8)))
        wall = loop.time() - t0
        await engine.aclose()
    assert server.stats["peak_active"] == 8  # all at once, no queue
    assert wall >= 0.17  # 8 requests share the speed of 2: at least about 4 x 50 ms


# -- overrides and the runner ------------------------------------------------------------------


def test_switching_type_drops_the_old_types_max_concurrency(tmp_path: Path) -> None:
    data = task_dict(tmp_path, engines={"default": {"type": "local", "max_concurrency": 4, "timeout": 900}})
    path = write_task(tmp_path, data)
    switched = load_task(path, EngineOverride(type="openai", model="m", base_url="http://127.0.0.1:9/v1"))
    engine = switched.config.engines["default"]
    assert engine.max_concurrency == "auto" and engine.timeout == 900
    pinned = load_task(path, EngineOverride(type="openai", model="m", max_concurrency=12))
    assert pinned.config.engines["default"].max_concurrency == 12
    same_type = load_task(path, EngineOverride(model="qwen2.5-0.5b"))
    assert same_type.config.engines["default"].max_concurrency == 4


async def test_spare_conversations_stop_at_exactly_n(tmp_path: Path) -> None:
    path = write_task(tmp_path, task_dict(tmp_path))
    engine = ScriptedEngine(
        config=EngineConfig(type="scripted", model="s", retry_wait=0, max_concurrency=8),
        responder=ChitChatResponder(),
    )
    options = RunOptions(num_outputs=5, output_dir=tmp_path / "out", restart=True, seed=3, progress=False)
    result = await Runner(load_task(path), options, engines={"default": engine}).run()
    lines = (result.output_dir / "final_data.jsonl").read_text().splitlines()
    summary = json.loads((result.output_dir / "run_summary.json").read_text())
    assert len(lines) == 5 and summary["total"] == 5 and summary["accepted"] == 5
    spare = summary["spare"]
    # 5 wanted and the engine serves 8 at once: 3 spares on the idle slots (more after drops).
    assert spare["conversations"] == summary["attempts"] - 5 - sum(summary["dropped"].values())
    assert spare["conversations"] >= 3
    assert spare["tokens"] > 0 and spare["lm_calls"] > 0
    assert summary["conversations_in_flight_peak"] == 8
    assert summary["time_to_first_kept_seconds"] is not None


def test_spares_start_only_on_idle_capacity_of_a_limit_already_found() -> None:
    """Spares beyond what N still needs take request slots nobody uses or waits for, and none
    while a limit is still in slow start (its room then is not measured capacity)."""
    from types import SimpleNamespace

    from fms_dgt.pacing import Pacer

    clock = Clock()
    found = AdaptiveLimit(512, initial=16, clock=clock)
    found.slow_start = False
    gate: Gate[str] = Gate({"a": found}, clock=clock)
    pacer = Pacer({"default": SimpleNamespace(gate=gate, shares_compute=False)})  # type: ignore[dict-item]
    # 10 still needed, 10 running, 16 slots with no request in them: 5 spares (half of 10).
    assert pacer.in_flight_cap(10, 10) == 15
    gate.in_flight["a"] = 14  # 2 slots idle: 2 spares
    assert pacer.in_flight_cap(10, 10) == 12
    gate.in_flight["a"] = 16  # none idle: only what is needed
    assert pacer.in_flight_cap(10, 10) == 10
    gate.in_flight["a"] = 0
    assert pacer.limits_found  # the runner may now start its chart process (fms_dgt.chart)
    found.slow_start = True  # still probing: no spares even with every slot free
    assert pacer.in_flight_cap(10, 10) == 10
    assert not pacer.limits_found  # nor a process that would take a core from the ramp
    engine_on_cpu = SimpleNamespace(gate=Gate({"a": FixedLimit(4)}), shares_compute=True)
    assert Pacer({"local": engine_on_cpu}).in_flight_cap(1, 1) == 1  # type: ignore[dict-item]
