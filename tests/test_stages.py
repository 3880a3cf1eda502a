"""Each stage on its own: prompts hold what they must, replies are parsed, fallbacks work."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import TaskResources, task_dict, write_task
from fms_dgt.conversation import Conversation, FlowControllerStep, MessageStep, Persona, PersonaStep, ScenarioStep
from fms_dgt.engines.scripted import ScriptedEngine
from fms_dgt.errors import ConfigError
from fms_dgt.lm_client import LMClient
from fms_dgt.loader import load_task
from fms_dgt.stages.assistant import AssistantStage
from fms_dgt.stages.base import ConversationContext, DropConversation, Resources
from fms_dgt.stages.flow_controller import FlowControllerStage
from fms_dgt.stages.persona import PersonaStage, render_persona
from fms_dgt.stages.scenario import ScenarioStage
from fms_dgt.stages.user import UserStage, rejection, without_greeting, without_meta_note
from fms_dgt.stats import RunStats

# The verifier's answer to a draft that passes (it follows each draft the phrase checks accept).
# The verifier's passing answers: a user's draft reads as the human's, an assistant's as the assistant's.
USER_OK = {"writer": "human"}
ASSISTANT_OK = {"writer": "assistant"}
PERSONA = Persona(role="retired teacher", expertise="beginner", domain="gardening", goals=["grow tomatoes"])
SCENARIO = "A retired teacher wants to save her tomato plants from blight before the summer fair."


def resources(tmp_path: Path, engine: ScriptedEngine, **task: Any) -> TaskResources:
    config = load_task(write_task(tmp_path, task_dict(tmp_path, **task))).config
    stats = RunStats()
    return TaskResources(lm=LMClient({"default": engine}, stats), stats=stats, task=config)


def stage_options(res: Resources, name: str) -> Any:
    return next(s for s in res.task.all_stages() if s.name == name)


def conversation(*exchanges: tuple[str, str]) -> Conversation:
    conv = Conversation(task_name="t", conversation_id="c1")
    conv.steps.append(PersonaStep(content=render_persona(PERSONA), persona=PERSONA))
    conv.steps.append(ScenarioStep(content=SCENARIO))
    for user, assistant in exchanges:
        conv.steps.append(FlowControllerStep(content="follow_up", pattern="follow_up", hint="Ask more."))
        conv.steps.append(MessageStep(role="user", content=user))
        conv.steps.append(MessageStep(role="assistant", content=assistant))
    return conv


def test_render_persona_includes_traits_and_style() -> None:
    persona = Persona.model_validate(
        {"role": "nurse", "goals": ["sleep", "eat well"], "personality": {"agreeableness": -0.8, "extraversion": 0.1},
         "style_override": "terse"}
    )
    text = render_persona(persona)
    assert "Role: nurse." in text and "Goals: sleep; eat well." in text
    assert "sceptical and blunt" in text and "chatty" not in text and "reserved" not in text
    assert "Writing style: terse." in text


async def draw_personas(stage: PersonaStage, attempts: range, seed: int = 5) -> list[str]:
    roles = []
    for attempt in attempts:
        conv = Conversation(task_name="t", conversation_id=str(attempt))
        await stage(conv, ConversationContext(rng=random.Random(attempt), max_turns=4, attempt=attempt, seed=seed))
        roles.append(conv.persona.persona.role)  # type: ignore[union-attr]
    return roles


async def test_persona_draws_cover_the_file_before_repeating(tmp_path: Path) -> None:
    res = resources(tmp_path, ScriptedEngine())
    (tmp_path / "personas.jsonl").write_text("".join(f'{{"role": "person {i}"}}\n' for i in range(24)))
    stage = PersonaStage(stage_options(res, "sample/persona"), res)
    stage.setup()
    roles = await draw_personas(stage, range(240))
    # every cycle of 24 attempts uses each of the 24 personas once, in a new order each cycle
    cycles = [roles[i : i + 24] for i in range(0, 240, 24)]
    assert all(len(set(cycle)) == 24 for cycle in cycles)
    assert len({tuple(cycle) for cycle in cycles}) == 10
    # fixed by (seed, attempt): the same in any order of calls, another seed gives another order
    assert await draw_personas(stage, range(239, -1, -1)) == roles[::-1]
    assert await draw_personas(stage, range(24), seed=6) != roles[:24]


async def test_persona_draws_with_replacement_when_asked(tmp_path: Path) -> None:
    data = task_dict(tmp_path)
    data["initialization_stages"][0]["cover_file"] = False
    res = resources(tmp_path, ScriptedEngine(), initialization_stages=data["initialization_stages"])
    stage = PersonaStage(stage_options(res, "sample/persona"), res)
    stage.setup()
    seen = Counter(await draw_personas(stage, range(300)))
    assert set(seen) == {"retired teacher", "night-shift nurse", "student"}
    assert min(seen.values()) > 60 and max(seen.values()) != min(seen.values())
    # independent draws: some window of 3 attempts repeats a persona
    roles = await draw_personas(stage, range(30))
    assert any(len(set(roles[i : i + 3])) < 3 for i in range(0, 30, 3))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "has no records"),
        ('{"role": "a"}\nnot json\n', ":2: not valid JSON"),
        ('{"expertise": "x"}\n', ":1: role: required key is missing"),
        ('{"role": "a", "personality": {"openness": 3}}\n', ":1: personality.openness"),
        ('{"role": "a", "rol": "b"}\n', ":1: rol: unknown key"),
    ],
    ids=["empty", "not-json", "no-role", "out-of-range", "typo"],
)
def test_bad_persona_file(tmp_path: Path, content: str, message: str) -> None:
    res = resources(tmp_path, ScriptedEngine())
    (tmp_path / "personas.jsonl").write_text(content)
    stage = PersonaStage(stage_options(res, "sample/persona"), res)
    with pytest.raises(ConfigError) as info:
        stage.setup()
    assert message in str(info.value) and "personas.jsonl" in str(info.value)


async def test_scenario_prompt_sees_persona_and_examples(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=['"A retired teacher wants to talk about tomatoes."'])
    res = resources(tmp_path, engine)
    res.seed_conversations = [Conversation(task_name="t", conversation_id="s", steps=[ScenarioStep(content="A baker asks about rye.")])]
    stage = ScenarioStage(stage_options(res, "lm/scenario"), res)
    stage.setup()
    conv = Conversation(task_name="t", conversation_id="c")
    conv.steps.append(PersonaStep(content=render_persona(PERSONA), persona=PERSONA))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4))
    prompt = engine.calls[0].messages[-1]["content"]
    assert "Role: retired teacher." in prompt and "A baker asks about rye." in prompt
    assert conv.scenario == "A retired teacher wants to talk about tomatoes."  # quotes stripped
    assert engine.calls[0].params["max_tokens"] == 120


async def test_scenario_that_ignores_the_persona_is_rejected(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["A young pilot wants to learn about jets."] * 3)
    res = resources(tmp_path, engine)
    stage = ScenarioStage(stage_options(res, "lm/scenario"), res)
    stage.setup()
    conv = Conversation(task_name="t", conversation_id="c")
    conv.steps.append(PersonaStep(content=render_persona(PERSONA), persona=PERSONA))
    with pytest.raises(DropConversation, match="scenario_empty"):
        await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4))
    assert len(engine.calls) == 3


def eligibility(names: list[str]) -> dict[str, Any]:
    return {"reasoning": "ok", "eligible_patterns": names}


async def test_flow_controller_samples_by_weight_among_eligible(tmp_path: Path) -> None:
    engine = ScriptedEngine(
        responder=lambda call: eligibility(["new_topic", "follow_up"]) if "eligible_patterns" in call.schema["properties"] else {"focus": "the rain"}
    )
    res = resources(tmp_path, engine)
    stage = FlowControllerStage(stage_options(res, "lm/flow_controller"), res)
    stage.setup()
    chosen = Counter()
    for seed in range(2000):
        conv = conversation(("hi", "hello"))
        await stage(conv, ConversationContext(rng=random.Random(seed), max_turns=4, turn=1))
        chosen[conv.steps[-1].pattern] += 1  # type: ignore[union-attr]
    # weights 0.3 and 0.6 among the two eligible: expect 1/3 and 2/3
    assert set(chosen) == {"new_topic", "follow_up"}
    assert abs(chosen["follow_up"] / 2000 - 2 / 3) < 0.04


async def test_flow_controller_prompt_and_schema(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=[eligibility(["follow_up"]), {"focus": "how often to water"}])
    res = resources(tmp_path, engine, min_turns=3)
    stage = FlowControllerStage(stage_options(res, "lm/flow_controller"), res)
    stage.setup()
    conv = conversation(("my tomatoes have spots", "Probably blight."))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, min_turns=3, turn=1))
    prompt = engine.calls[0].messages[-1]["content"]
    assert SCENARIO in prompt and "User: my tomatoes have spots" in prompt and "Assistant: Probably blight." in prompt
    # every pattern is listed once in the system prompt (the same for every call, so it stays in
    # the prompt cache); what is not allowed at this exchange is said at the end
    system = engine.calls[0].messages[0]["content"]
    assert "- follow_up: Dig deeper." in system and "- end:" in system and "Dig deeper" not in prompt
    assert engine.calls[1].messages[0] == engine.calls[0].messages[0]
    assert prompt.index("Not allowed now: end.") > prompt.index("Assistant: Probably blight.")
    # exchange 2 cannot be the last when min_turns is 3: ending is not offered: the schema only allows the other names
    assert engine.calls[0].schema["properties"]["eligible_patterns"]["items"]["enum"] == ["new_topic", "follow_up"]
    step = conv.steps[-1]
    assert isinstance(step, FlowControllerStep)
    assert (step.pattern, step.hint, step.terminate, step.fallback) == (
        "follow_up", "Ask a follow-up. Focus on: how often to water.", False, None
    )
    assert "Instruction the user will follow: Ask a follow-up." in engine.calls[1].messages[-1]["content"]


async def test_flow_controller_bad_json_falls_back_and_is_recorded(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=lambda call: "not json at all")
    res = resources(tmp_path, engine)
    stage = FlowControllerStage(stage_options(res, "lm/flow_controller"), res)
    stage.setup()
    conv = conversation(("a", "b"), ("c", "d"))
    await stage(conv, ConversationContext(rng=random.Random(3), max_turns=4, turn=2))
    step = conv.steps[-1]
    assert isinstance(step, FlowControllerStep)
    assert step.fallback == "invalid_eligibility_json"
    assert step.eligible_patterns == ["new_topic", "follow_up", "end"]
    assert step.hint in {"Bring up a topic.", "Ask a follow-up.", "Say goodbye."}  # template hint
    assert res.stats.fallbacks["invalid_eligibility_json"] == 1
    # 1 + structured_retries (2) calls for eligibility, and again for the hint
    assert len(engine.calls) == 6


async def test_flow_controller_question_focus_falls_back_to_template(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=[eligibility(["follow_up"]), {"focus": "What kind of soil do you use?"}])
    res = resources(tmp_path, engine)
    stage = FlowControllerStage(stage_options(res, "lm/flow_controller"), res)
    stage.setup()
    conv = conversation(("a", "b"))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert conv.steps[-1].hint == "Ask a follow-up."  # type: ignore[union-attr]
    assert conv.steps[-1].fallback == "focus_not_a_topic"  # type: ignore[union-attr]
    assert conv.steps[-1].metadata == {  # type: ignore[union-attr]
        "rejected_focus": "What kind of soil do you use?", "offered": ["new_topic", "follow_up", "end"]
    }


@pytest.mark.parametrize(
    ("focus", "ok"),
    [("how the rain affected the leaves", True), ("the eBird app the assistant mentioned", True),
     ("What kind of soil do you use?", False), ("Let's talk about other topics", False),
     ("I love sourdough!", False), ("Thank you for your help! I will visit Spain.", False),
     ("", False), ("chit_chat", False), ("a very long focus that goes on and on and never stops naming one more thing after another", False)],
)
def test_focus_must_be_a_short_topic(focus: str, ok: bool) -> None:
    from fms_dgt.stages.flow_controller import _is_topic

    assert _is_topic(focus) is ok


async def test_flow_controller_one_call_mode(tmp_path: Path) -> None:
    reply = {"reasoning": "ok", "moves": [{"pattern": "follow_up", "focus": "how often to water the beds"},
                                          {"pattern": "new_topic", "focus": "What about basil?"}]}
    engine = ScriptedEngine(responder=lambda call: reply)
    res = resources(tmp_path, engine)
    data = task_dict(tmp_path)
    data["iteration_stages"][0]["mode"] = "one_call"
    res.task = load_task(write_task(tmp_path, data)).config
    stage = FlowControllerStage(res.task.iteration_stages[0], res)
    stage.setup()
    seen: dict[str, str] = {}
    for seed in range(40):
        conv = conversation(("hi", "hello"))
        await stage(conv, ConversationContext(rng=random.Random(seed), max_turns=4, turn=1))
        step = conv.steps[-1]
        seen[step.pattern] = step.hint  # type: ignore[union-attr]
    assert len(engine.calls) == 40  # exactly one call per exchange
    assert '"focus"' in engine.calls[0].messages[-1]["content"]
    assert seen == {"follow_up": "Ask a follow-up. Focus on: how often to water the beds.", "new_topic": "Bring up a topic."}


async def test_flow_controller_termination_marks_last_turn(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=[eligibility(["end"]), {"focus": "the tomato harvest"}])
    res = resources(tmp_path, engine)
    stage = FlowControllerStage(stage_options(res, "lm/flow_controller"), res)
    stage.setup()
    ctx = ConversationContext(rng=random.Random(0), max_turns=4, turn=2)
    conv = conversation(("a", "b"), ("c", "d"))
    await stage(conv, ctx)
    assert conv.steps[-1].terminate and ctx.last_turn  # type: ignore[union-attr]


async def test_flow_controller_last_allowed_turn_closes_without_judging(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=[])
    res = resources(tmp_path, engine)
    stage = FlowControllerStage(stage_options(res, "lm/flow_controller"), res)
    stage.setup()
    ctx = ConversationContext(rng=random.Random(0), max_turns=4, turn=3)  # max_turns 4
    conv = conversation(("a", "b"), ("c", "d"), ("e", "f"))
    await stage(conv, ctx)
    assert conv.steps[-1].pattern == "end" and ctx.last_turn  # type: ignore[union-attr]
    assert conv.steps[-1].metadata["fixed_by"] == "closing"
    assert engine.calls == []  # a fixed move needs no judging and no focus
    assert conv.steps[-1].hint == "Say goodbye."  # type: ignore[union-attr]


async def test_user_prompt_swaps_roles_and_carries_persona_scenario_hint(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["User: \"we had loads of rain, does that matter?\"", USER_OK])
    res = resources(tmp_path, engine)
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation(("my tomatoes have spots", "Probably early blight."))
    conv.steps.append(FlowControllerStep(content="follow_up", pattern="follow_up", hint="Mention the recent rain."))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    call = engine.calls[0]
    system = call.messages[0]["content"]
    assert "Role: retired teacher." in system and SCENARIO in system
    assert [m["role"] for m in call.messages[1:]] == ["assistant", "user"]
    assert call.messages[1]["content"] == "my tomatoes have spots"
    # The turn's hint comes last, after the reply: the only part that changes between turns.
    assert call.messages[2]["content"].startswith("Probably early blight.\n\n(Stage direction")
    assert call.messages[2]["content"].endswith("Mention the recent rain.)")
    assert "Mention the recent rain." not in system
    assert conv.steps[-1].content == "we had loads of rain, does that matter?"  # label and quotes stripped


async def test_user_prompt_keeps_its_prefix_from_one_turn_to_the_next(tmp_path: Path) -> None:
    """Each call's prompt starts with the previous call's prompt up to the assistant's reply it
    answered, then that call's own reply: llama.cpp reuses all of it from its prompt cache."""
    engine = ScriptedEngine(replies=["does rain matter?", "should I cut the spotted leaves?"])
    res = resources(tmp_path, engine)
    seed = Conversation(task_name="t", conversation_id="s", steps=[
        MessageStep(role="user", content=text) for text in ("ugh my sourdough died", "is decaf worth it", "help w taxes")
    ])
    res.seed_conversations = [seed]
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation(("my tomatoes have spots", "Probably early blight."))
    ctx = ConversationContext(rng=random.Random(0), max_turns=4, turn=1)
    conv.steps.append(FlowControllerStep(content="follow_up", pattern="follow_up", hint="Mention the rain."))
    await stage(conv, ctx)
    conv.steps.append(MessageStep(role="assistant", content="Rain spreads it."))
    conv.steps.append(FlowControllerStep(content="clarify", pattern="clarify", hint="Ask what spreads means."))
    ctx.turn = 2
    await stage(conv, ctx)
    first, second = (c.messages for c in engine.calls)
    assert first[0] == second[0]  # the same system prompt, style examples included
    assert second[1:3] == [first[1], {"role": "user", "content": "Probably early blight."}]
    assert second[3] == {"role": "assistant", "content": "does rain matter?"}


