"""A task: ``TaskConfig``, the whole task file as one pydantic model that validates itself.

Its stage and engine entries are discriminated unions built from the registries (the built-in
stages and engines, and those of installed plugins): a stage entry is validated against the options
model of the stage its ``name`` selects, an engine entry against the settings of its ``type``. The
rules that span several stages (templates and attributes flow from earlier stages to later ones,
stages name engines that exist, ``target_turns`` fits ``min_turns..max_turns``) are a model
validator, so ``TaskConfig.model_validate`` of a parsed task file, or of the ``task.json`` a run
writes, checks everything the loader checks. The loader adds YAML, ``${VAR}`` expansion and
``file:line`` locations on top.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import Discriminator, Field, Tag, TypeAdapter, field_validator, model_validator
from pydantic_core import PydanticCustomError

from fms_dgt.config import (
    ConfigModel,
    DatastoreConfig,
    EngineConfig,
    FormatterConfig,
    LimitsConfig,
    LMStageOptions,
    QualityConfig,
    StageOptions,
    TargetTurns,
)
from fms_dgt.engines import ENGINES
from fms_dgt.formatters import FORMATTERS
from fms_dgt.plugins import load_plugins
from fms_dgt.stages import STAGES
from fms_dgt.templates import BUILTINS, TemplateProblem, names_used

# Plugins register their stages, engines and formatters before the unions below are built.
load_plugins()

# Task names become folders under the output directory: keep them to safe path segments.
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")
STAGE_LISTS = ("initialization_stages", "iteration_stages", "termination_stages")
Loc = tuple[str | int, ...]
# The error type that carries the cross-stage problems, each with its own location.
TASK_RULES = "task_rules"
# Bad values of a target_turns attribute reported at most (a range may hold millions).
MAX_VALUE_PROBLEMS = 5


def _tag(key: str) -> Any:
    def tag(value: Any) -> str | None:
        found = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        return found if isinstance(found, str) else None

    return tag


def _union(models: Mapping[str, type[ConfigModel]], key: str) -> Any:
    members = tuple(Annotated[model, Tag(name)] for name, model in models.items())
    return Annotated[Union[members], Discriminator(_tag(key))]  # noqa: UP007 - a runtime-built union


StageSpec = _union({name: cls.Options for name, cls in STAGES.items()}, "name")
EngineSpec = _union({name: cls.Config for name, cls in ENGINES.items()}, "type")
_ENGINE = TypeAdapter(EngineSpec)


def _default_engines() -> dict[str, EngineConfig]:
    return {"default": _ENGINE.validate_python({"type": "local"})}


class TaskConfig(ConfigModel):
    """A whole task file."""

    task_name: str = Field(description="Unique name; also the output folder under --output-dir.")
    task_description: str = ""
    created_by: str = ""
    data_builder: str = Field("core/conversation", description="Only core/conversation exists.")
    min_turns: int = Field(1, ge=1, description="Complete exchanges a conversation needs to be kept.")
    max_turns: int = Field(10, ge=1, description="Most exchanges per conversation.")
    target_turns: TargetTurns | None = Field(
        None, description="Per-conversation exact length from an attribute (within min_turns..max_turns)."
    )
    engines: dict[str, EngineSpec] = Field(default_factory=_default_engines)
    initialization_stages: list[StageSpec] = Field(default_factory=list)
    iteration_stages: list[StageSpec] = Field(default_factory=list)
    termination_stages: list[StageSpec] = Field(default_factory=list)
    formatter: FormatterConfig = Field(default_factory=FormatterConfig)
    seed_datastore: DatastoreConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)

    @model_validator(mode="before")
    @classmethod
    def _absent_when_null(cls, data: Any) -> Any:
        """``iteration_stages:`` with nothing after it means no stages, as in YAML it reads."""
        if isinstance(data, dict):
            lists = (*STAGE_LISTS, "engines")
            data = {k: v for k, v in data.items() if not (k in lists and v is None)}
        return data

    @field_validator("task_name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        segments = value.split("/")
        if not value or any(s in ("", ".", "..") or not _SAFE_SEGMENT.match(s) for s in segments):
            raise ValueError(
                "must be one or more '/'-separated segments of letters, digits, '_', '-', '.'"
                " (no '..', no absolute path), because it names the output folder"
            )
        return value

    @field_validator("data_builder")
    @classmethod
    def _known_builder(cls, value: str) -> str:
        if value != "core/conversation":
            raise ValueError("unknown data builder; known: core/conversation")
        return value

    @field_validator("max_turns")
    @classmethod
    def _min_le_max(cls, value: int, info: Any) -> int:
        min_turns = info.data.get("min_turns")
        if min_turns is not None and value < min_turns:
            raise ValueError(f"max_turns ({value}) is smaller than min_turns ({min_turns})")
        return value

    @model_validator(mode="after")
    def _cross_stage_rules(self) -> TaskConfig:
        problems = _Rules(self).check()
        if problems:
            summary = "; ".join(f"{key_path(loc)}: {message}" if loc else message for loc, message in problems)
            raise PydanticCustomError(TASK_RULES, "{summary}", {"summary": summary, "problems": problems})
        return self

    def all_stages(self) -> list[StageOptions]:
        return [*self.initialization_stages, *self.iteration_stages, *self.termination_stages]

    def stage_entries(self) -> list[tuple[Loc, StageOptions]]:
        """Every stage with where it is in the task file (``("iteration_stages", 1)``), in run order."""
        return [((field, i), s) for field in STAGE_LISTS for i, s in enumerate(getattr(self, field))]


class _Rules:
    """The rules that need more than one stage: each problem with the location it belongs to."""

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self.problems: list[tuple[Loc, str]] = []

    def check(self) -> list[tuple[Loc, str]]:
        task = self.task
        if not task.iteration_stages and not any(s.writes_messages for s in task.initialization_stages):
            self.problems.append((
                ("iteration_stages",),
                "needs at least one stage (for example lm/user/guided and lm/assistant/naive),"
                " unless an initialization stage such as lm/conversation writes the whole chat",
            ))
        if task.formatter.type not in FORMATTERS:
            self.problems.append((("formatter", "type"), f"unknown formatter; known: {', '.join(FORMATTERS.names())}"))
        writers: dict[str, tuple[StageOptions, Loc]] = {}
        for loc, options in task.stage_entries():
            self._engine(loc, options)
            if options.writes_messages and loc[0] != "initialization_stages":
                self.problems.append((loc + ("name",), f"{options.name} writes the whole conversation: make it an initialization stage"))
            self._templates(loc, options, writers)
            earlier = {name: writer for name, (writer, _) in writers.items()}
            self.problems += [(loc + where, message) for where, message in options.problems(earlier)]
            for name in options.writes():
                if name in BUILTINS:
                    self.problems.append((loc, f"attribute {name!r} clashes with a built-in template name"))
                elif name in writers:
                    self.problems.append((loc, f"attribute {name!r} is already written by {key_path(writers[name][1])}"))
                else:
                    writers[name] = (options, loc)
        if task.target_turns is not None:
            self._target(task.target_turns, writers.get(task.target_turns.attribute))
        return self.problems

    def _engine(self, loc: Loc, options: StageOptions) -> None:
        if not isinstance(options, LMStageOptions):
            return
        for key, engine in options.engines_used().items():
            if engine not in self.task.engines:
                known = ", ".join(self.task.engines)
                self.problems.append((loc + key, f"no engine named {engine!r} under `engines:` (known: {known})"))

    def _templates(self, loc: Loc, options: StageOptions, writers: Mapping[str, Any]) -> None:
        for key in options.template_fields:
            source = getattr(options, key)
            if source is None:
                continue
            try:
                used = names_used(source)
            except TemplateProblem as exc:
                self.problems.append((loc + (key,), str(exc)))
                continue
            known = set(BUILTINS) | set(writers)
            for name in sorted(used - known):
                self.problems.append((
                    loc + (key,),
                    f"template uses {{{{ {name} }}}}, which no earlier stage writes (known: {', '.join(sorted(known))})",
                ))

    def _target(self, target: TargetTurns, writer: tuple[StageOptions, Loc] | None) -> None:
        """Every length the attribute can take must be whole exchanges within min_turns..max_turns."""
        loc: Loc = ("target_turns", "attribute")
        if writer is None or writer[1][0] != "initialization_stages":
            self.problems.append((loc, f"no initialization stage writes the attribute {target.attribute!r}"))
            return
        options = writer[0]
        values = options.possible_values()
        if values is None:
            self.problems.append((
                loc,
                "the length must come from sample/category, or from sample/uniform or sample/gaussian"
                " with integer: true (and min and max for gaussian)",
            ))
            return
        low, high = self.task.min_turns, self.task.max_turns
        found = 0
        for value in values:
            try:
                turns = target.exchanges(value)
            except ValueError as exc:
                problem = f"{options.name} may give {value!r}: {exc}"
            else:
                if low <= turns <= high:
                    continue
                problem = (
                    f"{options.name} may give {value!r}, that is {turns} exchanges, outside"
                    f" min_turns..max_turns ({low}..{high})"
                )
            self.problems.append((loc, problem))
            found += 1
            if found == MAX_VALUE_PROBLEMS:  # a huge range of bad values is not worth listing
                return


def key_path(loc: Loc) -> str:
    """``("iteration_stages", 1, "engine")`` -> ``iteration_stages[1].engine``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass(frozen=True)
class Task:
    """A loaded task file: its validated config, where it came from and its sha256 (provenance)."""

    path: Path
    config: TaskConfig
    sha256: str


__all__ = ["EngineSpec", "StageSpec", "Task", "TaskConfig", "key_path"]
