"""``--executor ray`` on a local Ray cluster started once for this module, against two simulated
LM servers: same output as the local executor, an endpoint failing, a worker killed, the driver
killed and resumed. Skipped when Ray is not installed (``pip install 'fms_dgt[ray]'``)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Read when Ray is imported: keep this single-machine test cluster on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")

from conftest import CHIT_CHAT, REPO, count_lines, when_lines  # noqa: E402
from fms_dgt.cli import main  # noqa: E402
from fms_dgt.executors.ray_cluster import RayOptions  # noqa: E402
from fms_dgt.loader import EngineOverride, load_task  # noqa: E402
from fms_dgt.pacing import CONVERSATIONS_PER_SLOT, RAY_AUTO_GUESS  # noqa: E402
from fms_dgt.runner import RunOptions, Runner  # noqa: E402
from fms_dgt.testing.lm_server import LMServer, PlausibleReplies  # noqa: E402
from test_engines import closed_port  # noqa: E402

OUT = Path("public/examples/chit_chat")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """One local cluster for the module (starting one takes seconds); its GCS address."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def servers() -> Iterator[tuple[LMServer, LMServer]]:
    with LMServer(latency=0.01, reply=PlausibleReplies()) as first, \
            LMServer(latency=0.01, reply=PlausibleReplies()) as second:
        yield first, second


def cli_args(out: Path, servers: tuple[LMServer, LMServer], n: int, *extra: str) -> list[str]:
    return [
        "--task-paths", str(CHIT_CHAT), "--num-outputs-to-generate", str(n), "--output-dir", str(out),
        "--engine", "openai", "--model", "sim-model", "--seed", "11", "--quiet",
        "--base-url", servers[0].url + "/v1", "--base-url", servers[1].url + "/v1", *extra,
    ]


def read_output(out: Path, n: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The records, checked: exactly ``n``, unique ids, both files agreeing, valid exchanges."""
    final = [json.loads(line) for line in (out / OUT / "final_data.jsonl").read_text().splitlines()]
    formatted = [json.loads(line) for line in (out / OUT / "formatted_output.jsonl").read_text().splitlines()]
    ids = [r["conversation_id"] for r in final]
    assert len(final) == n and len(set(ids)) == n
    assert [f["conversation_id"] for f in formatted] == ids
    for record, example in zip(final, formatted):
        roles = [m["role"] for m in example["messages"]]
        assert roles[0] == "user" and roles[-1] == "assistant" and len(roles) == 2 * record["num_turns"]
        assert all(a != b for a, b in zip(roles, roles[1:]))
    return final, json.loads((out / OUT / "run_summary.json").read_text())


def wait_for_free_cpus(cpus: int = 2, timeout: float = 30.0) -> None:
    """Workers of a finished or killed driver are gone once their CPUs are free again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < cpus:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) >= cpus, "Ray workers were left behind"


def test_same_count_ids_and_schema_as_the_local_executor(
    ray_address: str, servers: tuple[LMServer, LMServer], tmp_path: Path
) -> None:
    n = 12
    assert main(cli_args(tmp_path / "local", servers, n, "--restart")) == 0
    for server in servers:
        server.reset_stats()
    assert main(cli_args(tmp_path / "ray", servers, n, "--restart", "--executor", "ray", "--workers", "2")) == 0
    requests = sum(server.stats["chat_requests"] for server in servers)
    local, local_summary = read_output(tmp_path / "local", n)
    remote, summary = read_output(tmp_path / "ray", n)
    for a, b in zip(local, remote):
        assert a.keys() == b.keys()
        assert [s.keys() for s in a["steps"][:2]] == [s.keys() for s in b["steps"][:2]]
    no_spares = local_summary["spare"]["conversations"] == 0 == summary["spare"]["conversations"]
    if not local_summary["dropped"] and not summary["dropped"] and no_spares:
        # Same seed, no drops, no spares: the same attempts were kept, so the same conversation ids.
        assert {r["conversation_id"] for r in local} == {r["conversation_id"] for r in remote}
    executor = {k: v for k, v in summary["executor"].items() if k != "start_seconds"}
    assert executor == {"type": "ray", "address": "local", "workers": 2, "nodes": 1,
                        # auto limits: twice RAY_AUTO_GUESS per server (two servers)
                        "conversations_per_worker": CONVERSATIONS_PER_SLOT * RAY_AUTO_GUESS * 2, "workers_lost": 0,
                        "conversations_resent": 0}
    assert summary["executor"]["start_seconds"] > 0
    assert local_summary["executor"] == {"type": "local"}
    # What the workers counted reached the driver's summary.
    assert summary["lm_calls"] > 0 and summary["per_stage"]["lm/assistant/naive"]["calls"] >= n
    endpoints = summary["engines"]["default"]["endpoints"]
    assert all(c["calls"] > 0 for c in endpoints.values())
    # Endpoints count every finished attempt; per_engine only those of finished calls (a spare
    # conversation's call cancelled at exactly N may have finished a failed attempt).
    calls = summary["per_engine"]["default"]["calls"]
    assert calls <= sum(c["calls"] for c in endpoints.values())
    if no_spares:
        assert sum(c["calls"] for c in endpoints.values()) == calls
    if not summary["dropped"] and no_spares:  # nothing cancelled: every request seen was counted
        assert summary["lm_calls"] == requests
    wait_for_free_cpus()


