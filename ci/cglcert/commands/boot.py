"""``cglcert boot``: boot a Debian kernel under QEMU and run one command in it.

A debugging aid and the building block of the QEMU target: the host root is
visible read-only in the guest, the command runs as root chrooted into it,
and the kernel log is checked for splats and taint afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cglcert import ExitCode, InfraError, UsageError, debugkernel, hostdeps, kmsg, qemu
from cglcert import kernels as kc

DESCRIPTION = """\
Boot a Debian kernel under QEMU (TCG by default), run CMD in the guest and exit
with CMD's exit code.

The guest sees the host's root file system read-only (virtiofs as root, else
9p; the cloud flavor has only virtiofs: see --share), with fresh /tmp and
/run, the results directory writable at its host path, and the kernel's own
modules at /lib/modules/<release>.  CMD runs as root, from the current
directory, chrooted into the host root.  After CMD the kernel log is scanned
for WARN/BUG/oops/lockdep/stall reports and the taint is decoded (O and E,
our own unsigned out-of-tree modules, are accepted).

--kernel debug boots the debug kernel (Debian's linux-source-6.1 with KASAN, KFENCE,
lockdep, kmemleak, UBSAN, ...: built on first use, about 20 minutes, then cached; see
'cglcert kernels debug'); its default timeouts are 4 times longer.

Exit code: CMD's; 3 on an infrastructure error (boot failure, init failure,
extra module not loadable, timeout, QEMU error); 1 when the kernel panicked,
or (with --strict) when CMD exited 0 but the kernel log or taint is unhealthy.

Examples:
  cglcert boot -- uname -r
  cglcert boot --kernel 6.1.0-57-rt-amd64 --smp 4 -- sh -c 'cat /proc/cmdline; dmesg | tail'
  cglcert boot --module reference/kmod/aem.ko --timeout 120 -- build/dev/conformance/aem_tests
  cglcert boot --kernel 6.1.0-57-cloud-amd64 -- sh -c 'grep -i virtiofs /proc/mounts'
  cglcert boot --kernel debug --strict -- sh -c 'cat /proc/lockdep_stats | grep debug_locks'
