"""``lm/user/guided``: the simulated user's next message, from persona, scenario, history and hint.

The history is shown with roles swapped (the assistant's turns as ``user``, the persona's as
``assistant``) so the model writes the next ``assistant`` message in the persona's voice: small
models play the user far better that way than from a transcript. Drafts that repeat an earlier
message, paste the scenario or sound like the assistant are rejected and written again.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field

from fms_dgt.config import LMStageOptions
from fms_dgt.conversation import Conversation, FlowControllerStep, MessageStep
from fms_dgt.stages.base import ConversationContext, DropConversation, LMStage, register_stage
from fms_dgt.stages.text import clean_reply, first_sentences, overlap, shares_run

# Phrases a user would not say to an assistant; drafts with them are the model playing assistant.
_ASSISTANT_VOICE = re.compile(
    r"\b(how (can|may) i (help|assist)|i('d| would) be (happy|glad) to help|as an ai\b|"
    r"i('m| am) an ai\b|language model|is there anything else|feel free to ask|"
    r"let me know if you (have|need)|happy to assist|great question|ready to help|"
    r"what do you need help with|how can i be of)",
    re.IGNORECASE,
)

# Before the first message there is no assistant turn to answer; this direction takes its place.
OPENING = "(Stage direction, not part of the chat: {hint} Now write your first message to the assistant.)"


class UserOptions(LMStageOptions):
    max_attempts: int = Field(3, ge=1, description="Drafts tried before the conversation is dropped.")
    max_sentences: int = Field(4, ge=1, description="Longer drafts are cut to this many sentences.")


def system_prompt(conv: Conversation, hint: str | None, closing: bool) -> str:
    persona = conv.persona
    who = persona.content if persona else "An ordinary person."
    ending = (
        " This is your last message: wrap up the conversation as the instruction says."
        if closing
        else ""
    )
    instruction = f"What to do in your next message: {hint}{ending}\n\n" if hint else ""
    return (
        "You are role-playing a human who is chatting with an AI assistant. You are the human,"
        " not the assistant: you never offer help and you never answer your own questions.\n\n"
        f"Who you are:\n{who}\n\n"
        f"Your situation: {conv.scenario or 'You are chatting casually.'}\n\n"
        f"{instruction}"
        "Write only your next message, in the first person and in your own voice: 1 to 3 short"
        " sentences of plain text, with no quotation marks and no name or role label. Do not"
        " copy the description of your situation."
    )


def swapped_history(conv: Conversation, hint: str) -> list[dict[str, str]]:
    """The chat so far with roles swapped, ending with the assistant's last reply as ``user``.

    For the first message, a stage direction carrying the hint stands in for that reply.
    """
    swap = {"user": "assistant", "assistant": "user"}
    history = [
        {"role": swap[m["role"]], "content": m["content"]}
        for m in conv.messages()
        if m["role"] in swap
    ]
    if not history:
        history = [{"role": "user", "content": OPENING.format(hint=hint)}]
    return history


def rejection(draft: str, conv: Conversation) -> str | None:
    """Why a draft is not a believable next user message, or None if it is."""
    if len(draft) < 2:
        return "empty"
    if _ASSISTANT_VOICE.search(draft):
        return "sounds_like_assistant"
    for earlier in conv.contents("user"):
        if overlap(draft, earlier) > 0.8:
            return "repeats_itself"
    last_reply = conv.contents("assistant")[-1:]
    if last_reply and (overlap(draft, last_reply[0]) > 0.8 or shares_run(draft, last_reply[0], 10)):
        return "echoes_assistant"
    if conv.scenario and shares_run(draft, conv.scenario, 7):
        return "pastes_scenario"
    return None


@register_stage("lm/user/guided")
class UserStage(LMStage):
    Options = UserOptions
    options: UserOptions
    default_max_tokens = 120
    default_temperature = 0.8

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        step = conv.last("flow_controller")
        hint = step.hint if isinstance(step, FlowControllerStep) else "Continue the conversation naturally."
        first = not conv.contents("assistant")
        messages = [
            # The first message's hint travels in the opening direction instead.
            {"role": "system", "content": system_prompt(conv, None if first else hint, ctx.last_turn)},
            *swapped_history(conv, hint),
        ]
        rejected: list[dict[str, Any]] = []
        for attempt in range(1, self.options.max_attempts + 1):
            # Later attempts are a little more adventurous, to get out of a repetitive rut.
            temperature = min(1.2, (self.options.temperature or self.default_temperature) + 0.15 * (attempt - 1))
            result = await self.chat(ctx, messages, temperature=temperature)
            draft = first_sentences(clean_reply(result.text), self.options.max_sentences)
            reason = rejection(draft, conv)
            if reason is None:
                metadata = self.provenance(result, attempts=attempt)
                if rejected:
                    metadata["rejected"] = rejected
                conv.steps.append(MessageStep(role="user", content=draft, stage_name=self.name, metadata=metadata))
                return
            self.resources.stats.rejected_drafts[f"user:{reason}"] += 1
            rejected.append({"reason": reason, "text": draft[:300]})
        raise DropConversation(f"user_{rejected[-1]['reason']}")
