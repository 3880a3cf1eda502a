"""``lm/flow_controller``: choose the user's next move from weighted patterns and adapt its hint.

Each exchange: the LM says which patterns fit now (JSON limited to the declared names), code
samples one by weight among those, and the LM names what, in this conversation, the pattern's
hint should be applied to (its *focus*), which is appended to the hint.
A termination pattern makes the coming exchange the last one, so the user's closing message and
the assistant's reply follow its hint: the conversation never stops mid-air.

Drawing each move by weight among the eligible patterns alone would let the LM's judgement
skew the shares: a pattern that is eligible less often, or mostly beside heavy ones, falls
behind its weight. So the draw is corrected by each pattern's deficit so far (its weight share
of the draws made minus its draws), per stage instance: among the eligible patterns, those
behind their share are drawn in proportion to how far behind they are. A pattern the LM never
allows cannot catch up; the others then keep their relative weights.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from fms_dgt.config import ConfigModel, LMStageOptions, require_unique
from fms_dgt.conversation import Conversation, FlowControllerStep
from fms_dgt.errors import StructuredOutputError
from fms_dgt.stages.base import ConversationContext, LMStage, register_stage

SYSTEM = (
    "You direct a conversation between a user and an AI assistant. You decide what kind of "
    "message the user would naturally send next, so the conversation stays coherent and varied."
)


class Pattern(ConfigModel):
    name: str = Field(min_length=1)
    description: str = Field(min_length=1, description="Shown to the LM when it judges fit.")
    hint: str = Field("", description="Instruction for the user; the LM adds what to focus on.")
    weight: float = Field(1.0, ge=0, description="Relative chance among the eligible patterns.")


class FlowControllerOptions(LMStageOptions):
    patterns: list[Pattern] = Field(min_length=1)
    termination_patterns: list[str] = Field(
        default_factory=list, description="Patterns that make the coming exchange the last."
    )
    opening_patterns: list[str] | None = Field(
        None, description="If set, the first exchange picks among these by weight, without an LM call."
    )
    close_at_max_turns: bool = Field(
        True, description="On the last allowed exchange, pick a termination pattern (closing exchange)."
    )
    adapt_hints: bool = Field(
        True,
        description="Ask the LM what the chosen pattern's hint should focus on in this conversation"
        " (not for the opening and closing moves, which the scenario and the conversation fix).",
    )
    mode: Literal["two_call", "one_call"] = Field(
        "two_call",
        description="two_call: one LM call judges which patterns fit, a second names the chosen"
        " hint's focus. one_call: a single call returns the fitting patterns each with its focus.",
    )

    @field_validator("patterns")
    @classmethod
    def _valid_patterns(cls, patterns: list[Pattern]) -> list[Pattern]:
        require_unique([p.name for p in patterns], "pattern")
        if not any(p.weight > 0 for p in patterns):
            raise ValueError("all pattern weights are zero; at least one must be positive")
        return patterns

    @field_validator("termination_patterns", "opening_patterns")
    @classmethod
    def _declared(cls, value: list[str] | None, info: Any) -> list[str] | None:
        declared = {p.name for p in info.data.get("patterns", [])}
        unknown = [n for n in value or [] if n not in declared]
        if declared and unknown:
            raise ValueError(
                f"{', '.join(unknown)} not among the patterns ({', '.join(sorted(declared))})"
            )
        return value

    def weight_shares(self) -> dict[str, float]:
        """Each pattern's share of the total weight (what the draws should follow)."""
        total = sum(p.weight for p in self.patterns)
        return {p.name: p.weight / total for p in self.patterns}


NOT_STARTED = "(The conversation has not started yet.)"
FOCUS_REQUEST = (
    "the specific thing the user's next message should be about, in 3 to 10 words, taken from"
    " the scenario or the conversation: a topic, not a sentence or a question."
)


class Focus(BaseModel):
    model_config = ConfigDict(extra="forbid")
    focus: str = Field(min_length=1, max_length=100)


@lru_cache(maxsize=256)
def eligibility_model(names: tuple[str, ...]) -> type[BaseModel]:
    """A reply model whose ``eligible_patterns`` may only hold the offered names."""
    return create_model(
        "Eligibility",
        __config__=ConfigDict(extra="forbid"),
        reasoning=(str, Field(max_length=400)),
        eligible_patterns=(list[Literal[names]], Field(min_length=1, max_length=len(names))),  # type: ignore[valid-type]
    )


_FIRST_PERSON = re.compile(r"\b(I|I'm|I'll|I've|I'd|me|my|let's|thank you|thanks)\b", re.IGNORECASE)
MAX_FOCUS_WORDS = 14


def focused_hint(template: str, focus: str) -> tuple[str, str | None, str | None]:
    """(hint to use, fallback reason, rejected focus).

    The LM only names what the next message should be about; the pattern's own instruction says
    what to do with it. Small models asked to rewrite the instruction itself mostly write the
    user's message instead (measured: 12 of 12 on qwen2.5-1.5b), while naming a topic is a
    task they do well.
    """
    focus = focus.strip().strip("\"'").rstrip(".").strip()
    if _is_topic(focus):
        return f"{template} Focus on: {focus}.", None, None
    return template, "focus_not_a_topic", focus


