"""``lm/judge``: score a finished conversation against named rubrics, with structured output.

Each rubric has integer scores, each with a description; the judge answers in JSON (the schema
only allows the declared scores) with its reasoning before each score. Scores go into a judge
step (with the reasoning) and into ``attributes``. A rubric's ``min_score`` / ``max_score``
drop conversations outside the bounds, counted by reason like every other drop.
"""

from __future__ import annotations

from functools import lru_cache
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from fms_dgt.config import ConfigModel, LMStageOptions, attribute_name, require_unique
from fms_dgt.conversation import Conversation, JudgeScore, JudgeStep
from fms_dgt.errors import StructuredOutputError
from fms_dgt.stages.base import ConversationContext, DropConversation, LMStage, register_stage
from fms_dgt.templates import render

SYSTEM = (
    "You are a careful, impartial judge of conversations between a user and an AI assistant."
    " You score exactly what the rubric describes, and nothing else."
)
SCOPES = {
    "conversation": ("the conversation", ("user", "assistant")),
    "user": ("the user's messages", ("user",)),
    "assistant": ("the assistant's messages", ("assistant",)),
}


class Rubric(ConfigModel):
    name: str = Field(description="Attribute the score is written to.")
    description: str = Field(min_length=1, description="What is judged.")
    scores: dict[int, str] = Field(min_length=2, description="Each allowed score and what it means.")
    min_score: int | None = Field(None, description="Drop conversations scored below this.")
    max_score: int | None = Field(None, description="Drop conversations scored above this.")

    _name = field_validator("name")(attribute_name)

    @model_validator(mode="after")
    def _bounds_are_scores(self) -> Rubric:
        for key in ("min_score", "max_score"):
            bound = getattr(self, key)
            if bound is not None and not min(self.scores) <= bound <= max(self.scores):
                raise ValueError(f"{key} {bound} is outside the scores {min(self.scores)}..{max(self.scores)}")
        return self


class JudgeOptions(LMStageOptions):
    rubrics: list[Rubric] = Field(min_length=1)
    scope: Literal["conversation", "user", "assistant"] = Field(
        "conversation", description="What the judge reads: the whole chat, or only one side of it."
    )
    system_prompt: str = Field(SYSTEM, description="The judge's instructions; a Jinja2 template.")

    template_fields: ClassVar[tuple[str, ...]] = ("system_prompt", "instructions")

    @field_validator("rubrics")
    @classmethod
    def _unique(cls, rubrics: list[Rubric]) -> list[Rubric]:
        require_unique([r.name for r in rubrics], "rubric")
        return rubrics

    def writes(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rubrics)


@lru_cache(maxsize=64)
def scores_model(rubrics: tuple[tuple[str, tuple[int, ...]], ...]) -> type[BaseModel]:
    """Reply model: per rubric, the reasoning first (it helps small models), then a declared score."""
    fields = {}
    for name, allowed in rubrics:
        fields[name] = (
            create_model(
                f"Score_{name}",
                __config__=ConfigDict(extra="forbid"),
                reasoning=(str, Field(max_length=400)),
                score=(Literal[allowed], ...),  # type: ignore[valid-type]
            ),
            ...,
        )
    return create_model("Scores", __config__=ConfigDict(extra="forbid"), **fields)  # type: ignore[call-overload]


@register_stage("lm/judge")
class JudgeStage(LMStage):
    Options = JudgeOptions
    options: JudgeOptions
    default_temperature = 0.0
    default_max_tokens = 600

    def setup(self) -> None:
        self.model = scores_model(tuple((r.name, tuple(sorted(r.scores))) for r in self.options.rubrics))

    def prompt(self, conv: Conversation) -> list[dict[str, str]]:
        what, roles = SCOPES[self.options.scope]
        rubrics = []
        for rubric in self.options.rubrics:
            scale = "\n".join(f"  {score}: {meaning}" for score, meaning in sorted(rubric.scores.items()))
            rubrics.append(f"{rubric.name}: {rubric.description}\n{scale}")
        parts = [f"Score {what} below against each rubric.", "Rubrics:\n" + "\n\n".join(rubrics)]
        extra = self.instructions(conv)
        if extra:
            parts.append(extra)
        parts.append(f"{what[0].upper()}{what[1:]}:\n" + conv.transcript(roles))
        parts.append(
            "Reply in JSON with one entry per rubric name, each with a short \"reasoning\" and its"
            ' "score" (one of the listed numbers).'
        )
        return [
            {"role": "system", "content": render(self.options.system_prompt, conv)},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        try:
            result = await self.chat_with_settings(ctx, self.prompt(conv), schema=self.model)
        except StructuredOutputError:
            raise DropConversation("judge_invalid_json") from None
        scores = {
            rubric.name: JudgeScore(
                score=getattr(result.parsed, rubric.name).score,
                reasoning=getattr(result.parsed, rubric.name).reasoning.strip(),
            )
            for rubric in self.options.rubrics
        }
        conv.steps.append(
            JudgeStep(
                content=", ".join(f"{name}={s.score}" for name, s in scores.items()),
                stage_name=self.name,
                scores=scores,
                metadata=self.provenance(result),
            )
        )
        for rubric in self.options.rubrics:
            score = scores[rubric.name].score
            conv.attributes[rubric.name] = score
            if rubric.min_score is not None and score < rubric.min_score:
                raise DropConversation(f"judge_{rubric.name}_below_{rubric.min_score}")
            if rubric.max_score is not None and score > rubric.max_score:
                raise DropConversation(f"judge_{rubric.name}_above_{rubric.max_score}")
