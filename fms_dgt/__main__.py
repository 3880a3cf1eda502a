"""`python -m fms_dgt` runs the command-line interface."""

from __future__ import annotations

from fms_dgt.cli import run

run()
