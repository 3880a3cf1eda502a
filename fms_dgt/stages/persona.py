"""``sample/persona``: draw a persona from a JSONL file and render it as text for the prompts.

By default the draws cover the file before any persona repeats: attempt k of the run takes
place ``k mod N`` in a permutation of the N personas, a new one every N attempts, seeded by the
run's seed and the cycle. The persona of a conversation is then fixed by (seed, attempt), as its
other draws are, whichever worker runs it and in whatever order.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import Field

from fms_dgt.config import DatastoreConfig, StageOptions
from fms_dgt.conversation import Conversation, Persona, PersonaStep
from fms_dgt.datafiles import read_jsonl
from fms_dgt.stages.base import ConversationContext, Stage, register_stage

# (trait, phrase when clearly high, phrase when clearly low); |value| <= 0.3 says nothing.
_TRAITS = (
    ("openness", "curious and imaginative", "conventional and down-to-earth"),
    ("conscientiousness", "organised and precise", "easy-going and a little scattered"),
    ("extraversion", "chatty and expressive", "reserved and brief"),
    ("agreeableness", "warm and cooperative", "sceptical and blunt"),
    ("neuroticism", "anxious and easily worried", "calm and self-assured"),
)
_THRESHOLD = 0.3


def render_persona(persona: Persona) -> str:
    """A short, plain-text description of who the simulated user is."""
    lines = [f"Role: {persona.role}."]
    if persona.expertise:
        lines.append(f"Expertise: {persona.expertise}.")
    if persona.domain:
        lines.append(f"Interests: {persona.domain}.")
    if persona.goals:
        lines.append(f"Goals: {'; '.join(persona.goals)}.")
    traits = []
    for trait, high, low in _TRAITS:
        value = getattr(persona.personality, trait)
        if value is not None and value > _THRESHOLD:
            traits.append(high)
        elif value is not None and value < -_THRESHOLD:
            traits.append(low)
    if traits:
        lines.append(f"Personality: {', '.join(traits)}.")
    if persona.style_override:
        lines.append(f"Writing style: {persona.style_override}.")
    return "\n".join(lines)


class PersonaOptions(StageOptions):
    persona_store: DatastoreConfig = Field(description="JSONL file of personas (`role` required).")
    cover_file: bool = Field(
        True,
        description="Use every persona of the file once before any repeats (without replacement per"
        " cycle of N attempts); false draws each conversation's persona independently.",
    )


@register_stage("sample/persona")
class PersonaStage(Stage):
    Options = PersonaOptions
    options: PersonaOptions

    def setup(self) -> None:
        self.personas = read_jsonl(Path(self.options.persona_store.data_path), Persona, what="persona")
        # Conversations in flight straddle at most a few cycles: keep their permutations.
        self._orders: dict[tuple[int, int], list[int]] = {}

    def index(self, seed: int, attempt: int) -> int:
        """The persona of attempt ``attempt``: its place in the permutation of its cycle."""
        cycle, place = divmod(attempt, len(self.personas))
        order = self._orders.get((seed, cycle))
        if order is None:
            order = list(range(len(self.personas)))
            random.Random(f"{seed}:personas:{cycle}").shuffle(order)
            if len(self._orders) >= 4:
                del self._orders[next(iter(self._orders))]
            self._orders[(seed, cycle)] = order
        return order[place]

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        if self.options.cover_file:
            persona = self.personas[self.index(ctx.seed, ctx.attempt)]
        else:
            persona = ctx.rng.choice(self.personas)
        conv.steps.append(
            PersonaStep(content=render_persona(persona), stage_name=self.name, persona=persona)
        )
