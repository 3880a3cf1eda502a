"""Pydantic models for what a task file may say. Unknown keys are errors (``extra="forbid"``)."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Task names become folders under the output directory: keep them to safe path segments.
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConfigModel(BaseModel):
    """Base for every config model: typos fail at load time, values are not mutated afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class EngineConfig(ConfigModel):
    """Settings shared by all engines; each engine type extends it with its own options."""

    type: str = Field(description="Engine type: local, ollama or openai.")
    model: str | None = Field(None, description="Model name (or GGUF path for the local engine).")
    base_url: str | list[str] | None = Field(
        None, description="Server URL (ollama, openai), or a list of URLs to spread requests over."
    )
    timeout: float = Field(120.0, gt=0, description="Seconds before one request is abandoned.")
    max_retries: int = Field(4, ge=0, description="Retries after a failed request (timeouts, 429, 5xx).")
    retry_wait: float = Field(
        1.0, ge=0, description="Seconds before the first retry; doubles each time, with jitter."
    )
    max_concurrency: int = Field(8, ge=1, description="Requests in flight to this engine at once.")
    structured_retries: int = Field(
        2, ge=0, description="Extra calls when a structured reply does not fit its JSON schema."
    )
    # Decoding defaults; a stage may override any of them per call.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="Cap on generated tokens per call.")
    seed: int | None = None
    stop: list[str] | None = None

    @field_validator("base_url")
    @classmethod
    def _distinct_urls(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("needs at least one URL")
            if any(not url.strip() for url in value):
                raise ValueError("an empty URL")
            normalized = [url.strip().rstrip("/") for url in value]
            if len(set(normalized)) < len(normalized):
                raise ValueError("lists the same URL twice")
        return value

    def base_urls(self) -> list[str]:
        """``base_url`` as a list (empty when unset, so the engine's default applies)."""
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)

    def decoding(self) -> dict[str, Any]:
        """Decoding parameters that are set, ready to merge under per-call overrides."""
        keys = ("temperature", "top_p", "max_tokens", "seed", "stop")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


# Attribute names are used as template variables: keep them to identifiers.
_ATTRIBUTE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def attribute_name(value: str) -> str:
    """Validator for option fields that name an attribute of the conversation record."""
    if not _ATTRIBUTE.match(value):
        raise ValueError(f"{value!r} is not a valid attribute name (letters, digits and '_', not starting with a digit)")
    return value


def require_unique(names: list[str], what: str) -> None:
    """Raise ``ValueError`` naming the duplicates, for lists whose items are looked up by name."""
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate {what} names: {', '.join(duplicates)}")


class StageOptions(ConfigModel):
    """Base for a stage's YAML options; ``name`` selects the stage class."""

    name: str
    # Option fields holding Jinja2 templates, checked against the attributes available at load time.
    template_fields: ClassVar[tuple[str, ...]] = ()
    # True for a stage that writes the whole conversation (no iteration stages needed).
    writes_messages: ClassVar[bool] = False

    def writes(self) -> tuple[str, ...]:
        """Attributes this stage sets on the conversation record, for later templates."""
        return ()


class LMStageOptions(StageOptions):
    """Options every LM-calling stage has."""

    engine: str = Field("default", description="Name of an entry under `engines:`.")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    instructions: str | None = Field(
        None, description="Extra instructions added to the stage's prompt; a Jinja2 template over attributes."
    )

    template_fields: ClassVar[tuple[str, ...]] = ("instructions",)

    def engines_used(self) -> dict[tuple[str, ...], str]:
        """Every engine this stage calls, keyed by the option path that names it."""
        return {("engine",): self.engine}


class DatastoreConfig(ConfigModel):
    """Where a data file lives (DiGiT's ``{type: default, data_path: ...}``)."""

    type: str = "default"
    data_path: str

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        if value != "default":
            raise ValueError("only type 'default' (a JSONL file) is supported")
        return value


class FormatterConfig(ConfigModel):
    type: str = "conversation/messages"


class TargetTurns(ConfigModel):
    """Take each conversation's length from a sampled attribute instead of the flow controller."""

    attribute: str = Field(description="Attribute holding the requested length, set by an initialization stage.")
    unit: Literal["exchanges", "messages"] = Field(
        "exchanges", description="messages: the value counts user and assistant messages (2 per exchange)."
    )

    _name = field_validator("attribute")(attribute_name)

    def exchanges(self, value: Any) -> int:
        """The number of exchanges a value of the attribute asks for; ``ValueError`` if none."""
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ValueError(f"{value!r} is not a whole number")
        count = int(value)
        if self.unit == "messages":
            if count % 2:
                raise ValueError(f"{count} messages is not a whole number of user/assistant exchanges")
            count //= 2
        return count


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
    engines: dict[str, EngineConfig] = Field(default_factory=dict)
    initialization_stages: list[StageOptions] = Field(default_factory=list)
    iteration_stages: list[StageOptions] = Field(default_factory=list)
    termination_stages: list[StageOptions] = Field(default_factory=list)
    formatter: FormatterConfig = Field(default_factory=FormatterConfig)
    seed_datastore: DatastoreConfig | None = None

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

    @field_validator("iteration_stages")
    @classmethod
    def _has_iteration(cls, value: list[StageOptions], info: Any) -> list[StageOptions]:
        initialization = info.data.get("initialization_stages") or []
        if not value and not any(s.writes_messages for s in initialization):
            raise ValueError(
                "needs at least one stage (for example lm/user/guided and lm/assistant/naive),"
                " unless an initialization stage such as lm/conversation writes the whole chat"
            )
        return value

    def all_stages(self) -> list[StageOptions]:
        return [*self.initialization_stages, *self.iteration_stages, *self.termination_stages]
