"""LM engines; importing this package registers the built-in engine types."""

from fms_dgt.engines import local, ollama, openai  # noqa: F401  (registration)
from fms_dgt.engines.base import ENGINES, ChatResult, Engine, Usage, register_engine

__all__ = ["ENGINES", "ChatResult", "Engine", "Usage", "register_engine"]
