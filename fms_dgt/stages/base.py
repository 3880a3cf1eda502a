"""The stage contract and what stages get to work with.

A stage is called once per conversation (initialization and termination stages) or once per
exchange (iteration stages). It appends steps to the conversation it is given, and drops the
conversation by raising ``DropConversation`` with a reason that is counted in the run summary.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from fms_dgt.config import LMStageOptions, StageOptions
from fms_dgt.conversation import Conversation
from fms_dgt.engines.base import ChatResult, Message, Schema
from fms_dgt.lm_client import LMClient
from fms_dgt.registry import Registry
from fms_dgt.stats import RunStats
from fms_dgt.templates import render


@dataclass(frozen=True)
class Rejection:
    """The last draft a stage turned down before dropping a conversation, so that a run stopped
    for keeping nothing can show the user what the model actually wrote."""

    stage: str
    reason: str
    text: str
    # Every draft of the failing turn that was turned down, with its reason (for dropped.jsonl).
    drafts: tuple[dict[str, Any], ...] = ()

    def records(self) -> list[dict[str, Any]]:
        """The turned-down drafts as written to the output: all of them, or the last one alone."""
        return list(self.drafts) or [{"text": self.text}]


class DropConversation(Exception):  # noqa: N818 - a signal, not an error
    """Raised by a stage to drop the conversation; ``reason`` is a short countable label."""

    def __init__(self, reason: str, rejected: Rejection | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.rejected = rejected


@dataclass
class Resources:
    """Shared by every stage of a run."""

    lm: LMClient | None
    stats: RunStats
    seed_conversations: list[Conversation] = field(default_factory=list)


@dataclass
class ConversationContext:
    """Per-conversation state the runner passes to every stage call."""

    rng: random.Random
    # Most exchanges for this conversation: the task's max_turns, or its target_turns.
    max_turns: int
    # Complete exchanges the conversation needs to be kept (the task's min_turns).
    min_turns: int = 1
    turn: int = 0  # 0-based index of the exchange being produced
    # Set by a stage (the flow controller) when the exchange being produced is the last one.
    last_turn: bool = False
    # True when max_turns is this conversation's exact requested length (target_turns).
    exact_turns: bool = False
    # The conversation's attempt number and the run's seed, for draws that must be spread over
    # the whole run rather than per conversation (personas covering their file).
    attempt: int = 0
    seed: int = 0


class Stage(ABC):
    """Base class for stages. Subclasses set ``Options`` to their own options model."""

    Options: ClassVar[type[StageOptions]] = StageOptions
    registry_name: ClassVar[str]

    def __init__(self, options: StageOptions, resources: Resources) -> None:
        self.options = options
        self.resources = resources

    @property
    def name(self) -> str:
        return self.options.name

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load and check data files before any LM call; raise ``ConfigError`` on bad input."""

    @abstractmethod
    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        """Append this stage's steps to ``conv`` or raise ``DropConversation``."""


class LMStage(Stage):
    """A stage that calls an LM engine named in its options.

    A call goes through three layers, each named for what it adds: ``chat_with_settings`` here
    (the stage's decoding settings, a seed from the conversation, the engine and label),
    ``LMClient.counted_chat`` (the engine by name; the call counted and priced under its stage)
    and ``Engine.layered_chat`` (the engine's re-asks, retries, breaker, limits and timeout)."""

    options: LMStageOptions
    # Per-stage defaults, overridable in the task file.
    default_max_tokens: ClassVar[int] = 256
    default_temperature: ClassVar[float | None] = None

    async def chat_with_settings(
        self,
        ctx: ConversationContext,
        messages: list[Message],
        *,
        schema: Schema | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        **params: Any,
    ) -> ChatResult:
        """One call on the stage's engine with the stage's settings: the task's ``max_tokens`` and
        ``temperature`` for the stage win over the caller's, which win over the stage's defaults.
        Then ``call`` (the seed, the engine, the label the call is counted under)."""
        temperature = temperature if temperature is not None else self.options.temperature
        if temperature is None:
            temperature = self.default_temperature
        return await self.call(
            ctx,
            messages,
            schema=schema,
            max_tokens=self.options.max_tokens or max_tokens or self.default_max_tokens,
            temperature=temperature,
            **params,
        )

    async def call(
        self,
        ctx: ConversationContext,
        messages: list[Message],
        *,
        engine: str | None = None,
        label: str | None = None,
        schema: Schema | None = None,
        **params: Any,
    ) -> ChatResult:
        """One call with exactly these parameters, on ``engine`` (default the stage's), counted
        under ``label`` (default the stage's name): the verifier's calls go through here."""
        assert self.resources.lm is not None, "LM stages need an LM client"
        engine = engine or self.options.engine
        # A seed drawn from the conversation's generator makes runs reproducible with --seed,
        # unless the engine config pins one seed for every call.
        if self.resources.lm.engines[engine].config.seed is None:
            params.setdefault("seed", ctx.rng.randrange(2**31))
        return await self.resources.lm.counted_chat(engine, label or self.name, messages, schema=schema, **params)

    def instructions(self, conv: Conversation) -> str:
        """The task's extra ``instructions`` for this stage, rendered for ``conv`` ('' if none)."""
        source = self.options.instructions
        return render(source, conv) if source else ""

    def provenance(self, result: ChatResult, **extra: Any) -> dict[str, Any]:
        """Step metadata: which engine and model wrote it, and what it cost."""
        assert self.resources.lm is not None
        engine = self.resources.lm.engines[self.options.engine]
        return {
            "engine": self.options.engine,
            "model": engine.describe().get("model"),
            "prompt_tokens": result.usage.prompt_tokens,
            "completion_tokens": result.usage.completion_tokens,
            "finish_reason": result.finish_reason,
            **extra,
        }


STAGES: Registry[type[Stage]] = Registry("stage")


def register_stage(name: str) -> Any:
    """Class decorator: make a stage available to task files under ``name``."""
    return STAGES.register(name)
