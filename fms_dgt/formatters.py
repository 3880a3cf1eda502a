"""Formatters turn a conversation record into a training example (``formatted_output.jsonl``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fms_dgt.conversation import Conversation
from fms_dgt.registry import Registry

Formatter = Callable[[Conversation], dict[str, Any]]
FORMATTERS: Registry[Formatter] = Registry("formatter")


def register_formatter(name: str) -> Callable[[Formatter], Formatter]:
    """Function decorator: make a formatter available to task files as ``formatter: {type: name}``."""
    return FORMATTERS.register(name)


class FormatError(ValueError):
    """A conversation that cannot become a valid training example (a bug upstream)."""


@register_formatter("conversation/messages")
def messages(conv: Conversation) -> dict[str, Any]:
    """``{"conversation_id", "messages"}`` in OpenAI chat format, ready for SFT.

    An optional system message comes first; then user and assistant messages alternate,
    starting with the user and ending with the assistant.
    """
    chat = conv.messages()
    body = chat[1:] if chat and chat[0]["role"] == "system" else chat
    if not body or len(body) % 2:
        raise FormatError(f"{conv.conversation_id}: needs complete user/assistant exchanges")
    for index, message in enumerate(body):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise FormatError(f"{conv.conversation_id}: message {index} is {message['role']}, expected {expected}")
    return {"conversation_id": conv.conversation_id, "messages": chat}
