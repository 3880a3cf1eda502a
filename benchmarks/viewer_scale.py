"""The viewer at 10,000 conversations: page size, time to write it, and time to use it in Chromium.

1. The chit-chat task runs through the CLI on the simulated LM server (no latency) for ``--seed-n``
   conversations; their records are then repeated, with fresh ids, up to ``--n`` (generating all
   10,000 would only cost minutes of CPU on a shared machine; the page does not care);
2. ``python -m fms_dgt.view FOLDER`` (the README's command) writes viewer.html, timed twice: with
   report.json older than the data (the report is computed again) and after
   ``python -m fms_dgt.report FOLDER`` (report.json up to date, as at the end of a run);
3. headless Chromium (the distribution's package, driven by Playwright) opens it from file:// and
   times: ready, a filter, a free-text search, opening a conversation; and counts the list rows in
   the DOM (only the visible ones should be there).

    python benchmarks/viewer_scale.py                 # 10,000 conversations; about 1 minute
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks/public/examples/chit_chat/task.yaml"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def make_folder(root: Path, seed_n: int, n: int) -> Path:
    server = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--latency", "0", "--slots", "64", "--plausible"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        url = json.loads(server.stdout.readline())["url"]  # type: ignore[union-attr]
        subprocess.run(
            [sys.executable, "-m", "fms_dgt.public", "--task-paths", str(TASK), "--num-outputs-to-generate",
             str(seed_n), "--engine", "openai", "--model", "m", "--base-url", url + "/v1", "--output-dir", str(root),
             "--restart", "--quiet", "--seed", "1"],
            check=True, cwd=REPO,
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    folder = root / "public/examples/chit_chat"
    records = [json.loads(line) for line in (folder / "final_data.jsonl").read_text().splitlines()]
    with (folder / "final_data.jsonl").open("w") as out:
        for i in range(n):
            record = dict(records[i % len(records)], conversation_id=str(uuid.UUID(int=i, version=4)))
            out.write(json.dumps(record) + "\n")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed-n", type=int, default=200)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_folder(Path(tmp) / "out", args.seed_n, args.n)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fms_dgt.view", str(folder)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        write_s = time.perf_counter() - t0  # report.json is older than the data: computed again
        subprocess.run([sys.executable, "-m", "fms_dgt.report", str(folder)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fms_dgt.view", str(folder)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
        write_fresh_s = time.perf_counter() - t0  # as at the end of a run: report.json is up to date
        page_path = folder / "viewer.html"
        size_mb = page_path.stat().st_size / 1e6
        data_mb = (folder / "final_data.jsonl").stat().st_size / 1e6
        with sync_playwright() as pw:
            browser = pw.chromium.launch_persistent_context(
                str(Path(tmp) / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1400, "height": 1000},
            )
            page = browser.new_page()
            t0 = time.perf_counter()
            page.goto(page_path.as_uri())
            page.wait_for_function("window.dgtViewerReady === true", timeout=120_000)
            ready_s = time.perf_counter() - t0
            rows_in_dom = page.locator("#list .row").count()
            t0 = time.perf_counter()
            page.select_option("select[data-filter=turns]", "3")
            filter_ms = (time.perf_counter() - t0) * 1000
            shown = page.locator("#count-text").get_attribute("data-count")
            page.click("#reset")
            t0 = time.perf_counter()
            page.fill("input[data-filter=q]", "weekend")
            page.wait_for_function("document.querySelector('#count-text').dataset.count !== String(%d)" % args.n)
            search_ms = (time.perf_counter() - t0) * 1000  # includes the 150 ms typing debounce
            found = page.locator("#count-text").get_attribute("data-count")
            t0 = time.perf_counter()
            page.locator("#list .row").first.click()
            page.wait_for_selector("#view .msg")
            open_ms = (time.perf_counter() - t0) * 1000
            heap_mb = page.evaluate("performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null")
            browser.close()
    print(json.dumps({
        "conversations": args.n, "final_data_mb": round(data_mb, 1), "viewer_html_mb": round(size_mb, 1),
        "write_viewer_s": round(write_s, 2), "write_viewer_fresh_report_s": round(write_fresh_s, 2), "page_ready_s": round(ready_s, 2), "list_rows_in_dom": rows_in_dom,
        "filter_ms": round(filter_ms), "filter_shown": shown, "first_search_ms": round(search_ms),
        "search_found": found, "open_conversation_ms": round(open_ms),
        "js_heap_mb": round(heap_mb, 1) if heap_mb else None,
    }))


if __name__ == "__main__":
    main()
