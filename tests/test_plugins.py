"""A stage, an engine and an executor from another package, found through the ``fms_dgt.plugins`` entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
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


def test_a_plugin_adds_an_executor_with_its_own_flag(tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    done = run_cli(tmp_path, "--task-paths", str(task(tmp_path)), "--num-outputs-to-generate", "3",
                   "--output-dir", str(tmp_path / "out"), "--seed", "3", "--quiet",
                   "--executor", "hello/one-by-one", "--hello-pause", "0.01")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out/tests/plugin"
    assert len((out / "formatted_output.jsonl").read_text().splitlines()) == 3
    summary = json.loads((out / "run_summary.json").read_text())
    # one at a time: no spare conversation was started, so exactly the three kept ones ran
    assert summary["executor"] == {"type": "hello/one-by-one", "pause": 0.01, "conversations_run": 3}
    assert summary["attempts"] == 3


def test_an_executor_flag_needs_its_executor_and_an_unknown_executor_lists_the_known(tmp_path: Path) -> None:
    install_plugin(tmp_path / "site")
    path = str(task(tmp_path))
    done = run_cli(tmp_path, "--task-paths", path, "--hello-pause", "1")
    assert done.returncode == 2 and "error: --hello-pause needs --executor hello/one-by-one" in done.stderr
    done = run_cli(tmp_path, "--task-paths", path, "--executor", "hello/one-by-one", "--workers", "2")
    assert done.returncode == 2 and "error: --workers needs --executor ray" in done.stderr
    done = run_cli(tmp_path, "--task-paths", path, "--executor", "hello/one-by-one", plugins=False)
    assert done.returncode == 2
    assert "invalid choice: 'hello/one-by-one' (choose from 'local', 'ray')" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_executor_from_python_is_a_config_error_naming_the_known(small_task: Path) -> None:
    from fms_dgt import ConfigError, RunOptions, load_task
    from fms_dgt.runner import Runner

    with pytest.raises(ConfigError, match=r"unknown executor 'dask'; known: local, ray"):
        Runner(load_task(small_task), RunOptions(num_outputs=1, executor="dask"))
