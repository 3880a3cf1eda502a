"""Which stage is making the current LM call, for the engine that answers it.

``LMClient.counted_chat`` sets it around each call, under the name the call is counted by (a stage's name,
or ``<stage>/verifier`` for the per-turn verifier). It is a context variable, like the request
priority and the conversation's spend, so concurrent conversations cannot mix it up, and it
needs no parameter on every engine's ``layered_chat``. The scripted test engine records it with each call
and hands it to its responder, and the server engines send it as the ``HEADER`` below, so test
doubles answer by stage name, never by prompt wording (rewording a prompt must not break a test).
"""

from __future__ import annotations

from contextvars import ContextVar
from urllib.parse import quote

# The calling stage's name; None for calls made outside a stage (an engine check).
stage: ContextVar[str | None] = ContextVar("fms_dgt_calling_stage", default=None)

# The HTTP request header that names the calling stage, e.g. ``X-FMS-DGT-Stage: lm/user/guided``.
# Sent by the server engines (openai, ollama) so that a server's or a gateway's logs can tell the
# stages' requests apart (which stage is slow, which one spends the tokens), and so that the
# simulated LM server (``fms_dgt.testing.lm_server``) answers by stage, not by prompt wording.
HEADER = "X-FMS-DGT-Stage"

_NAME = HEADER.encode()
_headers: dict[str, tuple[tuple[bytes, bytes], ...]] = {}


def headers() -> tuple[tuple[bytes, bytes], ...]:
    """The stage header for the current call, as ``(name, value)`` byte pairs to add to a request
    (as httpcore and httpx take them); none outside a stage. Made once per stage name (it is added
    to every request). A stage name that is not plain ASCII is percent-encoded, as header values
    must be."""
    name = stage.get()
    if name is None:
        return ()
    found = _headers.get(name)
    if found is None:
        found = _headers[name] = ((_NAME, quote(name, safe="/._-:").encode()),)
    return found