def test_one_endpoint_stopping_mid_run(ray_address: str, servers: tuple[LMServer, LMServer], tmp_path: Path) -> None:
    n = 30
    keep, stop = servers
    stopped_url = stop.url + "/v1"
    watcher = when_lines(tmp_path / OUT / "final_data.jsonl", 5, stop.stop)
    code = main(cli_args(tmp_path, servers, n, "--restart", "--executor", "ray", "--workers", "2", "--concurrency", "6"))
    watcher.join(timeout=5)
    assert code == 0
    _, summary = read_output(tmp_path, n)
    endpoints = summary["engines"]["default"]["endpoints"]
    assert endpoints[stopped_url]["calls"] > 0 and endpoints[stopped_url]["errors"] >= 1
    assert endpoints[keep.url + "/v1"]["errors"] == 0
    wait_for_free_cpus()


async def test_worker_killed_mid_run_loses_nothing(
    ray_address: str, servers: tuple[LMServer, LMServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # ${DGT_DATA_DIR} is relative to the working directory
    n = 30
    urls = tuple(server.url + "/v1" for server in servers)
    task = load_task(CHIT_CHAT, EngineOverride(type="openai", model="sim-model", base_url=urls))
    options = RunOptions(num_outputs=n, output_dir=tmp_path, restart=True, seed=4, concurrency=6,
                         progress=False, executor="ray", executor_options=RayOptions(workers=2))
    runner = Runner(task, options)
    run = asyncio.create_task(runner.run())
    final = tmp_path / OUT / "final_data.jsonl"
    while count_lines(final) < 5 and not run.done():
        await asyncio.sleep(0.02)
    victim = runner.executor.workers[0]  # type: ignore[attr-defined]
    assert victim.in_flight > 0 and victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    result = await asyncio.wait_for(run, timeout=120)
    assert result.status == "completed", result.error
    _, summary = read_output(tmp_path, n)
    assert summary["executor"]["workers_lost"] == 1
    assert summary["executor"]["conversations_resent"] >= 1
    wait_for_free_cpus()


def test_worker_errors_reach_the_driver(ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    code = main(["--task-paths", str(CHIT_CHAT), "--output-dir", str(tmp_path), "--engine", "openai", "--model", "m",
                 "--base-url", url, "--executor", "ray", "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "server unreachable" in err and url in err and "Traceback" not in err
    wait_for_free_cpus()


def test_unreachable_ray_address_fails_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    code = main(["--task-paths", str(CHIT_CHAT), "--output-dir", str(tmp_path), "--engine", "openai", "--model", "m",
                 "--base-url", "http://127.0.0.1:9/v1", "--executor", "ray", "--ray-address", address, "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and time.monotonic() - started < 15
    assert f"cannot reach the Ray cluster at {address}" in err and "Traceback" not in err


def test_driver_killed_then_resumed_loses_nothing(
    ray_address: str, servers: tuple[LMServer, LMServer], tmp_path: Path
) -> None:
    """SIGKILL the driver (a separate process on the module's cluster) mid-run; a second run
    without --restart ends with exactly N, and every record written before the kill is unchanged."""
    n = 40
    final = tmp_path / OUT / "final_data.jsonl"
    args = [sys.executable, "-m", "fms_dgt.public",
            *cli_args(tmp_path, servers, n, "--executor", "ray", "--ray-address", ray_address, "--workers", "2",
                      "--concurrency", "4")]
    process = subprocess.Popen([*args, "--restart"], cwd=REPO, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and count_lines(final) < 5 and process.poll() is None:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        try:  # anything the driver started in its session (it joined a cluster: nothing, normally)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    complete = [line for line in final.read_bytes().splitlines(keepends=True) if line.endswith(b"\n")]
    assert 5 <= len(complete) < n
    wait_for_free_cpus()  # the killed driver's workers died with it
    resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    after = final.read_bytes().splitlines(keepends=True)
    assert after[: len(complete)] == complete
    read_output(tmp_path, n)
    wait_for_free_cpus()


def test_own_local_cluster_stops_gracefully_on_sigterm(servers: tuple[LMServer, LMServer], tmp_path: Path) -> None:
    """Without --ray-address the driver starts its own cluster; SIGTERM still saves everything
    finished (exit 143, status interrupted) and no process of that cluster is left running."""
    final = tmp_path / OUT / "final_data.jsonl"
    args = [sys.executable, "-m", "fms_dgt.public",
            *cli_args(tmp_path, servers, 500, "--restart", "--executor", "ray", "--workers", "1", "--concurrency", "2")]
    process = subprocess.Popen(args, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and count_lines(final) < 3 and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 143, err
        assert "interrupted: every finished conversation is saved" in err and "Traceback" not in err
        summary = json.loads((tmp_path / OUT / "run_summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["total"] == count_lines(final) >= 3
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _session_alive(process.pid):
            time.sleep(0.2)
        assert not _session_alive(process.pid), "processes of the run's Ray cluster were left running"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _session_alive(session: int) -> bool:
    """Is any process (not a zombie) left in the process group the driver led?"""
    result = subprocess.run(["ps", "-eo", "pgid=,stat="], capture_output=True, text=True, check=True)
    return any(int(pgid) == session and not stat.startswith("Z")
               for pgid, stat in (line.split() for line in result.stdout.splitlines()))
