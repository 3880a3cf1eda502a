"""Where conversations run: in this process (``local``) or on the workers of a Ray cluster (``ray``).

``base`` holds the contract and the registry; each executor is a module of its own, registered
with ``@register_executor(name)`` (importing this package registers the built-in ones; importing
``ray_cluster`` does not import Ray, which only ``--executor ray`` does).
"""

from fms_dgt.executors import local, ray_cluster  # noqa: F401  (registration)
from fms_dgt.executors.base import EXECUTORS, Executor, register_executor

__all__ = ["EXECUTORS", "Executor", "register_executor"]
