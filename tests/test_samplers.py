"""Sampler stages draw what they are configured to draw; bad options and templates fail at load time."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import task_dict, write_task
from fms_dgt.conversation import Conversation
from fms_dgt.errors import ConfigError
from fms_dgt.loader import load_task
from fms_dgt.stages import STAGES
from fms_dgt.stages.base import ConversationContext, DropConversation, Resources
from fms_dgt.stats import RunStats

DRAWS = 4000


def sampler(tmp_path: Path, spec: dict[str, Any], before: list[dict[str, Any]] | None = None) -> list[Any]:
    """The stages of a task whose initialization stages are ``before`` + ``spec``, built and set up."""
    stages = [*(before or []), spec]
    config = load_task(write_task(tmp_path, task_dict(tmp_path, initialization_stages=stages))).config
    resources = Resources(lm=None, stats=RunStats())
    built = []
    for options in config.initialization_stages:
        stage = STAGES.get(options.name)(options, resources)
        stage.setup()
        built.append(stage)
    return built


async def draw(stages: list[Any], seed: int) -> dict[str, Any]:
    conv = Conversation(task_name="t", conversation_id=str(seed))
    ctx = ConversationContext(rng=random.Random(seed), max_turns=4)
    for stage in stages:
        await stage(conv, ctx)
    return conv.attributes


async def test_category_follows_its_weights(tmp_path: Path) -> None:
    stages = sampler(tmp_path, {"name": "sample/category", "attribute": "mood", "values": ["happy", "sad", "angry"],
                                "weights": [0.6, 0.3, 0.1]})
    counts = Counter([(await draw(stages, seed))["mood"] for seed in range(DRAWS)])
    for value, weight in (("happy", 0.6), ("sad", 0.3), ("angry", 0.1)):
        assert abs(counts[value] / DRAWS - weight) < 0.025, counts


async def test_category_without_weights_is_uniform_and_keeps_types(tmp_path: Path) -> None:
    stages = sampler(tmp_path, {"name": "sample/category", "attribute": "length", "values": [2, 4, 6, 8]})
    values = [(await draw(stages, seed))["length"] for seed in range(DRAWS)]
    counts = Counter(values)
    assert set(counts) == {2, 4, 6, 8} and all(isinstance(v, int) for v in values)
    assert all(abs(c / DRAWS - 0.25) < 0.025 for c in counts.values()), counts


async def test_subcategory_draws_uniformly_within_the_parent_value(tmp_path: Path) -> None:
    parent = {"name": "sample/category", "attribute": "domain", "values": ["tech", "money"], "weights": [3, 1]}
    stages = sampler(
        tmp_path,
        {"name": "sample/subcategory", "attribute": "topic", "parent": "domain",
         "values": {"tech": ["wifi", "laptop"], "money": ["tax", "budget", "pension"]}},
        before=[parent],
    )
    pairs = Counter()
    for seed in range(DRAWS):
        attributes = await draw(stages, seed)
        pairs[(attributes["domain"], attributes["topic"])] += 1
    assert set(pairs) == {("tech", "wifi"), ("tech", "laptop"), ("money", "tax"), ("money", "budget"), ("money", "pension")}
    # P(tech, wifi) = 3/4 * 1/2; P(money, tax) = 1/4 * 1/3
    assert abs(pairs[("tech", "wifi")] / DRAWS - 0.375) < 0.025
    assert abs(pairs[("money", "tax")] / DRAWS - 1 / 12) < 0.02


async def test_uniform_integer_covers_both_ends_evenly(tmp_path: Path) -> None:
    stages = sampler(tmp_path, {"name": "sample/uniform", "attribute": "age", "low": 18, "high": 21, "integer": True})
    counts = Counter([(await draw(stages, seed))["age"] for seed in range(DRAWS)])
    assert set(counts) == {18, 19, 20, 21}
    assert all(abs(c / DRAWS - 0.25) < 0.025 for c in counts.values()), counts


async def test_uniform_float_mean_and_range(tmp_path: Path) -> None:
    stages = sampler(tmp_path, {"name": "sample/uniform", "attribute": "budget", "low": 10, "high": 20})
    values = [(await draw(stages, seed))["budget"] for seed in range(DRAWS)]
    assert all(10 <= v <= 20 for v in values) and not all(float(v).is_integer() for v in values)
    assert abs(statistics.fmean(values) - 15) < 0.2
    assert abs(statistics.pstdev(values) - 10 / 12**0.5) < 0.15  # sd of U(10, 20)


async def test_gaussian_mean_stddev_clipping_and_rounding(tmp_path: Path) -> None:
    stages = sampler(tmp_path, {"name": "sample/gaussian", "attribute": "score", "mean": 50, "stddev": 10})
    values = [(await draw(stages, seed))["score"] for seed in range(DRAWS)]
    assert abs(statistics.fmean(values) - 50) < 0.6 and abs(statistics.pstdev(values) - 10) < 0.6
    clipped = sampler(tmp_path / "c", {"name": "sample/gaussian", "attribute": "score", "mean": 50, "stddev": 10,
                                       "integer": True, "min": 45, "max": 55})
    values = [(await draw(clipped, seed))["score"] for seed in range(1000)]
    assert all(isinstance(v, int) and 45 <= v <= 55 for v in values)
    assert Counter(values)[45] > 200  # everything below 45 lands on 45 (P(z < -0.5) ~ 0.31)


async def test_subcategory_with_an_unlisted_parent_value_drops(tmp_path: Path) -> None:
    # The parent's values are not known in advance (an unbounded gaussian), so the keys cannot be
    # checked at load time.
    stages = sampler(
        tmp_path,
        {"name": "sample/subcategory", "attribute": "topic", "parent": "n", "values": {"1": ["a"]}},
        before=[{"name": "sample/gaussian", "attribute": "n", "mean": 50, "stddev": 1, "integer": True}],
    )
    with pytest.raises(DropConversation, match="no_subcategories_for_n"):
        await draw(stages, 0)


def test_subcategory_keys_are_checked_against_a_whole_number_range(tmp_path: Path) -> None:
    stages = [
        {"name": "sample/uniform", "attribute": "n", "low": 5, "high": 6, "integer": True},
        {"name": "sample/subcategory", "attribute": "topic", "parent": "n", "values": {"5": ["a"]}},
    ]
    assert "initialization_stages[1].values: no subcategories for n = 6" in load_error(tmp_path, initialization_stages=stages)


def test_target_turns_range_with_odd_message_counts_is_refused(tmp_path: Path) -> None:
    # 2..6 messages includes 3 and 5, which are not whole exchanges.
    stages = [{"name": "sample/uniform", "attribute": "length", "low": 2, "high": 6, "integer": True}]
    message = load_error(tmp_path, target_turns={"attribute": "length", "unit": "messages"}, min_turns=1, max_turns=4,
                         initialization_stages=stages)
    assert "sample/uniform may give 3: 3 messages is not a whole number" in message


def load_error(tmp_path: Path, **overrides: Any) -> str:
    with pytest.raises(ConfigError) as error:
        load_task(write_task(tmp_path, task_dict(tmp_path, **overrides)))
    return str(error.value)


DOMAIN = {"name": "sample/category", "attribute": "domain", "values": ["tech", "money"]}


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"name": "sample/category", "attribute": "x", "values": ["a", "b"], "weights": [1]},
         "weights has 1 entries for 2 values"),
        ({"name": "sample/category", "attribute": "x", "values": ["a"], "weights": [0]}, "at least one > 0"),
        ({"name": "sample/category", "attribute": "x", "values": ["a", "b"], "weights": [1, -1]}, "must be >= 0"),
        ({"name": "sample/category", "attribute": "x", "values": []}, "at least 1 item"),
        ({"name": "sample/category", "attribute": "2x", "values": ["a"]}, "not a valid attribute name"),
        ({"name": "sample/uniform", "attribute": "x", "low": 5, "high": 1}, "high (1) is below low (5)"),
        ({"name": "sample/uniform", "attribute": "x", "low": 0.5, "high": 2, "integer": True}, "must be whole numbers"),
        ({"name": "sample/gaussian", "attribute": "x", "mean": 0, "stddev": 0}, "greater than 0"),
        ({"name": "sample/category", "attribute": "x", "values": ["a"], "wieghts": [1]}, "wieghts: unknown key"),
    ],
)
def test_bad_sampler_options_fail_at_load_time_with_file_and_line(tmp_path: Path, stage: dict[str, Any], message: str) -> None:
    text = load_error(tmp_path, initialization_stages=[stage])
    assert message in text and "task.yaml:" in text and "initialization_stages[0]" in text


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        ([{"name": "sample/subcategory", "attribute": "topic", "parent": "domain", "values": {"tech": ["a"]}}],
         "no earlier stage writes the attribute 'domain'"),
        ([DOMAIN, {"name": "sample/subcategory", "attribute": "topic", "parent": "domain", "values": {"tech": ["a"]}}],
         "no subcategories for domain = money"),
        ([DOMAIN, {**DOMAIN, "values": ["x"]}], "attribute 'domain' is already written by initialization_stages[0]"),
        ([{**DOMAIN, "attribute": "conversation"}], "clashes with a built-in template name"),
        ([DOMAIN, {"name": "lm/text", "attribute": "prompt", "prompt": "About {{ domian }}."}],
         "template uses {{ domian }}, which no earlier stage writes"),
        ([{"name": "lm/text", "attribute": "prompt", "prompt": "About {{ domain }}."}, DOMAIN],
         "template uses {{ domain }}, which no earlier stage writes"),
        ([DOMAIN, {"name": "lm/text", "attribute": "prompt", "prompt": "About {{ domain }."}], "template syntax error"),
        ([DOMAIN, {"name": "lm/scenario", "instructions": "{% if x %}"}], "template syntax error"),
    ],
)
def test_attribute_flow_is_checked_at_load_time(tmp_path: Path, stages: list[dict[str, Any]], message: str) -> None:
    assert message in load_error(tmp_path, initialization_stages=stages)


def test_templates_may_use_builtins_and_earlier_attributes(tmp_path: Path) -> None:
    stages = [
        DOMAIN,
        {"name": "lm/text", "attribute": "task", "prompt": "{{ domain | upper }} {{ persona }} {{ scenario }}"},
    ]
    config = load_task(write_task(tmp_path, task_dict(tmp_path, initialization_stages=stages))).config
    assert [s.name for s in config.initialization_stages] == ["sample/category", "lm/text"]


@pytest.mark.parametrize(
    ("target", "stages", "message"),
    [
        ({"attribute": "length", "unit": "messages"}, [], "no initialization stage writes the attribute 'length'"),
        ({"attribute": "length", "unit": "messages"},
         [{"name": "sample/category", "attribute": "length", "values": [2, 3]}], "3 messages is not a whole number"),
        ({"attribute": "length", "unit": "messages"},
         [{"name": "sample/category", "attribute": "length", "values": [2, 10]}],
         "that is 5 exchanges, outside min_turns..max_turns (2..4)"),
        ({"attribute": "length"}, [{"name": "sample/uniform", "attribute": "length", "low": 2, "high": 4}],
         "with integer: true"),
        ({"attribute": "length"}, [{"name": "sample/gaussian", "attribute": "length", "mean": 3, "stddev": 1, "integer": True}],
         "with integer: true (and min and max for gaussian)"),
        ({"attribute": "length", "unit": "words"}, [{"name": "sample/category", "attribute": "length", "values": [2]}],
         "target_turns.unit"),
    ],
)
def test_target_turns_is_checked_at_load_time(tmp_path: Path, target: dict[str, Any], stages: list[dict[str, Any]],
                                              message: str) -> None:
    base = task_dict(tmp_path)["initialization_stages"]
    assert message in load_error(tmp_path, target_turns=target, initialization_stages=base + stages)
