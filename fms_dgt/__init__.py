"""fms_dgt: turn a YAML task file into a dataset of synthetic multi-turn conversations.

The public API, for code that runs tasks or extends them::

    import fms_dgt
    result = fms_dgt.run("tasks/public/examples/chit_chat/task.yaml", num_outputs=10)
    print(result.status, result.output_dir)

Names are imported on first use, so ``import fms_dgt`` stays cheap (the simulated LM server and
the command line import it too).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> module that defines it.
_EXPORTS = {
    "ConfigError": "fms_dgt.errors",
    "Conversation": "fms_dgt.conversation",
    "DgtError": "fms_dgt.errors",
    "Engine": "fms_dgt.engines.base",
    "EngineError": "fms_dgt.errors",
    "LMStage": "fms_dgt.stages.base",
    "RunOptions": "fms_dgt.runner",
    "RunResult": "fms_dgt.runner",
    "Stage": "fms_dgt.stages.base",
    "Task": "fms_dgt.task",
    "TaskConfig": "fms_dgt.task",
    "arun": "fms_dgt.api",
    "load_task": "fms_dgt.loader",
    "register_engine": "fms_dgt.engines.base",
    "register_executor": "fms_dgt.executors.base",
    "register_formatter": "fms_dgt.formatters",
    "register_stage": "fms_dgt.stages.base",
    "run": "fms_dgt.api",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fms_dgt' has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return __all__
