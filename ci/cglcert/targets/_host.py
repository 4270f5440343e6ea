"""What the local and ssh targets share: a wrapper script that runs on the machine being
certified (as root) around the certification script, and the reading of what it left.

The wrapper writes a unique marker to the kernel log, records the taint, builds the
modules there when asked (the ssh target: against that machine's own headers), loads
them, runs ``certify.sh``, then saves ``dmesg`` and the taint again. Everything lands in
the run directory; :func:`collect` turns it into an :class:`~cglcert.certify.Execution`.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from cglcert import kmsg
from cglcert.certify import Artifacts, Execution, Plan, read_int

WRAPPER = "certify-wrapper.sh"


def new_marker() -> str:
    return f"cglcert: certify run {uuid.uuid4().hex[:12]} begins"


def wrapper(plan: Plan, art: Artifacts, marker: str, build_dir: Path | None = None) -> str:
    """The wrapper script; *build_dir*: build the modules there first (with ``make``)."""
    q = shlex.quote
    lines = [
        "# written by cglcert certify (ci/cglcert/targets/_host.py)",
        "set -u",
        f"R={q(str(plan.run_dir))}",
        'rm -f "$R/module_error" "$R/kmsg_ok" "$R/dmesg.all"',
        f"echo {q('<5>' + marker)} > /dev/kmsg 2>/dev/null && : > \"$R/kmsg_ok\"",
        'cat /proc/sys/kernel/tainted > "$R/tainted_before" 2>/dev/null',
        'nproc > "$R/cpus" 2>/dev/null',
    ]
    if plan.backend == "kmod" and art.modules:
        if build_dir is not None:
            lines += [
                f'if ! make -s -C "/lib/modules/$(uname -r)/build" M={q(str(build_dir))} '
                'modules > "$R/module_build.log" 2>&1; then',
                '  { echo "building the modules failed:"; tail -n 20 "$R/module_build.log"; } '
                '> "$R/module_error"; exit 0',
                "fi",
            ]
        loaded: list[str] = []
        for ko in art.modules:
            args = " ".join(q(p) for p in plan.module_params.get(ko.stem, []))
            undo = "".join(f"rmmod {q(m)}; " for m in reversed(loaded))
            lines += [
                f"if ! out=$(insmod {q(str(ko))} {args} 2>&1); then",
                f'  echo "insmod {ko.name}: $out" > "$R/module_error"; {undo}exit 0',
                "fi",
            ]
            loaded.append(ko.stem)
    lines += [
        'bash "$R/certify.sh"',
        'dmesg > "$R/dmesg.all" 2>/dev/null',
        'cat /proc/sys/kernel/tainted > "$R/tainted" 2>/dev/null',
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


def run_bounded(argv: Sequence[str], timeout: float, cwd: Path | None = None) -> bool:
    """Run *argv* in its own process group; kill the group after *timeout*; False then."""
    proc = subprocess.Popen(list(argv), cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return False


def collect(run_dir: Path, marker: str, *, error: str | None = None,
            detail: str = "") -> Execution:
    """What the wrapper left in *run_dir*, as an Execution."""
    merr = run_dir / "module_error"
    if error is None and merr.exists():
        error, detail = "module", merr.read_text(errors="replace").strip()
    log: str | None = None
    dm = run_dir / "dmesg.all"
    if (run_dir / "kmsg_ok").exists() and dm.exists():
        text = dm.read_text(errors="replace")
        at = text.rfind(marker)
        log = text[text.find("\n", at) + 1:] if at >= 0 else text
    before, after = read_int(run_dir / "tainted_before"), read_int(run_dir / "tainted")
    taint = None
    if before is not None and after is not None:
        taint = kmsg.decode_taint(after & ~before)
    findings = tuple(kmsg.scan(log)) if log is not None else ()
    env = {"kernel_log": "dmesg" if log is not None else "none", "tainted": after,
           "cpus": read_int(run_dir / "cpus")}
    return Execution(error=error, detail=detail, kernel_log=log or "",
                     log_source="dmesg" if log is not None else "none", findings=findings,
                     taint=taint, environment=env)
