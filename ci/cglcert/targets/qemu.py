"""The QEMU target: boot a Debian kernel from the cache, run the script, read its health.

``--kernel debug`` boots the debug kernel instead (:mod:`cglcert.debugkernel`: built from
linux-source-6.1 on first use, then cached), with every timeout scaled for its slowness.

The guest sees the host root read-only and the run directory writable (:mod:`cglcert.qemu`);
the modules are loaded by the guest's init before the script (a module that does not load
is an ERROR of the run, with insmod's message). The kernel log is dmesg copied out after
the script, or the serial console when the guest died.
"""

from __future__ import annotations

import sys

from cglcert import InfraError, debugkernel, hostdeps, kmsg
from cglcert import kernels as kc
from cglcert import qemu as q
from cglcert.certify import Artifacts, Execution, Plan, module_argument

#: Kernel command line added by certify: loglevel 6 puts the per-test markers (KERN_NOTICE)
#: on the serial console too, so a panic is attributed to its test even without dmesg.
APPEND = "loglevel=6"


def prepare(plan: Plan) -> tuple[str, str | None, kc.Kernel]:
    """Resolve and fetch the kernel (with headers when the modules must be built), or take
    a vendor's own build (--kernel IMAGE --kernel-modules DIR [--kernel-headers DIR])."""
    if plan.kernel_modules is not None:
        try:
            kernel = kc.from_files(plan.kernel or "", plan.kernel_modules, plan.kernel_headers)
        except kc.KernelError as exc:
            raise InfraError(str(exc)) from exc
        if plan.backend == "kmod" and kernel.build_dir is None:
            raise InfraError(f"no headers for {kernel.release}: give --kernel-headers DIR (the "
                             "build folder) to build the AEM modules, or --backend user")
        return kernel.release, kernel.flavor, kernel
    if debugkernel.is_debug(plan.kernel):
        try:
            kernel = debugkernel.ensure(plan.repo, log=lambda m: print(f"      debug kernel: {m}",
                                                                     file=sys.stderr))
        except kc.KernelError as exc:
            raise InfraError(str(exc)) from exc
        except hostdeps.MissingPackages as exc:
            raise InfraError(f"missing Debian packages {' '.join(exc.packages)}; run: {exc}") \
                from exc
        return kernel.release, kernel.flavor, kernel
    try:
        release = kc.resolve(plan.kernel)
        kernel = kc.cached(release)
        if kernel is None or (plan.backend == "kmod" and kernel.build_dir is None):
            kernel = kc.fetch(release, headers=plan.backend == "kmod")
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    return release, kernel.flavor, kernel


def execute(plan: Plan, art: Artifacts, script: str) -> Execution:
    """Boot, run *script* as root in the guest, return what happened."""
    assert art.kernel is not None
    timeout = plan.target_timeout
    try:
        r = q.run_in_guest(
            art.kernel, script, smp=plan.smp, mem=plan.mem, accel=plan.accel,
            timeout=timeout, boot_timeout=plan.scaled(120), results_dir=plan.run_dir,
            cwd=plan.repo,
            extra_modules=[module_argument(m, plan) for m in art.modules] if plan.backend == "kmod" else [],
            append=" ".join(x for x in (APPEND, debugkernel.boot_args(art.kernel.config),
                                        plan.append) if x))
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    except hostdeps.MissingPackages as exc:
        raise InfraError(f"missing Debian packages {' '.join(exc.packages)}; run: {exc}") from exc
    rep = r.report
    taint = rep.new_taint or rep.taint
    env = {"boot": r.boot, "boot_seconds": None if r.boot_seconds is None else
           round(r.boot_seconds, 1), "guest_seconds": round(r.duration, 1),
           "kernel_log": r.kernel_log_source, "tainted": r.tainted}
    return Execution(error=r.error, detail=r.detail, kernel_log=r.kernel_log,
                     log_source=r.kernel_log_source, findings=rep.findings, taint=taint,
                     environment=env)


__all__ = ["prepare", "execute", "kmsg"]
