"""The keep-rate breaker, budgets, prices and cost, the forecast, --estimate and the progress log."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from conftest import ChitChatResponder, task_dict, write_task
from fms_dgt.breaker import KeepRateBreaker, KeepRateTooLow, wilson_upper
from fms_dgt.cli import main
from fms_dgt.config import LimitsConfig, Price
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.forecast import Forecast
from fms_dgt.guard import LimitOverrides
from fms_dgt.loader import load_task
from fms_dgt.progress import Progress
from fms_dgt.runner import RunOptions, Runner
from fms_dgt.spend import Spend
from fms_dgt.stats import RunStats
from fms_dgt.testing.lm_server import LMServer, PlausibleReplies


class OffPersonaScenarios(ChitChatResponder):
    """Writes scenarios that never name the persona's role, for ``share`` of the calls."""

    def __init__(self, share: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        self.share = share
        self.rng = random.Random(seed)

    def __call__(self, call: RecordedCall) -> Any:
        if call.stage == "lm/scenario" and self.rng.random() < self.share:
            return "Someone wants to chat about an everyday topic they care about."
        return super().__call__(call)


class OffPersonaServer(PlausibleReplies):
    """``PlausibleReplies``, except that scenarios (by the stage header) never name the persona's role."""

    def __call__(self, body: dict[str, Any], stage: str | None = None) -> str:
        text = super().__call__(body, stage)
        if stage == "lm/scenario":
            return "Someone wants to chat about an everyday topic they care about."
        return text


def make_runner(
    tmp_path: Path, engine: ScriptedEngine, n: int, *, limits: LimitOverrides | None = None,
    restart: bool = True, **task: Any,
) -> Runner:
    path = write_task(tmp_path, task_dict(tmp_path, **task))
    options = RunOptions(
        num_outputs=n, output_dir=tmp_path / "out", restart=restart, seed=5, progress=False,
        limits=limits or LimitOverrides(),
    )
    return Runner(load_task(path), options, engines={"default": engine})


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- keep-rate breaker ---------------------------------------------------------------------------


async def test_a_stage_that_always_drops_stops_the_run_with_the_message(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=OffPersonaScenarios())
    result = await make_runner(tmp_path, engine, 10).run()
    assert result.status == "failed" and isinstance(result.error, KeepRateTooLow)
    summary = json.loads((result.output_dir / "run_summary.json").read_text())
    assert summary["status"] == "failed" and summary["accepted"] == 0
    tried = summary["dropped"]["scenario_empty"]
    # bounded: the Wilson bound trips at 127 finished attempts with nothing kept (a few more may
    # finish in the same batch); the conversations in flight then are cancelled
    concurrency = summary["concurrency"] or summary["conversations_in_flight_peak"]
    assert 127 <= tried < 127 + concurrency
    assert summary["attempts"] <= tried + concurrency
    message = str(result.error)
    assert message.startswith(f"stopping: 0 of {tried} conversations kept in this run")
    assert f"top drops: scenario_empty {tried}" in message
    assert f"rejected drafts: scenario:role_not_named {3 * tried}" in message
    assert "example: lm/scenario rejected a draft (role_not_named): 'Someone wants to chat" in message
    assert "try: the model does not write a scenario that names the persona's role" in message
    assert summary["error"] == message


async def test_a_run_that_drops_60_percent_is_not_stopped(tmp_path: Path) -> None:
    # One scenario attempt per conversation, 60 % of them off-persona: 60 % of conversations dropped.
    engine = ScriptedEngine(responder=OffPersonaScenarios(share=0.6, seed=1))
    data = task_dict(tmp_path)
    data["initialization_stages"][1]["max_attempts"] = 1
    runner = make_runner(tmp_path, engine, 40, initialization_stages=data["initialization_stages"])
    result = await runner.run()
    assert result.status == "completed" and result.error is None
    assert len(lines(result.output_dir / "final_data.jsonl")) == 40
    dropped = result.summary["dropped"]["scenario_empty"]
    assert 0.45 < dropped / (dropped + 40) < 0.75


def test_breaker_never_trips_on_a_healthy_keep_rate() -> None:
    # 40 % kept, checked after every attempt for 20,000 attempts, 20 runs: never tripped.
    for seed in range(20):
        rng = random.Random(seed)
        kept = 0
        for tried in range(1, 20_001):
            kept += rng.random() < 0.4
            assert wilson_upper(kept, tried) >= 0.05
    # and a hopeless rate is caught: nothing kept trips after 127 attempts, 1 in 100 by 300
    assert wilson_upper(0, 126) >= 0.05 > wilson_upper(0, 127)
    assert wilson_upper(3, 300) < 0.05


def test_breaker_off_and_min_attempts() -> None:
    stats = RunStats()
    stats.dropped["x"] = 500
    KeepRateBreaker(0.0, 20).check(stats)  # off: never raises
    stats.dropped["x"] = 10
    KeepRateBreaker(0.9, 20).check(stats)  # under the minimum sample
    stats.dropped["x"] = 20
    with pytest.raises(KeepRateTooLow):
        KeepRateBreaker(0.9, 20).check(stats)


def test_cli_stops_a_hopeless_run_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LMServer(reply=OffPersonaServer()) as server:
        code = main([
            "--task-paths", str(write_task(tmp_path, task_dict(tmp_path))), "--num-outputs-to-generate", "5",
            "--output-dir", str(tmp_path / "out"), "--engine", "openai", "--model", "m",
            "--base-url", server.url + "/v1", "--quiet",
        ])
    err = capsys.readouterr().err
    assert code == 1
    assert "error: stopping: 0 of 1" in err and "conversations kept in this run" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "out/tests/small/run_summary.json").read_text())
    assert summary["status"] == "failed"


