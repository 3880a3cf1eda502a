"""Task YAML -> validated ``Task``, with errors that name the file, line and key.

YAML is read with the safe loader (no object construction). ``${VAR}`` and ``${VAR:-default}``
in string values are expanded from the environment; ``DGT_DATA_DIR`` defaults to ``data``. Then
``TaskConfig.model_validate`` checks the whole task (each stage and engine against its own options,
and the rules across stages); this module turns its errors into ``file:line: key: problem``.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fms_dgt.config import EngineConfig
from fms_dgt.engines import ENGINES
from fms_dgt.errors import ConfigError, Problem, describe_error
from fms_dgt.stages import STAGES
from fms_dgt.task import STAGE_LISTS, TASK_RULES, Loc, Task, TaskConfig, key_path

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DEFAULTS = {"DGT_DATA_DIR": "data"}


@dataclass(frozen=True)
class EngineOverride:
    """``--engine``/``--model``/``--base-url``: applied to every engine of the task."""

    type: str | None = None
    model: str | None = None
    # One URL, or several (``--base-url`` given more than once) to spread requests over.
    base_url: str | tuple[str, ...] | None = None

    def apply(self, raw: dict[str, Any]) -> dict[str, Any]:
        raw = dict(raw)
        if self.type and self.type != raw.get("type"):
            # Options of the old type mean nothing to the new one; keep the shared ones only.
            shared = set(EngineConfig.model_fields) - {"model", "base_url"}
            raw = {k: v for k, v in raw.items() if k in shared}
            raw["type"] = self.type
        if self.model:
            raw["model"] = self.model
        if isinstance(self.base_url, str):
            raw["base_url"] = self.base_url
        elif self.base_url:
            raw["base_url"] = self.base_url[0] if len(self.base_url) == 1 else list(self.base_url)
        return raw


class _Locator:
    """Finds the line of a key path in the YAML source, for error messages."""

    def __init__(self, text: str) -> None:
        try:
            self.root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self.root = None

    def line(self, loc: Loc) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            if isinstance(node, yaml.MappingNode):
                match = next((v for k, v in node.value if k.value == part), None)
                if match is None:
                    # An unknown key: point at the key itself if it is written.
                    key = next((k for k, _ in node.value if k.value == part), None)
                    return key.start_mark.line + 1 if key is not None else line
                node = match
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return line
            line = node.start_mark.line + 1
        return line


class _Builder:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)
        self.problems: list[Problem] = []

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append(
            Problem(message, file=self.path, line=self.locator.line(loc), key=key_path(loc) or None)
        )

    def validation(self, data: dict[str, Any], exc: ValidationError) -> None:
        for error in exc.errors():
            if error["type"] == TASK_RULES:
                for loc, message in error["ctx"]["problems"]:
                    self.problem(loc, message)
                continue
            loc = _data_loc(data, tuple(error["loc"]))
            if error["type"] == "union_tag_invalid":  # point at the name or type that is wrong
                loc += ("type",) if loc[:1] == ("engines",) else ("name",)
            self.problem(loc, _message(error, loc))

    def expand(self, value: Any, loc: Loc) -> Any:
        if isinstance(value, str):
            return _VAR.sub(lambda m: self._lookup(m, loc), value)
        if isinstance(value, dict):
            return {k: self.expand(v, loc + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self.expand(v, loc + (i,)) for i, v in enumerate(value)]
        return value

    def _lookup(self, match: re.Match[str], loc: Loc) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is None:
            value = default if default is not None else _DEFAULTS.get(name)
        if value is None:
            self.problem(loc, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")
            return match.group(0)
        return value


def _data_loc(data: Any, loc: Loc) -> Loc:
    """The error's location in the task file: pydantic puts the union tag (the stage name or the
    engine type) in the path, which the file does not have."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict):
            if part not in node and part in (node.get("name"), node.get("type")):
                continue  # the discriminated union's tag
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
        path.append(part)
    return tuple(path)


def _message(error: Any, loc: Loc) -> str:
    kind = error["type"]
    if kind == "union_tag_invalid":
        if loc and loc[0] == "engines":
            return f"unknown engine type {error['ctx']['tag']!r}; known: {', '.join(ENGINES.names())}"
        return f"unknown stage {error['ctx']['tag']!r}; known: {', '.join(STAGES.names())}"
    if kind == "union_tag_not_found":
        if loc and loc[0] == "engines":
            return "must be a mapping with at least `type`"
        return "each stage must be a mapping with a `name`"
    if kind == "list_type" and loc in tuple((f,) for f in STAGE_LISTS):
        return "must be a list of stages"
    if kind == "dict_type" and loc == ("engines",):
        return "must be a mapping of engine names to settings"
    return describe_error(error)


def load_task(path: Path | str, override: EngineOverride | None = None) -> Task:
    """Read and validate one task file; raise ``ConfigError`` listing every problem found."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(Problem("task file not found", file=path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(Problem(f"cannot read task file: {exc}", file=path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        what = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            Problem(f"YAML syntax error: {what}", file=path, line=mark.line + 1 if mark else None)
        ) from None
    builder = _Builder(path, text)
    if not isinstance(raw, dict):
        raise ConfigError(Problem("a task file must be a mapping of keys to values", file=path, line=1))
    data: dict[str, Any] = builder.expand(raw, ())
    if builder.problems:
        raise ConfigError(builder.problems)
    if override:
        engines = data.get("engines") or {"default": {"type": "local"}}
        if isinstance(engines, dict):
            data["engines"] = {n: override.apply(s) if isinstance(s, dict) else s for n, s in engines.items()}
    try:
        config = TaskConfig.model_validate(data)
    except ValidationError as exc:
        builder.validation(data, exc)
        raise ConfigError(builder.problems) from None
    return Task(path=path, config=config, sha256=hashlib.sha256(text.encode()).hexdigest())


def find_task_files(paths: list[str]) -> list[Path]:
    """Task files named directly, or found as ``task.yaml`` under folders, in a stable order."""
    found: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            matches = sorted(path.rglob("task.yaml"))
            if not matches:
                raise ConfigError(Problem("no task.yaml under this folder", file=path))
            found.extend(matches)
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(Problem("task file or folder not found", file=path))
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


__all__ = ["EngineOverride", "Task", "find_task_files", "load_task"]
