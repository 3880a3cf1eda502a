"""Extract every user and assistant draft of a run, kept or rejected, with the context it was written in.

    python tools/extract_drafts.py output/public/examples/chit_chat/final_data.jsonl > drafts.jsonl

Each line holds what the verifier needs to judge the draft again (persona, scenario, hint, whether
it closed the conversation, the visible chat before it) and empty ``label`` / ``why`` fields for a
person to fill in: ``good`` or ``bad``, and a one-line reason. ``tests/data/verifier_labels.jsonl``
was made this way from real runs on the embedded model.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from fms_dgt.conversation import Conversation, FlowControllerStep


def drafts(conv: Conversation) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    history: list[dict[str, str]] = []
    hint, closing = "", False
    for step in conv.steps:
        if isinstance(step, FlowControllerStep):
            hint, closing = step.hint, step.terminate
        if step.role not in ("user", "assistant"):
            continue
        texts = [(r["text"], f"rejected:{r['reason']}") for r in step.metadata.get("rejected", [])]
        texts.append((step.content, "kept"))
        for text, source in texts:
            out.append({
                "id": f"{conv.conversation_id[:8]}-{len(history)}-{len(out)}",
                "role": step.role,
                "persona": conv.persona.persona.model_dump(mode="json") if conv.persona else None,
                "scenario": conv.scenario,
                "hint": hint,
                "closing": closing,
                "history": list(history),
                "draft": text,
                "source": source,
                "label": "",
                "why": "",
            })
        history.append({"role": step.role, "content": step.content})
    return out


def main(argv: list[str]) -> int:
    for path in argv:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            for item in drafts(Conversation.model_validate_json(line)):
                print(json.dumps(item, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
