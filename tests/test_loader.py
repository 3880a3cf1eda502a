"""Task files: valid ones load, bad ones fail at load time naming file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import CHIT_CHAT, task_dict, write_task
from fms_dgt.errors import ConfigError
from fms_dgt.loader import EngineOverride, find_task_files, load_task
from fms_dgt.stages.flow_controller import FlowControllerOptions


def problems(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_task(path)
    return str(info.value)


def test_example_task_loads() -> None:
    task = load_task(CHIT_CHAT)
    config = task.config
    assert config.task_name == "public/examples/chit_chat"
    assert (config.min_turns, config.max_turns) == (2, 4)
    assert [s.name for s in config.iteration_stages] == ["lm/flow_controller", "lm/user/guided", "lm/assistant/naive"]
    controller = config.iteration_stages[0]
    assert isinstance(controller, FlowControllerOptions)
    weights = {p.name.split("/")[1]: p.weight for p in controller.patterns}
    assert weights == {"new_topic": 0.25, "follow_up": 0.35, "share_opinion": 0.15, "clarification": 0.15, "termination": 0.10}
    assert config.engines["default"].type == "local"
    assert len(task.sha256) == 64


def test_data_dir_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DGT_DATA_DIR", "/somewhere")
    store = load_task(CHIT_CHAT).config.initialization_stages[0].persona_store  # type: ignore[attr-defined]
    assert store.data_path == "/somewhere/public/examples/chit_chat/personas.jsonl"


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = write_task(tmp_path, "task_name: x\nmin_turns: [1, 2\nmax_turns: 3\n")
    message = problems(path)
    assert str(path) in message and "YAML syntax error" in message
    assert f"{path}:3" in message or f"{path}:2" in message


def test_unknown_key_names_line_and_key(tmp_path: Path) -> None:
    data = task_dict(tmp_path)
    data["iteration_stages"][1]["temprature"] = 0.5
    path = write_task(tmp_path, data)
    message = problems(path)
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if "temprature" in l)
    assert f"{path}:{line}: iteration_stages[1].temprature: unknown key" in message


def test_wrong_type(tmp_path: Path) -> None:
    path = write_task(tmp_path, task_dict(tmp_path, max_turns="many"))
    assert "max_turns" in problems(path)


def test_unknown_stage_lists_known_names(tmp_path: Path) -> None:
    data = task_dict(tmp_path)
    data["iteration_stages"][2]["name"] = "lm/assistant/smart"
    message = problems(write_task(tmp_path, data))
    assert "unknown stage 'lm/assistant/smart'" in message and "lm/assistant/naive" in message


def test_unknown_engine_type(tmp_path: Path) -> None:
    data = task_dict(tmp_path, engines={"default": {"type": "vllm", "model": "x"}})
    message = problems(write_task(tmp_path, data))
    assert "engines.default.type" in message and "unknown engine type 'vllm'" in message and "ollama" in message


def test_stage_engine_must_exist(tmp_path: Path) -> None:
    data = task_dict(tmp_path)
    data["iteration_stages"][1]["engine"] = "user_model"
    message = problems(write_task(tmp_path, data))
    assert "iteration_stages[1].engine" in message and "user_model" in message


def test_min_turns_above_max_turns(tmp_path: Path) -> None:
    message = problems(write_task(tmp_path, task_dict(tmp_path, min_turns=5, max_turns=3)))
    assert "max_turns" in message and "smaller than min_turns" in message


def test_termination_pattern_must_be_declared(tmp_path: Path) -> None:
    data = task_dict(tmp_path)
    data["iteration_stages"][0]["termination_patterns"] = ["goodbye"]
    message = problems(write_task(tmp_path, data))
    assert "iteration_stages[0].termination_patterns" in message and "goodbye not among the patterns" in message


@pytest.mark.parametrize("weights", [[0, 0, 0], [-1, 1, 1]], ids=["all-zero", "negative"])
def test_bad_weights(tmp_path: Path, weights: list[float]) -> None:
    data = task_dict(tmp_path)
    for pattern, weight in zip(data["iteration_stages"][0]["patterns"], weights):
        pattern["weight"] = weight
    message = problems(write_task(tmp_path, data))
    assert "iteration_stages[0].patterns" in message


@pytest.mark.parametrize("name", ["../escape", "/abs/path", "a/../../b", ""])
def test_task_name_cannot_escape_output(tmp_path: Path, name: str) -> None:
    message = problems(write_task(tmp_path, task_dict(tmp_path, task_name=name)))
    assert "task_name" in message


def test_unset_variable_is_an_error(tmp_path: Path) -> None:
    data = task_dict(tmp_path, task_description="${FMS_DGT_SURELY_UNSET_VAR}")
    assert "FMS_DGT_SURELY_UNSET_VAR is not set" in problems(write_task(tmp_path, data))


def test_variable_default(tmp_path: Path) -> None:
    data = task_dict(tmp_path, task_description="${FMS_DGT_SURELY_UNSET_VAR:-fallback}")
    assert load_task(write_task(tmp_path, data)).config.task_description == "fallback"


def test_safe_loader_refuses_python_objects(tmp_path: Path) -> None:
    path = write_task(tmp_path, "task_name: !!python/object/apply:os.system ['echo pwned']\n")
    assert "YAML syntax error" in problems(path)


def test_engine_override_replaces_type_and_keeps_shared_settings(tmp_path: Path) -> None:
    data = task_dict(tmp_path, engines={"default": {"type": "local", "model": "qwen2.5-0.5b", "context_per_slot": 2048, "timeout": 30}})
    path = write_task(tmp_path, data)
    config = load_task(path, EngineOverride(type="ollama", model="granite4:3b")).config
    engine = config.engines["default"]
    assert (engine.type, engine.model, engine.timeout) == ("ollama", "granite4:3b", 30)


def test_override_to_openai_without_model_is_explained(tmp_path: Path) -> None:
    data = task_dict(tmp_path, engines={"default": {"type": "local"}})
    with pytest.raises(ConfigError) as info:
        load_task(write_task(tmp_path, data), EngineOverride(type="openai"))
    assert "engines.default.model: required key is missing" in str(info.value)


def test_find_task_files_in_folder(tmp_path: Path) -> None:
    assert find_task_files([str(CHIT_CHAT.parent)]) == [CHIT_CHAT]
    with pytest.raises(ConfigError):
        find_task_files([str(tmp_path / "nope")])


@pytest.mark.parametrize("example", ["chit_chat", "multi_turn_chat"])
def test_task_config_validates_a_parsed_task_file_by_itself(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from fms_dgt.task import TaskConfig

    monkeypatch.delenv("DGT_DATA_DIR", raising=False)
    path = CHIT_CHAT.parent.parent / example / "task.yaml"
    text = path.read_text().replace("${DGT_DATA_DIR}", "data")
    config = TaskConfig.model_validate(yaml.safe_load(text))
    assert config == load_task(path).config
    assert all(type(s).__name__ != "StageOptions" for s in config.all_stages())  # each stage's own options


def test_task_json_round_trips(tmp_path: Path) -> None:
    import json

    from fms_dgt.task import TaskConfig

    config = load_task(CHIT_CHAT.parent.parent / "multi_turn_chat" / "task.yaml").config
    written = json.dumps(config.model_dump(mode="json"))
    assert TaskConfig.model_validate(json.loads(written)) == config


def test_task_config_rules_carry_their_own_locations() -> None:
    from pydantic import ValidationError

    from fms_dgt.task import TaskConfig

    with pytest.raises(ValidationError) as info:
        TaskConfig.model_validate({
            "task_name": "t",
            "initialization_stages": [{"name": "lm/text", "attribute": "a", "prompt": "{{ nope }}", "engine": "judge"}],
            "iteration_stages": [{"name": "lm/assistant/naive"}],
        })
    text = str(info.value)
    assert "initialization_stages[0].engine: no engine named 'judge'" in text
    assert "initialization_stages[0].prompt: template uses {{ nope }}" in text
