"""Argument types for command-line flags, shared by the CLI and the executors that add their own
flags to it (``Executor.add_arguments``), so a bad value reads the same whichever module owns the flag."""

from __future__ import annotations

import argparse


def positive(value: str) -> int:
    """A whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number
