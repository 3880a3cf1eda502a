"""The Data Designer-style stages: lm/text, a generated system prompt, exact lengths from an
attribute, lm/conversation with its validator, and lm/judge, on a scripted engine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, ChitChatResponder, task_dict, write_task
from fms_dgt.conversation import Conversation, MessageStep
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.loader import load_task
from fms_dgt.runner import RunOptions, Runner
from fms_dgt.stages.conversation import chat_problem, chat_schema

RECIPE = REPO / "tasks/public/examples/multi_turn_chat/task.yaml"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def runner_for(tmp_path: Path, task: dict[str, Any] | Path, engine: ScriptedEngine, n: int, seed: int = 3) -> Runner:
    path = task if isinstance(task, Path) else write_task(tmp_path, task)
    options = RunOptions(num_outputs=n, output_dir=tmp_path / "out", restart=True, seed=seed, progress=False)
    return Runner(load_task(path), options, engines={"default": engine})


class RecipeResponder(ChitChatResponder):
    """ChitChatResponder plus lm/text, one-call flow control, lm/conversation and lm/judge."""

    def __init__(self, toxicity: int = 1) -> None:
        super().__init__()
        self.toxicity = toxicity
        self.texts = 0

    def __call__(self, call: RecordedCall) -> Any:
        schema = call.schema or {}
        properties = schema.get("properties", {})
        if call.stage == "lm/flow_controller" and "moves" in properties:
            move = schema["$defs"][properties["moves"]["items"]["$ref"].split("/")[-1]]
            names = move["properties"]["pattern"]["enum"]
            return {"reasoning": "ok", "moves": [{"pattern": n, "focus": "the router settings"} for n in names]}
        if call.stage == "lm/judge":
            return {"user_toxicity": {"reasoning": "a bit curt", "score": self.toxicity}}
        if call.stage == "lm/text":
            self.texts += 1
            return f"Generated text number {self.texts}."
        return super().__call__(call)


async def test_recipe_task_end_to_end_on_a_scripted_engine(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=RecipeResponder())
    result = await runner_for(tmp_path, RECIPE, engine, 20).run()
    records = read_jsonl(result.output_dir / "final_data.jsonl")
    formatted = {r["conversation_id"]: r["messages"] for r in read_jsonl(result.output_dir / "formatted_output.jsonl")}
    assert len(records) == 20
    lengths = set()
    for record in records:
        attributes = record["attributes"]
        assert set(attributes) == {"domain", "topic", "complexity", "conversation_length", "user_mood",
                                   "assistant_system_prompt", "user_task", "user_toxicity"}
        # exactly the sampled length, in messages, not counting the system prompt
        messages = formatted[record["conversation_id"]]
        assert record["target_turns"] == attributes["conversation_length"] // 2 == record["num_turns"]
        assert len(messages) == 1 + attributes["conversation_length"]
        lengths.add(attributes["conversation_length"])
        # the generated system prompt, with the assistant's instructions (what it really saw),
        # is the first message of the training example
        system = f"{attributes['assistant_system_prompt']}\n\nAnswer in at most 4 sentences of plain text."
        assert messages[0] == {"role": "system", "content": system}
        judge = [s for s in record["steps"] if s["role"] == "judge"][0]
        assert judge["scores"] == {"user_toxicity": {"score": 1, "reasoning": "a bit curt"}}
    assert lengths == {2, 4, 6, 8}
    # templates were rendered: the user task reached the user simulator's prompt, the topic lm/text
    user_prompts = [c.messages[0]["content"] for c in engine.calls if c.stage == "lm/user/guided"]
    assert all("Generated text number" in p and "Your mood is" in p for p in user_prompts)
    text_prompts = [c.messages[-1]["content"] for c in engine.calls if c.stage == "lm/text"]
    assert any("troubleshooting a laptop" in p or "budgeting" in p or "study techniques" in p for p in text_prompts)
    assert "{{" not in "".join(text_prompts + user_prompts)
    report = json.loads((result.output_dir / "report.json").read_text())
    assert report["turns"]["exact_match_rate"] == 1.0
    assert report["judges"]["user_toxicity"]["histogram"] == {"1": 20}


async def test_exact_length_is_never_cut_short_by_the_flow_controller(tmp_path: Path) -> None:
    # The LM says only the termination pattern fits, every time: with a requested length it is
    # only offered on the last exchange, so every conversation still has the sampled length.
    task = task_dict(tmp_path, min_turns=1, max_turns=4, target_turns={"attribute": "n"})
    task["initialization_stages"].insert(0, {"name": "sample/category", "attribute": "n", "values": [3, 4]})
    engine = ScriptedEngine(responder=ChitChatResponder(eligible=["end"]))
    result = await runner_for(tmp_path, task, engine, 6).run()
    for record in read_jsonl(result.output_dir / "final_data.jsonl"):
        assert record["num_turns"] == record["target_turns"] == record["attributes"]["n"]
        patterns = [s["pattern"] for s in record["steps"] if s["role"] == "flow_controller"]
        assert patterns[-1] == "end" and "end" not in patterns[:-1]


async def test_generated_system_prompt_is_recorded_once_and_reused(tmp_path: Path) -> None:
    task = task_dict(tmp_path)
    task["initialization_stages"].append(
        {"name": "lm/text", "attribute": "sys", "prompt": "Write a system prompt for a {{ scenario }} chat."}
    )
    task["iteration_stages"][2].update(system_prompt="{{ sys }}", show_system_prompt=True)
    engine = ScriptedEngine(responder=RecipeResponder())
    result = await runner_for(tmp_path, task, engine, 2).run()
    for record, example in zip(read_jsonl(result.output_dir / "final_data.jsonl"),
                               read_jsonl(result.output_dir / "formatted_output.jsonl")):
        assert [m["role"] for m in example["messages"]][:2] == ["system", "user"]
        assert sum(m["role"] == "system" for m in example["messages"]) == 1
        assert example["messages"][0]["content"] == record["attributes"]["sys"]
        text_step = next(s for s in record["steps"] if s["role"] == "attribute")
        assert text_step["attribute"] == "sys" and text_step["metadata"]["prompt_tokens"] > 0
    assistant_calls = [c for c in engine.calls if c.stage == "lm/assistant/naive"]
    assert assistant_calls and all(c.messages[0]["content"].startswith("Generated text") for c in assistant_calls)
    assert all(c.messages[1]["role"] == "user" for c in assistant_calls)


@pytest.mark.parametrize(
    ("roles", "problem"),
    [
        (["user", "assistant", "user", "assistant"], None),
        (["assistant", "user", "assistant", "user"], "starts_with_assistant"),
        (["user", "user", "assistant", "assistant"], "roles_do_not_alternate"),
        (["user", "assistant", "assistant", "user"], "roles_do_not_alternate"),
        (["user", "assistant", "user", "user"], "ends_with_user"),
        (["user", "assistant"], "wrong_length"),
        (["user", "assistant", "user", "assistant", "user", "assistant"], "wrong_length"),
    ],
)
def test_conversation_validator(roles: list[str], problem: str | None) -> None:
    reply = {"messages": [{"role": r, "content": f"message {i}"} for i, r in enumerate(roles)]}
    assert chat_problem(reply, 4) == problem


def test_conversation_validator_rejects_malformed_replies() -> None:
    assert chat_problem({"messages": "hi"}, 2) == "not_a_message_list"
    assert chat_problem([], 2) == "not_a_message_list"
    assert chat_problem({"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}, 2) == "empty_message"
    assert chat_problem({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, 2) == "malformed_message"


def test_conversation_schema_asks_for_the_exact_count() -> None:
    schema = chat_schema(6)["properties"]["messages"]
    assert schema["minItems"] == schema["maxItems"] == 6
    assert schema["items"]["properties"]["role"]["enum"] == ["user", "assistant"]


def whole_chat(n: int, first: str = "user") -> dict[str, Any]:
    other = "assistant" if first == "user" else "user"
    return {"messages": [{"role": first if i % 2 == 0 else other, "content": f"line {i}"} for i in range(n)]}


def one_call_task(tmp_path: Path, **stage: Any) -> dict[str, Any]:
    return task_dict(
        tmp_path,
        min_turns=1,
        max_turns=4,
        target_turns={"attribute": "length", "unit": "messages"},
        initialization_stages=[
            {"name": "sample/category", "attribute": "length", "values": [4]},
            {"name": "lm/conversation", "system_message": "You help with {{ length }}-message chats.", **stage},
        ],
        iteration_stages=[],
    )


async def test_lm_conversation_rewrites_invalid_replies_then_keeps_a_valid_one(tmp_path: Path) -> None:
    engine = ScriptedEngine(replies=[whole_chat(4, first="assistant"), whole_chat(2), whole_chat(4)])
    runner = runner_for(tmp_path, one_call_task(tmp_path), engine, 1)
    result = await runner.run()
    record = read_jsonl(result.output_dir / "final_data.jsonl")[0]
    example = read_jsonl(result.output_dir / "formatted_output.jsonl")[0]
    assert [m["content"] for m in example["messages"]] == ["You help with 4-message chats.", "line 0", "line 1", "line 2", "line 3"]
    assert record["num_turns"] == record["target_turns"] == 2 and record["stop_reason"] == "initialization"
    first = next(s for s in record["steps"] if s["role"] == "user")
    assert first["metadata"]["attempts"] == 3
    assert first["metadata"]["rejected"] == ["starts_with_assistant", "wrong_length"]
    assert runner.stats.rejected_drafts == {"conversation:starts_with_assistant": 1, "conversation:wrong_length": 1}
    call = engine.calls[0]
    assert "exactly 4 messages" in call.messages[-1]["content"]
    assert call.schema["properties"]["messages"]["minItems"] == 4
    assert call.params["max_tokens"] == 800  # room for every message


async def test_lm_conversation_drops_after_its_attempts(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=lambda call: whole_chat(3))
    runner = runner_for(tmp_path, one_call_task(tmp_path, max_attempts=2), engine, 1)
    runner.options.num_outputs = 1
    outcome = await runner.pipeline.run(0)
    assert outcome.conv is None and outcome.drop_reason == "conversation_wrong_length"
    assert len(engine.calls) == 2


async def test_lm_conversation_belongs_in_initialization_stages(tmp_path: Path) -> None:
    from fms_dgt.errors import ConfigError

    task = task_dict(tmp_path)
    task["iteration_stages"].append({"name": "lm/conversation"})
    with pytest.raises(ConfigError, match="writes the whole conversation: make it an initialization stage"):
        load_task(write_task(tmp_path, task))


def judge_task(tmp_path: Path, **rubric: Any) -> dict[str, Any]:
    return task_dict(
        tmp_path,
        termination_stages=[{
            "name": "lm/judge",
            "scope": "user",
            "rubrics": [{"name": "user_toxicity", "description": "How toxic is the user?",
                         "scores": {0: "not at all", 1: "a little", 2: "very"}, **rubric}],
        }],
    )


async def test_judge_scores_go_into_the_record_and_its_prompt_shows_only_the_scope(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=RecipeResponder(toxicity=2))
    result = await runner_for(tmp_path, judge_task(tmp_path), engine, 2).run()
    for record in read_jsonl(result.output_dir / "final_data.jsonl"):
        assert record["attributes"]["user_toxicity"] == 2
        step = record["steps"][-1]
        assert step["role"] == "judge" and step["content"] == "user_toxicity=2"
        assert step["scores"]["user_toxicity"] == {"score": 2, "reasoning": "a bit curt"}
    judge_call = next(c for c in engine.calls if c.schema and "user_toxicity" in c.schema["properties"])
    prompt = judge_call.messages[-1]["content"]
    assert "User: " in prompt and "Assistant: " not in prompt
    assert "  0: not at all" in prompt and "  2: very" in prompt
    ref = judge_call.schema["properties"]["user_toxicity"]["$ref"].split("/")[-1]
    assert judge_call.schema["$defs"][ref]["properties"]["score"]["enum"] == [0, 1, 2]


async def test_judge_rejects_a_score_outside_the_rubric_then_falls_back_to_drop(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=RecipeResponder(toxicity=7))
    runner = runner_for(tmp_path, judge_task(tmp_path), engine, 1)
    outcome = await runner.pipeline.run(0)
    assert outcome.conv is None and outcome.drop_reason == "judge_invalid_json"
    judge_calls = [c for c in engine.calls if c.schema and "user_toxicity" in c.schema["properties"]]
    assert len(judge_calls) == 3  # 1 + structured_retries (2)


async def test_judge_bounds_drop_conversations_with_a_reason(tmp_path: Path) -> None:
    engine = ScriptedEngine(responder=RecipeResponder(toxicity=2))
    runner = runner_for(tmp_path, judge_task(tmp_path, max_score=1), engine, 1)
    outcome = await runner.pipeline.run(0)
    assert outcome.conv is None and outcome.drop_reason == "judge_user_toxicity_above_1"
    runner = runner_for(tmp_path / "b", judge_task(tmp_path / "b", min_score=1), ScriptedEngine(responder=RecipeResponder(0)), 1)
    outcome = await runner.pipeline.run(0)
    assert outcome.drop_reason == "judge_user_toxicity_below_1"


def test_judge_bounds_must_be_scores(tmp_path: Path) -> None:
    from fms_dgt.errors import ConfigError

    with pytest.raises(ConfigError, match="max_score 5 is outside the scores 0..2"):
        load_task(write_task(tmp_path, judge_task(tmp_path, max_score=5)))


def test_system_messages_come_first_whatever_the_step_order() -> None:
    conv = Conversation(task_name="t", conversation_id="c")
    conv.steps += [MessageStep(role="user", content="hi"), MessageStep(role="system", content="Be kind."),
                   MessageStep(role="assistant", content="hello")]
    assert [m["role"] for m in conv.messages()] == ["system", "user", "assistant"]