"""


#: Default seconds CMD may run, and the guest may take to reach it (Debian's kernels).
TIMEOUT, BOOT_TIMEOUT = 600.0, 120.0


def log_to_stderr(message: str) -> None:
    """Progress of a debug kernel build."""
    print(f"cglcert: debug kernel: {message}", file=sys.stderr, flush=True)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``boot`` subcommand."""
    p = subparsers.add_parser(
        "boot", help="boot a kernel under QEMU and run a command in it",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", default=None, metavar="ABI-FLAVOR",
                   help="release (6.1.0-57-amd64), flavor (rt-amd64) or 'default' "
                        "(fetched into the cache if needed), or 'debug' (the debug kernel, "
                        "built from linux-source-6.1 if not cached)")
    p.add_argument("--smp", type=int, default=2, metavar="N", help="virtual CPUs (default 2)")
    p.add_argument("--mem", default=None, metavar="SIZE",
                   help=f"guest memory (default 2G; {debugkernel.MEM} on the debug kernel)")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help=f"seconds CMD may run in the guest before it is killed (default "
                        f"{TIMEOUT:g}; {TIMEOUT * debugkernel.TIMEOUT_FACTOR:g} on the debug "
                        "kernel)")
    p.add_argument("--boot-timeout", type=float, default=None, metavar="S",
                   help=f"seconds the guest may take to reach CMD (default {BOOT_TIMEOUT:g}; "
                        f"{BOOT_TIMEOUT * debugkernel.TIMEOUT_FACTOR:g} on the debug kernel)")
    p.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                   help="QEMU accelerator (default tcg: nested KVM hangs on the CI machines)")
    p.add_argument("--boot", choices=("pvh", "bzimage"), default="pvh",
                   help="pvh: uncompressed vmlinux via the PVH entry (fast, no KASLR); "
                        "bzimage: Debian's vmlinuz as a boot loader would (default pvh)")
    p.add_argument("--share", choices=qemu.SHARES, default="auto",
                   help="how the host root and results dir reach the guest: 9p (QEMU's -virtfs), "
                        "virtiofs (virtiofsd daemons, needs root and package "
                        f"{qemu.VIRTIOFSD_PACKAGE}) or auto: virtiofs when running as root "
                        "with virtiofsd installed (faster on file-heavy commands), else 9p if the "
                        "kernel has it (default auto)")
    p.add_argument("--module", action="append", default=[], metavar="KO",
                   help="insmod this module (path to a .ko, or a module name of the kernel, "
                        "optionally with parameters: 'aem.ko debug=1') before CMD; repeatable")
    p.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    p.add_argument("--results", type=Path, default=None, metavar="DIR",
                   help="writable directory shared with the guest (default: a new temp dir)")
    p.add_argument("--console", action="store_true",
                   help="stream the serial console to stderr while running")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 if CMD exited 0 but the kernel log or taint is unhealthy")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...",
                   help="the command to run in the guest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Boot, run, report."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given: cglcert boot [options] -- CMD ...")
    factor = debugkernel.TIMEOUT_FACTOR if debugkernel.is_debug(args.kernel) else 1
    timeout = TIMEOUT * factor if args.timeout is None else args.timeout
    boot_timeout = BOOT_TIMEOUT * factor if args.boot_timeout is None else args.boot_timeout
    try:
        if debugkernel.is_debug(args.kernel):
            kernel = debugkernel.ensure(log=log_to_stderr)
        else:
            release = kc.resolve(args.kernel)
            kernel = kc.cached(release) or kc.fetch(release, headers=False)
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    except hostdeps.MissingPackages as exc:
        raise InfraError(f"missing Debian packages {' '.join(exc.packages)}; run: {exc}") from exc
    append = " ".join(x for x in (debugkernel.boot_args(kernel.config), args.append) if x)
    try:
        r = qemu.run_in_guest(
            kernel, cmd, smp=args.smp, accel=args.accel, timeout=timeout,
            mem=args.mem or (debugkernel.MEM if debugkernel.is_debug(args.kernel) else "2G"),
            boot_timeout=boot_timeout, results_dir=args.results, extra_modules=args.module,
            append=append, boot=args.boot, share=args.share,
            console=sys.stderr if args.console else None)
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    except hostdeps.MissingPackages as exc:
        raise InfraError(f"missing Debian packages {' '.join(exc.packages)}; run: {exc}") from exc

    if args.json:
        json.dump(r.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.console:
        sys.stdout.write(r.output)
        sys.stdout.flush()
    err = sys.stderr
    boot = f"{r.boot_seconds:.1f} s" if r.boot_seconds is not None else "-"
    print(f"--- cglcert boot: {r.release} ({r.boot}, {r.share}, {args.accel}, smp {args.smp}): "
          f"boot {boot}, total {r.duration:.1f} s", file=err)
    if r.error:
        print(f"--- error: {r.error}: {r.detail}", file=err)
    else:
        print(f"--- exit code: {r.exit_code}", file=err)
    if r.tainted is not None:
        t = kmsg.decode_taint(r.tainted)
        print(f"--- tainted: {t.value}" + (f" ({t.letters})" if t.letters else "")
              + ("" if t.ok else f"  UNACCEPTABLE: {t.unacceptable}"), file=err)
    problems = r.report.problems()
    print(f"--- kernel log ({r.kernel_log_source}): "
          + ("clean" if not problems else f"{len(problems)} problem(s)"), file=err)
    for f in r.findings:
        print(f"    {f}", file=err)
        for line in f.context[:6]:
            print(f"        {line}", file=err)
    print(f"--- files: {r.results_dir} (serial log {r.serial_log})", file=err)

    if r.error == "panic":
        return ExitCode.FAILED
    if r.error is not None or r.exit_code is None:
        return ExitCode.INFRA
    if args.strict and r.exit_code == 0 and not r.report.ok:
        return ExitCode.FAILED
    return r.exit_code
