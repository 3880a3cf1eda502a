"""Where conversations run: in this process (``local``) or on the workers of a Ray cluster (``ray``).

``base`` holds the contract; each executor is a module of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fms_dgt.executors.base import Executor
from fms_dgt.executors.local import LocalExecutor
from fms_dgt.executors.ray_cluster import RayExecutor, RayOptions

if TYPE_CHECKING:
    from fms_dgt.pipeline import Pipeline

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "RayOptions", "make_executor"]


def make_executor(pipeline: Pipeline, ray: RayOptions | None, in_flight: Callable[[], int]) -> Executor:
    """The local executor on ``pipeline``, or the Ray one, whose workers build their own from its
    factory (Ray is imported only then: a clear error if the ``ray`` extra is missing).
    ``in_flight``: conversations to run at once in this process, or with Ray on each worker."""
    if ray is None:
        return LocalExecutor(pipeline, in_flight)
    return RayExecutor(
        pipeline.factory, ray, in_flight, environment=pipeline.environment(), on_counts=pipeline.add_counts
    )
