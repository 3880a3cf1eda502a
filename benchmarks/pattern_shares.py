"""Do the drawn pattern shares follow the weights? The README's command on a simulated server.

Starts ``python -m fms_dgt.testing.lm_server --plausible`` in another process (its eligibility
answers are random subsets of the offered patterns, a hard case for plain weighted sampling),
runs the chit-chat task through the CLI exactly as the README says (``--engine openai
--base-url URL --model m``), and prints the report's pattern table, its largest gap, the persona
coverage and the quality gate's rejections.

    python benchmarks/pattern_shares.py             # N=1000, about 3-4 minutes
    python benchmarks/pattern_shares.py --n 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    server = subprocess.Popen(
        [sys.executable, "-m", "fms_dgt.testing.lm_server", "--plausible", "--slots", "64"],
        stdout=subprocess.PIPE, text=True, cwd=REPO,
    )
    try:
        assert server.stdout is not None
        url = json.loads(server.stdout.readline())["url"]
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "fms_dgt.public", "--task-paths", "tasks/public/examples/chit_chat/task.yaml",
                 "--num-outputs-to-generate", str(args.n), "--restart", "--engine", "openai",
                 "--base-url", f"{url}/v1", "--model", "m", "--output-dir", tmp, "--seed", str(args.seed), "--quiet"],
                cwd=REPO, check=True,
            )
            folder = Path(tmp) / "public/examples/chit_chat"
            report = json.loads((folder / "report.json").read_text())
            markdown = (folder / "report.md").read_text()
    finally:
        server.terminate()
        server.wait(timeout=10)
    table = markdown.split("## Flow-controller patterns", 1)[1].split("## ", 1)[0]
    print(f"N={report['conversations']}, seed {args.seed}")
    print(table.strip())
    personas = report["personas"]
    print(f"\npersonas: {personas['distinct_used']} of {personas['in_file']}")
    print(f"quality gate rejections: {report['quality_gate']['rejected'] or 'none'}")


if __name__ == "__main__":
    main()
