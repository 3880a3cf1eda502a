"""Sampler stages: draw an attribute without an LM call (Data Designer's samplers).

Each writes one named value into ``conversation.attributes``, where templates (``{{ domain }}``),
``target_turns`` and the analysis report find it. Draws use the conversation's own generator, so
``--seed`` replays them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator, model_validator

from fms_dgt.config import StageOptions, StageProblem, Value, attribute_name
from fms_dgt.conversation import Conversation
from fms_dgt.stages.base import ConversationContext, DropConversation, Stage, register_stage


class SamplerOptions(StageOptions):
    attribute: str = Field(description="Name of the attribute to write.")

    _name = field_validator("attribute")(attribute_name)

    def writes(self) -> tuple[str, ...]:
        return (self.attribute,)


class CategoryOptions(SamplerOptions):
    values: list[Value] = Field(min_length=1, description="The categories.")
    weights: list[float] | None = Field(None, description="Relative weight of each value; default equal.")

    @model_validator(mode="after")
    def _weights_fit(self) -> CategoryOptions:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(f"weights has {len(self.weights)} entries for {len(self.values)} values")
            if any(w < 0 for w in self.weights) or not any(w > 0 for w in self.weights):
                raise ValueError("weights must be >= 0 with at least one > 0")
        if len(set(map(repr, self.values))) != len(self.values):
            raise ValueError("values has duplicates")
        return self

    def possible_values(self) -> Sequence[Value]:
        return self.values

    def shares(self, earlier: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        weights = self.weights or [1.0] * len(self.values)
        total = sum(weights)
        return {str(v): w / total for v, w in zip(self.values, weights)}


@register_stage("sample/category")
class CategorySampler(Stage):
    Options = CategoryOptions
    options: CategoryOptions

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        options = self.options
        conv.attributes[options.attribute] = ctx.rng.choices(options.values, weights=options.weights)[0]


class SubcategoryOptions(SamplerOptions):
    parent: str = Field(description="Attribute, written by an earlier stage, whose value picks the list.")
    values: dict[str, list[Value]] = Field(min_length=1, description="Parent value -> its subcategories.")

    @field_validator("values")
    @classmethod
    def _non_empty(cls, values: dict[str, list[Value]]) -> dict[str, list[Value]]:
        empty = [k for k, v in values.items() if not v]
        if empty:
            raise ValueError(f"no subcategories for {', '.join(map(repr, empty))}")
        return values

    def problems(self, writers: Mapping[str, StageOptions]) -> list[StageProblem]:
        parent = writers.get(self.parent)
        if parent is None:
            return [(("parent",), f"no earlier stage writes the attribute {self.parent!r}")]
        known = parent.possible_values()
        missing = [str(v) for v in known or () if str(v) not in self.values]
        if missing:
            return [(("values",), f"no subcategories for {self.parent} = {', '.join(missing)}")]
        return []

    def possible_values(self) -> Sequence[Value]:
        return list(dict.fromkeys(v for subs in self.values.values() for v in subs))

    def shares(self, earlier: Mapping[str, Mapping[str, float]]) -> dict[str, float] | None:
        """Uniform within the parent value's list, weighted by the parent's own shares."""
        parent = earlier.get(self.parent)
        if parent is None:
            return None
        expected: dict[str, float] = {}
        for value, share in parent.items():
            subs = self.values.get(value, [])
            for sub in subs:
                expected[str(sub)] = expected.get(str(sub), 0.0) + share / len(subs)
        return expected


@register_stage("sample/subcategory")
class SubcategorySampler(Stage):
    """Uniform among the subcategories of the parent attribute's value."""

    Options = SubcategoryOptions
    options: SubcategoryOptions

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        parent = str(conv.attributes.get(self.options.parent))
        choices = self.options.values.get(parent)
        if choices is None:
            raise DropConversation(f"no_subcategories_for_{self.options.parent}")
        conv.attributes[self.options.attribute] = ctx.rng.choice(choices)


class UniformOptions(SamplerOptions):
    low: float
    high: float
    integer: bool = Field(False, description="Draw whole numbers in [low, high], both included.")

    @model_validator(mode="after")
    def _range(self) -> UniformOptions:
        if self.high < self.low:
            raise ValueError(f"high ({self.high:g}) is below low ({self.low:g})")
        if self.integer and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("with integer: true, low and high must be whole numbers")
        return self

    def possible_values(self) -> Sequence[Value] | None:
        return range(int(self.low), int(self.high) + 1) if self.integer else None

    def numeric(self) -> bool:
        return True


@register_stage("sample/uniform")
class UniformSampler(Stage):
    Options = UniformOptions
    options: UniformOptions

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        o = self.options
        value: Any = ctx.rng.randint(int(o.low), int(o.high)) if o.integer else ctx.rng.uniform(o.low, o.high)
        conv.attributes[o.attribute] = value


class GaussianOptions(SamplerOptions):
    mean: float
    stddev: float = Field(gt=0)
    integer: bool = Field(False, description="Round to the nearest whole number.")
    min: float | None = Field(None, description="Draws below are clipped to this.")
    max: float | None = Field(None, description="Draws above are clipped to this.")

    @model_validator(mode="after")
    def _range(self) -> GaussianOptions:
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError(f"max ({self.max:g}) is below min ({self.min:g})")
        return self

    def possible_values(self) -> Sequence[Value] | None:
        if not self.integer or self.min is None or self.max is None:
            return None
        return range(round(self.min), round(self.max) + 1)

    def numeric(self) -> bool:
        return True


@register_stage("sample/gaussian")
class GaussianSampler(Stage):
    Options = GaussianOptions
    options: GaussianOptions

    async def __call__(self, conv: Conversation, ctx: ConversationContext) -> None:
        o = self.options
        value: Any = ctx.rng.gauss(o.mean, o.stddev)
        if o.min is not None:
            value = max(o.min, value)
        if o.max is not None:
            value = min(o.max, value)
        conv.attributes[o.attribute] = round(value) if o.integer else value
