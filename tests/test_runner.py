"""The turn loop, drops and rescue, exact N, resume and the output files, on a scripted engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import ChitChatResponder, task_dict, write_task
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.loader import load_task
from fms_dgt.runner import RunOptions, Runner
from fms_dgt.stages.base import DropConversation


def make_runner(tmp_path: Path, engine: ScriptedEngine, n: int, *, restart: bool = False, seed: int = 7, **task: Any) -> Runner:
    path = write_task(tmp_path, task_dict(tmp_path, **task))
    options = RunOptions(num_outputs=n, output_dir=tmp_path / "out", restart=restart, seed=seed, progress=False)
    return Runner(load_task(path), options, engines={"default": engine})


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_exactly_n_conversations_with_valid_files(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 5)
    result = await runner.run()
    final = read_jsonl(result.output_dir / "final_data.jsonl")
    formatted = read_jsonl(result.output_dir / "formatted_output.jsonl")
    assert len(final) == len(formatted) == 5
    assert len({r["conversation_id"] for r in final}) == 5
    assert [r["conversation_id"] for r in final] == [r["conversation_id"] for r in formatted]
    for record, example in zip(final, formatted):
        roles = [m["role"] for m in example["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant"
        assert all(a != b for a, b in zip(roles, roles[1:]))
        assert 2 <= record["num_turns"] <= 4 and len(roles) == 2 * record["num_turns"]
        steps = record["steps"]
        assert steps[0]["role"] == "persona" and steps[0]["persona"]["role"]
        assert steps[1]["role"] == "scenario"
        fc = [s for s in steps if s["role"] == "flow_controller"]
        assert fc[0]["pattern"] == "new_topic"  # opening pattern
        assert len(fc) == record["num_turns"]
    summary = json.loads((result.output_dir / "run_summary.json").read_text())
    assert summary["total"] == 5 and summary["status"] == "completed"
    assert summary["per_stage"]["lm/user/guided"]["calls"] >= sum(r["num_turns"] for r in final)


async def test_termination_produces_a_closing_exchange(tmp_path: Path) -> None:
    # The LM says only the termination pattern fits once it is allowed.
    engine = ScriptedEngine(responder=ChitChatResponder(eligible=["end"]))
    result = await make_runner(tmp_path, engine, 3).run()
    for record in read_jsonl(result.output_dir / "final_data.jsonl"):
        steps = record["steps"]
        last_fc = [s for s in steps if s["role"] == "flow_controller"][-1]
        assert last_fc["terminate"] and last_fc["pattern"] == "end"
        # the terminating controller step is followed by the closing user and assistant messages
        assert [s["role"] for s in steps[-3:]] == ["flow_controller", "user", "assistant"]
        assert record["stop_reason"] == "flow_controller"
        assert record["num_turns"] == 2  # min_turns: termination is not offered before


async def test_max_turns_ends_with_termination_pattern(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=ChitChatResponder(eligible=["follow_up"]))
    result = await make_runner(tmp_path, engine, 2).run()
    for record in read_jsonl(result.output_dir / "final_data.jsonl"):
        assert record["num_turns"] == 4
        fc = [s for s in record["steps"] if s["role"] == "flow_controller"]
        assert [s["pattern"] for s in fc] == ["new_topic", "follow_up", "follow_up", "end"]
        assert fc[-1]["terminate"]


async def test_max_turns_without_closing(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=ChitChatResponder(eligible=["follow_up"]))
    data = task_dict(tmp_path)
    data["iteration_stages"][0]["close_at_max_turns"] = False
    path = write_task(tmp_path, data)
    runner = Runner(load_task(path), RunOptions(2, tmp_path / "out", seed=1, progress=False), engines={"default": engine})
    result = await runner.run()
    for record in read_jsonl(result.output_dir / "final_data.jsonl"):
        assert record["stop_reason"] == "max_turns" and record["num_turns"] == 4


class FailingAssistant:
    """Wraps the responder; the assistant's reply on exchange ``fail_on`` is empty every time."""

    def __init__(self, fail_on: int) -> None:
        self.inner = ChitChatResponder(eligible=["follow_up"])
        self.fail_on = fail_on

    def __call__(self, call: RecordedCall) -> Any:
        if call.stage == "lm/assistant/naive":
            # the user's lines in the prompt count the exchanges (a rewrite appends a note to the last)
            exchange = sum(
                1 for m in call.messages
                if m["role"] == "user" and any(m["content"].startswith(r) for r in self.inner.user_replies)
            )
            if exchange == self.fail_on:
                return "   "
        return self.inner(call)


async def test_drop_after_min_turns_is_rescued(tmp_path: Path) -> None:
    runner = make_runner(tmp_path, ScriptedEngine(responder=FailingAssistant(fail_on=3)), 2)
    runner.concurrency = 2  # no spare conversations: every rescue counted is a kept one
    result = await runner.run()
    records = read_jsonl(result.output_dir / "final_data.jsonl")
    assert len(records) == 2
    for record in records:
        assert record["num_turns"] == 2
        assert record["stop_reason"] == "rescued:assistant_empty"
        # the partial third exchange (controller step and user message) was rolled back
        assert [s["role"] for s in record["steps"][-2:]] == ["user", "assistant"]
        assert sum(s["role"] == "flow_controller" for s in record["steps"]) == 2
        # ... and kept beside the chat, with every draft the assistant stage turned down
        cut = record["cut_exchange"]
        assert (cut["reason"], cut["stage"]) == ("assistant_empty", "lm/assistant/naive")
        assert [s["role"] for s in cut["steps"]] == ["flow_controller", "user"]
        assert len(cut["rejected_drafts"]) == 3 and all(d["reason"] == "empty" for d in cut["rejected_drafts"])
    assert result.summary["rescued"] == {"assistant_empty": 2}
    formatted = read_jsonl(result.output_dir / "formatted_output.jsonl")
    assert [[m["role"] for m in line["messages"]] for line in formatted] == [["user", "assistant"] * 2] * 2