async def test_user_first_message_gets_the_hint_as_direction(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["hi, my tomato leaves have spots", USER_OK])
    res = resources(tmp_path, engine)
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation()
    conv.steps.append(FlowControllerStep(content="new_topic", pattern="new_topic", hint="Ask about leaf spots."))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4))
    messages = engine.calls[0].messages
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Ask about leaf spots." in messages[1]["content"]
    assert "You are a retired teacher." in messages[1]["content"]


async def test_user_prompt_shows_seed_user_messages_as_voice_examples(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["hi, my tomato leaves have spots", USER_OK])
    res = resources(tmp_path, engine)
    seed = Conversation(task_name="t", conversation_id="s", steps=[MessageStep(role="user", content="ugh my sourdough died again")])
    res.seed_conversations = [seed]
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation()
    conv.steps.append(FlowControllerStep(content="new_topic", pattern="new_topic", hint="Ask about leaf spots."))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4))
    assert "- ugh my sourdough died again" in engine.calls[0].messages[0]["content"]


@pytest.mark.parametrize(
    ("draft", "reason"),
    [
        ("How can I help you today?", "sounds_like_assistant"),
        ("Sure, let's start with the basics.", "sounds_like_assistant"),
        ("I hope you find this helpful. Let me know if there's anything else!", "sounds_like_assistant"),
        ("I'm glad you found it helpful. I'm here to assist you.", "sounds_like_assistant"),
        # seen on qwen2.5-1.5b playing the user
        ("Hi there! I'm always here to answer questions. What would you like to know about astronomy?",
         "sounds_like_assistant"),
        ("Hey there AI! I'm a curious astronomer. What's on your mind?", "sounds_like_assistant"),
        ("So many fascinating topics. What specific aspect of physics are you curious about?", "sounds_like_assistant"),
        ("I'm sorry to hear that the laptop is having trouble. Try the manual.", "sounds_like_assistant"),
        ("my tomatoes have spots!", "repeats_itself"),
        ("Probably early blight, a fungal disease.", "echoes_assistant"),
        ("I want to save her tomato plants from blight before the summer fair", "pastes_scenario"),
        ("", "empty"),
        ("thanks, bye! This is your last message.", "copies_direction"),
        ("ok, should I cut the spotted leaves off?", None),
        # seen on qwen2.5-1.5b: the user's "my twins" became "your twins" in advice to the user
        ("You could water your tomatoes in the morning, before the sun is up.", "sounds_like_assistant"),
        ("ok, what is your advice on the spots?", None),  # advice: not the user's own thing
        ("ok, should I spray your plants too?", None),  # plants: in the scenario, never "my plants"
        # seen on qwen2.5-1.5b: the user advised the assistant on shin splints, then wished it well
        ("Also, rest your feet properly during the run. Good luck with your marathon!", "sounds_like_assistant"),
        ("Thanks! I'll mulch it. Remember, it's important to water early.", "sounds_like_assistant"),
        ("I'll remember to water early, thanks.", None),
        # seen on qwen2.5-1.5b: the user leaves, then the next exchange talks past the goodbye
        ("Great to hear! It's a pleasure to share it with my students. Have a great day!", "premature_goodbye"),
        ("ok thanks, bye!", "premature_goodbye"),
        # seen on qwen2.5-1.5b: every message opened like the first one
        ("Hey there, AI assistant! Should I cut the spotted leaves?", "greets_again"),
        ("Hello! so should I cut the spotted leaves off?", "greets_again"),
        # the gate's copy check, applied where the turn is written: a 10-word run of an earlier reply
        ("So you say it is probably early blight, a fungal disease, right? ok", "echoes_assistant"),
    ],
)
def test_user_draft_rejections(draft: str, reason: str | None) -> None:
    conv = conversation(("my tomatoes have spots", "Probably early blight, a fungal disease."))
    assert rejection(draft, conv) == reason


