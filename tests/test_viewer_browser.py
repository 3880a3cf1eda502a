"""The viewer in a real browser: headless Chromium (the distribution's package) driven by Playwright.

Skips only on a machine without Chromium or Playwright outside CI; under CI (``CI`` set) a missing
browser is a failure, so the test cannot silently stop running there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import ChitChatResponder, task_dict, write_task
from fms_dgt.engines.scripted import RecordedCall, ScriptedEngine
from fms_dgt.loader import load_task
from fms_dgt.runner import RunOptions, Runner
from viewer_output import REJECTED_DRAFT, make_output

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _playwright() -> Any:
    missing = not Path(CHROMIUM).exists()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright, missing = None, True
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs Chromium at {CHROMIUM} and playwright (.ci/run installs both)")
        pytest.skip("needs Chromium (apt-get install chromium) and playwright (pip install playwright)")
    return sync_playwright


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    # Before the browser starts: Playwright's sync API runs its own event loop on this thread.
    return asyncio.run(make_output(tmp_path / "run", n=12)).output_dir


@pytest.fixture
def page(tmp_path: Path) -> Any:
    sync_playwright = _playwright()
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
            args=FLAGS, viewport={"width": 1400, "height": 1000},
        )
        try:
            yield browser.new_page()
        finally:
            browser.close()


def test_viewer_in_chromium(tmp_path: Path, folder: Path, page: Any) -> None:
    viewer = folder / "viewer.html"  # written by the run itself
    assert viewer.is_file()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(viewer.resolve().as_uri())
    page.wait_for_function("window.dgtViewerReady === true")
    count = page.locator("#count-text")
    assert count.get_attribute("data-count") == "12"
    assert count.inner_text() == "12 of 12 conversations"

    # a filter: the conversations of 4 exchanges only
    page.select_option("select[data-filter=turns]", "4")
    shown = int(count.get_attribute("data-count"))
    assert 0 < shown < 12
    rows = page.locator("#list .row")
    assert rows.count() == shown
    lengths = rows.evaluate_all("rows => rows.map(r => r.querySelector('.chip').textContent)")
    assert lengths == ["4 ex."] * shown

    # free text finds the one conversation with the <script> reply; it opens as chat bubbles
    page.click("#reset")
    page.fill("input[data-filter=q]", "warm soil")
    page.wait_for_function("document.querySelector('#count-text').dataset.count === '1'")
    page.locator("#list .row").first.click()
    roles = page.locator("#view .msg").evaluate_all("nodes => nodes.map(n => n.dataset.role)")
    assert roles[0] == "system"
    body = roles[1:]
    assert body and len(body) % 2 == 0
    assert body == ["user", "assistant"] * (len(body) // 2)
    # the reply is shown as text and did not run
    assert page.evaluate("window.__dgtPwned") is None
    bubble = page.locator("#view .msg.assistant .bubble", has_text="warm soil")
    assert "<script>window.__dgtPwned = true;</script>" in bubble.inner_text()
    assert page.locator("#view script").count() == 0
    # persona, scenario and provenance beside the user turns
    assert page.locator("#view .card").first.inner_text().lower().startswith("persona")
    assert page.locator("#view .side .pattern").count() == len(body) // 2

    # a conversation with a rejected draft: collapsed, then expanded
    page.click("#reset")
    page.fill("input[data-filter=q]", REJECTED_DRAFT.lower())
    page.wait_for_function("Number(document.querySelector('#count-text').dataset.count) > 0")
    page.locator("#list .row").first.click()
    details = page.locator("details.rejected", has_text=REJECTED_DRAFT).first
    draft = details.locator(".draft", has_text=REJECTED_DRAFT)
    assert not draft.is_visible()
    details.locator("summary").click()
    assert draft.is_visible() and draft.inner_text() == REJECTED_DRAFT
    # its reason (in the assistant's voice; a question, when it was meant as a goodbye) is shown
    # beside it and in the summary line
    reason = details.locator("li", has_text=REJECTED_DRAFT).locator(".chip").inner_text()
    assert reason in ("sounds_like_assistant", "closing_asks_question")
    assert reason in details.locator("summary").inner_text()
    page.screenshot(path=str(tmp_path / "conversation.png"), full_page=False)

    # judge score filter, then the report tab with its SVG charts, drops by reason included
    page.click("#reset")
    page.select_option("select[data-filter=rubric]", "helpfulness")
    page.select_option("select[data-filter=score]", "1")
    low = int(count.get_attribute("data-count"))
    assert 0 < low < 12
    page.click("#tab-report")
    assert page.locator("#report svg").count() >= 4
    drops = page.locator("[data-chart^='drops and rescues']")
    assert "judge_helpfulness_below_1" in drops.locator("svg").text_content()
    assert page.locator("[data-chart^='judge helpfulness']").count() == 1
    page.set_viewport_size({"width": 1400, "height": 2200})  # the report scrolls inside its pane
    page.screenshot(path=str(tmp_path / "report.png"))
    assert errors == []
    print(f"screenshots: {tmp_path / 'conversation.png'} {tmp_path / 'report.png'}")


class EmptyThirdReply(ChitChatResponder):
    """Every assistant reply after the second is empty: the conversation is rescued at two exchanges."""

    def __call__(self, call: RecordedCall) -> Any:
        if call.stage == "lm/assistant/naive" and self.assistant_count >= 2:
            return "   "
        return super().__call__(call)


@pytest.fixture
def rescued(tmp_path: Path) -> Path:
    """The output folder of one conversation rescued at two exchanges (made before the browser starts)."""
    path = write_task(tmp_path, task_dict(tmp_path))
    runner = Runner(load_task(path), RunOptions(num_outputs=1, output_dir=tmp_path / "out", seed=3, progress=False),
                    engines={"default": ScriptedEngine(responder=EmptyThirdReply())})
    runner.concurrency = 1
    return asyncio.run(runner.run()).output_dir


def test_viewer_shows_the_cut_exchange_of_a_rescued_conversation(rescued: Path, page: Any) -> None:
    page.goto((rescued / "viewer.html").resolve().as_uri())
    page.wait_for_function("window.dgtViewerReady === true")
    page.locator("#list .row").first.click()
    assert page.locator("#view .msg.user").count() == 2  # the chat: two exchanges
    cut = page.locator("details.rejected[data-cut=assistant_empty]")
    assert "cut exchange, not in the chat: assistant_empty (lm/assistant/naive)" in cut.locator("summary").inner_text()
    cut.locator("summary").click()
    items = cut.locator("li").evaluate_all("items => items.map(i => i.querySelector('.chip').textContent)")
    assert items == ["user", "empty", "empty", "empty"]  # the third user message, then the three empty drafts
