"""Conversation stages; importing this package registers the built-in ones."""

from fms_dgt.stages import assistant, flow_controller, persona, scenario, user  # noqa: F401
from fms_dgt.stages.base import STAGES, DropConversation, Stage, register_stage

__all__ = ["STAGES", "DropConversation", "Stage", "register_stage"]