def _is_topic(focus: str) -> bool:
    """A short topic ('the eBird app'), not a question, a sentence to the assistant or a message."""
    words = focus.split()
    if not 0 < len(words) <= MAX_FOCUS_WORDS or focus.endswith("?") or _FIRST_PERSON.search(focus):
        return False
    return "_" not in focus  # a pattern name such as chit_chat/follow_up, not a topic (seen on qwen2.5-1.5b)


@lru_cache(maxsize=256)
def moves_model(names: tuple[str, ...]) -> type[BaseModel]:
    """One-call reply: every fitting pattern with what the user's message should focus on."""
    move = create_model(
        "Move",
        __config__=ConfigDict(extra="forbid"),
        pattern=(Literal[names], ...),  # type: ignore[valid-type]
        focus=(str, Field(min_length=1, max_length=100)),
    )
    return create_model(
        "Moves",
        __config__=ConfigDict(extra="forbid"),
        reasoning=(str, Field(max_length=300)),
        moves=(list[move], Field(min_length=1, max_length=len(names))),  # type: ignore[valid-type]
    )


@register_stage("lm/flow_controller")
class FlowControllerStage(LMStage):
    Options = FlowControllerOptions
    options: FlowControllerOptions
    default_max_tokens = 200
    default_temperature = 0.3

    def setup(self) -> None:
        self.by_name = {p.name: p for p in self.options.patterns}
        # Every pattern, once, in the system prompt: the same for every call of the run, so the
        # prompt cache holds it; what is not allowed at this exchange is said last, in the question.
        listing = "\n".join(f"- {p.name}: {p.description}" for p in self.options.patterns)
        self.system = f"{SYSTEM}\n\nThe moves the user can make:\n{listing}"
        self.terminal = set(self.options.termination_patterns)
        self.share = self.options.weight_shares()
        # Moves drawn by weight so far (not fixed as opening or closing), for the deficit.
        self.drawn: Counter[str] = Counter()
        self.draws = 0

    def draw(self, ctx: ConversationContext, candidates: list[Pattern]) -> Pattern:
        """One of ``candidates``, corrected toward the weight shares over this stage's draws."""
        deficit = {p.name: self.share[p.name] * (self.draws + 1) - self.drawn[p.name] for p in candidates}
        behind = [p for p in candidates if deficit[p.name] > 0]
        if behind:
            chosen = ctx.rng.choices(behind, weights=[deficit[p.name] for p in behind])[0]
        else:  # every eligible pattern is at or over its share: plain weights among them
            chosen = ctx.rng.choices(candidates, weights=[p.weight or 1.0 for p in candidates])[0]
        self.drawn[chosen.name] += 1
        self.draws += 1
        return chosen

    def offered(self, ctx: ConversationContext) -> tuple[list[Pattern], str | None]:
        """Patterns allowed for this exchange, and what fixed them without the LM's judgement
        ('opening', 'closing'), or None when the LM judges which fit."""
        patterns = self.options.patterns
        if ctx.turn == 0 and self.options.opening_patterns:
            return [self.by_name[n] for n in self.options.opening_patterns], "opening"
        if self.terminal and self.options.close_at_max_turns and ctx.turn >= ctx.max_turns - 1:
            return [p for p in patterns if p.name in self.terminal], "closing"
        ends_early = ctx.exact_turns and ctx.turn + 1 < ctx.max_turns
        if ctx.turn + 1 < ctx.min_turns or ends_early:
            # Ending now would leave fewer exchanges than needed (min_turns, or the exact
            # requested length): not an option yet.
            patterns = [p for p in patterns if p.name not in self.terminal]
        return patterns, None

    def context_text(self, conv: Conversation, ctx: ConversationContext) -> str:
        used = [s.pattern for s in conv.steps if isinstance(s, FlowControllerStep)]
        extra = self.instructions(conv)
        extra = f"{extra}\n\n" if extra else ""
        return (
            f"Scenario: {conv.scenario or '(none)'}\n\n{extra}"
            f"Conversation so far:\n{conv.transcript(last=8, max_chars=400) or NOT_STARTED}\n\n"
            f"The next user message starts exchange {ctx.turn + 1} of"
            f" {'exactly' if ctx.exact_turns else 'at most'} {ctx.max_turns}.\n"
            f"Moves used so far: {', '.join(used) if used else 'none'}."
        )

    async def judge(
        self, conv: Conversation, ctx: ConversationContext, offered: list[Pattern]
    ) -> tuple[list[str], str, str | None]:
        """Ask which offered patterns fit; on unusable output, all offered ones do."""
        names = tuple(p.name for p in offered)
        prompt = (
            f"{self.context_text(conv, ctx)}\n\n{self.not_offered(offered)}"
            "Which of the moves would be natural for the user's next message? Reply in JSON with"
            ' "reasoning" (one short sentence) and "eligible_patterns" (the names of every move'
            " that fits)."
        )
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
        try:
            result = await self.chat_with_settings(ctx, messages, schema=eligibility_model(names))
        except StructuredOutputError:
            return list(names), "", "invalid_eligibility_json"
        reply = result.parsed
        eligible = list(dict.fromkeys(reply.eligible_patterns))
        return eligible, reply.reasoning, None

    async def judge_with_focus(
        self, conv: Conversation, ctx: ConversationContext, offered: list[Pattern]
    ) -> tuple[list[str], str, dict[str, str], str | None]:
        """One call: which offered patterns fit, each with what the message should be about."""
        names = tuple(p.name for p in offered)
        prompt = (
            f"{self.context_text(conv, ctx)}\n\n{self.not_offered(offered)}"
            "Which of the moves would be natural for the user's next message? Reply in JSON with"
            ' "reasoning" (one short sentence) and "moves": for every move that fits, its "pattern"'
            f' name and a "focus": {FOCUS_REQUEST}'
        )
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
        try:
            result = await self.chat_with_settings(ctx, messages, schema=moves_model(names))
        except StructuredOutputError:
            return list(names), "", {}, "invalid_eligibility_json"
        reply = result.parsed
        focus: dict[str, str] = {}
        for move in reply.moves:
            focus.setdefault(move.pattern, move.focus)
        return list(focus), reply.reasoning, focus, None

    def not_offered(self, offered: list[Pattern]) -> str:
        """The moves not allowed at this exchange ('' when all are), for the end of the question."""
        allowed = {p.name for p in offered}
        left_out = [p.name for p in self.options.patterns if p.name not in allowed]
        return f"Not allowed now: {', '.join(left_out)}.\n" if left_out else ""

    @staticmethod
    def template(pattern: Pattern) -> str:
        return pattern.hint or f"Follow the '{pattern.name}' move: {pattern.description}"

    async def adapt_hint(
        self, conv: Conversation, ctx: ConversationContext, pattern: Pattern
    ) -> tuple[str, str | None, str | None]:
        """The pattern's instruction plus what, in this conversation, the message should be about."""
        template = self.template(pattern)
        if not self.options.adapt_hints:
            return template, None, None
        prompt = (
            f"{self.context_text(conv, ctx)}\n\nThe user's next move: {pattern.description}\n"
            f"Instruction the user will follow: {template}\n\n"
            f'What should that message be about? Reply in JSON: {{"focus": "..."}}, where focus is'
            f" {FOCUS_REQUEST}"
        )
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": prompt}]
        try:
            result = await self.chat_with_settings(ctx, messages, schema=Focus, temperature=0.7)
        except StructuredOutputError:
            return template, "invalid_focus_json", None
        return focused_hint(template, result.parsed.focus)

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        offered, fixed_by = self.offered(ctx)
        eligible, reasoning, fallback = [p.name for p in offered], "", None
        focus: dict[str, str] | None = None
        judged = fixed_by is None and len(offered) > 1
        if judged:
            if self.options.mode == "one_call":
                eligible, reasoning, focus, fallback = await self.judge_with_focus(conv, ctx, offered)
            else:
                eligible, reasoning, fallback = await self.judge(conv, ctx, offered)
        candidates = [self.by_name[n] for n in eligible if self.by_name[n].weight > 0]
        if not candidates:
            candidates = [p for p in offered if p.weight > 0] or offered
            fallback = fallback or "no_weighted_eligible"
        if fixed_by is None:
            chosen = self.draw(ctx, candidates)
        else:
            chosen = ctx.rng.choices(candidates, weights=[p.weight or 1.0 for p in candidates])[0]
        if focus is not None and self.options.adapt_hints:
            if chosen.name in focus:
                hint, hint_fallback, rejected_focus = focused_hint(self.template(chosen), focus[chosen.name])
            else:  # the one call failed: keep to one call, use the template
                hint, hint_fallback, rejected_focus = self.template(chosen), None, None
        elif fixed_by is None:
            hint, hint_fallback, rejected_focus = await self.adapt_hint(conv, ctx, chosen)
        else:
            # No LM call for a fixed move: the opening's subject is the scenario's, which the user
            # stage already shows, and a closing is about the whole conversation.
            hint, hint_fallback, rejected_focus = self.template(chosen), None, None
        fallback = fallback or hint_fallback
        if fallback:
            self.resources.stats.fallbacks[fallback] += 1
        terminate = chosen.name in self.terminal
        if terminate:
            ctx.last_turn = True
        conv.steps.append(
            FlowControllerStep(
                content=chosen.name,
                stage_name=self.name,
                pattern=chosen.name,
                hint=hint,
                terminate=terminate,
                eligible_patterns=eligible,
                reasoning=reasoning,
                fallback=fallback,
                metadata={
                    k: v
                    for k, v in (
                        ("fixed_by", fixed_by),
                        ("rejected_focus", rejected_focus),
                        # what the LM judged among, for the report's allowed rates
                        ("offered", [p.name for p in offered] if judged else None),
                    )
                    if v
                },
            )
        )
