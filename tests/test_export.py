"""python -m fms_dgt.export: the hf dataset read back with datasets.load_dataset, ShareGPT and OpenAI
lines in their documented shapes, the split, the errors, and --push-to-hub up to the upload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fms_dgt import export as export_module
from fms_dgt.export import main
from viewer_output import make_output

datasets = pytest.importorskip("datasets", reason="the [hf] extra (.ci/run installs it)")
huggingface_hub = pytest.importorskip("huggingface_hub", reason="the [hf] extra (.ci/run installs it)")


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
async def folder(tmp_path: Path) -> Path:
    return (await make_output(tmp_path / "run", n=10)).output_dir


def test_hf_export_loads_and_its_messages_round_trip(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "hf"
    assert main([str(folder), "--format", "hf", "--out", str(out), "--validation-fraction", "0.3",
                 "--seed", "4", "--license", "apache-2.0"]) == 0
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"}
    assert (len(loaded["train"]), len(loaded["validation"])) == (7, 3)
    formatted = {r["conversation_id"]: r["messages"] for r in jsonl(folder / "formatted_output.jsonl")}
    seen = {}
    for split in ("train", "validation"):
        for row in loaded[split]:
            seen[row["conversation_id"]] = row["messages"]
    assert seen == formatted  # every conversation once, its messages as in formatted_output.jsonl
    assert next(iter(formatted.values()))[0]["role"] == "system"  # the shown system prompt is carried
    row = loaded["train"][0]
    assert row["num_turns"] >= 2 and row["persona"] and row["scenario"]
    assert json.loads(row["judge_scores"])["helpfulness"] in (1, 2, 3)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: apache-2.0\n")
    for text in ("| train | 7 |", "| validation | 3 |", "models: scripted (scripted engine)\n", "lm/flow_controller",
                 "| exchanges | conversations |", "dropped in the last run, by reason | judge_helpfulness_below_1"):
        assert text in card


def test_the_split_is_seeded(folder: Path, tmp_path: Path) -> None:
    ids = []
    for name in ("a", "b", "c"):
        seed = "1" if name != "c" else "2"
        assert main([str(folder), "--format", "openai", "--out", str(tmp_path / name),
                     "--validation-fraction", "0.5", "--seed", seed]) == 0
        ids.append(json.dumps(jsonl(tmp_path / name / "validation.jsonl")))
    assert ids[0] == ids[1] != ids[2]


def test_openai_lines_have_the_fine_tuning_shape(folder: Path, tmp_path: Path) -> None:
    assert main([str(folder), "--format", "openai", "--out", str(tmp_path / "oa")]) == 0
    assert not (tmp_path / "oa" / "validation.jsonl").exists()
    lines = jsonl(tmp_path / "oa" / "train.jsonl")
    formatted = jsonl(folder / "formatted_output.jsonl")
    assert [line["messages"] for line in lines] == [r["messages"] for r in formatted]
    for line in lines:
        assert list(line) == ["messages"]  # the API rejects other keys
        roles = [m["role"] for m in line["messages"]]
        assert roles[0] == "system" and roles[1:] == ["user", "assistant"] * ((len(roles) - 1) // 2)
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in line["messages"])


def test_sharegpt_lines_have_from_and_value(folder: Path, tmp_path: Path) -> None:
    assert main([str(folder), "--format", "sharegpt", "--out", str(tmp_path / "sg")]) == 0
    lines = jsonl(tmp_path / "sg" / "train.jsonl")
    formatted = {r["conversation_id"]: r["messages"] for r in jsonl(folder / "formatted_output.jsonl")}
    names = {"system": "system", "user": "human", "assistant": "gpt"}
    for line in lines:
        assert set(line) == {"id", "conversations"}
        assert line["conversations"] == [
            {"from": names[m["role"]], "value": m["content"]} for m in formatted[line["id"]]
        ]
        assert [t["from"] for t in line["conversations"][:3]] == ["system", "human", "gpt"]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "nope"), "--format", "openai", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope'}: no such folder\n"
    assert main([str(tmp_path), "--format", "openai", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path}: no final_data.jsonl here\n"
    (tmp_path / "final_data.jsonl").write_text('{"task_name": "t"}\n')
    assert main([str(tmp_path), "--format", "sharegpt", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'final_data.jsonl'}:1: not a conversation record")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--format", "csv", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--format", "openai", "--out", "x", "--validation-fraction", "1.5"])
    assert exit_info.value.code == 2


def test_missing_extra_says_how_to_install_it(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    assert main([str(folder), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert capsys.readouterr().err == "error: --format hf needs the datasets library: pip install 'fms_dgt[hf]'\n"


def test_push_to_hub_calls_the_upload(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def create_repo(self: Any, repo_id: str, **kwargs: Any) -> None:
        calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self: Any, **kwargs: Any) -> Any:
        calls.append(("upload_folder", kwargs))
        return type("Info", (), {"commit_url": f"https://hub.example/{kwargs['repo_id']}/commit/1"})()

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    out = tmp_path / "hf"
    assert main([str(folder), "--format", "hf", "--out", str(out), "--push-to-hub", "me/chats", "--private"]) == 0
    assert calls[0] == ("create_repo", {"repo_id": "me/chats", "repo_type": "dataset", "private": True, "exist_ok": True})
    name, upload = calls[1]
    assert name == "upload_folder" and upload["folder_path"] == str(out) and upload["repo_type"] == "dataset"
    assert sorted(p.name for p in Path(upload["folder_path"]).rglob("*.parquet")) == ["train-00000-of-00001.parquet"]
    assert "pushed to https://hub.example/me/chats/commit/1" in capsys.readouterr().out


def test_push_to_hub_offline_is_a_one_line_error(folder: Path, tmp_path: Path) -> None:
    # HF_HUB_OFFLINE=1: huggingface_hub's own offline mode blocks the request to the Hub.
    out = tmp_path / "hf"
    run = subprocess.run(
        [sys.executable, "-m", "fms_dgt.export", str(folder), "--format", "hf", "--out", str(out),
         "--push-to-hub", "me/chats"],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
        timeout=120,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: push to me/chats failed: ")
    assert "offline mode is enabled" in run.stderr and f"(the export is in {out})" in run.stderr
    assert (out / "README.md").is_file()


def test_push_needs_hf_format(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        export_module.main([str(folder), "--format", "openai", "--out", str(tmp_path), "--push-to-hub", "me/x"])
    assert exit_info.value.code == 2
