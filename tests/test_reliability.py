"""Faults, interruptions, concurrent runs and secrets: nothing finished is lost, nothing hangs."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import CHIT_CHAT, REPO
from fms_dgt.cli import main
from fms_dgt.testing.lm_server import Fault, LMServer, PlausibleReplies

OUT = Path("public/examples/chit_chat")


def chit_chat_on(tmp_path: Path, url: str, **engine: object) -> Path:
    """A copy of the example task pointed at ``url`` with fast retries."""
    task = yaml.safe_load(CHIT_CHAT.read_text())
    task["engines"] = {"default": {"type": "openai", "model": "sim-model", "base_url": url + "/v1",
                                   "retry_wait": 0.01, "timeout": 0.5, **engine}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(task, sort_keys=False))
    return path


def test_flaky_server_run_completes_and_counts_retries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # ${DGT_DATA_DIR} is relative to the working directory
    empty = json.dumps({"choices": [{"message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}]})
    # Some latency, so that the conversation hit by the slow reply is still needed when its
    # request times out (a faster run reaches N first and cancels it as a spare).
    with LMServer(reply=PlausibleReplies(), latency=0.05) as server:
        # One of each (more at once would rightly trip the circuit breaker tested below).
        server.faults.extend([
            Fault(status=500), Fault(status=429, retry_after=0.05), Fault(status=0),
            Fault(status=200, body='{"choices": [{"mess'), Fault(status=200, delay=1.0),
            Fault(status=503), Fault(status=200, body=empty),
        ])
        path = chit_chat_on(tmp_path, server.url, max_retries=6)
        started = time.monotonic()
        code = main(["--task-paths", str(path), "--num-outputs-to-generate", "5", "--restart",
                     "--output-dir", str(tmp_path / "out"), "--seed", "2", "--quiet", "--concurrency", "2"])
        assert time.monotonic() - started < 60
    assert code == 0
    summary = json.loads((tmp_path / "out" / OUT / "run_summary.json").read_text())
    assert summary["total"] == 5
    retries = summary["engines"]["default"]["retries"]
    for reason in ("http 500", "http 429", "http 503", "timeout", "connection error", "malformed response body"):
        assert retries.get(reason, 0) >= 1, (reason, retries)
    lines = (tmp_path / "out" / OUT / "final_data.jsonl").read_text().splitlines()
    assert len(lines) == 5 and len({json.loads(line)["conversation_id"] for line in lines}) == 5


def test_mostly_failing_server_stops_the_run_early(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    with LMServer() as server:
        server.faults.extend(Fault(status=500) for _ in range(10_000))
        path = chit_chat_on(tmp_path, server.url, max_retries=3)
        started = time.monotonic()
        code = main(["--task-paths", str(path), "--num-outputs-to-generate", "50", "--restart",
                     "--output-dir", str(tmp_path / "out"), "--quiet"])
        elapsed = time.monotonic() - started
        requests = server.stats["chat_requests"]
    assert code == 1 and elapsed < 30
    assert requests < 100  # stopped instead of burning through retries
    err = capsys.readouterr().err
    assert "requests failed" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "out" / OUT / "run_summary.json").read_text())
    assert summary["status"] == "failed" and "requests failed" in summary["error"]


def test_second_run_on_the_same_folder_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    with LMServer(latency=0.05, reply=PlausibleReplies()) as server:
        path = chit_chat_on(tmp_path, server.url)
        args = [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(path), "--num-outputs-to-generate", "200",
                "--output-dir", str(tmp_path / "out"), "--quiet", "--restart"]
        first = subprocess.Popen(args, cwd=REPO)
        lock = tmp_path / "out" / OUT / ".lock"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip()):
            time.sleep(0.05)
        code = main(["--task-paths", str(path), "--num-outputs-to-generate", "200", "--output-dir", str(tmp_path / "out"), "--quiet"])
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 143
    assert code == 2
    assert f"another run (pid {first.pid}) is writing to this folder" in capsys.readouterr().err


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    folder = tmp_path / "out" / OUT
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("999999")  # a pid from a run that died without cleaning up
    with LMServer(reply=PlausibleReplies()) as server:
        code = main(["--task-paths", str(chit_chat_on(tmp_path, server.url)), "--num-outputs-to-generate", "2",
                     "--output-dir", str(tmp_path / "out"), "--quiet"])
    assert code == 0 and len((folder / "final_data.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_gracefully(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    with LMServer(latency=0.05, reply=PlausibleReplies()) as server:
        path = chit_chat_on(tmp_path, server.url)
        process = subprocess.Popen(
            [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(path), "--num-outputs-to-generate", "500",
             "--output-dir", str(tmp_path / "out"), "--restart"],
            cwd=REPO, stderr=subprocess.PIPE, text=True,
        )
        final = tmp_path / "out" / OUT / "final_data.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not final.exists() or not final.read_text()):
            time.sleep(0.05)
        process.send_signal(sig)
        _, err = process.communicate(timeout=30)
    assert process.returncode == code, err[-3000:]
    assert "interrupted: every finished conversation is saved" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "out" / OUT / "run_summary.json").read_text())
    assert summary["status"] == "interrupted"
    lines = final.read_text().splitlines()
    assert summary["total"] == len(lines) >= 1
    assert all(json.loads(line) for line in lines)


def test_ten_random_kills_lose_nothing(tmp_path: Path) -> None:
    """SIGKILL at random moments, resuming each time: exactly N unique records, old ones unchanged."""
    rng = random.Random(1234)
    final = tmp_path / "out" / OUT / "final_data.jsonl"
    n = 30
    with LMServer(latency=0.005, reply=PlausibleReplies()) as server:
        path = chit_chat_on(tmp_path, server.url)
        args = [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(path), "--num-outputs-to-generate", str(n),
                "--output-dir", str(tmp_path / "out"), "--quiet", "--concurrency", "4"]
        kept: list[bytes] = []
        for attempt in range(10):
            process = subprocess.Popen(args + (["--restart"] if attempt == 0 else []), cwd=REPO,
                                       stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.6, 2.5))
            process.send_signal(signal.SIGKILL)
            process.wait()
            now = final.read_bytes().splitlines(keepends=True) if final.exists() else []
            complete = [line for line in now if line.endswith(b"\n")]
            assert complete[: len(kept)] == kept  # nothing finished earlier changed or vanished
            kept = complete
        done = subprocess.run(args, cwd=REPO, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
    lines = final.read_bytes().splitlines(keepends=True)
    assert lines[: len(kept)] == kept and len(lines) == n
    ids = [json.loads(line)["conversation_id"] for line in lines]
    assert len(set(ids)) == n


def test_api_key_never_written_or_logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(REPO)
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    with LMServer(reply=PlausibleReplies()) as server:
        server.faults.extend([Fault(status=500), Fault(status=400)])
        code = main(["--task-paths", str(chit_chat_on(tmp_path, server.url)), "--num-outputs-to-generate", "2",
                     "--output-dir", str(tmp_path / "out"), "--debug", "--restart"])
        sent = [r["headers"].get("authorization") for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert code == 0 and f"Bearer {secret}" in sent  # the key was used...
    captured = capsys.readouterr()
    assert secret not in captured.err + captured.out  # ...but never printed
    for file in (tmp_path / "out").rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes()
