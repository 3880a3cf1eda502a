"""Real drafts for the verifier's labelled set, written by the embedded model in the seed conversations' contexts.

    python tools/seed_drafts.py tasks/public/examples/chit_chat/task.yaml 3 > drafts.jsonl

For every exchange of every seed conversation, the user stage writes the user's message (from the
seed's persona, scenario, hint and the chat before it) and the assistant stage writes the reply
(to the seed's user message), ``K`` times each at the stages' own temperatures, with the phrase
checks and the verifier off: the raw drafts, good and bad, in the lines ``extract_drafts.py``
writes, to be labelled by reading them.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any

from fms_dgt.conversation import Conversation, FlowControllerStep
from fms_dgt.datafiles import read_jsonl
from fms_dgt.engines import ENGINES
from fms_dgt.lm_client import LMClient
from fms_dgt.loader import load_task
from fms_dgt.stages.assistant import AssistantStage
from fms_dgt.stages.base import ConversationContext, Resources
from fms_dgt.stages.reply_cleanup import clean_reply, first_sentences
from fms_dgt.stages.user import UserStage, without_meta_note
from fms_dgt.stats import RunStats


async def run(task_path: Path, k: int) -> None:
    config = load_task(task_path).config
    assert config.seed_datastore is not None
    seeds = read_jsonl(Path(config.seed_datastore.data_path), Conversation, what="seed example")
    stats = RunStats()
    engine = ENGINES.get("local")("default", config.engines["default"])  # type: ignore[call-arg]
    res = Resources(task=config, lm=LMClient({"default": engine}, stats), stats=stats, seed_conversations=seeds)
    stages = {s.name: s for s in config.all_stages()}
    user = UserStage(stages["lm/user/guided"], res)
    user.setup()
    assistant = AssistantStage(stages["lm/assistant/naive"], res)

    async def draft(seed: Conversation, upto: int, role: str, n: int) -> dict[str, Any]:
        conv = Conversation(task_name=seed.task_name, conversation_id=seed.conversation_id, steps=seed.steps[:upto])
        fc = conv.last("flow_controller")
        closing = isinstance(fc, FlowControllerStep) and fc.terminate
        ctx = ConversationContext(rng=random.Random(f"{seed.conversation_id}:{upto}:{n}"), max_turns=4, last_turn=closing)
        if role == "user":
            result = await user.chat_with_settings(ctx, user.prompt(conv, ctx), temperature=0.8 + 0.15 * n)
            text = first_sentences(without_meta_note(clean_reply(result.text)), user.options.max_sentences)
        else:
            result = await assistant.chat_with_settings(ctx, assistant.prompt(conv))
            text = clean_reply(result.text)
        return {
            "id": f"{seed.conversation_id}-{upto}-{role}-{n}",
            "role": role,
            "persona": conv.persona.persona.model_dump(mode="json") if conv.persona else None,
            "scenario": conv.scenario,
            "hint": fc.hint if isinstance(fc, FlowControllerStep) else "",
            "closing": closing,
            "history": [m for m in conv.messages() if m["role"] in ("user", "assistant")],
            "draft": text,
            "source": f"seed-context:{result.finish_reason}",
            "label": "",
            "why": "",
        }

    jobs = []
    for seed in seeds:
        for index, step in enumerate(seed.steps):
            if step.role in ("user", "assistant"):
                jobs += [draft(seed, index, step.role, n) for n in range(k)]
    try:
        # Printed as each draft is done: on a busy machine, whatever finished is kept.
        for done in asyncio.as_completed(jobs):
            print(json.dumps(await done, ensure_ascii=False), flush=True)
    finally:
        await engine.aclose()


def main(argv: list[str]) -> int:
    asyncio.run(run(Path(argv[0]), int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
