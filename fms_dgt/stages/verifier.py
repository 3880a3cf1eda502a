"""The per-turn verifier, and the user's and assistant's draft / check / verify / rewrite turn.

Phrase checks catch the common slips fast, but every new slip needed a new phrase, and they know
only English. The verifier asks the model itself, after the phrase checks pass, one narrow
question about the draft alone: who wrote this message, the human or the AI assistant? The
question comes with a fixed set of example messages and their answers (few-shot), and the answer
is JSON constrained to those two words. A user draft the model reads as the assistant's, or an
assistant draft it reads as a human's (a life, a family, a pet of its own), fails and is
rewritten with the feedback of its ``Expectation``, up to the stage's ``max_attempts``.

Why this question, and not the one asked before it (measured with qwen2.5-1.5b on the labelled
drafts of ``tests/data/verifier_labels.jsonl``; figures in the README's Per-turn verifier): asked
from inside the role play (the writing call's own messages, then "check the message you just
wrote", with verdicts such as ``adds_nothing`` or ``ignores_hint`` and a reason), the model
judged its own draft as it had written it: ``ok`` to 32 of 34 drafts of a quarter of the set.
Asked without examples who wrote a message, it answered "human" to 20 of 23. With the examples it
catches half of the bad drafts, but it still leans to one answer: on assistant drafts it tells
the roles apart somewhat, on user drafts no better than chance, and in a real run it read good
assistant replies as a human's often enough to drop 3 of 5 conversations. (Spelling out each
role's job in the instructions only moved the lean to "assistant": 60 of 74 user drafts
flagged.) Nor does a threshold help: the log-probabilities of its two answers rank user drafts no
better than chance (ROC area 0.47; ``benchmarks/verifier_scores.py``). So it is off unless a
task turns it on, for a judge model that can do this. The
examples and the instructions are the same for every call, so llama.cpp keeps them cached on a
slot and a verdict costs the draft's tokens and a few generated ones.

Every verdict is counted by role and verdict in the summary (``verifier_verdicts``), every
rejection by reason (``rejected_drafts``), and both are kept in the step's metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fms_dgt.config import ConfigModel, LMStageOptions
from fms_dgt.engines.base import ChatResult, Message
from fms_dgt.errors import StructuredOutputError
from fms_dgt.stages.base import ConversationContext, LMStage
from fms_dgt.stages.drafts import Draft, DraftProblem, draft_until_accepted

OK = "ok"
Writer = Literal["human", "assistant"]
# The draft's first words are enough to tell who wrote it, and every token is processed on a CPU.
JUDGED_WORDS = 80

SYSTEM = (
    "You read one message from a chat between a human and an AI assistant and say who wrote it."
    " The human asks for things, tells about their own life and reacts to answers. The assistant"
    " answers, explains, gives advice, offers help and asks the human what they need."
)
# Made up for this prompt (none is from the labelled set), in pairs of the two writers; the
# assistant's include the slips the simulated user makes most (agreeing, offering more help,
# asking the other about their tastes, an empty goodbye).
EXAMPLES: tuple[tuple[str, Writer], ...] = (
    ("Can you recommend a good beginner guitar? I have about $200 to spend.", "human"),
    ("Great question! For beginners, the Yamaha FG800 is a solid choice. Would you like tips on strings too?",
     "assistant"),
    ("I tried that recipe last night and it came out too salty. What did I do wrong?", "human"),
    ("I'm glad I could help! Is there anything else you'd like to know about gardening?", "assistant"),
    ("Thanks, that makes sense. My landlord won't let me drill holes though, so what else could I try?", "human"),
    ("Sure! What kind of music do you like to listen to? Do you play any instruments yourself?", "assistant"),
    ("Honestly I've had a rough week at work, and I'm wondering if running would help me unwind.", "human"),
    ("You're welcome! Have a great day and enjoy your new hobby!", "assistant"),
)


class WriterVerdict(BaseModel):
    """The verifier's reply: one of two words (constrained decoding allows nothing else)."""

    model_config = ConfigDict(extra="forbid")
    writer: Writer


def judge_messages(draft: str) -> list[Message]:
    """The verifier's prompt: instructions and examples (the same every time), then the draft."""
    messages: list[Message] = [{"role": "system", "content": SYSTEM}]
    for text, writer in EXAMPLES:
        messages.append({"role": "user", "content": f"Message: {text}"})
        messages.append({"role": "assistant", "content": WriterVerdict(writer=writer).model_dump_json()})
    words = draft.split()
    shown = " ".join(words[:JUDGED_WORDS]) + (" ..." if len(words) > JUDGED_WORDS else "")
    messages.append({"role": "user", "content": f"Message: {shown}"})
    return messages


