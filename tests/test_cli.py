"""The command line: exit codes, one-line errors without tracebacks, and a real run over HTTP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import CHIT_CHAT, REPO, task_dict, write_task
from fms_dgt.cli import main
from fms_dgt.testing.lm_server import LMServer, PlausibleReplies

def run_cli(*args: str) -> int:
    return main(list(args))


def test_help_documents_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli("--help")
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--task-paths", "--num-outputs-to-generate", "--restart", "--output-dir", "--seed", "--debug",
                 "--concurrency", "--engine", "--model", "--base-url", "--quiet", "--executor", "--ray-address",
                 "--workers"):
        assert flag in out


@pytest.mark.parametrize("args", [
    ["--num-outputs-to-generate", "0"], ["--num-outputs-to-generate", "-3"], ["--bogus"], ["--engine", "vllm"],
    ["--executor", "dask"], ["--workers", "2"], ["--ray-address", "auto"], ["--executor", "ray", "--workers", "0"],
])
def test_bad_flags_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli("--task-paths", str(CHIT_CHAT), *args)
    assert info.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_executor_ray_without_ray_installed_exit_2(
    small_task: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    code = run_cli("--task-paths", str(small_task), "--output-dir", str(tmp_path / "out"), "--executor", "ray")
    err = capsys.readouterr().err
    assert code == 2
    assert "error: --executor ray needs Ray: pip install 'fms_dgt[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_bad_task_file_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_task(tmp_path, task_dict(tmp_path, min_turns=3, max_turns=2))
    assert run_cli("--task-paths", str(path), "--output-dir", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:" in err and "max_turns" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written


def test_missing_task_path_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("--task-paths", str(tmp_path / "missing.yaml")) == 2
    assert "task file or folder not found" in capsys.readouterr().err


def test_bad_persona_file_exit_2_and_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_task(tmp_path, task_dict(tmp_path))
    (tmp_path / "personas.jsonl").write_text('{"role": "a"}\n{"goals": []}\n')
    assert run_cli("--task-paths", str(path), "--output-dir", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "personas.jsonl:2: role: required key is missing" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_seed_file_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_task(tmp_path, task_dict(tmp_path, seed_datastore={"type": "default", "data_path": str(tmp_path / "nope.jsonl")}))
    assert run_cli("--task-paths", str(path), "--output-dir", str(tmp_path / "out")) == 2
    assert "nope.jsonl: seed example file not found" in capsys.readouterr().err


def test_unwritable_output_dir_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    path = write_task(tmp_path, task_dict(tmp_path))
    assert run_cli("--task-paths", str(path), "--output-dir", str(blocker)) == 2
    assert "cannot write the output folder" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_fails_fast_with_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code = run_cli("--task-paths", str(CHIT_CHAT), "--output-dir", str(tmp_path), "--engine", "openai",
                   "--model", "m", "--base-url", url, "--quiet")
    err = capsys.readouterr().err
    assert code == 1
    assert "server unreachable" in err and url in err and "Traceback" not in err


@pytest.mark.parametrize("engine", ["openai", "ollama"])
def test_chit_chat_end_to_end_over_http(tmp_path: Path, engine: str) -> None:
    """The real example task through the CLI against a server on 127.0.0.1 speaking each API."""
    with LMServer(reply=PlausibleReplies()) as server:
        base_url, model, path = {
            "openai": (server.url + "/v1", "sim-model", "/v1/chat/completions"),
            "ollama": (server.url, "granite4:3b", "/api/chat"),
        }[engine]
        code = run_cli(
            "--task-paths", str(CHIT_CHAT.parent), "--num-outputs-to-generate", "6", "--restart",
            "--output-dir", str(tmp_path), "--engine", engine, "--model", model,
            "--base-url", base_url, "--seed", "3", "--quiet",
        )
        assert code == 0
        bodies = [r["body"] for r in server.requests if r["path"] == path]
        stages = Counter(r["headers"].get("x-fms-dgt-stage") for r in server.requests if r["path"] == path)
        checks = [r for r in server.requests if r["path"] != path]
    out = tmp_path / "public/examples/chit_chat"
    final = [json.loads(line) for line in (out / "final_data.jsonl").read_text().splitlines()]
    formatted = [json.loads(line) for line in (out / "formatted_output.jsonl").read_text().splitlines()]
    summary = json.loads((out / "run_summary.json").read_text())
    assert len(final) == len(formatted) == 6 == summary["total"]
    assert len({r["conversation_id"] for r in final}) == 6
    for record, example in zip(final, formatted):
        assert record["task_name"] == "public/examples/chit_chat"
        roles = [m["role"] for m in example["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and len(roles) == 2 * record["num_turns"]
        assert 2 <= record["num_turns"] <= 4
        assert record["steps"][0]["persona"]["role"] and record["steps"][1]["role"] == "scenario"
        last_fc = [s for s in record["steps"] if s["role"] == "flow_controller"][-1]
        if record["stop_reason"] == "flow_controller":
            assert last_fc["terminate"] and last_fc["pattern"] == "chit_chat/termination"
    # every request carried the stage's token cap; structured calls carried a JSON schema
    if engine == "openai":
        assert all(b["max_tokens"] >= 1 for b in bodies)
        assert any(b.get("response_format", {}).get("type") == "json_schema" for b in bodies)
    else:
        assert all(b["options"]["num_predict"] >= 1 for b in bodies)
        assert any(isinstance(b.get("format"), dict) for b in bodies)
    assert all(b["model"] == model for b in bodies)
    # Requests of spare conversations cancelled at exactly N may have reached the server (or not yet).
    cancelled = summary["engines"]["default"]["requests_cancelled"]
    assert summary["engines"]["default"]["type"] == engine
    assert summary["lm_calls"] <= len(bodies) <= summary["lm_calls"] + cancelled
    # every chat request named its stage in the X-FMS-DGT-Stage header; the engine's check, none
    assert set(stages) == set(summary["per_stage"]) == {"lm/scenario", "lm/flow_controller", "lm/user/guided",
                                                         "lm/assistant/naive"}
    for stage, info in summary["per_stage"].items():
        assert info["calls"] <= stages[stage] <= info["calls"] + cancelled
    assert checks and not any("x-fms-dgt-stage" in r["headers"] for r in checks)


def test_module_entry_points_run() -> None:
    for module in ("fms_dgt", "fms_dgt.public"):
        result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0 and "fms_dgt" in result.stdout


def test_sigkill_mid_run_then_resume_loses_nothing(tmp_path: Path) -> None:
    """Kill -9 a real run after some conversations are written; the next run completes to exactly N."""
    import os
    import signal
    import time

    out = tmp_path / "public/examples/chit_chat/final_data.jsonl"
    with LMServer(latency=0.01, reply=PlausibleReplies()) as server:
        args = [
            sys.executable, "-m", "fms_dgt.public", "--task-paths", str(CHIT_CHAT), "--num-outputs-to-generate", "40",
            "--output-dir", str(tmp_path), "--engine", "openai", "--model", "sim-model",
            "--base-url", server.url + "/v1", "--concurrency", "4", "--quiet",
        ]
        process = subprocess.Popen([*args, "--restart"], cwd=REPO, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 5):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        before = out.read_bytes().splitlines(keepends=True)
        complete = [line for line in before if line.endswith(b"\n")]
        assert 5 <= len(complete) < 40
        resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
    after = out.read_bytes().splitlines(keepends=True)
    assert after[: len(complete)] == complete  # every record finished before the kill is unchanged
    assert len(after) == 40
    ids = [json.loads(line)["conversation_id"] for line in after]
    assert len(set(ids)) == 40
    formatted = (tmp_path / "public/examples/chit_chat/formatted_output.jsonl").read_text().splitlines()
    assert [json.loads(line)["conversation_id"] for line in formatted] == ids


def test_a_short_run_in_a_fresh_process_writes_its_report(tmp_path: Path) -> None:
    """A run in a fresh process draws its chart in the runner's chart process (fms_dgt.chart),
    and a run shorter than that process's import of matplotlib still gets its chart."""
    pytest.importorskip("matplotlib")
    with LMServer(reply=PlausibleReplies()) as server:
        done = subprocess.run(
            [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(CHIT_CHAT), "--num-outputs-to-generate", "2",
             "--restart", "--output-dir", str(tmp_path), "--engine", "openai", "--model", "sim-model",
             "--base-url", server.url + "/v1", "--quiet"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert "could not write the report" not in done.stderr
    folder = tmp_path / "public/examples/chit_chat"
    assert json.loads((folder / "report.json").read_text())["conversations"] == 2
    assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"


def _catalogue(tmp_path: Path) -> dict[str, tuple[Any, str]]:
    """Bad inputs: (task dict or raw YAML, text the error must contain)."""
    def with_stage(index: int, **changes: Any) -> dict[str, Any]:
        data = task_dict(tmp_path)
        data["iteration_stages"][index].update(changes)
        return data

    zero = task_dict(tmp_path)
    for pattern in zero["iteration_stages"][0]["patterns"]:
        pattern["weight"] = 0
    negative = task_dict(tmp_path)
    negative["iteration_stages"][0]["patterns"][1]["weight"] = -1
    return {
        "yaml-syntax": ("task_name: [oops\n", "YAML syntax error"),
        "wrong-type": (task_dict(tmp_path, min_turns="two"), "min_turns"),
        "unknown-key": (task_dict(tmp_path, max_turn=3), "max_turn: unknown key"),
        "unknown-stage": (with_stage(1, name="lm/user/smart"), "unknown stage 'lm/user/smart'"),
        "unknown-engine": (task_dict(tmp_path, engines={"default": {"type": "gpt"}}), "unknown engine type 'gpt'"),
        "missing-data-file": (task_dict(tmp_path, initialization_stages=[
            {"name": "sample/persona", "persona_store": {"data_path": str(tmp_path / "none.jsonl")}}]), "persona file not found"),
        "zero-weights": (zero, "all pattern weights are zero"),
        "negative-weight": (negative, "weight"),
        "undeclared-termination": (with_stage(0, termination_patterns=["bye"]), "bye not among the patterns"),
        "min-above-max": (task_dict(tmp_path, min_turns=4, max_turns=2), "smaller than min_turns"),
        "escaping-task-name": (task_dict(tmp_path, task_name="../../etc"), "task_name"),
    }


@pytest.mark.parametrize("case", [
    "yaml-syntax", "wrong-type", "unknown-key", "unknown-stage", "unknown-engine", "missing-data-file",
    "zero-weights", "negative-weight", "undeclared-termination", "min-above-max", "escaping-task-name",
])
def test_bad_input_catalogue(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, expected = _catalogue(tmp_path)[case]
    path = write_task(tmp_path, data)
    code = run_cli("--task-paths", str(path), "--output-dir", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert ("none.jsonl" if case == "missing-data-file" else str(path)) in err  # names the file
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "out").exists()