@pytest.mark.parametrize(
    ("draft", "expected"),
    [
        ("Hey there, AI assistant! Should I cut the spotted leaves?", "Should I cut the spotted leaves?"),
        ("Hi, should I cut the spotted leaves off?", "Should I cut the spotted leaves off?"),
        ("Hello again! Thanks.", "Hello again! Thanks."),  # nothing would be left: rejected instead
        ("Hmm, should I cut them?", "Hmm, should I cut them?"),
    ],
)
def test_a_greeting_after_the_first_exchange_is_cut_off(draft: str, expected: str) -> None:
    assert without_greeting(draft) == expected


async def test_user_stage_cuts_a_repeated_greeting_instead_of_rewriting(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["Hey there, AI assistant! Does the rain make it worse?"])
    res = resources(tmp_path, engine)
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation(("my tomatoes have spots", "Probably early blight."))
    conv.steps.append(FlowControllerStep(content="follow_up", pattern="follow_up", hint="Mention the rain."))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert conv.steps[-1].content == "Does the rain make it worse?"
    assert res.stats.repairs == {"user:greeting_removed": 1} and len(engine.calls) == 1


def test_an_unmatched_opening_parenthesis_is_dropped() -> None:
    assert without_meta_note("(As a truck driver, how do you stay active?") == "As a truck driver, how do you stay active?"
    assert without_meta_note("(sigh) my tomatoes again") == "(sigh) my tomatoes again"


