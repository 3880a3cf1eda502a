"""Shared helpers: write small task and data files, and run tasks on a scripted engine."""

from __future__ import annotations

import copy
from dataclasses import dataclass
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fms_dgt.engines.scripted import RecordedCall
from fms_dgt.stages.base import Resources
from fms_dgt.stages.reply_cleanup import with_article
from fms_dgt.stages.similarity import COURTESY

# Imported once for the session, as a notebook with matplotlib has it: a run then draws its chart
# in this process instead of starting a chart process each time (0.75 s of CPU each, fms_dgt.chart).
# tests/test_chart.py and the command-line tests run the chart process itself.
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401
except ImportError:
    pass

REPO = Path(__file__).resolve().parent.parent
CHIT_CHAT = REPO / "tasks/public/examples/chit_chat/task.yaml"

PERSONAS = [
    {"role": "retired teacher", "expertise": "beginner", "domain": "gardening", "goals": ["grow tomatoes"]},
    {"role": "night-shift nurse", "domain": "sleep", "personality": {"neuroticism": 0.6}},
    {"role": "student", "style_override": "writes in lowercase"},
]

PATTERNS = [
    {"name": "new_topic", "description": "Open a topic.", "hint": "Bring up a topic.", "weight": 0.3},
    {"name": "follow_up", "description": "Dig deeper.", "hint": "Ask a follow-up.", "weight": 0.6},
    {"name": "end", "description": "Say goodbye.", "hint": "Say goodbye.", "weight": 0.1},
]


@dataclass
class TaskResources(Resources):
    """What stages get, plus the task they came from (for picking a stage's options in tests)."""

    task: Any = None


def task_dict(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A small valid task, as a dict, with its persona file written under ``tmp_path``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    personas = tmp_path / "personas.jsonl"
    if not personas.exists():
        personas.write_text("".join(json.dumps(p) + "\n" for p in PERSONAS))
    task: dict[str, Any] = {
        "task_name": "tests/small",
        "min_turns": 2,
        "max_turns": 4,
        "engines": {"default": {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}},
        "initialization_stages": [
            {"name": "sample/persona", "persona_store": {"data_path": str(personas)}},
            {"name": "lm/scenario"},
        ],
        "iteration_stages": [
            {
                "name": "lm/flow_controller",
                "patterns": copy.deepcopy(PATTERNS),
                "termination_patterns": ["end"],
                "opening_patterns": ["new_topic"],
            },
            {"name": "lm/user/guided"},
            {"name": "lm/assistant/naive"},
        ],
    }
    task.update(overrides)
    return task


def write_task(tmp_path: Path, data: dict[str, Any] | str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def small_task(tmp_path: Path) -> Path:
    return write_task(tmp_path, task_dict(tmp_path))


USER_LINES = [
    "my tomato leaves have brown spots, what could that be?",
    "we had loads of rain last week, does that matter?",
    "i think copper spray sounds harsh, what do you reckon?",
    "sorry, what do you mean by crop rotation exactly?",
    "thanks a lot, i'll try mulching this weekend, bye!",
    "how often should i water them in july?",
    "is it worth growing basil next to them?",
]
ASSISTANT_LINES = [
    "Brown spots are often early blight, a fungal disease.",
    "Yes, wet leaves help fungi spread, so water at the base.",
    "Copper is allowed in organic gardening but use it sparingly.",
    "Crop rotation means planting tomatoes in a new bed each year.",
    "Good luck with the mulching, enjoy your garden!",
    "About twice a week, deeply, depending on the soil.",
    "Basil is a classic companion plant and may deter pests.",
]


class ChitChatResponder:
    """Plausible replies for each chit-chat stage, chosen by the calling stage's name (within the
    flow controller, by the schema it asks for), never by prompt wording. The scenario names the
    sampled persona's role, found among ``roles`` (the test personas' by default) in its prompt."""

    def __init__(self, eligible: list[str] | None = None, roles: list[str] | None = None) -> None:
        self.eligible = eligible
        self.roles = roles or [p["role"] for p in PERSONAS]
        self.user_count = 0
        self.assistant_count = 0
        self.user_replies: set[str] = set()  # every user line written, to tell exchanges from notes

    def __call__(self, call: RecordedCall) -> Any:
        stage, schema, messages = call.stage, call.schema, call.messages
        if stage == "lm/flow_controller":
            assert schema is not None, "the flow controller asks for JSON"
            if "eligible_patterns" in schema["properties"]:
                names = schema["properties"]["eligible_patterns"]["items"]["enum"]
                chosen = [n for n in names if self.eligible is None or n in self.eligible] or names
                return {"reasoning": "these fit", "eligible_patterns": chosen}
            return {"focus": "the brown spots on the leaves"}
        if stage is not None and stage.endswith("/verifier"):
            return {"writer": "human" if stage.startswith("lm/user") else "assistant"}
        if stage == "lm/scenario":
            return f"{self.scenario_subject(messages)} wants to chat about saving some tomato plants from blight."
        if stage == "lm/user/guided":
            self.user_count += 1
            reply = USER_LINES[(self.user_count - 1) % len(USER_LINES)] + f" ({self.user_count})"
            self.user_replies.add(reply)
            return reply
        if stage == "lm/assistant/naive":
            self.assistant_count += 1
            # A reply takes up two of the user's words, as a real one would (a closing reply must).
            topic = [w for w in re.findall(r"[a-z]{5,}", messages[-1]["content"].lower()) if w not in COURTESY][:2]
            about = f" Good luck with the {' and the '.join(topic)}." if len(topic) == 2 else ""
            return ASSISTANT_LINES[(self.assistant_count - 1) % len(ASSISTANT_LINES)] + f" ({self.assistant_count}){about}"
        raise AssertionError(f"ChitChatResponder has no reply for stage {stage!r}")

    def scenario_subject(self, messages: list[dict[str, str]]) -> str:
        """'A retired teacher': the persona's role, the one of ``roles`` the prompt names first."""
        prompt = "\n".join(m["content"] for m in messages)
        found = sorted((prompt.find(role), role) for role in self.roles if role in prompt)
        assert found, f"the scenario prompt names none of the roles {self.roles}"
        subject = with_article(found[0][1])
        return subject[0].upper() + subject[1:]


def count_lines(path: Path) -> int:
    """Complete lines in a file that may not exist yet."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def when_true(condition: Any, action: Any, timeout: float = 60.0) -> threading.Thread:
    """Run ``action()`` on a helper thread once ``condition()`` holds (to break something
    mid-run: stop a server, kill a worker). Join the returned thread to wait for it."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                action()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def when_lines(path: Path, lines: int, action: Any, timeout: float = 60.0) -> threading.Thread:
    """``when_true`` once ``path`` holds ``lines`` complete lines."""
    return when_true(lambda: count_lines(path) >= lines, action, timeout)