def test_cli_min_keep_rate_flag_and_task_section(tmp_path: Path) -> None:
    path = write_task(tmp_path, task_dict(tmp_path, limits={"min_keep_rate": 0.5, "min_attempts": 10}))
    limits = load_task(path).config.limits
    assert limits.min_keep_rate == 0.5 and limits.min_attempts == 10
    assert LimitOverrides(min_keep_rate=0.0).apply(limits).min_keep_rate == 0.0
    bad = write_task(tmp_path, task_dict(tmp_path, limits={"max_token": 5}), name="bad.yaml")
    with pytest.raises(Exception, match="limits.max_token: unknown key"):
        load_task(bad)


# -- budgets -------------------------------------------------------------------------------------


PRICE = {"prompt_per_million": 2.0, "completion_per_million": 10.0}


@pytest.mark.parametrize("flag, values, kind", [
    ("--max-calls", ["300"], "calls"),
    ("--max-tokens", ["100000"], "tokens"),
    ("--max-cost", ["0.25"], "cost"),
    # A time budget in which some conversations finish depends on the machine's load: if none
    # finished, the same budget kind is tried again with twice the time.
    ("--max-time", ["1.5", "3", "6", "12"], "seconds"),
])
def test_each_budget_stops_cleanly_and_resume_continues(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, values: list[str], kind: str
) -> None:
    with LMServer(reply=PlausibleReplies(), latency=0.1 if kind == "seconds" else 0.01) as server:
        data = task_dict(tmp_path)
        data["engines"]["default"].update(base_url=server.url + "/v1", price=PRICE)
        task = write_task(tmp_path, data)
        args = ["--task-paths", str(task), "--num-outputs-to-generate", "40", "--output-dir", str(tmp_path / "out"),
                "--seed", "3", "--quiet"]
        folder = tmp_path / "out/tests/small"
        for value in values:
            code = main([*args, "--restart", flag, value])
            err = capsys.readouterr().err
            summary = json.loads((folder / "run_summary.json").read_text())
            kept = lines(folder / "final_data.jsonl")
            assert code == 0
            assert summary["status"] == "budget_exhausted"
            assert f"budget exhausted: {flag}" in err and "run the same command again" in err
            if kept:
                break
        assert 0 < len(kept) == summary["total"] < 40
        assert len(lines(folder / "formatted_output.jsonl")) == len(kept)
        assert all(json.loads(line)["num_turns"] >= 2 for line in kept)
        spent = summary["budget"]["spent"][kind]
        limit = float(value)
        # overspent at most by the calls in flight when the budget ran out (one per conversation)
        per_call = {"calls": 1, "tokens": 1500, "cost": 0.005, "seconds": 0.5}[kind]
        assert spent <= limit + (summary["concurrency"] or summary["conversations_in_flight_peak"]) * per_call
        code = main([*args])  # resume, with no budget
        assert code == 0
    after = lines(folder / "final_data.jsonl")
    assert len(after) == 40 and after[: len(kept)] == kept
    assert json.loads((folder / "run_summary.json").read_text())["status"] == "completed"


