"""cglcert: certify Linux kernels against the CGL asynchronous-event requirements.

The package is run through the top-level ``./cglcert`` launcher (``python -m cglcert``).
This module holds what every part shares: the repository root, the exit codes and the
exceptions that map onto them.
"""

from __future__ import annotations

import enum
from pathlib import Path

__all__ = [
    "CglcertError",
    "ExitCode",
    "InfraError",
    "UsageError",
    "default_repo_root",
]

__version__ = "0.1.0"


class ExitCode(enum.IntEnum):
    """Process exit codes of every cglcert command (documented in :mod:`cglcert.cli`)."""

    OK = 0
    FAILED = 1  # a check failed / not certified
    USAGE = 2  # bad command line or arguments
    INFRA = 3  # infrastructure error: the tool or its environment broke


class CglcertError(Exception):
    """An error a command reports as one line on stderr and an exit code."""

    exit_code: ExitCode = ExitCode.INFRA


class UsageError(CglcertError):
    """The user asked for something that cannot be done; the message says what to do."""

    exit_code = ExitCode.USAGE


class InfraError(CglcertError):
    """The tool or its environment failed (missing file, broken schema, I/O error)."""

    exit_code = ExitCode.INFRA


def default_repo_root() -> Path:
    """Return the repository this package lives in (``<repo>/ci/cglcert/__init__.py``)."""
    return Path(__file__).resolve().parents[2]
