"""``lm/assistant/naive``: a helpful assistant that sees only the visible conversation.

It never sees the scenario or the persona, which describe the user's hidden intent: a real
assistant would not know them either. Its drafts pass cheap checks first (no long run copied
from the user or from its own earlier replies, no reply cut by ``max_tokens``, no description of
itself as an AI model unless the task allows it, no closing that says nothing about the chat),
then the verifier (``stages.verifier``); a failing draft is rewritten with the reason fed back.
"""

from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field

from fms_dgt.conversation import Conversation, MessageStep
from fms_dgt.engines.base import ChatResult
from fms_dgt.stages.base import ConversationContext, LMStage, register_stage
from fms_dgt.stages.reply_cleanup import clean_reply, trim_unfinished
from fms_dgt.stages.similarity import ASSISTANT_RUN, COURTESY, Words, copies, shares_run, words
from fms_dgt.stages.drafts import DraftProblem
from fms_dgt.stages.verifier import Expectation, VerifiedOptions, write_verified
from fms_dgt.templates import render

SYSTEM = (
    "You are a helpful, friendly AI assistant. Reply to the user's last message accurately and"
    " concisely, in 2 to 5 sentences of plain text. If you are not sure of a fact, say so."
)

# Copying this many consecutive words of the user's message, or of an earlier reply, is parroting.
COPY_RUN_USER = 8
COPY_RUN_SELF = 10
# The model describing itself instead of answering: "As an AI language model, I don't have...".
_AI_SELF = re.compile(
    r"\b(as an ai\b|i('m| am) (just |only )?an? (ai|artificial intelligence|language model)\b|"
    r"as a language model|i (don't|do not) have personal (experiences?|opinions|feelings|preferences))",
    re.IGNORECASE,
)
# A list item at the start of a line: a list cut by max_tokens cannot be trimmed into a whole reply.
_LIST_ITEM = re.compile(r"^\s*(\d+[.)]|[-*•])\s", re.MULTILINE)
# A closing reply must share this many words (5+ letters) with what the user said in the chat.
CLOSING_TOPIC_WORDS = 2

FEEDBACK = {
    "empty": "It was empty.",
    "cut_by_length": "It was too long and got cut off. Answer in at most 4 short sentences of plain text, with no list.",
    "ai_self_description": "Do not talk about yourself as an AI or a language model; answer the message itself.",
    "copies_user": "It copied the user's words back; answer in your own words.",
    "repeats_itself": "It repeated one of your earlier replies; say something new.",
    "empty_closing": "It only said goodbye; also say something about what the two of you discussed.",
}
REWRITE = "(Note, not part of the chat: a first reply to this message was turned down. {feedback} Write only the reply.)"
# The verifier's expectation of an assistant draft (see stages.verifier).
EXPECTED = Expectation(
    "assistant", "sounds_like_human",
    "It read as a human's message; you are the AI assistant: answer the question, with no life,"
    " family or experiences of your own.",
)


def topic_words(text: str) -> set[str]:
    """Words of 5+ letters that are neither courtesy nor a contraction ("you're"): with them,
    "You're welcome! I'm glad I could help. Have a great night!" shared "great" and "night" with
    the user's "Great! ..." and "a meteor shower night", and passed as a closing on topic."""
    return {w for w in words(text) if len(w) >= 5 and "'" not in w and w not in COURTESY}


def rejection(reply: str, conv: Conversation, *, closing: bool, allow_ai_self_description: bool = False) -> str | None:
    """Why ``reply`` is not an acceptable next assistant message in ``conv``, or None."""
    if len(reply) < 2:
        return "empty"
    if not allow_ai_self_description and _AI_SELF.search(reply):
        return "ai_self_description"
    users = conv.contents("user")
    mine = Words(reply)
    if users and shares_run(reply, users[-1], COPY_RUN_USER):
        return "copies_user"
    if any(copies(mine, Words(user), ASSISTANT_RUN) for user in users):  # the gate's check too
        return "copies_user"
    earlier_replies = conv.contents("assistant")
    if any(shares_run(reply, earlier, COPY_RUN_SELF) for earlier in earlier_replies):
        return "repeats_itself"
    if any(copies(mine, Words(earlier), ASSISTANT_RUN) for earlier in earlier_replies):
        return "repeats_itself"
    if closing:
        said = set().union(*(topic_words(u) for u in users)) if users else set()
        if len(topic_words(reply) & said) < CLOSING_TOPIC_WORDS:
            return "empty_closing"
    return None


def fit_length(text: str) -> str | None:
    """A reply cut by max_tokens, trimmed to whole sentences; None when that cannot make it whole
    (no complete sentence, or a list cut short)."""
    if _LIST_ITEM.search(text):
        return None
    trimmed = trim_unfinished(text)
    if not trimmed.endswith((".", "!", "?")) or len(trimmed) < len(text) // 3:
        return None
    return trimmed


class AssistantOptions(VerifiedOptions):
    system_prompt: str = Field(
        SYSTEM, description="The assistant's instructions; a Jinja2 template (e.g. '{{ assistant_system_prompt }}')."
    )
    show_system_prompt: bool = Field(
        False,
        description="Record the system prompt in the conversation: it becomes the first message of"
        " formatted_output.jsonl, so the model is trained with it.",
    )
    # A rewrite costs one reply; running out of attempts costs the whole conversation (minutes
    # on the embedded model: 3 of 7 conversations dropped as copies_user with 2 attempts).
    max_attempts: int = Field(3, ge=1, description="Drafts tried before the conversation is dropped.")
    allow_ai_self_description: bool = Field(
        False, description="Let replies describe the assistant as an AI model ('As an AI language model, ...')."
    )

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

    def prompt(self, conv: Conversation) -> list[dict[str, str]]:
        """The messages that write the next reply."""
        messages = [{"role": "system", "content": self.system_prompt(conv)}]
        return messages + [m for m in conv.messages() if m["role"] in ("user", "assistant")]

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        closing = ctx.last_turn

        def check(text: str, result: ChatResult) -> tuple[str, DraftProblem | None]:
            if result.finish_reason == "length" and text:
                fitted = fit_length(text)
                if fitted is None:
                    return text, DraftProblem("cut_by_length", FEEDBACK["cut_by_length"])
                if fitted != text:
                    self.resources.stats.repairs["assistant:trimmed_for_length"] += 1
                text = fitted
            reason = rejection(
                text, conv, closing=closing, allow_ai_self_description=self.options.allow_ai_self_description
            )
            return text, DraftProblem(reason, FEEDBACK[reason]) if reason else None

        text, metadata = await write_verified(
            self,
            ctx,
            self.prompt(conv),
            role="assistant",
            max_attempts=self.options.max_attempts,
            clean=lambda result: clean_reply(result.text),
            check=check,
            expected=EXPECTED,
            rewrite=lambda r: REWRITE.format(feedback=r.feedback),
        )
        conv.steps.append(MessageStep(role="assistant", content=text, stage_name=self.name, metadata=metadata))