class VerifierOptions(ConfigModel):
    enabled: bool = Field(False, description="Judge each draft that passed the phrase checks with an LM call.")
    engine: str | None = Field(
        None, description="Engine for the verdicts (an entry under `engines:`); default the stage's own."
    )
    max_tokens: int = Field(16, ge=8, description="Cap on the verdict's tokens (a JSON object with one word).")


class VerifiedOptions(LMStageOptions):
    """Options of a stage whose drafts go through the verifier."""

    verifier: VerifierOptions = Field(default_factory=VerifierOptions)

    def engines_used(self) -> dict[tuple[str, ...], str]:
        used = super().engines_used()
        if self.verifier.enabled and self.verifier.engine is not None:
            used[("verifier", "engine")] = self.verifier.engine
        return used


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    result: ChatResult | None  # None when no reply fit the schema


@dataclass(frozen=True)
class Expectation:
    """Who should have written a stage's drafts, and what a failing draft's rewrite is told."""

    writer: Writer
    failure: str  # the verdict when the other one is judged to have written it
    feedback: str


# The stage's cheap checks: the (possibly repaired) text, and why it fails or None.
Check = Callable[[str, ChatResult], tuple[str, DraftProblem | None]]


async def verify(stage: LMStage, ctx: ConversationContext, draft: str, expected: Expectation) -> Verdict:
    """One verdict on ``draft``. A reply that never fits the schema is a pass (counted as
    ``invalid``): the phrase checks already passed, and a verifier that cannot answer must not
    cost the conversation."""
    options = stage.options
    assert isinstance(options, VerifiedOptions)
    try:
        result = await stage.call(
            ctx,
            judge_messages(draft),
            engine=options.verifier.engine or options.engine,
            label=f"{stage.name}/verifier",
            schema=WriterVerdict,
            temperature=0.0,
            max_tokens=options.verifier.max_tokens,
        )
    except StructuredOutputError:
        return Verdict("invalid", "", None)
    parsed: Any = result.parsed
    if parsed.writer == expected.writer:
        return Verdict(OK, "", result)
    return Verdict(expected.failure, expected.feedback, result)


async def write_verified(
    stage: LMStage,
    ctx: ConversationContext,
    messages: list[Message],
    *,
    role: str,
    max_attempts: int,
    clean: Callable[[ChatResult], str],
    check: Check,
    expected: Expectation | None,
    rewrite: Callable[[DraftProblem], str],
    temperature: Callable[[int], float | None] = lambda attempt: None,
) -> tuple[str, dict[str, Any]]:
    """Draft, check, verify and rewrite until a draft passes (``drafts.draft_until_accepted``);
    the text and its step metadata.

    A rewrite is the same prompt with ``rewrite``'s note (which carries the reason) appended to
    its last message, so it shares the prompt's prefix in the cache. The rejected draft is not
    shown: small models shown their own failed draft wrote it again (in a real run on
    qwen2.5-1.5b, 3 drafts of 3 that repeated an earlier message). After ``max_attempts``
    drafts the conversation is dropped as ``<role>_<last reason>``.
    """
    options = stage.options
    assert isinstance(options, VerifiedOptions)
    stats = stage.resources.stats
    verdicts: list[dict[str, Any]] = []

    async def write(attempt: int, problem: DraftProblem | None) -> Draft[str]:
        prompt = messages
        if problem is not None:
            note = f"{messages[-1]['content']}\n\n{rewrite(problem)}"
            prompt = [*messages[:-1], {**messages[-1], "content": note}]
        result = await stage.chat_with_settings(ctx, prompt, temperature=temperature(attempt))
        text, found = check(clean(result), result)
        if found is None and expected is not None and options.verifier.enabled:
            verdict = await verify(stage, ctx, text, expected)
            stats.verdicts[f"{role}:{verdict.verdict}"] += 1
            entry: dict[str, Any] = {"attempt": attempt, "verdict": verdict.verdict, "reason": verdict.reason}
            if verdict.result is not None:
                entry["prompt_tokens"] = verdict.result.usage.prompt_tokens
                entry["completion_tokens"] = verdict.result.usage.completion_tokens
            verdicts.append(entry)
            if verdict.verdict not in (OK, "invalid"):
                found = DraftProblem(f"verifier_{verdict.verdict}", verdict.reason)  # the expectation's feedback
        return Draft(text, text, result, found)

    accepted = await draft_until_accepted(stage, write, kind=role, max_attempts=max_attempts)
    metadata = stage.provenance(accepted.result, attempts=accepted.attempts)
    if accepted.rejected:
        metadata["rejected"] = accepted.records()
    if verdicts:
        metadata["verdicts"] = verdicts
    return accepted.draft.value, metadata
