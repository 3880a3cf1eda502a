"""Embedded-engine throughput: the pipeline against the raw engine on the same llama.cpp slots.

1. raw: ``slots`` request streams straight to ``LocalEngine.chat`` (chit-chat-sized prompts of
   ~300 tokens, 60 generated tokens each), the most this model can do here with these slots;
2. pipeline: the chit-chat task through the CLI on the same model and slots.

For each it prints prompt tokens sent, prompt tokens actually processed (sent minus those llama.cpp
reused from its prompt cache), generated tokens, and tokens/s. The ratio line compares processed
tokens/s (prompt processed + generated) of the pipeline to the raw engine.

    python benchmarks/local_engine.py                       # qwen2.5-0.5b, 4 slots, 4 conversations
    python benchmarks/local_engine.py --model qwen2.5-1.5b --conversations 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import yaml

from fms_dgt.cli import main
from fms_dgt.engines.local import LocalConfig, LocalEngine

REPO = Path(__file__).resolve().parent.parent
TASK = REPO / "tasks/public/examples/chit_chat/task.yaml"
FILLER = (
    "You are role-playing a person who is chatting with an AI assistant about everyday things. "
    "Who you are: a night-shift nurse who likes quick healthy meals and wants to sleep better. "
)


def line(kind: str, wall: float, sent: int, cached: int, generated: int, **extra: object) -> dict:
    processed = sent - cached
    record = {
        "run": kind, "wall_s": round(wall, 1), "prompt_tokens_sent": sent, "prompt_tokens_processed": processed,
        "generated_tokens": generated, "generated_tok_per_s": round(generated / wall, 2),
        "processed_tok_per_s": round((processed + generated) / wall, 2), **extra,
    }
    print(json.dumps(record), flush=True)
    return record


async def raw(model: str, slots: int, requests: int) -> dict:
    engine = LocalEngine("raw", LocalConfig(type="local", model=model, max_concurrency=slots))
    await engine.check()
    sent = cached = generated = 0
    queue = list(range(requests))

    async def stream() -> None:
        nonlocal sent, cached, generated
        while queue:
            i = queue.pop()
            prompt = [{"role": "system", "content": FILLER * 6}, {"role": "user", "content": f"Message {i}: any tips?"}]
            result = await engine.chat(prompt, max_tokens=60, temperature=0.8, seed=i)
            sent += result.usage.prompt_tokens
            cached += result.usage.cached_tokens
            generated += result.usage.completion_tokens

    t0 = time.perf_counter()
    await asyncio.gather(*(stream() for _ in range(slots)))
    wall = time.perf_counter() - t0
    await engine.aclose()
    return line("raw_engine", wall, sent, cached, generated, slots=slots, requests=requests)


def pipeline(model: str, slots: int, conversations: int) -> dict:
    task = yaml.safe_load(TASK.read_text())
    task["engines"]["default"].update({"model": model, "max_concurrency": slots})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "task.yaml"
        path.write_text(yaml.safe_dump(task, sort_keys=False))
        t0 = time.perf_counter()
        code = main(["--task-paths", str(path), "--num-outputs-to-generate", str(conversations), "--restart",
                     "--output-dir", str(Path(tmp) / "out"), "--seed", "1", "--quiet"])
        wall = time.perf_counter() - t0
        summary = json.loads((Path(tmp) / "out/public/examples/chit_chat/run_summary.json").read_text())
    assert code == 0, f"pipeline run failed ({code})"
    stats = summary["per_engine"]["default"]
    return line("pipeline", wall, stats["prompt_tokens"], stats["cached_prompt_tokens"], stats["completion_tokens"],
                slots=slots, conversations=summary["total"], lm_calls=summary["lm_calls"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--requests", type=int, default=24, help="requests in the raw run")
    args = parser.parse_args()
    base = asyncio.run(raw(args.model, args.slots, args.requests))
    run = pipeline(args.model, args.slots, args.conversations)
    print(json.dumps({"pipeline_vs_raw_processed_tok_per_s": round(run["processed_tok_per_s"] / base["processed_tok_per_s"], 3),
                      "pipeline_vs_raw_generated_tok_per_s": round(run["generated_tok_per_s"] / base["generated_tok_per_s"], 3)}))
