"""Plugins: stages, engines, formatters and executors from other packages, found through an entry point.

A package declares ``[project.entry-points."fms_dgt.plugins"] my_plugin = "my_package.module"``;
importing that module runs its ``@register_stage(...)`` / ``@register_engine(...)`` /
``@register_formatter(...)`` / ``@register_executor(...)`` decorators, so task files and
``--executor`` can use them like the built-in ones (Simon Willison's ``llm`` finds its plugins the
same way). ``FMS_DGT_DISABLE_PLUGINS=1`` skips them.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

GROUP = "fms_dgt.plugins"
DISABLE = "FMS_DGT_DISABLE_PLUGINS"

_loaded: list[str] | None = None


def load_plugins() -> list[str]:
    """Import every plugin once; return their names. A plugin that fails to import is named in a
    warning and left out: one broken package must not stop every run."""
    global _loaded
    if _loaded is not None:
        return _loaded
    _loaded = []
    if os.environ.get(DISABLE, "").strip().lower() in ("1", "true", "yes"):
        return _loaded
    for point in entry_points(group=GROUP):
        try:
            point.load()
        except Exception as exc:  # noqa: BLE001 - any error in someone else's import
            logger.warning("plugin %s (%s) could not be loaded: %s: %s", point.name, point.value, type(exc).__name__, exc)
            continue
        _loaded.append(point.name)
    return _loaded


__all__ = ["DISABLE", "GROUP", "load_plugins"]