def test_max_cost_needs_a_price(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--task-paths", str(write_task(tmp_path, task_dict(tmp_path))), "--output-dir", str(tmp_path / "out"),
                 "--max-cost", "1", "--quiet"])
    assert code == 2
    assert "limits.max_cost: a cost budget" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- prices and cost -----------------------------------------------------------------------------


def test_price_arithmetic() -> None:
    price = Price(prompt_per_million=2.0, completion_per_million=10.0, cached_prompt_per_million=0.5)
    # 600k uncached prompt x 2 + 400k cached x 0.5 + 200k completion x 10, per million
    assert price.cost(1_000_000, 200_000, 400_000) == pytest.approx(1.2 + 0.2 + 2.0)
    assert Price(prompt_per_million=3.0).cost(1000, 5000, 1000) == pytest.approx(0.003)  # cached at prompt price
    assert Price(completion_per_million=1.0).cost(10, 1_000_000) == pytest.approx(1.0)


async def test_cost_per_stage_engine_and_kept_conversation(tmp_path: Path) -> None:
    price = {"prompt_per_million": 3.0, "completion_per_million": 15.0}
    engine = ScriptedEngine(responder=ChitChatResponder())
    engine.config = engine.config.model_copy(update={"price": Price(**price)})
    result = await make_runner(tmp_path, engine, 4).run()
    s = result.summary
    for table in ("per_stage", "per_engine"):
        for name, counts in s[table].items():
            expected = (counts["prompt_tokens"] * 3.0 + counts["completion_tokens"] * 15.0) / 1e6
            assert s["cost"][table][name] == pytest.approx(expected, abs=1e-6)
            assert counts["cost"] == pytest.approx(expected, abs=1e-6)
    total = sum(s["cost"]["per_engine"].values())
    assert s["cost"]["total"] == pytest.approx(total, abs=1e-6)
    assert s["cost"]["per_kept_conversation"] == pytest.approx(total / 4, abs=1e-6)
    report = (result.output_dir / "report.md").read_text()
    assert "## Cost" in report


# -- forecast and --estimate ---------------------------------------------------------------------


def test_forecast_samples_attempts_in_start_order() -> None:
    # Long conversations cost more and finish later; the first to finish would forecast too low.
    forecast = Forecast()
    rng = random.Random(0)
    spends = [Spend(calls=c, prompt_tokens=100 * c) for c in (rng.choice([4, 8, 12]) for _ in range(400))]
    for attempt in range(400):
        forecast.started(attempt)
    finish_order = sorted(range(200), key=lambda a: spends[a].calls)  # short ones first
    for attempt in finish_order[:100]:
        forecast.finished_attempt(attempt, spends[attempt], kept=True)
    done = set(finish_order[:100])
    prefix = next(a for a in range(400) if a not in done)
    assert forecast.sample_size == prefix  # only attempts started before the first unfinished one
    for attempt in finish_order[100:]:
        forecast.finished_attempt(attempt, spends[attempt], kept=True)
    projection = forecast.project(1000, 200, 1.0, 1)
    assert projection is not None and projection.sample_attempts == 200
    true_mean = sum(s.tokens for s in spends) / 400
    remaining = projection.estimates["tokens"].value - sum(s.tokens for s in spends[:200])
    assert remaining / 800 == pytest.approx(true_mean, rel=0.1)
    e = projection.estimates["tokens"]
    assert e.low < e.value < e.high