def test_a_goodbye_is_fine_in_the_closing_message() -> None:
    conv = conversation(("my tomatoes have spots", "Probably early blight, a fungal disease."))
    assert rejection("Thanks, I'll mulch this weekend. Bye!", conv, closing=True) is None


async def test_user_closing_message_gets_direction_and_must_not_ask(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["thanks! one more thing, what about basil?", "thanks, that helps a lot, bye!", USER_OK])
    res = resources(tmp_path, engine)
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation(("spots?", "Blight."))
    conv.steps.append(FlowControllerStep(content="end", pattern="end", hint="Say goodbye.", terminate=True))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1, last_turn=True))
    last = engine.calls[0].messages[-1]
    assert last["role"] == "user" and last["content"].startswith("Blight.") and "this is your last message" in last["content"]
    assert conv.steps[-1].content == "thanks, that helps a lot, bye!"
    assert conv.steps[-1].metadata["rejected"][0]["reason"] == "closing_asks_question"


async def test_user_retries_bad_drafts_then_drops(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["How can I assist you today?"] * 3)
    res = resources(tmp_path, engine)
    stage = UserStage(stage_options(res, "lm/user/guided"), res)
    stage.setup()
    conv = conversation(("a question", "an answer"))
    with pytest.raises(DropConversation, match="user_sounds_like_assistant"):
        await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    temps = [c.params["temperature"] for c in engine.calls]
    assert temps == sorted(temps) and temps[0] < temps[-1]


