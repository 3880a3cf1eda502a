"""viewer.html without a browser: what is embedded, how it is escaped, and the command's errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fms_dgt.view import main, write_viewer
from viewer_output import SCRIPT_REPLY, make_output


def embedded(page: str) -> dict:
    block = re.search(r'<script id="dgt-data" type="application/json">(.*?)</script>', page, re.S)
    assert block is not None
    return json.loads(block.group(1))


async def test_the_run_writes_a_page_with_every_record_and_the_report(tmp_path: Path) -> None:
    folder = (await make_output(tmp_path, n=6)).output_dir
    page = (folder / "viewer.html").read_text()
    data = embedded(page)
    ids = [json.loads(line)["conversation_id"] for line in (folder / "final_data.jsonl").read_text().splitlines()]
    assert [r["conversation_id"] for r in data["records"]] == ids
    assert data["report"]["conversations"] == 6 and data["report_source"] == "from report.json"
    assert data["summary"]["total"] == 6
    # the reply's markup is only in the JSON, escaped: the page holds exactly its own two scripts
    assert SCRIPT_REPLY in json.dumps(data["records"])
    assert "__dgtPwned" in page and "<script>window.__dgtPwned" not in page
    assert page.count("</script>") == 2 and page.count("<script") == 2
    assert "cdn" not in page.lower() and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


async def test_a_torn_last_line_is_left_out(tmp_path: Path) -> None:
    folder = (await make_output(tmp_path, n=3)).output_dir
    final = folder / "final_data.jsonl"
    first = final.read_text().splitlines()[0]
    final.write_text(final.read_text() + first[:50])  # a kill in the middle of a line
    data = embedded(write_viewer(folder).read_text())
    assert len(data["records"]) == 3
    # the report cannot read the torn line; the page still shows every whole record
    assert data["report_source"].startswith("not available") and data["report"] == {}


async def test_a_stale_report_is_computed_again(tmp_path: Path) -> None:
    folder = (await make_output(tmp_path, n=3)).output_dir
    final = folder / "final_data.jsonl"
    final.write_text("".join(final.read_text().splitlines(keepends=True)[:2]))
    data = embedded(write_viewer(folder).read_text())
    assert data["report_source"].startswith("computed from final_data.jsonl")
    assert data["report"]["conversations"] == len(data["records"]) == 2


def test_command_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing'}: no such folder"
    assert main([str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path}: no final_data.jsonl here"


async def test_command_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = (await make_output(tmp_path, n=2)).output_dir
    (folder / "viewer.html").unlink()
    assert main([str(folder)]) == 0
    assert (folder / "viewer.html").is_file()
    assert capsys.readouterr().out.startswith(f"wrote {folder / 'viewer.html'}")
