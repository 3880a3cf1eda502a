"""Can the embedded model tell the writers apart at all, at any threshold? The verifier's score, not its verdict.

The verifier (``fms_dgt.stages.verifier``) answers ``{"writer": "human" | "assistant"}``, which is
the more likely of the two words. If the model leaned to one word but still ranked the drafts
well, a threshold on the two words' log-probabilities would fix the lean. This script asks the
verifier's own prompt about every draft of ``tests/data/verifier_labels.jsonl`` and reads the
log-probabilities of the answer's first token (the model's own distribution, before the JSON
constraint; llama.cpp's ``top_logprobs``). The score is ``log P(human) - log P(assistant)``; a
draft is the more suspect the more its score points to the other role. Printed per role: the
area under the ROC curve (0.5 is chance), precision and recall of the plain verdict (score 0),
and of a threshold picked on one half of the drafts and measured on the other (2-fold, 50
shuffles), for ``bad``.

    python benchmarks/verifier_scores.py          # about 8 minutes on the 2-core AMD machine
    python benchmarks/verifier_scores.py --limit 10

The engine's typed result carries no log-probabilities (nothing in the product reads them), so
this reads the library's raw reply through the loaded engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from fms_dgt.engines.local import LocalConfig, LocalEngine
from fms_dgt.engines.request import Request
from fms_dgt.stages.verifier import VerifierOptions, WriterVerdict, judge_messages

LABELS = Path(__file__).resolve().parent.parent / "tests/data/verifier_labels.jsonl"


def score(server: Any, draft: str) -> float | None:
    """log P(human) - log P(assistant) at the answer's first word, or None if neither is in the top 5."""
    params = {"temperature": 0.0, "max_tokens": VerifierOptions().max_tokens, "logprobs": True, "top_logprobs": 5}
    reply = server.handle_chat_completions(LocalEngine.body(Request(judge_messages(draft), WriterVerdict, params)))
    for token in reply["choices"][0]["logprobs"]["content"]:
        word = token["token"].strip()
        if word in ("human", "assistant"):  # the first token that is one of the two words
            top = {t["token"].strip(): t["logprob"] for t in reversed(token["top_logprobs"])}  # best wins
            return top.get("human", -30.0) - top.get("assistant", -30.0)
    return None


def suspicion(row: dict[str, Any]) -> float:
    """Higher when the score points to the writer the draft should not have."""
    return -row["score"] if row["role"] == "user" else row["score"]


def auc(rows: list[dict[str, Any]]) -> float:
    bad = [suspicion(r) for r in rows if r["label"] == "bad"]
    good = [suspicion(r) for r in rows if r["label"] == "good"]
    return sum((b > g) + 0.5 * (b == g) for b in bad for g in good) / (len(bad) * len(good))


def precision_recall(rows: list[dict[str, Any]], threshold: float) -> tuple[int, int, int]:
    """(bad flagged, flagged, bad) with a draft flagged when its suspicion exceeds ``threshold``."""
    flagged = [r for r in rows if suspicion(r) > threshold]
    return sum(r["label"] == "bad" for r in flagged), len(flagged), sum(r["label"] == "bad" for r in rows)


def cross_validated(rows: list[dict[str, Any]], shuffles: int = 50) -> tuple[float, float]:
    """Precision and recall of an F1-best threshold picked on one half and applied to the other."""
    rng = random.Random(0)
    hits = flagged = bad = 0
    for _ in range(shuffles):
        order = rows[:]
        rng.shuffle(order)
        half = len(order) // 2
        for train, test in ((order[:half], order[half:]), (order[half:], order[:half])):
            def f1(threshold: float) -> float:
                h, f, b = precision_recall(train, threshold)
                return 2 * h / (f + b) if f + b else 0.0
            best = max(sorted({suspicion(r) - 1e-9 for r in train}), key=f1)
            h, f, b = precision_recall(test, best)
            hits, flagged, bad = hits + h, flagged + f, bad + b
    return hits / flagged if flagged else 0.0, hits / bad


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-1.5b")
    parser.add_argument("--limit", type=int, help="only the first N drafts")
    args = parser.parse_args()
    rows = [json.loads(line) for line in LABELS.read_text().splitlines() if line.strip()][: args.limit]
    engine = LocalEngine("judge", LocalConfig(type="local", model=args.model, max_concurrency=1))
    await engine.check()
    t0 = time.perf_counter()
    for row in rows:
        row["score"] = score(engine._server, row["draft"])  # noqa: SLF001 - see the docstring
    seconds = time.perf_counter() - t0
    await engine.aclose()
    unscored = sum(r["score"] is None for r in rows)
    print(f"# {args.model}: {len(rows)} drafts in {seconds:.0f} s, {unscored} without a score")
    for role in ("user", "assistant"):
        mine = [r for r in rows if r["role"] == role and r["score"] is not None]
        if not any(r["label"] == "bad" for r in mine) or not any(r["label"] == "good" for r in mine):
            continue
        hits, flagged, bad = precision_recall(mine, 0.0)
        p, r = cross_validated(mine)
        print(json.dumps({
            "role": role, "drafts": len(mine), "bad": bad, "auc": round(auc(mine), 3),
            "verdict_precision": round(hits / flagged, 2) if flagged else None,
            "verdict_recall": round(hits / bad, 2), "verdict_flagged": flagged,
            "threshold_precision_2fold": round(p, 2), "threshold_recall_2fold": round(r, 2),
        }))


if __name__ == "__main__":
    asyncio.run(main())
