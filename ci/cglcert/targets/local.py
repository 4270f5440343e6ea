"""The local target: certify the kernel this machine runs (lab hardware).

The modules are built against ``/lib/modules/$(uname -r)/build`` and loaded with insmod
before the script (root only); the script runs here as a child; the kernel log of the run
is what dmesg prints after a start marker this target writes, and the taint is compared
before and after. Never use it on a machine whose kernel must not get out-of-tree modules:
the user backend (``--backend user``) loads nothing.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
import uuid
from pathlib import Path

from cglcert import InfraError, kmsg
from cglcert.certify import Artifacts, Execution, Plan


def _kernel_flavor(release: str) -> str | None:
    from cglcert.commands.run import kernel_flavor
    return kernel_flavor(release)


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
    return release, _kernel_flavor(release), None


def _taint() -> int | None:
    try:
        return int(Path("/proc/sys/kernel/tainted").read_text().strip())
    except (OSError, ValueError):
        return None


def _kmsg(text: str) -> bool:
    try:
        with open("/dev/kmsg", "w", encoding="utf-8") as f:
            f.write(f"<5>{text}\n")
        return True
    except OSError:
        return False


def _dmesg_since(marker: str) -> str | None:
    proc = subprocess.run(["dmesg"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    text = proc.stdout
    at = text.rfind(marker)
    return text[text.find("\n", at) + 1:] if at >= 0 else text


def execute(plan: Plan, art: Artifacts, script: str) -> Execution:
    """Load the modules (kmod), run *script* here, collect the kernel log and taint."""
    marker = f"cglcert: certify run {uuid.uuid4().hex[:12]} begins"
    have_log = _kmsg(marker)
    tainted_before = _taint()
    loaded: list[str] = []
    start = time.monotonic()
    if plan.backend == "kmod":
        for ko in art.modules:
            proc = subprocess.run(["insmod", str(ko), *plan.module_params.get(ko.stem, [])], capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                for name in reversed(loaded):
                    subprocess.run(["rmmod", name], capture_output=True, check=False)
                return Execution(error="module", detail=f"insmod {ko.name}: "
                                 f"{(proc.stderr or proc.stdout).strip()}",
                                 environment={"target_seconds": 0})
            loaded.append(ko.stem)
    script_file = plan.run_dir / "certify.sh"
    script_file.write_text(script, encoding="utf-8")
    timeout = plan.suite_timeout + (plan.stress_timeout if plan.stress else 0) + 120
    error, detail = None, ""
    try:
        subprocess.run(["bash", str(script_file)], cwd=plan.repo, check=False, timeout=timeout,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        error, detail = "timeout", f"the run did not finish within {timeout} s"
    log = _dmesg_since(marker) if have_log else None
    tainted = _taint()
    new = None
    if tainted is not None and tainted_before is not None:
        new = kmsg.decode_taint(tainted & ~tainted_before)
    findings = tuple(kmsg.scan(log)) if log is not None else ()
    env = {"target_seconds": round(time.monotonic() - start, 1),
           "kernel_log": "dmesg" if log is not None else "none", "tainted": tainted}
    return Execution(error=error, detail=detail, kernel_log=log or "",
                     log_source="dmesg" if log is not None else "none", findings=findings,
                     taint=new, environment=env)
