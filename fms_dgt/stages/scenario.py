"""``lm/scenario``: a 1-3 sentence scenario for the conversation, fitted to the sampled persona."""

from __future__ import annotations

from pydantic import Field

from fms_dgt.config import LMStageOptions
from fms_dgt.conversation import Conversation, ScenarioStep
from fms_dgt.stages.base import ConversationContext, LMStage, register_stage
from fms_dgt.stages.drafts import Draft, DraftProblem, draft_until_accepted
from fms_dgt.stages.reply_cleanup import clean_reply, first_sentences, with_article
from fms_dgt.stages.similarity import words

SYSTEM = (
    "You write short scenarios for simulated chats between a person and an AI assistant. "
    "A scenario says, in the third person, who the person is, what they want to talk about "
    "with the assistant, and why."
)


class ScenarioOptions(LMStageOptions):
    num_icl_examples: int = Field(3, ge=0, description="Seed scenarios shown as examples.")
    max_attempts: int = Field(3, ge=1, description="Tries before the conversation is dropped.")


@register_stage("lm/scenario")
class ScenarioStage(LMStage):
    Options = ScenarioOptions
    options: ScenarioOptions
    default_max_tokens = 120
    default_temperature = 0.9

    def setup(self) -> None:
        self.examples = [c.scenario for c in self.resources.seed_conversations if c.scenario]

    def prompt(self, conv: Conversation, ctx: ConversationContext) -> list[dict[str, str]]:
        parts = []
        persona = conv.persona
        if persona is not None:
            parts.append(f"The person:\n{persona.content}")
        k = min(self.options.num_icl_examples, len(self.examples))
        if k:
            shown = "\n".join(f"- {s}" for s in ctx.rng.sample(self.examples, k))
            parts.append(f"Examples of good scenarios (about other people):\n{shown}")
        if persona is not None:
            opening = with_article(persona.persona.role)
            start = f" Begin with '{opening[0].upper()}{opening[1:]}'."
        else:
            start = ""
        extra = self.instructions(conv)
        if extra:
            parts.append(extra)
        parts.append(
            "Write one new scenario for this person: 1 to 3 sentences saying what they want to talk"
            f" about with the AI assistant and why, about an everyday topic that fits them.{start}"
            " Write a description, not a dialogue. Reply with the scenario only."
        )
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]

    @staticmethod
    def rejection(text: str, conv: Conversation) -> str | None:
        """Why ``text`` is not a usable scenario (too short, a dialogue, not about the sampled
        persona: it must name its role), or None if it is."""
        if len(text) < 20:
            return "too_short"
        if '"' in text or ":" in text[:40]:
            return "dialogue"
        persona = conv.persona
        if persona is None:
            return None
        role_words = {w for w in words(persona.persona.role) if len(w) > 3} or set(words(persona.persona.role))
        return None if role_words & set(words(text)) else "role_not_named"

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        messages = self.prompt(conv, ctx)

        async def write(attempt: int, problem: DraftProblem | None) -> Draft[str]:
            result = await self.chat_with_settings(ctx, messages)  # asked again as it was
            text = first_sentences(clean_reply(result.text).split("\n")[0], 3)
            reason = self.rejection(text, conv)
            return Draft(text, text, result, DraftProblem(reason) if reason else None)

        accepted = await draft_until_accepted(
            self, write, kind="scenario", max_attempts=self.options.max_attempts, drop_reason="scenario_empty"
        )
        metadata = self.provenance(accepted.result, attempts=accepted.attempts)
        if accepted.rejected:
            metadata["rejected"] = accepted.records()
        conv.steps.append(ScenarioStep(content=accepted.draft.value, stage_name=self.name, metadata=metadata))
