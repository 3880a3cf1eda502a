"""The conversation-level gate: the last check before a conversation is written.

Stages check each turn as it is written, against what came before it. Some defects only show
on the whole conversation: a user who slips into the assistant's voice in one turn, an
assistant that answers by repeating the user's message or one of its own earlier replies, a
closing that says nothing, a conversation that is a near-copy of one already in the dataset.
The gate runs in the driver, right before ``OutputStore.append`` (with ``--executor ray`` only
the driver sees the whole dataset), and counts each rejection in ``run_summary.json``'s
``dropped`` as ``gate:<reason>``, like any drop; the runner then starts another conversation.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fms_dgt.config import QualityConfig
from fms_dgt.conversation import Conversation, FlowControllerStep, MessageStep
from fms_dgt.dedup import NearDuplicateIndex
from fms_dgt.stages.similarity import ASSISTANT_RUN, USER_RUN, Words, content_words, copies
from fms_dgt.stages.user import _ASSISTANT_OPENER, _ASSISTANT_VOICE  # the user stage's fast filter
from fms_dgt.stats import RunStats

logger = logging.getLogger(__name__)

# A closing user message must say something: at least this many content words (4+ letters,
# not courtesy or filler words: ``similarity.content_words``).
MIN_CLOSING_WORDS = 2
_SENTENCE_END = re.compile(r"[.!?…:;)\"'”’*`]\s*$")


def problem(conv: Conversation) -> str | None:
    """Why the whole conversation is not fit to keep, or None. Checks run in order; the first
    failing one names the reason."""
    chat = [s for s in conv.steps if isinstance(s, MessageStep) and s.role in ("user", "assistant")]
    roles = [s.role for s in chat]
    if not chat or roles != ["user", "assistant"] * (len(chat) // 2) or any(not s.content.strip() for s in chat):
        return "incomplete_exchange"
    for step in chat:
        if step.role == "assistant" and step.metadata.get("finish_reason") == "length":
            if not _SENTENCE_END.search(step.content):
                return "reply_cut_off"  # max_tokens cut it and no whole sentence could be kept
    users = [Words(s.content) for s in chat[0::2]]
    replies = [Words(s.content) for s in chat[1::2]]
    for i, step in enumerate(chat[0::2]):
        if _ASSISTANT_VOICE.search(step.content) or _ASSISTANT_OPENER.match(step.content):
            return "user_as_assistant"
        if any(copies(users[i], earlier, USER_RUN) for earlier in users[:i]):
            return "user_repeats_itself"
        if any(copies(users[i], reply, USER_RUN) for reply in replies[:i]):
            return "user_echoes_assistant"
    for i, reply in enumerate(replies):
        if any(copies(reply, user, ASSISTANT_RUN) for user in users[: i + 1]):
            return "assistant_repeats_user"
        if any(copies(reply, earlier, ASSISTANT_RUN) for earlier in replies[:i]):
            return "assistant_repeats_itself"
    where = [i for i, s in enumerate(conv.steps) if isinstance(s, FlowControllerStep)]
    last = conv.steps[where[-1]] if where else None
    closing = isinstance(last, FlowControllerStep) and last.terminate
    if conv.stop_reason == "flow_controller":
        after = [s.role for s in conv.steps[where[-1] + 1 :] if s.role in ("user", "assistant")] if where else []
        if not closing or after != ["user", "assistant"]:
            return "closing_not_terminated"
    if closing and len(content_words(chat[-2].content)) < MIN_CLOSING_WORDS:
        return "empty_closing"
    return None


class ConversationGate:
    """Decides, in the driver, whether a finished conversation is written."""

    def __init__(self, config: QualityConfig, stats: RunStats) -> None:
        self.stats = stats
        threshold = config.near_duplicate_threshold
        self.index = NearDuplicateIndex(threshold) if threshold is not None else None

    def index_existing(self, path: Path) -> None:
        """Index what earlier runs kept, so a resumed run rejects copies of it too."""
        if self.index is None or not path.exists():
            return
        with path.open(encoding="utf-8") as lines:  # already checked by OutputStore.open
            for line in lines:
                if line.strip():
                    conv = Conversation.model_validate_json(line)
                    self.index.add(conv.conversation_id, self.index.signature(conv))
        if len(self.index):
            logger.info("near-duplicate index: %d conversations already kept", len(self.index))

    def rejects(self, conv: Conversation) -> str | None:
        """Why ``conv`` must not be kept (counted in ``dropped`` as ``gate:<reason>``), or None,
        and then it is indexed."""
        reason = problem(conv)
        signature = None
        if reason is None and self.index is not None:
            signature = self.index.signature(conv)
            found = self.index.find(signature)
            if found is not None:
                reason = "near_duplicate"
                logger.debug("%s is a near-duplicate of %s (%.2f)", conv.conversation_id, *found)
        if reason is None:
            if self.index is not None:
                self.index.add(conv.conversation_id, signature)
            return None
        # Counted as a drop, so the keep-rate breaker stops a run whose conversations it keeps rejecting.
        self.stats.dropped[f"gate:{reason}"] += 1
        return f"gate:{reason}"
