"""``lm/user/guided``: the simulated user's next message, from persona, scenario, history and hint.

The history is shown with roles swapped (the assistant's turns as ``user``, the persona's as
``assistant``) so the model writes the next ``assistant`` message in the persona's voice: small
models play the user far better that way than from a transcript. Drafts that repeat an earlier
message, paste the scenario or sound like the assistant are rejected by the phrase checks here;
drafts that pass them go to the verifier (``stages.verifier``). A rejected draft is written again
with the reason fed back.
"""

from __future__ import annotations

import random
import re

from pydantic import Field

from fms_dgt.conversation import Conversation, FlowControllerStep, MessageStep
from fms_dgt.engines.base import ChatResult, Message
from fms_dgt.stages.base import ConversationContext, LMStage, register_stage
from fms_dgt.stages.reply_cleanup import clean_reply, first_sentences, with_article
from fms_dgt.stages.similarity import USER_RUN, Words, copies, overlap, shares_run
from fms_dgt.stages.drafts import DraftProblem
from fms_dgt.stages.verifier import Expectation, VerifiedOptions, write_verified

# Phrases a user would not say to an assistant; drafts with them are the model playing assistant.
_ASSISTANT_VOICE = re.compile(
    r"\b(how (can|may) i (help|assist)|(can|could|may) i (help|assist) you|"
    r"i('d| would) be (happy|glad) to (help|assist)|as an ai\b|i('m| am) an ai\b|language model|"
    r"is there anything else|anything else (i|we) can|i('m| am) (always )?here to (help|assist|answer|support)|"
    r"what would you like to (know|discuss|talk about|learn)|what's on your mind|what can i do for you|"
    r"what (specific )?(topics?|aspects?|areas?)\b[^.?!]{0,60}\b(are you|you're) (interested|curious)|"
    r"do you have any (other |more )?questions|(i'm|i am) sorry to hear|"
    r"feel free to ask|let me know if (you|there)|happy to assist|great question|ready to help|"
    r"what do you need help with|how can i be of|what else would you like to know|"
    r"glad (you found|i could help|to have been)|i hope (you find|this helps|that helps)|good luck (with|on) your)",
    re.IGNORECASE,
)
# Openers of an assistant agreeing or acknowledging, not of a person starting their turn.
_ASSISTANT_OPENER = re.compile(
    r"^(sure|certainly|absolutely|of course|you're (absolutely )?(right|welcome)|that's (correct|right)|"
    r"understood|great question|as an ai)\b",
    re.IGNORECASE,
)

# A sentence that starts by telling the listener to remember something: advice, the assistant's
# way of wrapping up ("Remember, it's important to stay organized", seen in a user's goodbye).
_REMINDER = re.compile(r"(?:^|[.!?]\s+)remember(?:,| to\b)", re.IGNORECASE)
# "my twins" earlier, "your twins" now: the user's own things spoken of as the listener's.
_MY = re.compile(r"\bmy (\w+)", re.IGNORECASE)
_YOUR = re.compile(r"\byour (\w+)", re.IGNORECASE)

# A note about the instructions that the model appended to the message, e.g. "(End of
# conversation, with no quotation marks and no name or role label.)" (seen on qwen2.5-1.5b).
_META_NOTE = re.compile(
    r"\s*\([^()]*\b(end of (the )?conversation|quotation marks|role label|stage direction|last message)\b[^()]*\)\s*$",
    re.IGNORECASE,
)


def without_meta_note(draft: str) -> str:
    """The draft without a note about the instructions, and without the opening parenthesis of a
    stage direction it imitated ("(As a long-haul truck driver, I'm ..." on qwen2.5-1.5b)."""
    draft = _META_NOTE.sub("", draft)
    if draft.startswith("(") and ")" not in draft:
        draft = draft[1:].lstrip()
    return draft


# A goodbye before the closing exchange leaves the next turns talking past it.
_GOODBYE = re.compile(
    r"\b(good ?bye|bye|have a (great|good|nice|wonderful) (day|one|night|evening|week|trip)|take care|see you)\b",
    re.IGNORECASE,
)

# A greeting opens a conversation; after the first exchange it is the model copying its own
# first message ("Hey there, AI assistant! ..." on every turn, seen on qwen2.5-1.5b).
# It is cut off when the rest is a message of its own; rewriting did not help (one
# conversation dropped after 3 drafts that all opened "Hey there, AI assistant!").
_GREETING = re.compile(r"^\W*(hey|hi|hello|hiya|greetings|good (morning|afternoon|evening))\b", re.IGNORECASE)
_SHORT_SENTENCE = re.compile(r"[^.!?]*[.!?]+\s*")
_VOCATIVE = re.compile(r"[^,.!?]{0,20},\s*")


