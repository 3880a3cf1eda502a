"""Task YAML -> validated ``TaskConfig``, with errors that name the file, line and key.

YAML is read with the safe loader (no object construction). ``${VAR}`` and ``${VAR:-default}``
in string values are expanded from the environment; ``DGT_DATA_DIR`` defaults to ``data``.
Each engine and stage entry is validated against the options model its type declares, so a
typo fails here, before any LM call.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from fms_dgt.config import EngineConfig, LMStageOptions, StageOptions, TargetTurns, TaskConfig
from fms_dgt.engines import ENGINES
from fms_dgt.errors import ConfigError, Problem
from fms_dgt.registry import UnknownNameError
from fms_dgt.stages import STAGES
from fms_dgt.stages.samplers import CategoryOptions, GaussianOptions, SubcategoryOptions, UniformOptions
from fms_dgt.templates import BUILTINS, TemplateProblem, names_used

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DEFAULTS = {"DGT_DATA_DIR": "data"}
_STAGE_LISTS = ("initialization_stages", "iteration_stages", "termination_stages")
Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Task:
    """A loaded task file."""

    path: Path
    config: TaskConfig
    sha256: str


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
        if isinstance(node, yaml.MappingNode) and loc:
            # For a mapping, the line of its key reads better than its first child.
            return line
        return line


def _key(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")


class _Builder:
    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.locator = _Locator(text)
        self.problems: list[Problem] = []

    def problem(self, loc: Loc, message: str) -> None:
        self.problems.append(
            Problem(message, file=self.path, line=self.locator.line(loc), key=_key(loc) or None)
        )

    def validation(self, prefix: Loc, exc: ValidationError) -> None:
        for error in exc.errors():
            loc = prefix + tuple(error["loc"])
            # Errors raised by a field validator carry the field; point there.
            self.problem(loc, _message(error))

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

    def model(self, cls: type[BaseModel], raw: Any, loc: Loc) -> BaseModel | None:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            self.validation(loc, exc)
            return None


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

    engines_raw = data.get("engines")
    if engines_raw is None:
        engines_raw = {"default": {"type": "local"}}
    engines: dict[str, Any] = {}
    if not isinstance(engines_raw, dict):
        builder.problem(("engines",), "must be a mapping of engine names to settings")
    else:
        for name, spec in engines_raw.items():
            loc: Loc = ("engines", name)
            if not isinstance(spec, dict):
                builder.problem(loc, "must be a mapping with at least `type`")
                continue
            if override:
                spec = override.apply(spec)
            try:
                cls = ENGINES.get(str(spec.get("type")))
            except UnknownNameError as exc:
                builder.problem(loc + ("type",), str(exc))
                continue
            engines[name] = builder.model(cls.Config, spec, loc)

    stages: dict[str, list[Any]] = {}
    for field in _STAGE_LISTS:
        items = data.get(field) or []
        if not isinstance(items, list):
            builder.problem((field,), "must be a list of stages")
            continue
        stages[field] = []
        for index, item in enumerate(items):
            loc = (field, index)
            if not isinstance(item, dict) or "name" not in item:
                builder.problem(loc, "each stage must be a mapping with a `name`")
                continue
            try:
                cls = STAGES.get(str(item["name"]))
            except UnknownNameError as exc:
                builder.problem(loc + ("name",), str(exc))
                continue
            options = builder.model(cls.Options, item, loc)
            stages[field].append(options)
            for key, engine in (options.engines_used() if isinstance(options, LMStageOptions) else {}).items():
                if engine not in engines_raw:
                    known = ", ".join(map(str, engines_raw)) if isinstance(engines_raw, dict) else ""
                    builder.problem(loc + key, f"no engine named {engine!r} under `engines:` (known: {known})")

    if builder.problems:
        raise ConfigError(builder.problems)
    _check_attributes(builder, stages, data)
    if builder.problems:
        raise ConfigError(builder.problems)
    task_data = {**data, "engines": engines, **stages}
    config = builder.model(TaskConfig, task_data, ())
    if builder.problems or config is None:
        raise ConfigError(builder.problems)
    assert isinstance(config, TaskConfig)
    return Task(path=path, config=config, sha256=hashlib.sha256(text.encode()).hexdigest())


def _check_attributes(builder: _Builder, stages: dict[str, list[Any]], data: dict[str, Any]) -> None:
    """Attributes flow from stage to stage in order: every template name, subcategory parent and
    ``target_turns`` attribute must be written by an earlier stage, and each is written once."""
    writers: dict[str, tuple[StageOptions, Loc]] = {}
    for field in _STAGE_LISTS:
        for index, options in enumerate(stages.get(field, [])):
            loc: Loc = (field, index)
            if options.writes_messages and field != "initialization_stages":
                builder.problem(loc + ("name",), f"{options.name} writes the whole conversation: make it an initialization stage")
            for key in options.template_fields:
                source = getattr(options, key)
                if source is None:
                    continue
                try:
                    used = names_used(source)
                except TemplateProblem as exc:
                    builder.problem(loc + (key,), str(exc))
                    continue
                known = set(BUILTINS) | set(writers)
                for name in sorted(used - known):
                    builder.problem(
                        loc + (key,),
                        f"template uses {{{{ {name} }}}}, which no earlier stage writes"
                        f" (known: {', '.join(sorted(known))})",
                    )
            if isinstance(options, SubcategoryOptions):
                _check_parent(builder, options, writers.get(options.parent), loc)
            for name in options.writes():
                if name in BUILTINS:
                    builder.problem(loc, f"attribute {name!r} clashes with a built-in template name")
                elif name in writers:
                    other = _key(writers[name][1])
                    builder.problem(loc, f"attribute {name!r} is already written by {other}")
                else:
                    writers[name] = (options, loc)
    target = data.get("target_turns")
    if isinstance(target, dict) and "attribute" in target:
        _check_target(builder, target, writers.get(str(target["attribute"])), data)


def _check_parent(builder: _Builder, options: SubcategoryOptions, writer: tuple[StageOptions, Loc] | None, loc: Loc) -> None:
    if writer is None:
        builder.problem(loc + ("parent",), f"no earlier stage writes the attribute {options.parent!r}")
    elif isinstance(writer[0], CategoryOptions):
        missing = [str(v) for v in writer[0].values if str(v) not in options.values]
        if missing:
            builder.problem(loc + ("values",), f"no subcategories for {options.parent} = {', '.join(missing)}")


def _check_target(builder: _Builder, raw: dict[str, Any], writer: tuple[StageOptions, Loc] | None, data: dict[str, Any]) -> None:
    """The requested lengths must be whole exchanges within min_turns..max_turns."""
    loc: Loc = ("target_turns", "attribute")
    if writer is None or writer[1][0] != "initialization_stages":
        builder.problem(loc, f"no initialization stage writes the attribute {raw['attribute']!r}")
        return
    try:
        target = TargetTurns.model_validate(raw)
        low, high = int(data.get("min_turns", 1)), int(data.get("max_turns", 10))
    except (ValidationError, TypeError, ValueError):
        return  # reported with the task's other fields
    options = writer[0]
    if isinstance(options, CategoryOptions):
        values = list(options.values)
    elif isinstance(options, UniformOptions) and options.integer:
        values = [options.low, options.high]
    elif isinstance(options, GaussianOptions) and options.integer and None not in (options.min, options.max):
        values = [options.min, options.max]
    else:
        builder.problem(
            loc,
            "the length must come from sample/category, or from sample/uniform or sample/gaussian"
            " with integer: true (and min and max for gaussian)",
        )
        return
    for value in values:
        try:
            turns = target.exchanges(value)
        except ValueError as exc:
            builder.problem(loc, f"{options.name} may give {value!r}: {exc}")
            continue
        if not low <= turns <= high:
            builder.problem(
                loc, f"{options.name} may give {value!r}, that is {turns} exchanges, outside min_turns..max_turns ({low}..{high})"
            )


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


__all__ = ["EngineOverride", "StageOptions", "Task", "find_task_files", "load_task"]
