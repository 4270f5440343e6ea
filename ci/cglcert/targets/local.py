"""The local target: certify the kernel this machine runs (lab hardware).

The modules are built against ``/lib/modules/$(uname -r)/build`` and loaded with insmod
(root only); the certification script runs here in a wrapper that records the kernel log
and the taint around it (:mod:`cglcert.targets._host`). Never use it with the kmod backend
on a machine whose kernel must not get out-of-tree modules: the user backend loads nothing.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from cglcert import InfraError
from cglcert.certify import Artifacts, Execution, Plan
from cglcert.commands.run import kernel_flavor
from cglcert.targets import _host


def headers_dir(release: str) -> Path:
    return Path("/lib/modules") / release / "build"


def prepare(plan: Plan) -> tuple[str, str | None, None]:
    """The running kernel; for kmod, check its headers and root before building anything."""
    release = platform.release()
    if plan.backend == "kmod":
        if not (headers_dir(release) / "Makefile").exists():
            raise InfraError(
                f"the running kernel {release} has no headers at {headers_dir(release)}: "
                f"install them (Debian: apt-get install linux-headers-{release}), or certify "
                "it under QEMU (--target qemu) or the user backend (--backend user)")
        if os.geteuid() != 0:
            raise InfraError("--target local --backend kmod loads the AEM modules: run as root")
    return release, kernel_flavor(release), None


def execute(plan: Plan, art: Artifacts, script: str) -> Execution:
    """Run the wrapper (modules, script, kernel log, taint) here."""
    del script  # written to RUN/certify.sh by the caller; the wrapper runs it
    marker = _host.new_marker()
    wrapper = plan.run_dir / _host.WRAPPER
    wrapper.write_text(_host.wrapper(plan, art, marker), encoding="utf-8")
    timeout = plan.target_timeout
    start = time.monotonic()
    error, detail = None, ""
    if not _host.run_bounded(["bash", str(wrapper)], timeout, cwd=plan.repo):
        error, detail = "timeout", f"the run did not finish within {timeout} s: killed"
    ex = _host.collect(plan.run_dir, marker, error=error, detail=detail)
    ex.environment["target_seconds"] = round(time.monotonic() - start, 1)
    return ex
