"""``lm/conversation``: the LM writes the whole conversation in one structured call, then we check it.

Data Designer's recipe only *asks* for a length. Here the JSON schema asks for exactly the
requested number of messages, and the reply is validated (starts with the user, alternates, ends
with the assistant, exact length, no empty message); an invalid reply is written again, a bounded
number of times, and every rejection is counted by reason.

The length is the conversation's ``target_turns`` when the task sets one, else ``max_turns``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from fms_dgt.config import LMStageOptions
from fms_dgt.conversation import Conversation, MessageStep
from fms_dgt.errors import StructuredOutputError
from fms_dgt.stages.base import ConversationContext, LMStage, Rejection, register_stage
from fms_dgt.stages.drafts import Draft, DraftProblem, draft_until_accepted
from fms_dgt.templates import render

SYSTEM = "You write realistic conversations between a person and an AI assistant, for training chat models."
PROMPT = (
    "Write a conversation between a user and a helpful AI assistant."
    "{% if scenario %} Scenario: {{ scenario }}{% endif %}"
    "{% if persona %}\n\nThe user:\n{{ persona }}{% endif %}"
)
MAX_MESSAGE_CHARS = 1200


class ConversationOptions(LMStageOptions):
    prompt: str = Field(PROMPT, description="What conversation to write; a Jinja2 template over attributes.")
    system_prompt: str = Field(SYSTEM, description="Instructions for the LM; a Jinja2 template.")
    system_message: str | None = Field(
        None,
        description="A system prompt to record as the conversation's first message (for example"
        " '{{ assistant_system_prompt }}'); a Jinja2 template. The writer is told the assistant follows it.",
    )
    max_attempts: int = Field(3, ge=1, description="Replies tried before the conversation is dropped.")

    template_fields: ClassVar[tuple[str, ...]] = ("prompt", "system_prompt", "system_message", "instructions")
    writes_messages: ClassVar[bool] = True


def chat_schema(num_messages: int) -> dict[str, Any]:
    """JSON schema for exactly ``num_messages`` messages (servers with grammars enforce the count)."""
    message = {
        "type": "object",
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {"type": "string", "minLength": 1, "maxLength": MAX_MESSAGE_CHARS},
        },
        "required": ["role", "content"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {
            "messages": {"type": "array", "items": message, "minItems": num_messages, "maxItems": num_messages}
        },
        "required": ["messages"],
        "additionalProperties": False,
    }


def chat_problem(reply: Any, num_messages: int) -> str | None:
    """Why ``reply`` is not a valid conversation of ``num_messages`` messages, or None if it is."""
    messages = reply.get("messages") if isinstance(reply, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return "not_a_message_list"
    if len(messages) != num_messages:
        return "wrong_length"
    for index, message in enumerate(messages):
        if set(message) != {"role", "content"} or not isinstance(message["content"], str):
            return "malformed_message"
        if not message["content"].strip():
            return "empty_message"
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            if index == 0:
                return "starts_with_assistant"
            if index == num_messages - 1:
                return "ends_with_user"
            return "roles_do_not_alternate"
    return None


@register_stage("lm/conversation")
class ConversationStage(LMStage):
    Options = ConversationOptions
    options: ConversationOptions
    default_temperature = 0.8
    # Room for every message; the schema already caps each message's length.
    tokens_per_message = 200

    def prompt(self, conv: Conversation, num_messages: int, system_message: str | None) -> list[dict[str, str]]:
        parts = [render(self.options.prompt, conv)]
        if system_message:
            parts.append(f"The assistant follows this system prompt:\n{system_message}")
        extra = self.instructions(conv)
        if extra:
            parts.append(extra)
        parts.append(
            f"The conversation has exactly {num_messages} messages, {num_messages // 2} from the user and"
            f" {num_messages // 2} from the assistant: it starts with the user, the two alternate, and it"
            ' ends with the assistant. Reply in JSON: {"messages": [{"role": "user", "content": "..."},'
            ' {"role": "assistant", "content": "..."}, ...]}'
        )
        return [
            {"role": "system", "content": render(self.options.system_prompt, conv)},
            {"role": "user", "content": "\n\n".join(parts)},
        ]

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        num_messages = 2 * ctx.max_turns
        system_message = render(self.options.system_message, conv) if self.options.system_message else None
        messages = self.prompt(conv, num_messages, system_message)
        schema = chat_schema(num_messages)

        async def write(attempt: int, problem: DraftProblem | None) -> Draft[Any]:
            try:  # asked again as it was
                result = await self.chat_with_settings(
                    ctx, messages, schema=schema, max_tokens=self.tokens_per_message * num_messages
                )
            except StructuredOutputError:
                return Draft(None, "", None, DraftProblem("not_json"))
            found = chat_problem(result.parsed, num_messages)
            return Draft(result.parsed, result.text, result, DraftProblem(found) if found else None)

        accepted = await draft_until_accepted(
            self, write, kind="conversation", max_attempts=self.options.max_attempts,
            rejection=lambda stage, rejected: Rejection(stage.name, rejected[-1].reason, rejected[-1].text),
        )
        metadata = self.provenance(accepted.result, attempts=accepted.attempts)
        if accepted.rejected:
            metadata["rejected"] = [r.reason for r in accepted.rejected]
        if system_message:
            conv.steps.append(MessageStep(role="system", content=system_message, stage_name=self.name))
        for index, message in enumerate(accepted.draft.value["messages"]):
            conv.steps.append(
                MessageStep(
                    role=message["role"],
                    content=message["content"].strip(),
                    stage_name=self.name,
                    metadata=metadata if index == 0 else {},
                )
            )
