"""Tokens one LM call used: counted on a reply and, for what a failed call still spent, on its error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens the server reused from its cache instead of processing (when it says so).
    cached_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage:
        """From an OpenAI-style ``usage`` object (llama.cpp and vLLM report cached tokens too)."""
        usage = usage or {}
        details = usage.get("prompt_tokens_details") or {}
        return cls(
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            int(details.get("cached_tokens") or 0),
        )
