"""fms_dgt: turn a YAML task file into a dataset of synthetic multi-turn conversations."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
