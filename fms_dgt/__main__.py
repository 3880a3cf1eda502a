"""`python -m fms_dgt` runs the command-line interface."""

from __future__ import annotations

import sys

from fms_dgt.cli import main

sys.exit(main())
