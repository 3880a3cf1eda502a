"""Jinja2 prompt templates over a conversation's attributes (``{{ domain }}``, ``{{ conversation }}``).

Templates come from the task file and are checked when it loads: a syntax error or a name that no
earlier stage writes is a ``file:line: key`` error before any LM call. They are rendered in a
sandbox with strict undefined names, so a template can read values but never run code.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta
from jinja2.sandbox import SandboxedEnvironment

from fms_dgt.conversation import Conversation

# Names every template may use besides the attributes written by earlier stages.
BUILTINS = {
    "conversation": "the visible chat so far, one 'User: ...' / 'Assistant: ...' line per message",
    "persona": "the sampled persona, as text ('' without sample/persona)",
    "scenario": "the scenario ('' without lm/scenario)",
    "turn": "number of complete exchanges so far",
}

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False)


class TemplateProblem(ValueError):
    """A template that cannot be used; the message says why."""


def names_used(source: str) -> set[str]:
    """Free variable names of a template; raises ``TemplateProblem`` on a syntax error."""
    try:
        return set(meta.find_undeclared_variables(_ENV.parse(source)))
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error (line {exc.lineno} of the template): {exc.message}") from None


@lru_cache(maxsize=256)
def _compiled(source: str) -> Any:
    return _ENV.from_string(source)


def context(conv: Conversation) -> dict[str, Any]:
    persona = conv.persona
    return {
        "conversation": conv.transcript(),
        "persona": persona.content if persona else "",
        "scenario": conv.scenario or "",
        "turn": len(conv.contents("assistant")),
        **conv.attributes,
    }


def render(source: str, conv: Conversation) -> str:
    """Render ``source`` with the conversation's attributes and the built-in names."""
    return _compiled(source).render(context(conv)).strip()
