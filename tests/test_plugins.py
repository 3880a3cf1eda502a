"""A stage and an engine from another package, found through the ``fms_dgt.plugins`` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PLUGIN = Path(__file__).parent / "plugin_example" / "fms_dgt_hello.py"


def install_plugin(site: Path) -> None:
    """Install the example plugin the way pip would lay it out: the module and its dist-info."""
    site.mkdir(parents=True)
    shutil.copy(PLUGIN, site / PLUGIN.name)
    info = site / "fms_dgt_hello-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fms-dgt-hello\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fms_dgt.plugins]\nhello = fms_dgt_hello\n")


def task(tmp_path: Path) -> Path:
    data = {
        "task_name": "tests/plugin",
        "min_turns": 2,
        "max_turns": 2,
        "engines": {"default": {"type": "hello/echo", "prefix": "ECHO"}},
        "iteration_stages": [{"name": "hello/exchange", "opener": "hi"}],
        # every conversation of this plugin is the same: keep them (the gate would reject copies)
        "quality": {"near_duplicate_threshold": None},
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(tmp_path: Path, *args: str, plugins: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    env.pop("FMS_DGT_DISABLE_PLUGINS", None)
    if not plugins:
        env["FMS_DGT_DISABLE_PLUGINS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "fms_dgt.public", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_plugin_adds_a_stage_and_an_engine(tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    done = run_cli(tmp_path, "--task-paths", str(task(tmp_path)), "--num-outputs-to-generate", "2",
                   "--output-dir", str(tmp_path / "out"), "--seed", "3", "--quiet")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out/tests/plugin"
    formatted = [json.loads(line) for line in (out / "formatted_output.jsonl").read_text().splitlines()]
    assert len(formatted) == 2
    assert [m["content"] for m in formatted[0]["messages"]] == ["hi 1", "ECHO: hi 1", "hi 2", "ECHO: hi 2"]
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["engines"]["default"]["type"] == "hello/echo"
    # two exchanges of one call each, in every conversation started (spares included)
    assert summary["per_stage"]["hello/exchange"]["calls"] == 2 * summary["attempts"]


def test_without_the_plugin_the_task_names_the_unknown_stage(tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    path = task(tmp_path)
    done = run_cli(tmp_path, "--task-paths", str(path), "--output-dir", str(tmp_path / "out"), plugins=False)
    assert done.returncode == 2
    assert "unknown engine type 'hello/echo'" in done.stderr and "unknown stage 'hello/exchange'" in done.stderr
    assert f"{path}:" in done.stderr and "Traceback" not in done.stderr
