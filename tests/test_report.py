"""The analysis report on a small hand-made output folder whose answers are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fms_dgt.conversation import (
    Conversation,
    FlowControllerStep,
    JudgeScore,
    JudgeStep,
    MessageStep,
    Persona,
    PersonaStep,
)
from fms_dgt.report import build_report, diversity, main, to_markdown
from fms_dgt.task import TaskConfig

LONG = "You are a patient assistant for people who want help with their home network and devices."


def conv(index: int, *, mood: str, budget: int, target: int | None, turns: int, patterns: list[str], persona: str,
         toxicity: int, tokens: int, chat: list[tuple[str, str]]) -> Conversation:
    c = Conversation(task_name="t", conversation_id=f"c{index}", num_turns=turns, target_turns=target,
                     attributes={"mood": mood, "budget": budget, "sys": f"{LONG} ({index})", "tox": toxicity})
    c.steps.append(PersonaStep(content=persona, persona=Persona(role=persona),
                               metadata={"prompt_tokens": tokens // 2, "completion_tokens": tokens // 2}))
    for name in patterns:
        fixed = {"fixed_by": "opening"} if name == "open" else {}
        c.steps.append(FlowControllerStep(content=name, pattern=name, hint="h", metadata=fixed))
    for user, assistant in chat:
        c.steps.append(MessageStep(role="user", content=user))
        c.steps.append(MessageStep(role="assistant", content=assistant))
    c.steps.append(JudgeStep(content=f"tox={toxicity}", scores={"tox": JudgeScore(score=toxicity)}))
    return c


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    personas = tmp_path / "personas.jsonl"
    personas.write_text('{"role": "nurse"}\n{"role": "cook"}\n\n{"role": "pilot"}\n')
    out = tmp_path / "out"
    out.mkdir()
    conversations = [
        conv(1, mood="happy", budget=10, target=2, turns=2, patterns=["open", "a", "a"], persona="nurse", toxicity=0,
             tokens=10, chat=[("hi there", "one two three"), ("Hi  there", "four five")]),
        conv(2, mood="happy", budget=20, target=2, turns=1, patterns=["b"], persona="nurse", toxicity=0,
             tokens=20, chat=[("bye now", "six")]),
        conv(3, mood="sad", budget=30, target=1, turns=1, patterns=["a"], persona="cook", toxicity=1, tokens=30, chat=[]),
        conv(4, mood="happy", budget=40, target=None, turns=3, patterns=[], persona="cook", toxicity=2, tokens=40, chat=[]),
    ]
    (out / "final_data.jsonl").write_text("".join(c.model_dump_json() + "\n" for c in conversations))
    task = {
        "task_name": "t",
        "initialization_stages": [
            {"name": "sample/persona", "persona_store": {"type": "default", "data_path": str(personas)}},
            {"name": "sample/category", "attribute": "mood", "values": ["happy", "sad"], "weights": None},
            {"name": "sample/uniform", "attribute": "budget", "low": 10, "high": 40, "integer": True},
        ],
        "iteration_stages": [
            {"name": "lm/flow_controller", "patterns": [{"name": "a", "description": "A.", "weight": 3},
                                                        {"name": "b", "description": "B.", "weight": 1}]},
        ],
    }
    (out / "task.json").write_text(json.dumps(TaskConfig.model_validate(task).model_dump(mode="json")))
    (out / "run_summary.json").write_text(json.dumps({"dropped": {"user_repeats_itself": 2}, "rescued": {"x": 1}}))
    return out


def test_report_numbers(folder: Path) -> None:
    report = build_report(folder)
    assert report["conversations"] == 4

    mood = report["attributes"]["mood"]
    assert mood["kind"] == "categorical" and mood["counts"] == {"happy": 3, "sad": 1}
    assert mood["observed"] == {"happy": 0.75, "sad": 0.25} and mood["expected"] == {"happy": 0.5, "sad": 0.5}
    assert mood["max_abs_gap"] == 0.25

    budget = report["attributes"]["budget"]
    assert budget["kind"] == "numeric" and budget["sampler"] == "sample/uniform"
    assert (budget["count"], budget["mean"], budget["min"], budget["max"], budget["median"]) == (4, 25.0, 10.0, 40.0, 25.0)
    assert budget["stdev"] == pytest.approx(11.180, abs=1e-3)

    assert report["attributes"]["sys"] == {"kind": "text", "count": 4, "distinct": 4, "mean_chars": len(LONG) + 4.0}
    assert "tox" not in report["attributes"]  # a judge score, reported under judges

    turns = report["turns"]
    assert turns["distribution"] == {"1": 2, "2": 1, "3": 1}
    assert (turns["with_requested_length"], turns["exact_match"], turns["exact_match_rate"]) == (3, 2, 0.6667)
    assert turns["by_requested"]["2"] == {"count": 2, "exact": 1, "achieved": {"1": 1, "2": 1}}

    patterns = report["patterns"]
    assert patterns["counts"] == {"a": 3, "open": 1, "b": 1}
    # the opening move was fixed, not drawn: only drawn moves are compared with the weights
    assert patterns["drawn_by_weight"] == {"a": 3, "b": 1}
    assert patterns["observed"] == patterns["weight_share"] == {"a": 0.75, "b": 0.25}
    assert patterns["max_abs_gap"] == 0.0

    assert report["personas"] == {"distinct_used": 2, "in_file": 3, "coverage": 0.6667}
    assert report["judges"] == {"tox": {"histogram": {"0": 2, "1": 1, "2": 1}, "mean": 0.75}}

    tokens = report["tokens_per_conversation"]
    assert (tokens["mean"], tokens["median"], tokens["p90"], tokens["max"]) == (25.0, 25.0, 40, 40)

    assert report["drops"]["dropped"] == {"user_repeats_itself": 2} and report["drops"]["rescued"] == {"x": 1}

    # user: "hi there" twice (case and spacing ignored) and "bye now"
    assert report["diversity"]["user"] == {
        "messages": 3, "distinct_1": round(4 / 6, 4), "distinct_2": round(2 / 3, 4), "exact_duplicate_share": round(1 / 3, 4)
    }
    assert report["diversity"]["assistant"] == {
        "messages": 3, "distinct_1": 1.0, "distinct_2": 1.0, "exact_duplicate_share": 0.0
    }


def test_subcategory_expectation_is_the_parent_share_split_evenly() -> None:
    from fms_dgt.report import expected_distributions

    task = TaskConfig.model_validate({"task_name": "t", "initialization_stages": [
        {"name": "sample/category", "attribute": "d", "values": ["x", "y"], "weights": [3, 1]},
        {"name": "sample/subcategory", "attribute": "t", "parent": "d", "values": {"x": ["p", "q"], "y": ["r"]}},
    ], "iteration_stages": [{"name": "lm/assistant/naive"}]})
    assert expected_distributions(task)["t"]["expected"] == {"p": 0.375, "q": 0.375, "r": 0.25}


def test_diversity_of_nothing_is_empty() -> None:
    assert diversity([]) == {"messages": 0, "distinct_1": None, "distinct_2": None, "exact_duplicate_share": None}


def test_report_command_writes_its_files(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(folder)]) == 0
    written = json.loads((folder / "report.json").read_text())
    assert written["turns"]["exact_match_rate"] == 0.6667
    markdown = (folder / "report.md").read_text()
    assert "Requested length met exactly: 2/3 (66.7 %)." in markdown
    assert "| happy | 3 | 75.0 % | 50.0 % |" in markdown
    assert "| user | 3 | 0.6667 | 0.6667 | 33.3 % |" in markdown
    assert capsys.readouterr().out.strip() == markdown.strip()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (folder / "report.png").exists()
    else:
        assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_report_command_on_a_folder_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no final_data.jsonl here" in capsys.readouterr().err


def test_allowed_rates_and_never_allowed_patterns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    out.mkdir()
    c = Conversation(task_name="t", conversation_id="c1", num_turns=3)
    offered = {"offered": ["a", "b", "end"]}
    c.steps += [
        FlowControllerStep(content="a", pattern="a", hint="h", eligible_patterns=["a"], metadata={"fixed_by": "opening"}),
        FlowControllerStep(content="a", pattern="a", hint="h", eligible_patterns=["a", "end"], metadata=offered),
        FlowControllerStep(content="a", pattern="a", hint="h", eligible_patterns=["a"], metadata=offered),
        # the LM's answer was unusable: every offered pattern counted eligible, which says nothing
        FlowControllerStep(content="b", pattern="b", hint="h", eligible_patterns=["a", "b", "end"],
                           fallback="invalid_eligibility_json", metadata=offered),
    ]
    (out / "final_data.jsonl").write_text(c.model_dump_json() + "\n")
    patterns = [{"name": n, "description": n, "weight": w} for n, w in (("a", 2), ("b", 1), ("end", 1))]
    task = {"task_name": "t", "iteration_stages": [{"name": "lm/flow_controller", "patterns": patterns}]}
    (out / "task.json").write_text(json.dumps(TaskConfig.model_validate(task).model_dump(mode="json")))
    (out / "run_summary.json").write_text(json.dumps({"dropped": {"gate:near_duplicate": 3, "gate:empty_closing": 1,
                                                                  "user_empty": 2}}))
    with caplog.at_level("WARNING"):
        report = build_report(out)
    patterns_report = report["patterns"]
    assert patterns_report["offered"] == {"a": 2, "b": 2, "end": 2}
    assert patterns_report["allowed"] == {"a": 2, "b": 0, "end": 1}
    assert patterns_report["allowed_rate"] == {"a": 1.0, "b": 0.0, "end": 0.5}
    assert patterns_report["never_allowed"] == ["b"]
    assert "pattern b has weight 0.25 but the LM never allowed it (offered 2 times)" in caplog.text
    assert report["quality_gate"]["rejected"] == {"near_duplicate": 3, "empty_closing": 1}
    assert report["quality_gate"]["near_duplicates"] == 3
    markdown = to_markdown(report)
    assert "| a | 3 | 2 | 66.7 % | 50.0 % | 2/2 | 100.0 % |" in markdown
    assert "| end | 0 | 0 | 0.0 % | 25.0 % | 1/2 | 50.0 % |" in markdown
    assert "**Warning**: `b` has a weight but the LM never allowed it (2 times offered)." in markdown
    assert "4 conversations rejected before being kept, 3 of them as near-duplicates." in markdown
