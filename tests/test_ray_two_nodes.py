"""``--executor ray`` on a two-node Ray cluster made on this machine: a head node and a second
raylet, each with one CPU and a resource of its own, all on 127.0.0.1. The workers must land on
both nodes, the run must end with exactly N unique records, and the simulated server must never
see more requests at once than the workers' engine limits add up to. Skipped when Ray is not
installed (``pip install 'fms_dgt[ray]'``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

# Read when Ray is imported: keep the cluster on 127.0.0.1.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

from conftest import CHIT_CHAT, REPO  # noqa: E402
from fms_dgt.cli import main  # noqa: E402
from fms_dgt.testing.lm_server import LMServer, PlausibleReplies  # noqa: E402
from test_ray_executor import read_output  # noqa: E402

WORKERS = 2
# Pinned requests in flight per worker and server; the sum over the workers bounds the server.
MAX_CONCURRENCY = 3


@pytest.fixture
def two_nodes() -> Iterator[str]:
    """A head node (resource node_a) and a second raylet (node_b), one CPU each; their address."""
    assert not ray.is_initialized(), "another Ray connection is open in this process"
    common = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024}
    cluster = cluster_utils.Cluster(
        initialize_head=True, head_node_args={**common, "resources": {"node_a": 1}, "include_dashboard": False}
    )
    started: set[int] = set()
    try:
        cluster.add_node(**common, resources={"node_b": 1})
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        nodes = [cluster.head_node, *cluster.worker_nodes]
        roots = {info.process.pid for node in nodes for infos in node.all_processes.values() for info in infos}
        assert len(roots) > 2, "cannot see the nodes' processes"  # raylets, GCS, agents, ...
        started = descendants(roots)  # the nodes' processes, their workers and agents
        cluster.shutdown()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(started):
        time.sleep(0.2)
    assert not alive(started), f"Ray processes left running: {sorted(alive(started))}"


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended while we looked
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def descendants(roots: set[int]) -> set[int]:
    """``roots`` and every process below them."""
    table = _processes()
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


def test_workers_on_two_nodes_share_the_server_within_their_limits(
    two_nodes: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # ${DGT_DATA_DIR} is relative to the working directory
    n = 24
    with LMServer(latency=0.02, slots=64, reply=PlausibleReplies()) as server:
        task = yaml.safe_load(CHIT_CHAT.read_text())
        task["engines"] = {"default": {"type": "openai", "model": "sim-model", "base_url": server.url + "/v1",
                                       "max_concurrency": MAX_CONCURRENCY}}
        path = tmp_path / "task.yaml"
        path.write_text(yaml.safe_dump(task, sort_keys=False))
        code = main(["--task-paths", str(path), "--num-outputs-to-generate", str(n), "--restart",
                     "--output-dir", str(tmp_path), "--seed", "5", "--quiet", "--executor", "ray",
                     "--ray-address", two_nodes, "--workers", str(WORKERS)])
        stats = server.stats
    assert code == 0
    _, summary = read_output(tmp_path, n)  # exactly n records, unique ids, valid exchanges
    assert summary["executor"]["workers"] == WORKERS and summary["executor"]["nodes"] == 2
    assert summary["executor"]["workers_lost"] == 0
    # Each worker holds at most MAX_CONCURRENCY requests to the server; together they did exceed
    # one worker's share, so both sent at once and the bound is their sum, not one worker's.
    assert MAX_CONCURRENCY < stats["peak_concurrency"] <= WORKERS * MAX_CONCURRENCY
    # What the workers counted reached the driver's summary; a spare conversation cancelled at
    # exactly N may have had a request on its way, which no one counts as a call.
    assert summary["lm_calls"] <= stats["chat_requests"]
    if not summary["dropped"] and not summary["spare"]["conversations"]:
        assert summary["lm_calls"] == stats["chat_requests"]
    assert not ray.is_initialized()  # the driver disconnected; the fixture stops the nodes
