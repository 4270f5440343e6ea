"""Where ``cglcert certify`` runs the suite: one module per target, each with

    prepare(plan) -> (release, flavor, kernel or None)   the kernel being certified
    execute(plan, artifacts, script) -> Execution         run the script, collect health

``qemu`` boots a Debian kernel under QEMU (:mod:`cglcert.qemu`); ``local`` runs on this
machine's own kernel; ``ssh`` on a lab machine's (``ssh://[user@]host[:port]``). A target
may also define ``stage_modules(plan, release) -> [ko paths]`` when the modules are built
on the machine itself. A new target is a new module named in :data:`TARGETS`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

TARGETS = ("qemu", "local", "ssh")


def load(name: str) -> ModuleType:
    """The module of target *name* (one of :data:`TARGETS`)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; choose from {', '.join(TARGETS)}")
    return importlib.import_module(f"{__name__}.{name}")