def test_estimate_writes_nothing_under_the_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    with LMServer(reply=PlausibleReplies()) as server:
        data = task_dict(tmp_path)
        data["engines"]["default"].update(base_url=server.url + "/v1", price=PRICE)
        code = main(["--task-paths", str(write_task(tmp_path, data)), "--num-outputs-to-generate", "100000",
                     "--output-dir", str(out), "--estimate", "12", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0
    assert not out.exists()
    assert "estimate from 12 conversations: 12 kept (keep rate 100%)" in captured.out
    assert "LM calls and" in captured.out and "tokens per kept conversation" in captured.out
    assert "forecast for 100000:" in captured.out and " cost (" in captured.out


# -- progress without a terminal -----------------------------------------------------------------


async def test_progress_logs_at_a_steady_interval(caplog: pytest.LogCaptureFixture) -> None:
    stats = RunStats()
    stats.dropped["scenario_empty"] = 7
    stats.accepted = 2
    progress = Progress(10, initial=0, enabled=True, stats=stats, describe=lambda: "forecast for 10: ...",
                        log_every=0.05)
    progress.log_lines = True  # as without a terminal
    with caplog.at_level(logging.INFO, logger="fms_dgt.progress"):
        progress.start()
        await asyncio.sleep(0.18)
        progress.close()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) >= 2
    assert "2 kept of 9 tried" in messages[0] and "drops: scenario_empty 7" in messages[0]
    assert "calls/s=" in messages[0] and "tok/s=" in messages[0] and "forecast for 10" in messages[0]


def test_limits_defaults() -> None:
    limits = LimitsConfig()
    assert limits.min_keep_rate == 0.05 and limits.min_attempts == 20
    assert limits.max_tokens is limits.max_calls is limits.max_cost is limits.max_time is None


def test_help_lists_the_limit_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for flag in ("--min-keep-rate", "--keep-rate-min-attempts", "--max-tokens", "--max-calls", "--max-cost",
                 "--max-time", "--estimate"):
        assert flag in out


@pytest.mark.parametrize("args", [["--min-keep-rate", "1"], ["--min-keep-rate", "-0.1"], ["--max-cost", "0"],
                                  ["--max-time", "abc"], ["--max-tokens", "0"], ["--estimate", "0"]])
def test_bad_limit_flags_exit_2(args: list[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--task-paths", str(write_task(tmp_path, task_dict(tmp_path))), *args])
    assert info.value.code == 2


def test_progress_shows_exchanges_and_an_eta_before_any_conversation_is_kept() -> None:
    stats = RunStats()
    progress = Progress(10, initial=0, enabled=False, stats=stats, exchanges_per_conversation=3.0)
    assert "0 exchanges" in progress.line() and "eta" not in progress.line()  # nothing to go on yet
    progress.started -= 60.0  # one minute in, 6 of the 30 exchanges the run needs are written
    stats.exchanges = 6
    assert "6 exchanges" in progress.line()
    assert "eta ~4 min (from 6 exchanges)" in progress.line()  # 24 more at 6 a minute
    stats.accepted, stats.turns[2] = 1, 1  # kept conversations are shorter: 20 exchanges in all
    assert "eta ~2 min" in progress.line()
    progress.describe = lambda: "forecast for 10: ..."
    assert "forecast for 10" in progress.line() and "eta" not in progress.line()  # the forecast wins
