"""The conversation-level gate: each reason on hand-made records, near-duplicates in-run and on
resume, the task's quality section, and the stop when the gate rejects everything."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from conftest import ASSISTANT_LINES, ChitChatResponder, REPO, task_dict, write_task
from fms_dgt.config import QualityConfig
from fms_dgt.conversation import Conversation, FlowControllerStep, MessageStep
from fms_dgt.dedup import NearDuplicateIndex
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.errors import ConfigError
from fms_dgt.loader import load_task
from fms_dgt.quality import ConversationGate, problem
from fms_dgt.runner import RunOptions, Runner
from fms_dgt.stats import RunStats


def chat(*exchanges: tuple[str, str], closing: bool = True, **meta: Any) -> Conversation:
    """A conversation whose last exchange follows a termination pattern when ``closing``."""
    conv = Conversation(task_name="t", conversation_id="c", stop_reason="flow_controller" if closing else "max_turns")
    for i, (user, assistant) in enumerate(exchanges):
        last = i == len(exchanges) - 1
        terminate = closing and last
        name = "end" if terminate else "follow_up"
        conv.steps.append(FlowControllerStep(content=name, pattern=name, hint="h", terminate=terminate))
        conv.steps.append(MessageStep(role="user", content=user))
        conv.steps.append(MessageStep(role="assistant", content=assistant, metadata=meta if last else {}))
    return conv


GOOD = [
    ("my tomato leaves have brown spots, what could that be?", "Brown spots are often early blight, a fungal disease."),
    ("we had loads of rain last week, does that matter?", "Yes, wet leaves help fungi spread, so water at the base."),
    ("thanks, i'll water at the base and pick off the spotted leaves tomorrow.", "Good luck with the tomatoes!"),
]


def readme_record() -> Conversation:
    """The real record shown in the README (qwen2.5-1.5b, --seed 11): a conversation worth keeping."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"```json\n(\{.*?\n\})\n```", text, re.DOTALL)
    assert block is not None
    return Conversation.model_validate(json.loads(block.group(1)))


def test_good_conversations_pass() -> None:
    assert problem(chat(*GOOD)) is None
    assert problem(readme_record()) is None


@pytest.mark.parametrize(
    ("conv", "reason"),
    [
        (Conversation(task_name="t", conversation_id="c"), "incomplete_exchange"),
        (chat(("hello there, my tomatoes are sick", "  ")), "incomplete_exchange"),
        (chat(*GOOD[:2], ("thanks, i'll water at the base and pick off the leaves", "1. Water early.\n2. Remove the"),
              finish_reason="length"), "reply_cut_off"),
        # seen on qwen2.5-1.5b: the simulated user speaking as the assistant, mid-conversation (the
        # gate uses the user stage's phrase filter; what it misses is left to the LM verifier)
        (chat(GOOD[0], ("Hi there! I'm always here to answer questions. What would you like to know?", "Thanks!"),
              GOOD[2]), "user_as_assistant"),
        (chat(GOOD[0], ("my tomato leaves have brown spots, what could that be??", "As I said, blight."), GOOD[2]),
         "user_repeats_itself"),
        # the user only agrees and restates the assistant's reply (an earlier one, not only the last)
        (chat(("are chess matches good for kids?", "Chess matches are a great way for kids to learn about the game and"
               " improve their skills. It is a fun way to spend time with family."),
              ("do kids need a coach?", "Not at first: books and apps are enough for beginners."),
              ("Exactly right! Chess matches are a great way for kids to learn about the game and improve"
               " their skills.",
               "Indeed."), closing=False), "user_echoes_assistant"),
        # the assistant answers a goodbye by repeating it word for word
        (chat(*GOOD[:2], ("Thanks so much, I will try the copper spray tomorrow morning!",
                          "Thanks so much, I will try the copper spray tomorrow morning! Goodbye.")),
         "assistant_repeats_user"),
        (chat(GOOD[0], ("does rain matter?", GOOD[0][1] + " It spreads in wet weather."), GOOD[2]),
         "assistant_repeats_itself"),
        # conversations whose closing says nothing
        (chat(*GOOD[:2], ("Goodbye.", "Goodbye! If you have any other questions, feel free to ask.")), "empty_closing"),
        (chat(*GOOD[:2], ("Thank you so much for your help, have a great day!", "You too, take care!")),
         "empty_closing"),
    ],
    ids=["no-messages", "empty-reply", "cut-off", "user-voice", "user-repeat", "user-echo", "assistant-copies-user",
         "assistant-repeat", "goodbye-only", "thanks-only"],
)
def test_gate_reasons(conv: Conversation, reason: str) -> None:
    assert problem(conv) == reason


