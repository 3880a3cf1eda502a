"""Reading the JSONL data files a task points at, with errors that name the file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from fms_dgt.errors import ConfigError, Problem, describe_error

M = TypeVar("M", bound=BaseModel)


def read_jsonl(path: Path, model: type[M], *, what: str) -> list[M]:
    """Parse every non-blank line of ``path`` into ``model``; report every bad line at once."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(Problem(f"{what} file not found", file=path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(f"cannot read {what} file: {exc}", file=path)) from None
    items: list[M] = []
    problems: list[Problem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(Problem(f"not valid JSON ({exc.msg})", file=path, line=number))
            continue
        try:
            items.append(model.model_validate(data))
        except ValidationError as exc:
            for error in exc.errors():
                key = ".".join(str(p) for p in error["loc"]) or None
                problems.append(Problem(describe_error(error), file=path, line=number, key=key))
    if problems:
        raise ConfigError(problems[:20])
    if not items:
        raise ConfigError(Problem(f"{what} file has no records", file=path))
    return items

