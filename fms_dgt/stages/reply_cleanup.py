"""Tidying a small model's reply before it is checked: role labels and quotes around it, sentences
that run on, an ending cut off by ``max_tokens``; and the article small models get wrong."""

from __future__ import annotations

import re

_LABEL = re.compile(
    r"^\s*(?:\*\*|__)?(?:user|assistant|ai|me|human|you|scenario|message|response|reply)"
    r"(?:\s*\([^)]*\))?\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*",
    re.IGNORECASE,
)
_QUOTES = ('"', "'", "“", "”", "‘", "’", "`")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def clean_reply(text: str) -> str:
    """Strip what small models wrap around a reply: role labels, quotes, surrounding space."""
    text = text.strip()
    for _ in range(2):
        text = _LABEL.sub("", text, count=1).strip()
        if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES and text.count(text[0]) <= 2:
            text = text[1:-1].strip()
    return text


def with_article(noun: str) -> str:
    """'a nurse', 'an astronomer': small models copy a wrong article from the prompt."""
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def first_sentences(text: str, limit: int) -> str:
    """At most ``limit`` sentences, for replies that run on."""
    sentences = _SENTENCE_END.split(text.strip())
    return " ".join(sentences[:limit]).strip()


# The start of a list item or heading that max_tokens cut off: "5.", "### 3.", "- **Tip".
_DANGLING_ITEM = re.compile(r"\n[ \t]*(#+[ \t]*)?(\d+\.|[-*])?[ \t]*(\*\*)?[^\n.!?]{0,40}$")


def trim_unfinished(text: str) -> str:
    """Cut a reply that hit max_tokens back to its last complete sentence, when it has one."""
    text = text.rstrip()
    text = _DANGLING_ITEM.sub("", text).rstrip() if "\n" in text else text
    cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "), text.rfind(".\n"))
    if text.endswith((".", "!", "?")) or cut < 0:
        return text
    return text[: cut + 1]
