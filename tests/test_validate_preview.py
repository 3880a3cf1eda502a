"""--validate against the simulated LM server (no generation call is made) and --preview on the
scripted engine (every step printed as it happens, nothing written)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from conftest import ChitChatResponder, task_dict, write_task
from fms_dgt.cli import main
from fms_dgt.engines.scripted import ScriptedEngine
from fms_dgt.loader import EngineOverride
from fms_dgt.preview import preview_tasks
from fms_dgt.testing.lm_server import LMServer, PlausibleReplies
from viewer_output import REJECTED_DRAFT, ViewerResponder, viewer_task


def served_task(tmp_path: Path, url: str) -> Path:
    task = task_dict(tmp_path, engines={"default": {"type": "openai", "model": "m", "base_url": url + "/v1"}})
    return write_task(tmp_path, task)


def test_validate_prints_the_plan_without_generating(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LMServer() as server:
        path = served_task(tmp_path, server.url)
        code = main(["--task-paths", str(path), "--validate", "--output-dir", str(tmp_path / "out"),
                     "--num-outputs-to-generate", "5"])
        paths = [r["path"] for r in server.requests]
    out = capsys.readouterr().out
    assert code == 0
    assert paths and not any("chat" in p for p in paths)  # reachability only: no generation call
    assert not (tmp_path / "out").exists()
    lines = out.splitlines()
    assert lines[0] == f"tests/small ({path}): valid"
    assert f"engine default: openai m at {server.url}/v1: reachable" in out
    assert "exchanges per conversation: 2 to 4" in out
    assert "would generate 5" in out
    # stages in order, with the personas and the patterns' weight shares
    numbered = [line.strip() for line in lines if re.match(r"\s+\d+\. ", line)]
    assert numbered == ["1. sample/persona", "2. lm/scenario (engine default)", "3. lm/flow_controller (engine default)",
                        "4. lm/user/guided (engine default)", "5. lm/assistant/naive (engine default)"]
    assert f"3 personas from {tmp_path / 'personas.jsonl'}" in out
    assert "pattern new_topic: weight 0.3, share 30.0 %" in out
    assert "pattern follow_up: weight 0.6, share 60.0 %" in out
    assert "pattern end: weight 0.1, share 10.0 % (termination)" in out
    assert "opening: new_topic (no LM call)" in out


def test_validate_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # an unreachable server: exit 1, one line naming it
    path = served_task(tmp_path, "http://127.0.0.1:9")
    assert main(["--task-paths", str(path), "--validate"]) == 1
    err = capsys.readouterr().err
    assert "error: engine default, model m, url http://127.0.0.1:9/v1: server unreachable" in err
    # a bad task file: exit 2 with file and key
    data = task_dict(tmp_path, max_turns=1, min_turns=3)
    assert main(["--task-paths", str(write_task(tmp_path, data, "bad.yaml")), "--validate"]) == 2
    assert "bad.yaml" in capsys.readouterr().err
    # a missing persona file (read when the stages are built): exit 2
    data = task_dict(tmp_path)
    data["initialization_stages"][0]["persona_store"]["data_path"] = str(tmp_path / "none.jsonl")
    assert main(["--task-paths", str(write_task(tmp_path, data, "nofile.yaml")), "--validate"]) == 2
    assert "none.jsonl" in capsys.readouterr().err


async def test_preview_prints_every_step_in_order_and_writes_nothing(tmp_path: Path) -> None:
    path = write_task(tmp_path, viewer_task(tmp_path))
    out = io.StringIO()
    engine = ScriptedEngine(responder=ViewerResponder())
    code = await preview_tasks([path], EngineOverride(), 1, seed=3, out=out, engines={"default": engine})
    text = out.getvalue()
    assert code in (0, 1)  # the judge may drop the conversation; it is printed either way
    assert "\033[" not in text  # not a terminal: no colours
    # one line per step, each starting with the seconds since the start (continuation lines do not)
    lines = [line for line in text.splitlines() if re.match(r"\[\s*[\d.]+s\] ", line)]
    labels = [re.sub(r"^\[\s*[\d.]+s\] ", "", line).split(" ")[0] for line in lines]
    assert labels[:3] == ["preview", "persona", "scenario"]
    assert labels[3] == "--" and "exchange 1" in lines[3]
    body = [label for label in labels if label in ("user", "assistant", "dropped")]
    if "dropped" in body:  # a stage dropped the last exchange (the conversation is rescued): shown too
        assert body[-2:] == ["user", "dropped"]
        body = body[:-2]
    assert body and body == ["user", "assistant"] * (len(body) // 2)
    # the first user call is rejected (assistant voice) and shown, dimmed in a terminal, before the message
    rejected = next(i for i, line in enumerate(lines) if REJECTED_DRAFT in line)
    assert "rejected" in lines[rejected]
    assert labels[rejected + 1] == "user"
    assert "hint " in text and "Bring up a topic." in text
    assert labels[-2] == "==" and "conversation 1 " in lines[-2] and "kept" in lines[-2]
    assert re.search(r"\d+ LM calls, \d+ tokens$", lines[-1])
    assert not (tmp_path / "output").exists() and not Path("output/tests").exists()


async def test_preview_colours_on_a_terminal_unless_no_color(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    path = write_task(tmp_path, task_dict(tmp_path))
    for no_color, coloured in ((False, True), (True, False)):
        if no_color:
            monkeypatch.setenv("NO_COLOR", "1")
        out = Terminal()
        engines = {"default": ScriptedEngine(responder=ChitChatResponder())}
        assert await preview_tasks([path], EngineOverride(), 2, seed=1, out=out, engines=engines) == 0
        assert ("\033[" in out.getvalue()) is coloured
        assert out.getvalue().count("conversation ") >= 2


def test_preview_flag_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with LMServer(reply=PlausibleReplies()) as server:
        path = served_task(tmp_path, server.url)
        code = main(["--task-paths", str(path), "--preview", "--output-dir", str(tmp_path / "out"), "--seed", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "persona " in out and "user " in out and "assistant " in out and "conversation 1 kept" in out
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--task-paths", str(path), "--preview", "0"])
    assert exit_info.value.code == 2
