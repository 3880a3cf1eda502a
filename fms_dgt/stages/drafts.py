"""Draft, check, ask again, drop: the one loop of every LM stage that can turn its model's reply down.

A stage writes a draft (one LM call, its reply cleaned and checked, the verifier's verdict if it
has one) and says what is wrong with it, if anything. ``draft_until_accepted`` asks for another
draft, told what was wrong, until one passes or the stage's ``max_attempts`` are spent; then it
drops the conversation. Every draft turned down is counted in the run summary's
``rejected_drafts`` as ``<kind>:<reason>`` and kept, for the accepted step's metadata or for the
``Rejection`` that dropped.jsonl shows (``stages.base``). The user and assistant stages
(``stages.verifier.write_verified``), scenario, ``lm/text`` and ``lm/conversation`` all run it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fms_dgt.engines.base import ChatResult
from fms_dgt.stages.base import DropConversation, LMStage, Rejection

T = TypeVar("T")

# Characters of a turned-down draft kept in its record (metadata, dropped.jsonl).
RECORD_CHARS = 300


@dataclass(frozen=True)
class DraftProblem:
    """Why a draft was turned down, and what the next draft is told (None: it is asked again as is)."""

    reason: str  # a countable label: "copies_user", "verifier_sounds_like_assistant", ...
    feedback: str | None = None


@dataclass(frozen=True)
class Draft(Generic[T]):
    """One draft as its stage read it: what the stage would keep, the reply it came from, and why
    it is turned down (None: it passes)."""

    value: T  # the cleaned text, the parsed conversation, ...
    text: str  # the draft as its record shows it
    result: ChatResult | None  # None when no reply fit the schema
    problem: DraftProblem | None = None


@dataclass(frozen=True)
class RejectedDraft:
    reason: str
    feedback: str | None
    text: str

    def record(self) -> dict[str, Any]:
        """For metadata and dropped.jsonl: reason, the feedback if the next draft was given one, text."""
        feedback = {} if self.feedback is None else {"feedback": self.feedback}
        return {"reason": self.reason, **feedback, "text": self.text}


@dataclass
class Accepted(Generic[T]):
    draft: Draft[T]
    attempts: int  # drafts written, this one included
    rejected: list[RejectedDraft] = field(default_factory=list)

    @property
    def result(self) -> ChatResult:
        assert self.draft.result is not None, "a passing draft has a reply"
        return self.draft.result

    def records(self) -> list[dict[str, Any]]:
        return [r.record() for r in self.rejected]


def with_every_draft(stage: LMStage, rejected: list[RejectedDraft]) -> Rejection:
    """The default ``Rejection``: the last draft, and every draft the turn turned down."""
    last = rejected[-1]
    return Rejection(stage.name, last.reason, last.text, tuple(r.record() for r in rejected))


async def draft_until_accepted(
    stage: LMStage,
    write: Callable[[int, DraftProblem | None], Awaitable[Draft[T]]],
    *,
    kind: str,
    max_attempts: int,
    drop_reason: str | None = None,
    rejection: Callable[[LMStage, list[RejectedDraft]], Rejection | None] = with_every_draft,
) -> Accepted[T]:
    """``write(attempt, problem)`` (``problem``: the previous draft's, None for the first) until a
    draft passes. After ``max_attempts`` drafts the conversation is dropped as ``drop_reason``
    (default ``<kind>_<last reason>``), with ``rejection(stage, rejected)`` for dropped.jsonl."""
    stats = stage.resources.stats
    rejected: list[RejectedDraft] = []
    problem: DraftProblem | None = None
    for attempt in range(1, max_attempts + 1):
        draft = await write(attempt, problem)
        problem = draft.problem
        if problem is None:
            return Accepted(draft, attempt, rejected)
        stats.rejected_drafts[f"{kind}:{problem.reason}"] += 1
        rejected.append(RejectedDraft(problem.reason, problem.feedback, draft.text[:RECORD_CHARS]))
    assert problem is not None, "max_attempts is at least 1"
    raise DropConversation(drop_reason or f"{kind}_{problem.reason}", rejection(stage, rejected))
