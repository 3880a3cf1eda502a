"""An output folder for the viewer, export and preview tests, made by a real run on the scripted engine.

The responder adds what the viewer must show: a judge score per conversation (and drops by the
judge's ``min_score``), a shown system prompt, user drafts the user stage rejects (in the assistant's voice), and one assistant reply
holding a ``<script>`` element (untrusted text that must stay inert in the page).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import ChitChatResponder, task_dict, write_task
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.loader import load_task
from fms_dgt.runner import RunOptions, Runner, RunResult

SCRIPT_REPLY = '<script>window.__dgtPwned = true;</script> Tomatoes like </script> warm soil & sun.'
REJECTED_DRAFT = "How can I help you with your garden today?"


class ViewerResponder(ChitChatResponder):
    """Every 5th user call first answers in the assistant's voice (rejected, then rewritten);
    the 3rd assistant reply is ``SCRIPT_REPLY``; judge scores cycle 0..3 (a 0 drops the conversation)."""

    def __init__(self) -> None:
        super().__init__()
        self.user_calls = 0
        self.judged = 0

    def __call__(self, call: RecordedCall) -> Any:
        if call.stage == "lm/judge":
            self.judged += 1
            return {"helpfulness": {"reasoning": "clear and on topic", "score": self.judged % 4}}
        if call.stage == "lm/user/guided":
            self.user_calls += 1
            if self.user_calls % 5 == 1:
                return REJECTED_DRAFT
        elif call.stage == "lm/assistant/naive" and self.assistant_count == 2:
            self.assistant_count += 1
            return SCRIPT_REPLY
        return super().__call__(call)


def viewer_task(tmp_path: Path) -> dict[str, Any]:
    task = task_dict(
        tmp_path,
        termination_stages=[{
            "name": "lm/judge",
            "rubrics": [{"name": "helpfulness", "description": "How helpful is the assistant?",
                         "scores": {0: "not at all", 1: "barely", 2: "somewhat", 3: "very"}, "min_score": 1}],
        }],
    )
    task["iteration_stages"][2]["show_system_prompt"] = True
    return task


async def make_output(tmp_path: Path, n: int = 12, seed: int = 5) -> RunResult:
    """Run the viewer task for ``n`` conversations; the folder is ``result.output_dir``."""
    path = write_task(tmp_path, viewer_task(tmp_path))
    options = RunOptions(num_outputs=n, output_dir=tmp_path / "out", restart=True, seed=seed, progress=False)
    engine = ScriptedEngine(responder=ViewerResponder())
    return await Runner(load_task(path), options, engines={"default": engine}).run()
