"""``--preview [K]``: run K conversations (default 1) one after another and print each step as it happens.

The way to iterate on patterns, hints and personas in seconds or minutes instead of a full run:
persona, scenario, then per exchange the pattern and hint, the user message (its rejected drafts
dimmed before it) and the assistant's reply, on stdout, coloured on a terminal (not when
``NO_COLOR`` is set or stdout is not a TTY). Nothing is written: the conversations are run on the
task's ``Pipeline``, without the run driver, so no output folder is opened.

The hook is a wrapper around each stage: after the stage has appended its steps, they are printed.
The pipeline is not changed; it calls the wrapper as it calls any stage.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from fms_dgt.conversation import (
    AttributeStep,
    FlowControllerStep,
    JudgeStep,
    MessageStep,
    PersonaStep,
    ScenarioStep,
    Step,
)
from fms_dgt.engines import Engine
from fms_dgt.loader import EngineOverride, load_task
from fms_dgt.pipeline import Outcome, Pipeline, choose_seed
from fms_dgt.stages import DropConversation, Stage
from fms_dgt.stages.base import ConversationContext

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36"}


class Printer:
    """Writes steps as readable lines; ANSI colours only when ``color``."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out, self.color = out, color
        self.t0 = time.perf_counter()

    def paint(self, text: str, *styles: str) -> str:
        if not self.color or not styles:
            return text
        return "\033[" + ";".join(_CODES[s] for s in styles) + "m" + text + "\033[0m"

    def line(self, label: str, text: str, *styles: str, label_styles: tuple[str, ...] = ("bold",)) -> None:
        elapsed = self.paint(f"[{time.perf_counter() - self.t0:6.1f}s]", "dim")
        indent = " " * (len(label) + 11)
        body = text.replace("\n", "\n" + indent)
        print(f"{elapsed} {self.paint(label, *label_styles)} {self.paint(body, *styles)}", file=self.out, flush=True)

    def step(self, step: Step, turn: int) -> None:
        meta = step.metadata
        cost = (f" ({meta.get('prompt_tokens', 0)} prompt + {meta['completion_tokens']} tokens,"
                f" attempt {meta.get('attempts', 1)})" if "completion_tokens" in meta else "")
        if isinstance(step, PersonaStep):
            self.line("persona  ", step.content, label_styles=("bold", "magenta"))
        elif isinstance(step, ScenarioStep):
            self.line("scenario ", step.content + self.paint(cost, "dim"), label_styles=("bold", "magenta"))
        elif isinstance(step, FlowControllerStep):
            how = " (fixed: " + str(meta["fixed_by"]) + ")" if meta.get("fixed_by") else ""
            fallback = f" fallback: {step.fallback}" if step.fallback else ""
            closing = " closing" if step.terminate else ""
            self.line(f"-- exchange {turn + 1}", f"{step.pattern}{how}{closing}{fallback}", "yellow",
                      label_styles=("bold", "yellow"))
            if len(step.eligible_patterns) > 1:
                self.line("  eligible", ", ".join(step.eligible_patterns), "dim", label_styles=("dim",))
            self.line("  hint    ", step.hint, "yellow", label_styles=("dim",))
        elif isinstance(step, MessageStep) and step.role == "user":
            for draft in meta.get("rejected", []):
                self.line("  rejected", f"[{draft['reason']}] {draft['text']}", "dim", label_styles=("dim", "red"))
            self.line("user     ", step.content + self.paint(cost, "dim"), "blue", label_styles=("bold", "blue"))
        elif isinstance(step, MessageStep) and step.role == "assistant":
            self.line("assistant", step.content + self.paint(cost, "dim"), "green", label_styles=("bold", "green"))
        elif isinstance(step, MessageStep):
            self.line("system   ", step.content, "dim")
        elif isinstance(step, AttributeStep):
            self.line(f"{step.attribute}:", step.content, "dim")
        elif isinstance(step, JudgeStep):
            for name, score in step.scores.items():
                self.line("judge    ", f"{name} = {score.score}: {score.reasoning}", "cyan")

    def dropped(self, stage: str, reason: str) -> None:
        self.line("dropped  ", f"by {stage}: {reason}", "red", label_styles=("bold", "red"))

    def outcome(self, number: int, outcome: Outcome) -> None:
        if outcome.conv is None:
            text = f"conversation {number} not kept: {outcome.drop_reason}"
            if outcome.engine_error is not None:
                text += f" ({outcome.engine_error})"
            self.line("==", text, "red", label_styles=("bold", "red"))
        else:
            conv = outcome.conv
            self.line("==", f"conversation {number} kept: {conv.num_turns} exchanges, stop reason {conv.stop_reason}",
                      "bold", label_styles=("bold",))


class ObservedStage:
    """A stage that prints the steps it appended (and its drops), then lets them through unchanged."""

    def __init__(self, stage: Stage, printer: Printer) -> None:
        self.stage, self.printer = stage, printer

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stage, name)

    async def __call__(self, conv: Any, ctx: ConversationContext) -> None:
        mark = len(conv.steps)
        try:
            await self.stage(conv, ctx)
        except DropConversation as drop:
            self.printer.dropped(self.stage.name, drop.reason)
            raise
        for step in conv.steps[mark:]:
            self.printer.step(step, ctx.turn)


def use_color(out: TextIO) -> bool:
    return "NO_COLOR" not in os.environ and hasattr(out, "isatty") and out.isatty()


async def preview_tasks(
    paths: list[Path],
    override: EngineOverride,
    count: int,
    seed: int | None,
    out: TextIO | None = None,
    engines: dict[str, Engine] | None = None,
) -> int:
    """Run ``count`` conversations of each task, printing every step; returns 0, or 1 if none was kept.
    ``engines`` replaces the task's (tests hand in a scripted one)."""
    tasks = [load_task(p, override) for p in paths]
    out = out or sys.stdout
    printer = Printer(out, use_color(out))
    kept = 0
    for task in tasks:
        pipeline = Pipeline(task, choose_seed(seed), engines)
        printer.line("preview", f"{task.config.task_name}: {count} conversation(s), seed {pipeline.seed};"
                     " nothing is written", "dim")
        for name in ("init_stages", "iteration_stages", "termination_stages"):
            setattr(pipeline, name, [ObservedStage(s, printer) for s in getattr(pipeline, name)])
        try:
            await pipeline.check()  # checks the engines (loads the embedded model)
            for attempt in range(count):
                outcome = await pipeline.run(attempt)
                printer.outcome(attempt + 1, outcome)
                kept += outcome.conv is not None
        finally:
            await pipeline.aclose()
        printer.line("==", f"{pipeline.stats.lm_calls} LM calls, {pipeline.stats.tokens} tokens", "dim")
    return 0 if kept else 1