async def test_drop_below_min_turns_is_discarded_and_counted(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=FailingAssistant(fail_on=2))
    runner = make_runner(tmp_path, engine, 1)
    runner.concurrency = 1
    # Every conversation fails at exchange 2 < min_turns; stop the test after a few attempts.
    original = runner.pipeline.run
    calls = 0

    async def limited(attempt: int) -> Any:
        nonlocal calls
        calls += 1
        if calls > 3:
            engine.responder = ChitChatResponder()
        return await original(attempt)

    runner.pipeline.run = limited  # type: ignore[method-assign]
    result = await runner.run()
    assert result.summary["dropped"] == {"assistant_empty": 3}
    # nothing generated is lost: each dropped conversation is in dropped.jsonl, with its complete
    # exchange and every draft its failing turn turned down
    dropped = read_jsonl(result.output_dir / "dropped.jsonl")
    assert [d["reason"] for d in dropped] == ["assistant_empty"] * 3
    first = dropped[0]
    assert first["rejected"]["stage"] == "lm/assistant/naive"
    assert [d["reason"] for d in first["rejected"]["drafts"]] == ["empty"] * 3  # max_attempts 3
    roles = [s["role"] for s in first["conversation"]["steps"] if s["role"] in ("user", "assistant")]
    assert roles == ["user", "assistant"]  # exchange 1; the failed exchange 2 was rolled back
    assert result.summary["total"] == 1


async def test_drop_in_initialization_is_discarded(tmp_path: Path) -> None:
    replies = iter(["", "", "", "A retired teacher wants to chat about tomatoes and rain in her garden."])
    inner = ChitChatResponder()

    def responder(call: RecordedCall) -> Any:
        if call.stage == "lm/scenario":
            return next(replies, "A retired teacher, a night-shift nurse or a student asks about the planets.")
        return inner(call)

    runner = make_runner(tmp_path, ScriptedEngine(responder=responder), 1)
    runner.concurrency = 1
    result = await runner.run()
    assert result.summary["dropped"] == {"scenario_empty": 1}
    assert result.summary["total"] == 1


async def test_resume_keeps_earlier_records_and_completes_to_n(tmp_path: Path) -> None:
    first = await make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 3).run()
    final_path = first.output_dir / "final_data.jsonl"
    before = final_path.read_text().splitlines()
    # Simulate a kill in the middle of writing a fourth record: a torn last line.
    with final_path.open("a") as handle:
        handle.write('{"task_name": "tests/small", "conversation_id": "torn", "ste')
    second = await make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 6, seed=99).run()
    after = final_path.read_text().splitlines()
    assert after[:3] == before  # earlier records byte-for-byte unchanged
    assert len(after) == 6
    ids = [json.loads(line)["conversation_id"] for line in after]
    assert len(set(ids)) == 6 and "torn" not in ids
    assert second.summary["already_done"] == 3
    formatted = read_jsonl(second.output_dir / "formatted_output.jsonl")
    assert [r["conversation_id"] for r in formatted] == ids


async def test_resume_with_same_seed_skips_finished_ids(tmp_path: Path) -> None:
    await make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 2, seed=5).run()
    result = await make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 4, seed=5).run()
    ids = [r["conversation_id"] for r in read_jsonl(result.output_dir / "final_data.jsonl")]
    assert len(ids) == 4 and len(set(ids)) == 4


async def test_nothing_to_do_when_already_complete(tmp_path: Path) -> None:
    await make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 2).run()
    engine = ScriptedEngine()  # would fail on any call
    result = await make_runner(tmp_path, engine, 2).run()
    assert engine.calls == [] and result.summary["total"] == 2


async def test_restart_starts_clean(tmp_path: Path) -> None:
    first = await make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 3).run()
    assert (first.output_dir / "viewer.html").exists()
    runner = make_runner(tmp_path, ScriptedEngine(responder=ChitChatResponder()), 1, restart=True)
    runner.store.open(restart=True)  # what a restarted run deletes before it generates anything
    assert not (first.output_dir / "viewer.html").exists() and not (first.output_dir / "report.md").exists()
    runner.store.close()
    result = await runner.run()
    assert len(read_jsonl(result.output_dir / "final_data.jsonl")) == 1


async def test_same_seed_same_conversations(tmp_path: Path) -> None:
    a = await make_runner(tmp_path / "a", ScriptedEngine(responder=ChitChatResponder()), 3, seed=11).run()
    b = await make_runner(tmp_path / "b", ScriptedEngine(responder=ChitChatResponder()), 3, seed=11).run()
    strip = lambda p: sorted((r["conversation_id"], r["steps"][0]["content"]) for r in read_jsonl(p / "final_data.jsonl"))  # noqa: E731
    assert strip(a.output_dir) == strip(b.output_dir)


async def test_engine_failures_stop_the_run_early(tmp_path: Path) -> None:
    from fms_dgt.errors import EngineError

    engine = ScriptedEngine(responder=lambda *a: EngineError("http 400: nope", engine="default"))
    runner = make_runner(tmp_path, engine, 50)
    result = await runner.run()
    assert result.status == "failed" and "in a row failed" in str(result.error)
    assert result.summary["dropped"]["engine_error"] >= 10
    assert len(engine.calls) < 60


def test_drop_conversation_carries_reason() -> None:
    assert DropConversation("x").reason == "x"
