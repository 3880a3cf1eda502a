"""The per-turn verifier and the assistant's checks, on the scripted engine (replies by order)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from conftest import TaskResources, task_dict, write_task
from fms_dgt.conversation import FlowControllerStep, MessageStep
from fms_dgt.engines.base import ChatResult, Usage
from fms_dgt.engines.scripted import ScriptedEngine
from fms_dgt.errors import ConfigError
from fms_dgt.lm_client import LMClient
from fms_dgt.loader import load_task
from fms_dgt.report import quality
from fms_dgt.stages.assistant import AssistantStage, fit_length, rejection
from fms_dgt.stages.base import ConversationContext, DropConversation, Resources
from fms_dgt.stages.user import UserStage
from fms_dgt.stats import RunStats
from fms_dgt.stages.user import EXPECTED as USER_EXPECTED
from fms_dgt.stages.verifier import EXAMPLES, SYSTEM
from test_stages import ASSISTANT_OK, USER_OK, conversation

READS_AS_ASSISTANT = {"writer": "assistant"}  # for a user draft, a failing verdict


def verified_task(tmp_path: Path, user: dict[str, Any] | None = None, assistant: dict[str, Any] | None = None,
                  **task: Any) -> dict[str, Any]:
    data = task_dict(tmp_path, **task)
    stages = data["iteration_stages"]
    stages[1].update(user or {})
    stages[2].update(assistant or {})
    for stage in stages[1:3]:  # the verifier is off by default; these tests are about it
        stage.setdefault("verifier", {}).setdefault("enabled", True)
    return data


def resources(tmp_path: Path, engines: dict[str, ScriptedEngine], data: dict[str, Any]) -> Resources:
    config = load_task(write_task(tmp_path, data)).config
    stats = RunStats()
    return TaskResources(lm=LMClient(engines, stats), stats=stats, task=config)


def user_stage(res: Resources) -> UserStage:
    stage = UserStage(next(s for s in res.task.all_stages() if s.name == "lm/user/guided"), res)
    stage.setup()
    return stage


def assistant_stage(res: Resources) -> AssistantStage:
    return AssistantStage(next(s for s in res.task.all_stages() if s.name == "lm/assistant/naive"), res)


def follow_up(*exchanges: tuple[str, str], hint: str = "Ask about watering.", last: bool = False) -> Any:
    conv = conversation(*exchanges)
    conv.steps.append(FlowControllerStep(content="p", pattern="p", hint=hint, terminate=last))
    return conv


async def test_a_draft_the_verifier_fails_is_rewritten_with_its_reason(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=[
        "Exactly right, blight is a fungus.", READS_AS_ASSISTANT,
        "ok, so how often should I water them?", USER_OK,
    ])
    res = resources(tmp_path, {"default": engine}, verified_task(tmp_path))
    conv = follow_up(("my tomatoes have spots", "Probably early blight, a fungal disease."))
    await user_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))

    draft, verdict, rewrite, second_verdict = engine.calls
    # the verdict's prompt is the same instructions and examples every time, then the draft alone
    assert verdict.messages[0] == {"role": "system", "content": SYSTEM}
    assert len(verdict.messages) == 2 + 2 * len(EXAMPLES)
    assert verdict.messages[1:-1] == second_verdict.messages[1:-1]
    assert verdict.messages[-1] == {"role": "user", "content": "Message: Exactly right, blight is a fungus."}
    # a constrained short answer: one of two writers, a small cap, greedy
    schema = verdict.schema
    assert schema is not None
    assert schema["properties"]["writer"]["enum"] == ["human", "assistant"]
    assert verdict.params["max_tokens"] == 16 and verdict.params["temperature"] == 0.0
    # the rewrite is the same prompt with the expectation's feedback appended to its last message;
    # the failed draft is not shown (small models shown it wrote it again)
    assert rewrite.messages[:-1] == draft.messages[:-1]
    assert rewrite.messages[-1]["content"].startswith(draft.messages[-1]["content"])
    assert USER_EXPECTED.feedback in rewrite.messages[-1]["content"] and rewrite.schema is None
    assert not any("blight is a fungus" in m["content"] for m in rewrite.messages)

    step = conv.steps[-1]
    assert step.content == "ok, so how often should I water them?"
    assert step.metadata["attempts"] == 2
    assert step.metadata["rejected"] == [{
        "reason": "verifier_sounds_like_assistant", "feedback": USER_EXPECTED.feedback,
        "text": "Exactly right, blight is a fungus.",
    }]
    assert [v["verdict"] for v in step.metadata["verdicts"]] == ["sounds_like_assistant", "ok"]
    assert res.stats.verdicts == {"user:sounds_like_assistant": 1, "user:ok": 1}
    assert res.stats.rejected_drafts == {"user:verifier_sounds_like_assistant": 1}
    # counted like any LM call, apart from the drafts
    assert res.stats.per_stage["lm/user/guided/verifier"].calls == 2
    assert res.stats.per_stage["lm/user/guided"].calls == 2


def test_the_verifier_sees_the_first_words_of_a_long_draft() -> None:
    from fms_dgt.stages.verifier import JUDGED_WORDS, judge_messages

    shown = judge_messages(" ".join(["word"] * (JUDGED_WORDS + 20)))[-1]["content"]
    assert shown == "Message: " + " ".join(["word"] * JUDGED_WORDS) + " ..."


async def test_phrase_checks_run_first_and_skip_the_verifier(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["How can I help you today?", "so how often should I water?", USER_OK])
    res = resources(tmp_path, {"default": engine}, verified_task(tmp_path))
    conv = follow_up(("my tomatoes have spots", "Probably early blight."))
    await user_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert [c.schema is not None for c in engine.calls] == [False, False, True]
    assert "sounded like the AI assistant" in engine.calls[1].messages[-1]["content"]
    assert res.stats.verdicts == {"user:ok": 1}


async def test_the_verifier_can_be_turned_off(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["so how often should I water?", "Every two days, at the base."])
    data = verified_task(tmp_path, user={"verifier": {"enabled": False}}, assistant={"verifier": {"enabled": False}})
    res = resources(tmp_path, {"default": engine}, data)
    conv = follow_up(("my tomatoes have spots", "Probably early blight."))
    ctx = ConversationContext(rng=random.Random(0), max_turns=4, turn=1)
    await user_stage(res)(conv, ctx)
    await assistant_stage(res)(conv, ctx)
    assert all(c.schema is None for c in engine.calls) and len(engine.calls) == 2
    assert "verdicts" not in conv.steps[-1].metadata and not res.stats.verdicts


async def test_the_verifier_runs_on_its_own_engine(tmp_path: Path) -> None:
    writer = ScriptedEngine("default", replies=["so how often should I water?"])
    judge = ScriptedEngine("judge", replies=[USER_OK])
    engines = {"default": {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"},
               "judge": {"type": "openai", "model": "big", "base_url": "http://127.0.0.1:9/v1"}}
    data = verified_task(tmp_path, user={"verifier": {"engine": "judge"}}, engines=engines)
    res = resources(tmp_path, {"default": writer, "judge": judge}, data)
    conv = follow_up(("my tomatoes have spots", "Probably early blight."))
    await user_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert len(writer.calls) == 1 and len(judge.calls) == 1 and judge.calls[0].schema is not None
    assert res.stats.per_engine["judge"].calls == 1
    assert res.task.iteration_stages[1].engines_used() == {("engine",): "default", ("verifier", "engine"): "judge"}


def test_an_unknown_verifier_engine_is_a_config_error(tmp_path: Path) -> None:
    path = write_task(tmp_path, verified_task(tmp_path, assistant={"verifier": {"engine": "nope"}}))
    with pytest.raises(ConfigError, match=r"iteration_stages\[2\]\.verifier\.engine: no engine named 'nope'"):
        load_task(path)


async def test_a_verdict_that_never_fits_the_schema_passes_the_draft(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["so how often should I water?", "not json", "{}", '{"writer": "maybe"}'])
    res = resources(tmp_path, {"default": engine}, verified_task(tmp_path))
    conv = follow_up(("my tomatoes have spots", "Probably early blight."))
    await user_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert conv.steps[-1].content == "so how often should I water?"
    assert res.stats.verdicts == {"user:invalid": 1}
    assert res.stats.per_stage["lm/user/guided/verifier"].calls == 3  # 1 + structured_retries


async def test_drafts_failing_every_attempt_drop_with_the_last_reason(tmp_path: Path) -> None:
    fail = {"writer": "human"}  # each assistant draft reads as a human's
    engine = ScriptedEngine(replies=["Chess is fun.", fail, "Chess is a board game.", fail, "Chess has rules.", fail])
    res = resources(tmp_path, {"default": engine}, verified_task(tmp_path))
    conv = conversation(("my tomatoes have spots", "Probably early blight."))
    conv.steps.append(MessageStep(role="user", content="how often should I water them?"))
    with pytest.raises(DropConversation, match="^assistant_verifier_sounds_like_human$"):
        await assistant_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert res.stats.verdicts == {"assistant:sounds_like_human": 3}  # max_attempts 3


@pytest.mark.parametrize(
    ("reply", "closing", "reason"),
    [
        ("As an AI language model, I don't have personal experiences, but many drivers like podcasts.", False,
         "ai_self_description"),
        ("I don't have personal opinions, but tomatoes like sun.", False, "ai_self_description"),
        # copies a long run of the user's message back
        ("Yes, my tomato plants got spots after all that rain last week, so water less.", False, "copies_user"),
        # copies a long run of its own earlier reply
        ("Again: probably early blight, a fungal disease that spreads in wet weather. Cut the leaves.", False,
         "repeats_itself"),
        ("Water at the base in the morning, and mulch to keep the soil off the leaves.", False, None),
        ("You're welcome! Goodbye!", True, "empty_closing"),
        ("Goodbye! If you have any other questions, feel free to ask.", True, "empty_closing"),
        ("You're welcome! Good luck with the mulch and the spotted tomato leaves this summer.", True, None),
        ("", False, "empty"),
    ],
)
def test_assistant_reply_checks(reply: str, closing: bool, reason: str | None) -> None:
    conv = conversation(("my tomatoes have spots", "Probably early blight, a fungal disease that spreads in wet weather."))
    conv.steps.append(MessageStep(role="user", content="my tomato plants got spots after all that rain last week, thanks, I'll mulch the leaves"))
    assert rejection(reply, conv, closing=closing) == reason


def test_a_closing_on_topic_needs_topic_words_not_courtesy() -> None:
    """Seen on qwen2.5-1.5b: "great" and "night" were all the closing shared with the chat."""
    conv = conversation(("Great! What time is best for a meteor shower night?", "Early morning, after midnight."))
    conv.steps.append(MessageStep(role="user", content="Good night, AI! Thanks for your help, I'll plan the night."))
    empty = "You're welcome! I'm glad I could help. Have a great night!"
    assert rejection(empty, conv, closing=True) == "empty_closing"
    on_topic = "You're welcome! Enjoy the meteor shower, and look up after midnight."
    assert rejection(on_topic, conv, closing=True) is None


def test_the_task_may_allow_an_ai_self_description() -> None:
    conv = conversation(("hi", "Hello."))
    conv.steps.append(MessageStep(role="user", content="are you a person?"))
    assert rejection("No, I'm an AI language model, built to help.", conv, closing=False, allow_ai_self_description=True) is None


@pytest.mark.parametrize(
    ("text", "fitted"),
    [
        ("Mulch keeps soil off the leaves. Water at the base in the mornin", "Mulch keeps soil off the leaves."),
        ("Here are tips:\n1. Mulch.\n2. Water at the base.\n3. Prune the low", None),  # a list cut short
        ("- mulch\n- water at the", None),
        ("Mulch keeps soil off the leaves and water at the base in the morning when it is cool and", None),
        ("Ok. Mulch keeps the soil off the lower leaves, and watering at the base keeps them dry, and then", None),
    ],
)
def test_a_reply_cut_by_max_tokens_fits_only_as_whole_sentences(text: str, fitted: str | None) -> None:
    assert fit_length(text) == fitted


async def test_a_reply_cut_mid_list_is_rewritten_to_fit(tmp_path: Path) -> None:
    cut = ChatResult("Here are tips:\n1. Mulch.\n2. Water at the base.\n3. Prune the low", "length", Usage(50, 30))
    engine = ScriptedEngine(replies=[cut, "Mulch, water at the base, and prune the lowest leaves.", ASSISTANT_OK])
    res = resources(tmp_path, {"default": engine}, verified_task(tmp_path))
    conv = conversation(("my tomatoes have spots", "Probably early blight."))
    conv.steps.append(MessageStep(role="user", content="how do I stop it?"))
    await assistant_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert conv.steps[-1].content == "Mulch, water at the base, and prune the lowest leaves."
    assert "cut off" in engine.calls[1].messages[-1]["content"]
    assert res.stats.rejected_drafts == {"assistant:cut_by_length": 1}


async def test_an_empty_closing_is_rewritten(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["You're welcome! Goodbye!", "Good luck with the mulch on your tomatoes!", ASSISTANT_OK])
    res = resources(tmp_path, {"default": engine}, verified_task(tmp_path))
    conv = conversation(("my tomatoes have spots", "Probably early blight."))
    conv.steps.append(MessageStep(role="user", content="thanks, I'll put mulch around the tomatoes. bye!"))
    await assistant_stage(res)(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1, last_turn=True))
    assert conv.steps[-1].content == "Good luck with the mulch on your tomatoes!"
    assert res.stats.rejected_drafts == {"assistant:empty_closing": 1}


def test_the_report_quality_section() -> None:
    summary = {
        "verifier_verdicts": {"user:ok": 6, "user:sounds_like_assistant": 2, "assistant:ok": 3, "assistant:invalid": 1},
        "rejected_drafts": {"user:verifier_sounds_like_assistant": 2, "assistant:cut_by_length": 1},
        "repaired_drafts": {"assistant:trimmed_for_length": 4},
    }
    gate = quality(summary)
    assert gate["verifier"]["user"] == {
        "verdicts": 8, "passed": 6, "by_verdict": {"sounds_like_assistant": 2, "ok": 6}, "pass_rate": 0.75
    }
    assert gate["verifier"]["assistant"]["pass_rate"] == 1.0
    assert gate["length"] == {"rewritten": 1, "trimmed": 4}
