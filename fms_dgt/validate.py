"""``--validate``: check a task without generating, and print what a run would do.

Loading the task checks the file, its keys, templates and attributes; building its pipeline reads
and checks every data file (personas, seed examples); each engine the stages use is then checked
as a run checks it (the server answers and has the model, or the embedded model loads). No
generation call is made and nothing is written. The plan lists the stages in order with what
matters for each: patterns with their weight shares, personas, lengths.
"""

from __future__ import annotations

from pathlib import Path

from fms_dgt.config import LMStageOptions
from fms_dgt.loader import EngineOverride, Task, load_task
from fms_dgt.output import FINAL
from fms_dgt.runner import RunOptions, Runner
from fms_dgt.stages import Stage


def _describe_stage(stage: Stage) -> list[str]:
    """One line for the stage, then indented details."""
    options = stage.options
    line = stage.name + (f" (engine {options.engine})" if isinstance(options, LMStageOptions) else "")
    details: list[str] = []
    personas = getattr(stage, "personas", None)
    if personas is not None:
        details.append(f"{len(personas)} personas from {options.persona_store.data_path}")  # type: ignore[attr-defined]
    patterns = getattr(options, "patterns", None)
    if patterns:
        total = sum(p.weight for p in patterns) or 1.0
        terminal = set(getattr(options, "termination_patterns", []) or [])
        for p in patterns:
            role = " (termination)" if p.name in terminal else ""
            details.append(f"pattern {p.name}: weight {p.weight:g}, share {100 * p.weight / total:.1f} %{role}")
        opening = getattr(options, "opening_patterns", None)
        if opening:
            details.append("opening: " + ", ".join(opening) + " (no LM call)")
        details.append(f"mode: {getattr(options, 'mode', 'two_call')}")
    attribute = getattr(options, "attribute", None)
    if attribute:
        details.append(f"writes attribute {attribute}")
    rubrics = getattr(options, "rubrics", None)
    if rubrics:
        details += [f"rubric {r.name}: scores {min(r.scores)}..{max(r.scores)}" for r in rubrics]
    return [line, *("    " + d for d in details)]


def plan(task: Task, runner: Runner, num_outputs: int) -> str:
    """What a run of ``num_outputs`` conversations would do, as readable lines."""
    config = task.config
    out = [f"{config.task_name} ({task.path}): valid"]
    final = runner.store.dir / FINAL
    have = sum(1 for line in final.read_text(encoding="utf-8").splitlines() if line.strip()) if final.is_file() else 0
    if have:
        out.append(f"  output: {runner.store.dir} ({have} conversations already there; a run of N={num_outputs}"
                   f" would generate {max(0, num_outputs - have)}, or {num_outputs} with --restart)")
    else:
        out.append(f"  output: {runner.store.dir} (empty; a run of N={num_outputs} would generate {num_outputs})")
    for name, engine in runner.pipeline.engines.items():
        info = engine.describe()
        url = f" at {info['base_url']}" if info.get("base_url") else ""
        out.append(f"  engine {name}: {info['type']} {info['model']}{url}: reachable")
    target = config.target_turns
    lengths = f"  exchanges per conversation: {config.min_turns} to {config.max_turns}"
    if target is not None:
        lengths += f"; exact length from attribute {target.attribute} (in {target.unit})"
    out.append(lengths)
    seeds = len(runner.pipeline.resources.seed_conversations)
    if seeds:
        out.append(f"  seed examples: {seeds} conversations")
    out.append(f"  conversations in flight: {runner.concurrency}")
    number = 0
    pipeline = runner.pipeline
    for title, stages in (("once per conversation", pipeline.init_stages),
                          ("once per exchange", pipeline.iteration_stages),
                          ("at the end", pipeline.termination_stages)):
        if not stages:
            continue
        out.append(f"  stages, {title}:")
        for stage in stages:
            number += 1
            first, *rest = _describe_stage(stage)
            out.append(f"    {number}. {first}")
            out += ["      " + line.strip() for line in rest]
    out.append("  no generation call was made; nothing was written")
    return "\n".join(out)


async def validate_tasks(paths: list[Path], override: EngineOverride, output_dir: Path, num_outputs: int) -> int:
    """Print the plan of each task; ``ConfigError`` (exit 2) and ``EngineError`` (exit 1) propagate."""
    tasks = [load_task(p, override) for p in paths]  # every file first, as a run does
    for task in tasks:
        runner = Runner(task, RunOptions(num_outputs=num_outputs, output_dir=output_dir, progress=False))
        try:
            await runner.pipeline.check()
        finally:
            await runner.pipeline.aclose()
        print(plan(task, runner, num_outputs))
    return 0
