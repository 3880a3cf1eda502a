"""Weights that hold: the flow controller's draws follow the weight shares wherever the LM allows
the patterns, and the report says how often it allowed each one."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from conftest import task_dict, write_task
from fms_dgt.conversation import Conversation, FlowControllerStep, MessageStep
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.lm_client import LMClient
from fms_dgt.loader import load_task
from fms_dgt.stages.base import ConversationContext, Resources
from fms_dgt.stages.flow_controller import FlowControllerStage
from fms_dgt.stats import RunStats

WEIGHTS = {"new_topic": 0.25, "follow_up": 0.35, "share_opinion": 0.15, "clarification": 0.15, "end": 0.10}
DRAWS = 3000


class Eligibility:
    """The LM's judgement: ``pick(rng, names)`` chooses the eligible names; records what it allowed."""

    def __init__(self, pick: Any) -> None:
        self.pick, self.rng, self.sets = pick, random.Random(0), []

    def __call__(self, call: RecordedCall) -> Any:
        assert call.stage == "lm/flow_controller" and call.schema is not None
        names = call.schema["properties"]["eligible_patterns"]["items"]["enum"]
        chosen = self.pick(self.rng, names)
        self.sets.append(chosen)
        return {"reasoning": "ok", "eligible_patterns": chosen}


def random_subset(rng: random.Random, names: list[str]) -> list[str]:
    """What the simulated LM server answers: a random non-empty subset."""
    return rng.sample(names, rng.randint(1, len(names)))


def rare_new_topic(rng: random.Random, names: list[str]) -> list[str]:
    """new_topic fits only 35 % of the time, and never alone."""
    others = [n for n in names if n != "new_topic"]
    chosen = rng.sample(others, rng.randint(1, len(others)))
    return chosen + ["new_topic"] if rng.random() < 0.35 else chosen


def never_new_topic(rng: random.Random, names: list[str]) -> list[str]:
    return [n for n in names if n != "new_topic"]


async def draw(tmp_path: Path, judge: Eligibility) -> Counter[str]:
    data = task_dict(tmp_path)
    data["iteration_stages"][0].update(
        patterns=[{"name": n, "description": n, "hint": n, "weight": w} for n, w in WEIGHTS.items()],
        adapt_hints=False,
    )
    config = load_task(write_task(tmp_path, data)).config
    stats = RunStats()
    res = Resources(lm=LMClient({"default": ScriptedEngine(responder=judge)}, stats), stats=stats)
    stage = FlowControllerStage(config.iteration_stages[0], res)
    stage.setup()
    drawn: Counter[str] = Counter()
    conv = Conversation(task_name="t", conversation_id="c",
                        steps=[MessageStep(role="user", content="hi"), MessageStep(role="assistant", content="hello")])
    for seed in range(DRAWS):
        await stage(conv, ConversationContext(rng=random.Random(seed), max_turns=4, turn=1))
        step = conv.steps.pop()
        assert isinstance(step, FlowControllerStep) and step.metadata["offered"] == list(WEIGHTS)
        drawn[step.pattern] += 1
    return drawn


def uncorrected(sets: list[list[str]]) -> Counter[str]:
    """What drawing by weight among the same eligible sets gives, without the correction."""
    rng = random.Random(1)
    return Counter(rng.choices(s, weights=[WEIGHTS[n] for n in s])[0] for s in sets)


def gaps(drawn: Counter[str]) -> dict[str, float]:
    return {n: abs(drawn[n] / DRAWS - w) for n, w in WEIGHTS.items()}


async def test_shares_follow_the_weights_when_the_lm_allows_random_subsets(tmp_path: Path) -> None:
    judge = Eligibility(random_subset)
    drawn = await draw(tmp_path, judge)
    assert max(gaps(drawn).values()) < 0.02
    # the plain draw among the same sets misses by more than 3 points: follow_up is often not
    # eligible, and light patterns eligible alone are drawn whatever their weight
    assert max(gaps(uncorrected(judge.sets)).values()) > 0.03


async def test_a_rarely_allowed_pattern_still_reaches_its_share(tmp_path: Path) -> None:
    judge = Eligibility(rare_new_topic)
    drawn = await draw(tmp_path, judge)
    allowed = sum("new_topic" in s for s in judge.sets)
    assert 0.3 < allowed / DRAWS < 0.4
    # drawn 25 % of all the time while allowed 35 % of it: chosen on ~71 % of the turns it fits
    assert abs(drawn["new_topic"] / DRAWS - 0.25) < 0.03
    assert uncorrected(judge.sets)["new_topic"] / DRAWS < 0.15  # what it got before the correction
    assert max(gaps(drawn).values()) < 0.03


async def test_a_pattern_never_allowed_leaves_the_others_their_relative_weights(tmp_path: Path) -> None:
    drawn = await draw(tmp_path, Eligibility(never_new_topic))
    assert drawn["new_topic"] == 0
    rest = {n: w / (1 - WEIGHTS["new_topic"]) for n, w in WEIGHTS.items() if n != "new_topic"}
    assert all(abs(drawn[n] / DRAWS - share) < 0.03 for n, share in rest.items())
