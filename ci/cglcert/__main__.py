"""Entry point for ``python -m cglcert`` (what the ``./cglcert`` launcher runs)."""

from __future__ import annotations

import sys

from cglcert.cli import main

if __name__ == "__main__":
    sys.exit(main())
