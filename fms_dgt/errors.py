"""The few exceptions that cross layers; each carries what a user needs to fix the problem."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fms_dgt.usage import Usage


class DgtError(Exception):
    """Base class: an expected failure that the CLI reports in one line, without a traceback."""

    exit_code = 1


@dataclass
class Problem:
    """One thing wrong in an input file: where it is and what is wrong."""

    message: str
    file: Path | str | None = None
    line: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        where = str(self.file) if self.file else ""
        if where and self.line:
            where += f":{self.line}"
        parts = [p for p in (where, self.key) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


def describe_error(error: Mapping[str, Any]) -> str:
    """One pydantic validation error in the words this project's messages use."""
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    return str(error["msg"]).removeprefix("Value error, ")


class ConfigError(DgtError):
    """Bad user input (task file, persona file, seed file, flag). Exit code 2, like argparse."""

    exit_code = 2

    def __init__(self, problems: list[Problem] | Problem | str) -> None:
        if isinstance(problems, str):
            problems = [Problem(problems)]
        elif isinstance(problems, Problem):
            problems = [problems]
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class EngineError(DgtError):
    """An LM call failed for good (after retries), or an engine could not start.

    The message names the engine, model and URL so the user knows which server to look at.
    ``calls`` and ``usage`` are what the failed call still spent (attempts made, tokens of replies
    that came back but were not used), so the run's accounting counts failures too.
    """

    def __init__(
        self,
        cause: str,
        *,
        engine: str = "",
        model: str | None = None,
        url: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
        fatal: bool = False,
        calls: int = 0,
        usage: Usage | None = None,
    ) -> None:
        self.cause = cause
        self.fatal = fatal  # the run should stop: this engine is failing most of its requests
        self.engine = engine
        self.model = model
        self.url = url
        self.retryable = retryable
        self.retry_after = retry_after
        self.calls = calls
        self.usage = usage if usage is not None else Usage()
        where = ", ".join(
            f"{k} {v}" for k, v in (("engine", engine), ("model", model), ("url", url)) if v
        )
        super().__init__(f"{where}: {cause}" if where else cause)


class StructuredOutputError(EngineError):
    """The LM answered, but never with JSON that fits the requested schema."""