async def test_assistant_sees_only_the_visible_conversation(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=["Assistant: Water at the base of the plant.", ASSISTANT_OK])
    res = resources(tmp_path, engine)
    stage = AssistantStage(stage_options(res, "lm/assistant/naive"), res)
    conv = conversation(("spots?", "Blight."))
    conv.steps.append(MessageStep(role="user", content="what now?"))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    sent = engine.calls[0].messages
    text = " ".join(m["content"] for m in sent)
    assert SCENARIO not in text and "retired teacher" not in text
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert conv.steps[-1].content == "Water at the base of the plant."
    assert conv.steps[-1].metadata["engine"] == "default"


async def test_assistant_trims_a_reply_cut_by_max_tokens(tmp_path: Path) -> None:
    from fms_dgt.engines.base import ChatResult

    def reply(call: Any) -> ChatResult:
        if call.schema is not None:  # the verifier's call
            return ChatResult('{"writer": "assistant"}', finish_reason="stop")
        return ChatResult("First sentence is whole and long enough. Second one is cut", finish_reason="length")

    engine = ScriptedEngine(responder=reply)
    res = resources(tmp_path, engine)
    stage = AssistantStage(stage_options(res, "lm/assistant/naive"), res)
    conv = conversation()
    conv.steps.append(MessageStep(role="user", content="hi"))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4))
    assert conv.steps[-1].content == "First sentence is whole and long enough."
    assert res.stats.repairs["assistant:trimmed_for_length"] == 1