def without_greeting(draft: str) -> str:
    """The draft without an opening greeting ("Hey there, AI assistant! ...", "Hi, ..."), if at
    least three words are left."""
    match = _GREETING.match(draft)
    if match is None:
        return draft
    rest = draft[match.end() :]
    sentence = _SHORT_SENTENCE.match(rest)
    if sentence is not None and len(sentence.group().split()) <= 4:  # "Hey there, AI assistant!"
        rest = rest[sentence.end() :]
    elif (vocative := _VOCATIVE.match(rest)) is not None:  # "Hi, should I ...", "Hey Sam, ..."
        rest = rest[vocative.end() :]
    else:
        return draft
    if len(rest.split()) < 3:
        return draft
    return rest[0].upper() + rest[1:]


# Before the first message there is no assistant turn to answer; this direction takes its place.
OPENING = (
    "(Stage direction, not part of the chat. You are {role}. {extra}{hint} Now write your first message"
    " to the AI assistant, as yourself.)"
)


class UserOptions(VerifiedOptions):
    max_attempts: int = Field(3, ge=1, description="Drafts tried before the conversation is dropped.")
    num_style_examples: int = Field(
        3, ge=0, description="User messages from seed conversations shown as examples of a user's voice."
    )
    max_sentences: int = Field(4, ge=1, description="Longer drafts are cut to this many sentences.")


def system_prompt(conv: Conversation, examples: list[str], extra: str = "") -> str:
    """What stays the same for the whole conversation: it comes first, so every call of the
    stage reuses the previous one's prompt cache (the turn's hint travels at the end, in a
    stage direction after the assistant's last reply)."""
    persona = conv.persona
    who = persona.content if persona else "An ordinary person."
    extra = f"{extra}\n\n" if extra else ""
    situation = f"Your situation: {conv.scenario}\n\n" if conv.scenario else ""
    voice = ""
    if examples:
        shown = "\n".join(f"- {e}" for e in examples)
        voice = f"Messages other users wrote, to show how users talk (do not copy them):\n{shown}\n\n"
    return (
        "You are role-playing a human who is chatting with an AI assistant. You are the human,"
        " not the assistant: you ask about what you need and react to the answers; you never"
        " offer help, never give the assistant advice and never answer your own questions.\n\n"
        f"Who you are:\n{who}\n\n"
        f"{situation}{voice}{extra}"
        "Write only your next message, in the first person and in your own voice: 1 to 3 short"
        " sentences of plain text, with no quotation marks and no name or role label. Do not"
        " copy the description of your situation."
    )


NEXT = "(Stage direction, not part of the chat. What to do in your next message: {hint})"
CLOSING = "(Stage direction, not part of the chat: this is your last message. {hint})"


def swapped_history(conv: Conversation, hint: str, closing: bool = False, extra: str = "") -> list[dict[str, str]]:
    """The chat so far with roles swapped, ending with the assistant's last reply as ``user``,
    followed by a stage direction that carries the turn's hint.

    For the first message the direction stands in for that reply. The direction comes last
    because it is the only part that changes from one turn to the next: everything before it
    is the previous call's prompt and reply, which llama.cpp has cached. Small models also heed
    a direction there more than one in the system prompt (they overlooked a goodbye asked for
    only there).
    """
    swap = {"user": "assistant", "assistant": "user"}
    history = [
        {"role": swap[m["role"]], "content": m["content"]}
        for m in conv.messages()
        if m["role"] in swap
    ]
    if not history:
        role = with_article(conv.persona.persona.role) if conv.persona else "an ordinary person"
        extra = f"{extra} " if extra else ""
        return [{"role": "user", "content": OPENING.format(role=role, extra=extra, hint=hint)}]
    last = history[-1]
    direction = (CLOSING if closing else NEXT).format(hint=hint)
    history[-1] = {"role": "user", "content": f"{last['content']}\n\n{direction}"}
    return history


# What a rewrite is told about a draft the phrase checks rejected.
FEEDBACK = {
    "empty": "It was empty.",
    "copies_direction": "It repeated the stage direction instead of speaking as yourself.",
    "closing_asks_question": "This is your last message: say goodbye, do not ask a new question.",
    "premature_goodbye": "Do not say goodbye yet: the conversation goes on.",
    "sounds_like_assistant": "It sounded like the AI assistant; you are the human, who asks and reacts.",
    "repeats_itself": "It repeated one of your earlier messages.",
    "echoes_assistant": "It echoed the assistant's reply; say something of your own.",
    "pastes_scenario": "It copied the description of your situation; say it in your own words.",
    "greets_again": "Do not greet again: the chat is already going; say what you want to say.",
}
REWRITE = "(Your first try at this message did not work. {feedback} Write a different one, as yourself.)"
# The verifier's expectation of a user draft (see stages.verifier).
EXPECTED = Expectation(
    "human", "sounds_like_assistant",
    "It read as the AI assistant's message; you are the human, who asks and reacts.",
)