def test_closing_must_follow_the_termination_pattern() -> None:
    conv = chat(*GOOD)
    controller = [s for s in conv.steps if isinstance(s, FlowControllerStep)]
    controller[-1].terminate = False  # stopped by the flow controller without its closing move
    assert problem(conv) == "closing_not_terminated"
    conv.stop_reason = "rescued:user_sounds_like_assistant"  # not ended by the controller: no closing asked
    assert problem(conv) is None


def test_near_duplicate_index() -> None:
    index = NearDuplicateIndex(0.8)
    a = chat(*GOOD)
    index.add("a", index.signature(a))
    # the same chat with one word changed is a near-duplicate; another chat is not
    b = chat(*GOOD[:2], (GOOD[2][0].replace("tomorrow", "today"), GOOD[2][1]))
    found = index.find(index.signature(b))
    assert found is not None and found[0] == "a" and found[1] >= 0.8
    other = chat(("what is a good first telescope?", "A small refractor is easy to use."),
                 ("how much do they cost?", "Around two hundred euros for a decent one."))
    assert index.find(index.signature(other)) is None


def test_gate_counts_rejections() -> None:
    stats = RunStats()
    gate = ConversationGate(QualityConfig(), stats)
    assert not gate.rejects(chat(*GOOD))
    assert gate.rejects(chat(*GOOD)) and gate.rejects(chat(("Goodbye.", "Bye!")))
    assert stats.dropped == {"gate:near_duplicate": 1, "gate:empty_closing": 1}
    off = ConversationGate(QualityConfig(near_duplicate_threshold=None), RunStats())
    assert not off.rejects(chat(*GOOD)) and not off.rejects(chat(*GOOD))


FIXED_USER = [
    "my tomato leaves have brown spots, what could that be?",
    "we had loads of rain last week, does that matter?",
    "i think copper spray sounds harsh, what do you reckon?",
    "thanks a lot, i'll try mulching this weekend, bye!",
]


# The closing reply mentions what the user will do, as the assistant's closing check asks.
FIXED_ASSISTANT = [*ASSISTANT_LINES[:3], "Good luck with the mulching this weekend, enjoy your garden!"]


class DuplicatingResponder:
    """The first ``copies`` conversations are word for word the same; later ones vary
    (ChitChatResponder). Every conversation runs four exchanges (only follow_up fits)."""

    def __init__(self, copies: int) -> None:
        self.copies = copies
        self.started = 0
        self.inner = ChitChatResponder(eligible=["follow_up"])

    def __call__(self, call: RecordedCall) -> Any:
        messages = call.messages
        if call.stage == "lm/user/guided":
            exchange = sum(m["role"] == "assistant" for m in messages)  # roles are swapped for the user
            self.started += exchange == 0
            if self.started <= self.copies:
                return FIXED_USER[exchange]
        elif call.stage == "lm/assistant/naive" and self.started <= self.copies:
            return FIXED_ASSISTANT[sum(m["role"] == "user" for m in messages) - 1]
        return self.inner(call)


