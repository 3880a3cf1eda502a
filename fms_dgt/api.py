"""Running a task from Python, as the command line does: ``fms_dgt.run("task.yaml", num_outputs=10)``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fms_dgt.loader import load_task
from fms_dgt.runner import RunOptions, RunResult, Runner
from fms_dgt.task import Task


async def arun(task: Task | str | Path, options: RunOptions | None = None, **settings: Any) -> RunResult:
    """Generate the task's conversations; ``settings`` are ``RunOptions`` fields (``num_outputs``,
    ``output_dir``, ``seed``, ...) when ``options`` is not given. Bad input raises ``ConfigError``;
    a run that fails or is stopped says so in ``RunResult.status`` and ``error``."""
    if not isinstance(task, Task):
        task = load_task(task)
    if options is None:
        options = RunOptions(**{"progress": False, **settings})
    elif settings:
        raise TypeError("give either options or keyword settings, not both")
    return await Runner(task, options).run()


def run(task: Task | str | Path, options: RunOptions | None = None, **settings: Any) -> RunResult:
    """``arun`` for code that is not already in an event loop."""
    return asyncio.run(arun(task, options, **settings))


__all__ = ["arun", "run"]