def gives_back_own_things(draft: str, conv: Conversation) -> bool:
    """Whether the draft says "your X" of something the user called "my X" and that is in their
    persona or scenario: the model is advising the user about the user's life, as the assistant
    (seen on qwen2.5-1.5b: a father of twins who had asked about "my twins" went on "You could
    choose a book that is easy to read and that your twins enjoy"). Both conditions, so "your
    advice" after "my question" or "your opinion" after "my opinion" stay a user's words."""
    own = {w.lower() for text in conv.contents("user") for w in _MY.findall(text)}
    if not own:
        return False
    situation = " ".join(filter(None, (conv.persona.content if conv.persona else "", conv.scenario)))
    mine = own & Words(situation).set
    return any(w.lower() in mine for w in _YOUR.findall(draft))


def rejection(draft: str, conv: Conversation, closing: bool = False) -> str | None:
    """Why a draft is not a believable next user message, or None if it is."""
    if len(draft) < 2:
        return "empty"
    if "stage direction" in draft.lower() or "last message" in draft.lower():
        return "copies_direction"
    if closing and draft.rstrip().endswith("?"):
        return "closing_asks_question"  # a goodbye that opens a new question is no goodbye
    if not closing and _GOODBYE.search(draft):
        return "premature_goodbye"
    if (_ASSISTANT_VOICE.search(draft) or _ASSISTANT_OPENER.match(draft) or _REMINDER.search(draft)
            or gives_back_own_things(draft, conv)):
        return "sounds_like_assistant"
    if conv.contents("user") and _GREETING.match(draft):
        return "greets_again"
    mine = Words(draft)
    for earlier in conv.contents("user"):
        if overlap(draft, earlier) > 0.8 or copies(mine, Words(earlier), USER_RUN):
            return "repeats_itself"
    replies = conv.contents("assistant")
    if replies and (overlap(draft, replies[-1]) > 0.8 or shares_run(draft, replies[-1], 10)):
        return "echoes_assistant"
    if any(copies(mine, Words(reply), USER_RUN) for reply in replies):  # the gate's check too
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

    def setup(self) -> None:
        self.examples = [
            text for c in self.resources.seed_conversations for text in c.contents("user")
        ]

    def hint(self, conv: Conversation) -> str:
        step = conv.last("flow_controller")
        return step.hint if isinstance(step, FlowControllerStep) else "Continue the conversation naturally."

    def style_examples(self, ctx: ConversationContext) -> list[str]:
        """The same examples on every turn of a conversation (a fresh draw per turn would change
        the system prompt and void the prompt cache), different ones per conversation."""
        k = min(self.options.num_style_examples, len(self.examples))
        return random.Random(f"{ctx.seed}:{ctx.attempt}:{self.name}").sample(self.examples, k) if k else []

    def prompt(self, conv: Conversation, ctx: ConversationContext) -> list[Message]:
        """The messages that write the next user message."""
        extra = self.instructions(conv)
        first = not conv.contents("assistant")
        return [
            {"role": "system", "content": system_prompt(conv, self.style_examples(ctx), extra)},
            # The opening direction repeats the task's instructions: small models heed a direction more.
            *swapped_history(conv, self.hint(conv), closing=ctx.last_turn and not first, extra=extra),
        ]

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        base = self.options.temperature or self.default_temperature

        def clean(result: ChatResult) -> str:
            return first_sentences(without_meta_note(clean_reply(result.text)), self.options.max_sentences)

        def check(draft: str, result: ChatResult) -> tuple[str, DraftProblem | None]:
            if conv.contents("user"):
                trimmed = without_greeting(draft)
                if trimmed != draft:
                    self.resources.stats.repairs["user:greeting_removed"] += 1
                    draft = trimmed
            reason = rejection(draft, conv, closing=ctx.last_turn)
            return draft, DraftProblem(reason, FEEDBACK[reason]) if reason else None

        text, metadata = await write_verified(
            self,
            ctx,
            self.prompt(conv, ctx),
            role="user",
            max_attempts=self.options.max_attempts,
            clean=clean,
            check=check,
            expected=EXPECTED,
            rewrite=lambda r: REWRITE.format(feedback=r.feedback),
            # Later attempts are a little more adventurous, to get out of a repetitive rut.
            temperature=lambda attempt: min(1.2, base + 0.15 * (attempt - 1)),
        )
        conv.steps.append(MessageStep(role="user", content=text, stage_name=self.name, metadata=metadata))
