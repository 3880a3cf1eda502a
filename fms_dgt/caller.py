"""Which stage is making the current LM call, for the engine that answers it.

``LMClient.counted_chat`` sets it around each call, under the name the call is counted by (a stage's name,
or ``<stage>/verifier`` for the per-turn verifier). It is a context variable, like the request
priority and the conversation's spend, so concurrent conversations cannot mix it up, and it
needs no parameter on every engine's ``layered_chat``. The scripted test engine records it with each call
and hands it to its responder, so test doubles answer by stage name, never by prompt wording
(rewording a prompt must not break a runner test).
"""

from __future__ import annotations

from contextvars import ContextVar

# The calling stage's name; None for calls made outside a stage (an engine check).
stage: ContextVar[str | None] = ContextVar("fms_dgt_calling_stage", default=None)
