"""The building blocks of a task file's models: engine settings and stage options.

Each engine type and each stage extends these with its own options in its own module; ``fms_dgt.task``
assembles them into ``TaskConfig``. Unknown keys are errors (``extra="forbid"``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# Task names become folders under the output directory: keep them to safe path segments.
_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConfigModel(BaseModel):
    """Base for every config model: typos fail at load time, values are not mutated afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(ConfigModel):
    """What an engine's tokens cost, per million; the run summary and budgets count in this unit."""

    prompt_per_million: float = Field(0.0, ge=0, description="Price of one million prompt tokens.")
    completion_per_million: float = Field(0.0, ge=0, description="Price of one million generated tokens.")
    cached_prompt_per_million: float | None = Field(
        None, ge=0, description="Price of one million prompt tokens served from the server's cache (default: the prompt price)."
    )

    def cost(self, prompt: int, completion: int, cached: int = 0) -> float:
        """The cost of one call's tokens; ``cached`` is the part of ``prompt`` read from cache."""
        cached = min(cached, prompt)
        cached_price = self.prompt_per_million if self.cached_prompt_per_million is None else self.cached_prompt_per_million
        return (
            (prompt - cached) * self.prompt_per_million
            + cached * cached_price
            + completion * self.completion_per_million
        ) / 1e6


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
    max_concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto",
        description="Requests in flight to each server of this engine: a number pins it; auto finds"
        " it by measuring (see engines/limiter.py).",
    )
    max_concurrency_limit: int = Field(
        512, ge=1, description="With max_concurrency auto: the most requests in flight per server."
    )
    structured_retries: int = Field(
        2, ge=0, description="Extra calls when a structured reply does not fit its JSON schema."
    )
    # Decoding defaults; a stage may override any of them per call.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1, description="Cap on generated tokens per call.")
    seed: int | None = None
    stop: list[str] | None = None
    price: Price | None = Field(None, description="Token prices, for the cost in the summary and --max-cost.")

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


# A value a sampler can write into an attribute.
Value = str | int | float | bool
# Where a problem is, below a stage entry (``("parent",)``), and what it is.
StageProblem = tuple[tuple[str | int, ...], str]


class StageOptions(ConfigModel):
    """Base for a stage's YAML options; ``name`` selects the stage class.

    Besides its options, a stage's model states the facts the task's cross-stage rules and the
    analysis report need (which attributes it writes, what values it can give them), so that no
    other module has to know stage types.
    """

    name: str
    # Option fields holding Jinja2 templates, checked against the attributes available at load time.
    template_fields: ClassVar[tuple[str, ...]] = ()
    # True for a stage that writes the whole conversation (no iteration stages needed).
    writes_messages: ClassVar[bool] = False

    def writes(self) -> tuple[str, ...]:
        """Attributes this stage sets on the conversation record, for later templates."""
        return ()

    def possible_values(self) -> Sequence[Value] | None:
        """Every value this stage can write to its attribute, when they are few and known (a
        ``range`` for whole-number ranges); None otherwise. ``target_turns`` needs them."""
        return None

    def shares(self, earlier: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
        """The share of draws each value should get (value as text -> share), for the report;
        ``earlier`` holds the expected shares of attributes written before this stage."""
        return None

    def numeric(self) -> bool:
        """True for a sampler of numbers (the report describes it by mean and spread)."""
        return False

    def problems(self, writers: Mapping[str, StageOptions]) -> list[StageProblem]:
        """What is wrong with this stage given the stages before it (``writers``: attribute ->
        the stage that wrote it), as (key path below this stage, message)."""
        return []


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


class QualityConfig(ConfigModel):
    """The conversation-level gate applied before a conversation is kept (see fms_dgt/quality.py)."""

    near_duplicate_threshold: float | None = Field(
        0.8,
        gt=0,
        le=1,
        description="Reject a conversation whose estimated Jaccard similarity (word 3-grams of the"
        " chat, MinHash) to one already kept is at least this; null turns the check off.",
    )


class LimitsConfig(ConfigModel):
    """When a run stops by itself: the keep-rate breaker and the per-run budgets (``limits:``)."""

    min_keep_rate: float = Field(
        0.05, ge=0, lt=1, description="Stop when the keep rate is surely below this (0 turns the breaker off)."
    )
    min_attempts: int = Field(20, ge=1, description="Finished attempts the breaker needs before it may stop a run.")
    max_tokens: int | None = Field(None, ge=1, description="Prompt + completion tokens this run may spend.")
    max_calls: int | None = Field(None, ge=1, description="LM calls this run may make.")
    max_cost: float | None = Field(None, gt=0, description="Cost this run may spend (needs engine prices).")
    max_time: float | None = Field(None, gt=0, description="Seconds this run may take.")
