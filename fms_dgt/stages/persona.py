"""``sample/persona``: draw a persona from a JSONL file and render it as text for the prompts."""

from __future__ import annotations

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


@register_stage("sample/persona")
class PersonaStage(Stage):
    Options = PersonaOptions
    options: PersonaOptions

    def setup(self) -> None:
        self.personas = read_jsonl(Path(self.options.persona_store.data_path), Persona, what="persona")

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        persona = ctx.rng.choice(self.personas)
        conv.steps.append(
            PersonaStep(content=render_persona(persona), stage_name=self.name, persona=persona)
        )