async def test_assistant_reply_that_copies_an_earlier_one_is_rewritten(tmp_path: Path) -> None:
    earlier = "Some ideas might include making rainbows, having a picnic, or cooking together on a rainy afternoon."
    engine = ScriptedEngine(replies=[f"Rainy days are great. {earlier}", "Try a blanket fort and a puppet show.", ASSISTANT_OK])
    res = resources(tmp_path, engine)
    stage = AssistantStage(stage_options(res, "lm/assistant/naive"), res)
    conv = conversation(("ideas for rain?", earlier))
    conv.steps.append(MessageStep(role="user", content="more?"))
    await stage(conv, ConversationContext(rng=random.Random(0), max_turns=4, turn=1))
    assert conv.steps[-1].content == "Try a blanket fort and a puppet show."
    assert res.stats.rejected_drafts["assistant:repeats_itself"] == 1


@pytest.mark.parametrize(
    ("text", "trimmed"),
    [
        ("One sentence. Two sent", "One sentence."),
        ("Hello there.", "Hello there."),
        # a list cut by max_tokens right after an item number or heading (seen on qwen2.5-1.5b)
        ("Tips:\n1. Look in parks.\n2. Use guides.\n5.", "Tips:\n1. Look in parks.\n2. Use guides."),
        ("Guide:\n### 1. **Age**\n- Count years.\n\n### 3.", "Guide:\n### 1. **Age**\n- Count years."),
        ("Tips:\n1. Look in parks.\n2. Use gui", "Tips:\n1. Look in parks."),
    ],
)
def test_trim_unfinished(text: str, trimmed: str) -> None:
    from fms_dgt.stages.reply_cleanup import trim_unfinished

    assert trim_unfinished(text) == trimmed


def test_a_trailing_note_about_the_instructions_is_cut_from_the_user_message() -> None:
    from fms_dgt.stages.user import without_meta_note

    draft = "Thanks! I'll let you know how it goes. (End of conversation, with no quotation marks and no role label.)"
    assert without_meta_note(draft) == "Thanks! I'll let you know how it goes."
    assert without_meta_note("I tried it (twice) and it works.") == "I tried it (twice) and it works."