def make_runner(tmp_path: Path, engine: ScriptedEngine, n: int, **task: Any) -> Runner:
    path = write_task(tmp_path, task_dict(tmp_path, **task))
    options = RunOptions(n, tmp_path / "out", seed=3, progress=False)
    runner = Runner(load_task(path), options, engines={"default": engine})
    runner.concurrency = 1  # one conversation at a time, so the responder knows which one it writes
    return runner


def final_records(result: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (result.output_dir / "final_data.jsonl").read_text().splitlines()]


async def test_near_duplicates_are_rejected_in_run(tmp_path: Path) -> None:
    result = await make_runner(tmp_path, ScriptedEngine(responder=DuplicatingResponder(copies=3)), 2).run()
    records = final_records(result)
    assert len(records) == 2 and result.summary["total"] == 2
    assert result.summary["dropped"] == {"gate:near_duplicate": 2}
    assert [m["content"] for m in records[0]["steps"] if m["role"] == "user"] == FIXED_USER
    assert records[1]["steps"][3]["content"] != FIXED_USER[0]
    report = json.loads((result.output_dir / "report.json").read_text())
    assert report["quality_gate"]["near_duplicates"] == 2
    assert "2 conversations rejected before being kept, 2 of them as near-duplicates." in (
        result.output_dir / "report.md"
    ).read_text()


async def test_near_duplicates_of_earlier_runs_are_rejected_on_resume(tmp_path: Path) -> None:
    first = await make_runner(tmp_path, ScriptedEngine(responder=DuplicatingResponder(copies=1)), 1).run()
    assert first.summary["dropped"] == {}
    second = await make_runner(tmp_path, ScriptedEngine(responder=DuplicatingResponder(copies=2)), 2).run()
    # both copies the second run wrote first match the record the first run kept
    assert second.summary["dropped"] == {"gate:near_duplicate": 2}
    assert second.summary["total"] == 2 and len(final_records(second)) == 2


async def test_threshold_off_keeps_copies(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=DuplicatingResponder(copies=3))
    result = await make_runner(tmp_path, engine, 2, quality={"near_duplicate_threshold": None}).run()
    assert result.summary["dropped"] == {}
    users = [[s["content"] for s in r["steps"] if s["role"] == "user"] for r in final_records(result)]
    assert users == [FIXED_USER, FIXED_USER]


async def test_a_run_the_gate_rejects_entirely_is_stopped_by_the_keep_rate_breaker(tmp_path: Path) -> None:
    result = await make_runner(tmp_path, ScriptedEngine(responder=DuplicatingResponder(copies=10**6)), 3).run()
    assert result.status == "failed" and "keep rate is below 5 %" in str(result.error)
    assert "top drops: gate:near_duplicate" in str(result.error)
    assert result.summary["total"] == 1 and set(result.summary["dropped"]) == {"gate:near_duplicate"}
    # the rejected conversations are kept on disk, whole, with the gate's reason
    dropped = [json.loads(line) for line in (result.output_dir / "dropped.jsonl").read_text().splitlines()]
    assert len(dropped) == sum(result.summary["dropped"].values())
    assert {d["reason"] for d in dropped} == {"gate:near_duplicate"}
    assert all(d["conversation"]["steps"] and d["rejected"] is None for d in dropped)


@pytest.mark.parametrize(
    ("quality", "message"),
    [
        ({"near_duplicate_threshold": 1.5},
         "quality.near_duplicate_threshold: Input should be less than or equal to 1"),
        ({"near_duplicate_threshold": 0}, "quality.near_duplicate_threshold: Input should be greater than 0"),
        ({"near_duplicate": 0.8}, "quality.near_duplicate: unknown key"),
    ],
)
def test_quality_section_is_validated(tmp_path: Path, quality: dict[str, Any], message: str) -> None:
    path = write_task(tmp_path, task_dict(tmp_path, quality=quality))
    with pytest.raises(ConfigError) as info:
        load_task(path)
    assert message in str(info.value) and str(path) in str(info.value)
