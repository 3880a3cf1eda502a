"""``lm/assistant/naive``: a helpful assistant that sees only the visible conversation.

It never sees the scenario or the persona, which describe the user's hidden intent: a real
assistant would not know them either.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from fms_dgt.config import LMStageOptions
from fms_dgt.conversation import Conversation, MessageStep
from fms_dgt.stages.base import ConversationContext, DropConversation, LMStage, Rejection, register_stage
from fms_dgt.stages.text import clean_reply, shares_run, trim_unfinished
from fms_dgt.templates import render

SYSTEM = (
    "You are a helpful, friendly AI assistant. Reply to the user's last message accurately and"
    " concisely, in 2 to 5 sentences of plain text. If you are not sure of a fact, say so."
)


class AssistantOptions(LMStageOptions):
    system_prompt: str = Field(
        SYSTEM, description="The assistant's instructions; a Jinja2 template (e.g. '{{ assistant_system_prompt }}')."
    )
    show_system_prompt: bool = Field(
        False,
        description="Record the system prompt in the conversation: it becomes the first message of"
        " formatted_output.jsonl, so the model is trained with it.",
    )
    max_attempts: int = Field(2, ge=1)

    template_fields: ClassVar[tuple[str, ...]] = ("system_prompt", "instructions")


@register_stage("lm/assistant/naive")
class AssistantStage(LMStage):
    Options = AssistantOptions
    options: AssistantOptions
    default_max_tokens = 200
    default_temperature = 0.7

    def system_prompt(self, conv: Conversation) -> str:
        """The recorded system prompt if there is one (it is fixed once shown), else a fresh one."""
        recorded = conv.last("system")
        if recorded is not None:
            return recorded.content
        parts = (render(self.options.system_prompt, conv), self.instructions(conv))
        system = "\n\n".join(p for p in parts if p)
        if self.options.show_system_prompt:
            conv.steps.append(MessageStep(role="system", content=system, stage_name=self.name))
        return system

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        messages = [{"role": "system", "content": self.system_prompt(conv)}]
        messages += [m for m in conv.messages() if m["role"] in ("user", "assistant")]
        earlier = conv.contents("assistant")
        for attempt in range(1, self.options.max_attempts + 1):
            result = await self.chat(ctx, messages)
            text = clean_reply(result.text)
            if result.finish_reason == "length":
                text = trim_unfinished(text)
            # A reply that copies a long run of an earlier one is the model looping, not answering.
            if text and not any(shares_run(text, e, 12) for e in earlier):
                conv.steps.append(
                    MessageStep(
                        role="assistant",
                        content=text,
                        stage_name=self.name,
                        metadata=self.provenance(result, attempts=attempt),
                    )
                )
                return
            reason = "repeat" if text else "empty"
            self.resources.stats.rejected_drafts["assistant:" + reason] += 1
        raise DropConversation("assistant_empty_or_repeat", Rejection(self.name, reason, text[:300]))
