"""Conversation stages; importing this package registers the built-in ones."""

from fms_dgt.stages import (  # noqa: F401  (registration)
    assistant,
    conversation,
    flow_controller,
    judge,
    lm_text,
    persona,
    samplers,
    scenario,
    user,
)
from fms_dgt.stages.base import STAGES, DropConversation, Stage, register_stage

__all__ = ["STAGES", "DropConversation", "Stage", "register_stage"]
