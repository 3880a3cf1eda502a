"""``lm/text``: an LM writes one named attribute from a templated prompt.

For values other stages build on: an assistant system prompt for the sampled domain, a task for
the simulated user, ... The text goes into ``attributes`` (for later templates) and into a step
with its provenance.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, field_validator

from fms_dgt.config import LMStageOptions, attribute_name
from fms_dgt.conversation import AttributeStep, Conversation
from fms_dgt.stages.base import ConversationContext, LMStage, register_stage
from fms_dgt.stages.drafts import Draft, DraftProblem, draft_until_accepted
from fms_dgt.stages.reply_cleanup import clean_reply, trim_unfinished
from fms_dgt.templates import render

SYSTEM = "You write material for synthetic conversations. Reply with the requested text only, without preamble."


class TextOptions(LMStageOptions):
    attribute: str = Field(description="Name of the attribute to write.")
    prompt: str = Field(min_length=1, description="What to write; a Jinja2 template over attributes.")
    system_prompt: str = Field(SYSTEM, description="Instructions for the LM; a Jinja2 template.")
    max_attempts: int = Field(2, ge=1, description="Tries before the conversation is dropped.")

    template_fields: ClassVar[tuple[str, ...]] = ("prompt", "system_prompt", "instructions")
    _name = field_validator("attribute")(attribute_name)

    def writes(self) -> tuple[str, ...]:
        return (self.attribute,)


@register_stage("lm/text")
class TextStage(LMStage):
    Options = TextOptions
    options: TextOptions
    default_max_tokens = 300
    default_temperature = 0.8

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        system = "\n\n".join(p for p in (render(self.options.system_prompt, conv), self.instructions(conv)) if p)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": render(self.options.prompt, conv)}]

        async def write(attempt: int, problem: DraftProblem | None) -> Draft[str]:
            result = await self.chat_with_settings(ctx, messages)  # asked again as it was
            text = clean_reply(result.text)
            if result.finish_reason == "length":
                text = trim_unfinished(text)
            return Draft(text, text, result, None if text else DraftProblem("empty"))

        accepted = await draft_until_accepted(
            self, write, kind=self.options.attribute, max_attempts=self.options.max_attempts,
            rejection=lambda stage, rejected: None,  # every draft was empty: nothing to show
        )
        text = accepted.draft.value
        conv.attributes[self.options.attribute] = text
        conv.steps.append(
            AttributeStep(
                content=text,
                attribute=self.options.attribute,
                stage_name=self.name,
                metadata=self.provenance(accepted.result, attempts=accepted.attempts),
            )
        )
