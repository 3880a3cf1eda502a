"""The conversation record: a typed log of steps, serialised one per line to ``final_data.jsonl``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

BIG_FIVE = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")


class Personality(BaseModel):
    """Big-Five traits in [-1, 1]; ``None`` leaves a trait unconstrained."""

    model_config = ConfigDict(extra="forbid")

    openness: float | None = Field(None, ge=-1, le=1)
    conscientiousness: float | None = Field(None, ge=-1, le=1)
    extraversion: float | None = Field(None, ge=-1, le=1)
    agreeableness: float | None = Field(None, ge=-1, le=1)
    neuroticism: float | None = Field(None, ge=-1, le=1)


class Persona(BaseModel):
    """One line of a personas file."""

    model_config = ConfigDict(extra="forbid")

    role: str = Field(min_length=1)
    expertise: str | None = None
    domain: str | None = None
    goals: list[str] = Field(default_factory=list)
    personality: Personality = Field(default_factory=Personality)
    style_override: str | None = None


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    content: str
    stage_name: str = ""
    # Provenance of LM steps: engine, model, tokens, attempts, rejected drafts.
    metadata: dict[str, Any] = Field(default_factory=dict)


class PersonaStep(_Step):
    role: Literal["persona"] = "persona"
    persona: Persona


class ScenarioStep(_Step):
    role: Literal["scenario"] = "scenario"


class FlowControllerStep(_Step):
    """The move chosen for the coming exchange; ``content`` repeats the pattern name."""

    role: Literal["flow_controller"] = "flow_controller"
    pattern: str
    hint: str
    terminate: bool = False
    eligible_patterns: list[str] = Field(default_factory=list)
    reasoning: str = ""
    # Why the LM's choice was not used as is (invalid JSON, engine error, ...), or None.
    fallback: str | None = None


class MessageStep(_Step):
    role: Literal["system", "user", "assistant"]


class AttributeStep(_Step):
    """A named value an LM wrote (a system prompt, a user task); also in ``attributes``."""

    role: Literal["attribute"] = "attribute"
    attribute: str


class JudgeScore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    score: int
    reasoning: str = ""


class JudgeStep(_Step):
    """Scores of a judge, one per rubric, with the judge's reasoning; ``content`` summarises them."""

    role: Literal["judge"] = "judge"
    scores: dict[str, JudgeScore]


Step = Annotated[
    PersonaStep | ScenarioStep | FlowControllerStep | MessageStep | AttributeStep | JudgeStep,
    Field(discriminator="role"),
]


class CutExchange(BaseModel):
    """The exchange a rescued conversation was cut back from (see ``pipeline``): the steps it
    had written and every draft the failing stage turned down. It is not part of the chat (the
    formatters never see it) but it was generated, so ``final_data.jsonl`` keeps it."""

    model_config = ConfigDict(extra="forbid")

    reason: str
    stage: str | None = None  # the stage that gave up, when it said
    steps: list[Step] = Field(default_factory=list)
    rejected_drafts: list[dict[str, Any]] = Field(default_factory=list)


class Conversation(BaseModel):
    """One conversation and how it was made. Steps are append-only while it is generated."""

    model_config = ConfigDict(extra="forbid")

    task_name: str
    conversation_id: str
    is_seed: bool = False
    num_turns: int = 0
    # Exchanges this conversation was asked to have (``target_turns`` in the task), if any.
    target_turns: int | None = None
    stop_reason: str | None = None
    # Named values written by stages (sampled attributes, generated system prompt, ...).
    attributes: dict[str, Any] = Field(default_factory=dict)
    steps: list[Step] = Field(default_factory=list)
    # Set when the conversation was kept as of an earlier exchange than the one that failed.
    cut_exchange: CutExchange | None = None

    def last(self, role: str) -> Step | None:
        for step in reversed(self.steps):
            if step.role == role:
                return step
        return None

    @property
    def persona(self) -> PersonaStep | None:
        step = self.last("persona")
        return step if isinstance(step, PersonaStep) else None

    @property
    def scenario(self) -> str | None:
        step = self.last("scenario")
        return step.content if step else None

    def messages(self) -> list[dict[str, str]]:
        """The visible chat as OpenAI-style messages: a system prompt first, then the exchanges.

        A stage may record the system prompt when it first uses it (after the first user
        message); it still belongs at the top of the chat.
        """
        chat = [{"role": s.role, "content": s.content} for s in self.steps if s.role in ("user", "assistant")]
        return [{"role": "system", "content": s.content} for s in self.steps if s.role == "system"] + chat

    def contents(self, role: str) -> list[str]:
        return [s.content for s in self.steps if s.role == role]

    def transcript(
        self, roles: tuple[str, ...] = ("user", "assistant"), *, last: int | None = None, max_chars: int | None = None
    ) -> str:
        """The visible chat (or one side of it) as ``User: ...`` / ``Assistant: ...`` lines, each on
        one line; optionally only the ``last`` messages, each cut to ``max_chars``. '' if empty."""
        messages = [m for m in self.messages() if m["role"] in roles]
        lines = []
        for message in messages[-last:] if last else messages:
            content = " ".join(message["content"].split())
            if max_chars is not None and len(content) > max_chars:
                content = content[: max_chars - 3] + "..."
            lines.append(f"{message['role'].capitalize()}: {content}")
        return "\n".join(lines)
