"""The per-turn verifier, and the user's and assistant's draft / check / verify / rewrite turn.

Phrase checks catch the common slips fast, but every new slip needed a new phrase, and they know
only English. The verifier asks the model itself, after the phrase checks pass: one short call
that appends the draft and a question to the very messages that wrote it (so the engine's prompt
cache makes the prefix nearly free), answered in JSON constrained to an enum verdict and a
reason of a few words. A failing draft is rewritten with that reason fed back to the writer, up
to the stage's ``max_attempts``. Every verdict is counted by role and verdict in the summary
(``verifier_verdicts``), every rejection by reason (``rejected_drafts``), and both are kept in
the step's metadata.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from fms_dgt.config import ConfigModel, LMStageOptions
from fms_dgt.engines.base import ChatResult, Message
from fms_dgt.errors import StructuredOutputError
from fms_dgt.stages.base import ConversationContext, LMStage
from fms_dgt.stages.drafts import Draft, DraftProblem, draft_until_accepted

# A reason is for the rewrite and for people reading the metadata: a few words are enough, and
# every character is a token decoded on a CPU.
REASON_CHARS = 80
OK = "ok"


class VerifierOptions(ConfigModel):
    # Off by default: on the embedded qwen2.5-1.5b it answered "ok" to 15 drafts of 15 in a real
    # run, with reasons that only repeated the draft, for 28 % more LM calls. Turn it on with an
    # engine that can judge (``engine:`` naming a bigger model).
    enabled: bool = Field(False, description="Judge each draft that passed the phrase checks with an LM call.")
    engine: str | None = Field(
        None, description="Engine for the verdicts (an entry under `engines:`); default the stage's own."
    )
    max_tokens: int = Field(64, ge=16, description="Cap on the verdict's tokens (JSON, reason and verdict).")


class VerifiedOptions(LMStageOptions):
    """Options of a stage whose drafts go through the verifier."""

    verifier: VerifierOptions = Field(default_factory=VerifierOptions)

    def engines_used(self) -> dict[tuple[str, ...], str]:
        used = super().engines_used()
        if self.verifier.enabled and self.verifier.engine is not None:
            used[("verifier", "engine")] = self.verifier.engine
        return used


@lru_cache(maxsize=16)
def verdict_model(verdicts: tuple[str, ...]) -> type[BaseModel]:
    """Reply model: a short reason first (it helps small models decide), then a declared verdict."""
    return create_model(  # type: ignore[call-overload, no-any-return]
        "Verdict",
        __config__=ConfigDict(extra="forbid"),
        reason=(str, Field(max_length=REASON_CHARS)),
        verdict=(Literal[(OK, *verdicts)], ...),  # type: ignore[valid-type]
    )


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    result: ChatResult | None  # None when no reply fit the schema


@dataclass(frozen=True)
class Question:
    """What the verifier asks about one draft: the question and the failing verdicts it may give."""

    text: str
    verdicts: tuple[str, ...]


# The stage's cheap checks: the (possibly repaired) text, and why it fails or None.
Check = Callable[[str, ChatResult], tuple[str, DraftProblem | None]]


async def verify(
    stage: LMStage, ctx: ConversationContext, messages: list[Message], draft: str, question: Question
) -> Verdict:
    """One verdict on ``draft``, the reply to ``messages``. A reply that never fits the schema is
    a pass (counted as ``invalid``): the phrase checks already passed, and a verifier that cannot
    answer must not cost the conversation."""
    options = stage.options
    assert isinstance(options, VerifiedOptions)
    asked = [*messages, {"role": "assistant", "content": draft}, {"role": "user", "content": question.text}]
    try:
        result = await stage.call(
            ctx,
            asked,
            engine=options.verifier.engine or options.engine,
            label=f"{stage.name}/verifier",
            schema=verdict_model(question.verdicts),
            temperature=0.0,
            max_tokens=options.verifier.max_tokens,
        )
    except StructuredOutputError:
        return Verdict("invalid", "", None)
    parsed: Any = result.parsed
    return Verdict(parsed.verdict, " ".join(parsed.reason.split()), result)


async def write_verified(
    stage: LMStage,
    ctx: ConversationContext,
    messages: list[Message],
    *,
    role: str,
    max_attempts: int,
    clean: Callable[[ChatResult], str],
    check: Check,
    question: Question | None,
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
        if found is None and question is not None and options.verifier.enabled:
            verdict = await verify(stage, ctx, messages, text, question)
            stats.verdicts[f"{role}:{verdict.verdict}"] += 1
            entry: dict[str, Any] = {"attempt": attempt, "verdict": verdict.verdict, "reason": verdict.reason}
            if verdict.result is not None:
                entry["prompt_tokens"] = verdict.result.usage.prompt_tokens
                entry["completion_tokens"] = verdict.result.usage.completion_tokens
            verdicts.append(entry)
            if verdict.verdict not in (OK, "invalid"):
                found = DraftProblem(f"verifier_{verdict.verdict}", verdict.reason or verdict.verdict.replace("_", " "))
        return Draft(text, text, result, found)

    accepted = await draft_until_accepted(stage, write, kind=role, max_attempts=max_attempts)
    metadata = stage.provenance(accepted.result, attempts=accepted.attempts)
    if accepted.rejected:
        metadata["rejected"] = accepted.records()
    if verdicts:
        metadata["verdicts"] = verdicts
    return accepted.draft.value, metadata
