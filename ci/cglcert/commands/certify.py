"""``cglcert certify``: certify a kernel in one command and write the report."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from cglcert import (ExitCode, InfraError, UsageError, debugkernel, default_repo_root, hostdeps,
                     targets)
from cglcert import certify as cf
from cglcert import results as res
from cglcert.catalog import load_catalog
from cglcert.commands.report import FILES, RENDERERS
from cglcert.commands.run import expected_tests
from cglcert.progress import Progress
from cglcert.report.model import load_report

DESCRIPTION = """\
Certify a Linux kernel against the CGL asynchronous-event requirements and write the
report. By default: install what is missing (apt, as root), fetch Debian's default 6.1
amd64 kernel with its headers into the kernel cache, build the AEM modules for it, the
conformance suite and the stress programs, boot the kernel under QEMU (TCG), load the
modules, run the conformance suite (a kernel-log marker around every test: a WARN, BUG or
oops fails the test it happened in) and a short stress pass, unload the modules, and write
RUN/results.json, RUN/stress.json and RUN/report/ (report.html, report.md, junit.xml,
report.ktap, kcidb.json), RUN being reports/out/<date>-<kernel>-<backend>/ or --out.

Profiles: --quick (conformance + a seconds-long stress smoke pass: about 5 minutes under
TCG), default (conformance + 'cglcert stress --quick'), --full (conformance + the full
stress sweep: an hour or more).

Several --kernel and --backend options certify every combination, each in its own run
directory, and write one merged report (the matrix of requirements against kernels and
backends): the three Debian flavors and the user backend in one command:
  cglcert certify --kernel amd64 --kernel rt-amd64 --kernel cloud-amd64 \\
                  --backend kmod --backend user

Targets: qemu (default) boots a Debian kernel (--kernel: 6.1.0-57-amd64, rt-amd64,
cloud-amd64, ...; see 'cglcert kernels list'); local certifies the kernel this machine
runs (the modules are built against /lib/modules/$(uname -r)/build and loaded: root only).

The debug kernel: --kernel debug builds Debian's linux-source-6.1 with KASAN, KFENCE,
lockdep, DEBUG_ATOMIC_SLEEP, DEBUG_OBJECTS, kmemleak, UBSAN, DEBUG_LIST, the hang
detectors and fault injection (reference/kmod/tests/debug-kernel.config; about 20 minutes
on 2 cores the first time, then cached: 'cglcert kernels debug'), builds the modules
against it and certifies it as any kernel, plus the modules' KTAP programs and kmemleak
scans: any KASAN, KFENCE, UBSAN, lockdep, hung-task or soft-lockup report fails the test
it happened in or blocks the verdict, as does any leak. Timeouts are 4 times longer.

Kernel hardening (kmod backend): after the KTAP programs, with the modules loaded, the ABI
fuzzer reference/kmod/tests/aem_fuzz fuzzes /dev/aem in two seeded passes (one thread,
seed S: deterministic, a finding replays from its seed; then four threads, seed S+1) as
uid 1000, and trinity (Debian's package) calls ioctl, mmap, poll, read and write on it as
uid 1000; each pass's output is RUN/fuzz/pass-N.txt, trinity's RUN/fuzz/trinity.txt. A
finding, a registration left behind, a fuzzer that died, trinity that did not run or a
kernel report during either blocks the verdict. On by default with --kernel debug
(--fuzz-calls 40000, --trinity 60), off otherwise. The report's "Kernel hardening"
section shows the debug options, KTAP totals, kmemleak, the fuzz passes, trinity and
aem_ktests' fault-injection table (fail-nth over every operation, the modules' own
fault sites).

Exit codes: 0 certified (for --verdict, default CGL 2.0), 1 not certified (a requirement
failed, or the kernel was unhealthy: splat, taint, modules that would not unload, panic),
2 usage error, 3 infrastructure error (build failure, boot failure, a module that does not
load, a hang, the suite crashed); results.json and the report are written whenever the
target ran, ERROR naming the reason.
"""

_MEM_RE = re.compile(r"^[1-9][0-9]*[MG]$")


def _count(text: str) -> int:
    """A non-negative integer (checked here, so a typo is a usage error)."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give a non-negative integer")
    return int(text)


def _target(text: str) -> str:
    """qemu, local or an ssh:// URL (checked here, so a typo is a usage error)."""
    if text in ("qemu", "local"):
        return text
    if text.startswith("ssh://"):
        from cglcert.targets import ssh
        try:
            ssh.parse_url(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: give qemu, local or ssh://[USER@]HOST[:PORT]")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certify`` subcommand."""
    p = subparsers.add_parser(
        "certify", help="certify a kernel (QEMU or this machine) and write the report",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", action="append", default=None, metavar="ABI-FLAVOR",
                   help="qemu target: Debian release (6.1.0-57-amd64), flavor (rt-amd64, "
                        "cloud-amd64), 'default' (Debian's default amd64 kernel) or 'debug' "
                        "(linux-source-6.1 built with KASAN, lockdep, kmemleak, ...); "
                        "repeatable: every kernel is certified, one merged report")
    p.add_argument("--kernel-modules", type=Path, default=None, metavar="DIR",
                   help="a kernel of your own: --kernel is then its image (bzImage) and DIR "
                        "its lib/modules/<release> (from make modules_install)")
    p.add_argument("--kernel-headers", type=Path, default=None, metavar="DIR",
                   help="with --kernel-modules: the tree to build the AEM modules against "
                        "(the kernel build folder; default <modules>/build)")
    p.add_argument("--backend", action="append", choices=("kmod", "user"), default=None,
                   help="libaem backend: kmod (the AEM kernel modules, default) or user "
                        "(user space on any kernel); repeatable like --kernel")
    p.add_argument("--target", type=_target, default="qemu", metavar="TARGET",
                   help="qemu (default): boot the kernel under QEMU; local: this machine; "
                        "ssh://[USER@]HOST[:PORT]: a lab machine over ssh")
    p.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                   help="ssh target: an ssh -o option (IdentityFile=~/.ssh/lab, "
                        "UserKnownHostsFile=...); repeatable")
    p.add_argument("--accel", choices=("tcg", "kvm"), default="tcg",
                   help="QEMU accelerator (default tcg; kvm needs /dev/kvm that works)")
    p.add_argument("--smp", type=int, default=2, metavar="N", help="guest CPUs (default 2)")
    p.add_argument("--mem", default=None, metavar="SIZE",
                   help=f"guest memory (default 2G; {debugkernel.MEM} for --kernel debug)")
    prof = p.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true", help="conformance + stress smoke pass")
    prof.add_argument("--full", action="store_true", help="conformance + the full stress sweep")
    p.add_argument("--no-stress", action="store_true",
                   help="conformance only (the stress thresholds are then SKIP: not certified)")
    p.add_argument("--verdict", choices=tuple(res.VERDICTS), default="cgl-2.0",
                   help="verdict that decides the exit code (default cgl-2.0)")
    p.add_argument("--append", default="", metavar="ARGS",
                   help="qemu target: extra kernel command line (e.g. 'isolcpus=1')")
    p.add_argument("--module-param", action="append", default=[], metavar="MOD.PARAM=VALUE",
                   help="kmod backend: load module MOD with PARAM=VALUE (e.g. "
                        "aem.max_pending=4096, the policy to certify); repeatable")
    p.add_argument("--fuzz-calls", type=_count, default=None, metavar="N",
                   help="kmod backend: fuzz /dev/aem after the KTAP programs with two "
                        "aem_fuzz passes of N calls each (1 thread, then 4) as uid 1000; "
                        f"0: none (default {cf.DEBUG_FUZZ_CALLS} with --kernel debug, else 0)")
    p.add_argument("--fuzz-seed", type=_count, default=None, metavar="S",
                   help="seed of the first fuzz pass; the second uses S+1 (default 1)")
    p.add_argument("--trinity", type=_count, default=None, metavar="SECONDS",
                   help="kmod backend: then run trinity (Debian package trinity) against "
                        "/dev/aem as uid 1000 for SECONDS; 0: none (default "
                        f"{cf.DEBUG_TRINITY_SECONDS} with --kernel debug, else 0)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="run directory (default reports/out/<date>-<kernel>-<backend>); "
                        "with several kernels or backends, the directory of their runs "
                        "(<kernel>-<backend>/) and of the merged report (report/)")
    p.add_argument("--json", action="store_true",
                   help="no progress; print the outcome as JSON on stdout")
    p.add_argument("--repo", type=Path, default=None, metavar="DIR",
                   help="project root (default: the repository of this cglcert)")
    p.set_defaults(func=run)


def _validate(args: argparse.Namespace, repo: Path) -> None:
    if not (repo / "conformance").is_dir() or not (repo / "reference" / "kmod").is_dir():
        raise UsageError(f"--repo {repo}: not the project root (no conformance/ or "
                         "reference/kmod/ in it)")
    if not 1 <= args.smp <= 64:
        raise UsageError(f"--smp {args.smp}: give 1 to 64 guest CPUs")
    if args.mem is not None and not _MEM_RE.match(args.mem):
        raise UsageError(f"--mem {args.mem!r}: give a size such as 2G or 1536M")
    if args.target != "qemu":
        given = [o for o, v in (("--kernel", args.kernel), ("--append", args.append)) if v]
        if given or args.accel != "tcg" or args.smp != 2 or args.mem not in (None, "2G"):
            raise UsageError(
                f"{', '.join(given) or '--accel/--smp/--mem'}: only for --target qemu; the "
                f"{args.target} target certifies the kernel that machine runs, as it runs")
    if args.kernel_headers and not args.kernel_modules:
        raise UsageError("--kernel-headers: only with --kernel IMAGE --kernel-modules DIR")
    if args.kernel_modules:
        if args.target != "qemu":
            raise UsageError("--kernel-modules: only for --target qemu")
        if args.kernel and any(debugkernel.is_debug(k) for k in args.kernel):
            raise UsageError("--kernel-modules: not with --kernel debug (the debug kernel "
                             "is built here, modules and all)")
        if not args.kernel or len(args.kernel) != 1 or not Path(args.kernel[0]).is_file():
            raise UsageError("--kernel-modules DIR needs exactly one --kernel IMAGE, the path "
                             "of the kernel's bzImage")
        if not args.kernel_modules.is_dir():
            raise UsageError(f"--kernel-modules {args.kernel_modules}: not a directory")
    if args.ssh_option and not args.target.startswith("ssh://"):
        raise UsageError("--ssh-option: only with --target ssh://HOST")
    if args.accel == "kvm" and not Path("/dev/kvm").exists():
        raise UsageError("--accel kvm: /dev/kvm does not exist here; use --accel tcg")
    if args.module_param and "kmod" not in (args.backend or ["kmod"]):
        raise UsageError("--module-param: only with --backend kmod (the user backend loads "
                         "no module)")
    try:
        cf.parse_module_params(args.module_param, cf.module_names(repo))
    except ValueError as exc:
        raise UsageError(f"--module-param {exc}") from exc
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out {args.out}: exists and is not a directory")
    _validate_fuzz(args)


def _fuzzing(args: argparse.Namespace) -> tuple[bool, bool]:
    """(some run fuzzes with aem_fuzz, some run runs trinity): the kmod runs (not over
    ssh), with the options given or the debug kernel's defaults."""
    if "kmod" not in (args.backend or ["kmod"]) or args.target.startswith("ssh://"):
        return False, False
    settings = [cf.fuzz_settings(args.fuzz_calls, args.trinity, debugkernel.is_debug(k))
                for k in (args.kernel or [None])]
    return any(c > 0 for c, _ in settings), any(t > 0 for _, t in settings)


def trinity_missing(args: argparse.Namespace) -> bool:
    """Some run needs trinity and it is not installed here (the guest runs the host's)."""
    return _fuzzing(args)[1] and shutil.which("trinity") is None


def _validate_fuzz(args: argparse.Namespace) -> None:
    """--fuzz-calls, --fuzz-seed and --trinity: where they apply, and trinity installed."""
    given = [o for o, v in (("--fuzz-calls", args.fuzz_calls), ("--trinity", args.trinity))
             if v]
    if given and "kmod" not in (args.backend or ["kmod"]):
        raise UsageError(f"{', '.join(given)}: only with --backend kmod (the fuzzers call "
                         "/dev/aem, which the user backend does not load)")
    if given and args.target.startswith("ssh://"):
        raise UsageError(f"{', '.join(given)}: not with an ssh target (the fuzzers are not "
                         "copied there); use --target qemu or local")
    fuzz, trinity = _fuzzing(args)
    if args.fuzz_seed is not None and not fuzz:
        raise UsageError("--fuzz-seed: only with --fuzz-calls N (N > 0), or --kernel debug "
                         "(which fuzzes by default)")
    if trinity_missing(args) and os.geteuid() != 0:
        why = ("--trinity" if args.trinity else
               f"--kernel debug (trinity {cf.DEBUG_TRINITY_SECONDS} s by default)")
        raise UsageError(f"{why}: needs trinity, which is not installed (Debian package "
                         "trinity): run 'sudo apt-get install trinity', or give --trinity 0")


def _exit_code(results: dict[str, Any], execution: cf.Execution, verdict: str) -> int:
    infra = execution.error is not None and execution.error != "panic"
    if infra or (results["harness"].get("error") and
                 not any(t["outcome"] != res.ERROR for r in results["requirements"]
                         for t in r["tests"])):
        return ExitCode.INFRA
    return ExitCode.OK if res.exit_verdict(results, verdict) else ExitCode.FAILED


def _write_reports(run_dirs: list[Path], report_dir: Path) -> list[str]:
    report = load_report(run_dirs, generated_by="Generated by cglcert certify.")
    report_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt, render in RENDERERS.items():
        path = report_dir / FILES[fmt]
        path.write_text(render(report), encoding="utf-8")
        written.append(str(path))
    return written


def certify_one(args: argparse.Namespace, repo: Path, kernel_spec: str | None, backend: str,
                out: Path | None, matrix_dir: Path | None, prog: Progress) -> dict[str, Any]:
    """Certify one (kernel, backend): steps 2 to 6; return the outcome for the summary."""
    kind = "ssh" if args.target.startswith("ssh://") else args.target
    target = targets.load(kind)
    plan = cf.Plan(repo=repo, run_dir=Path(), kernel=kernel_spec, backend=backend,
                   target=kind, target_url=args.target if kind == "ssh" else "",
                   ssh_options=list(args.ssh_option),
                   kernel_modules=args.kernel_modules, kernel_headers=args.kernel_headers,
                   accel=args.accel, smp=args.smp,
                   mem=args.mem or (debugkernel.MEM if debugkernel.is_debug(kernel_spec)
                                    else "2G"),
                   profile="quick" if args.quick else "full" if args.full else "default",
                   verdict=args.verdict, append=args.append, stress=not args.no_stress,
                   module_params=cf.parse_module_params(args.module_param,
                                                        cf.module_names(repo))
                   if backend == "kmod" else {})
    prog.step("kernel")
    release, flavor, kernel = target.prepare(plan)
    config = debugkernel.read_config(kernel.config) if kernel is not None else {}
    debug_options = debugkernel.debug_options(config)
    if debugkernel.is_debug_kernel(kernel):
        plan.timeout_factor = debugkernel.TIMEOUT_FACTOR
    plan.kmemleak = "CONFIG_DEBUG_KMEMLEAK" in debug_options
    if plan.backend == "kmod" and kind != "ssh":
        plan.fuzz_calls, plan.trinity = cf.fuzz_settings(
            args.fuzz_calls, args.trinity, debugkernel.is_debug_kernel(kernel))
        plan.fuzz_seed = 1 if args.fuzz_seed is None else args.fuzz_seed
    if matrix_dir is not None:
        plan.run_dir = matrix_dir / f"{release}-{backend}"
    else:
        plan.run_dir = out or repo / "reports" / "out" / cf.run_name(release, backend)
    plan.run_dir = plan.run_dir.resolve()
    try:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {plan.run_dir}: cannot create the directory: {exc}") from exc
    for stale in ("gtest.xml", "suite.rc", "stress.json", "unload.rc",
                  *(f"kmemleak-{p}.{x}" for p in ("baseline", "loaded", "unloaded")
                    for x in ("txt", "rc", "err"))):
        (plan.run_dir / stale).unlink(missing_ok=True)
    for stale_dir in ("stress", "ktap", "fuzz"):
        shutil.rmtree(plan.run_dir / stale_dir, ignore_errors=True)
    prog.done(f"{release}" + (f" ({kernel.version})" if kernel else " (running)"))

    prog.step(f"build for {release}")
    catalog = load_catalog(repo)
    if catalog.problems:
        raise InfraError(f"the requirement catalog is invalid ({len(catalog.problems)} "
                         "problems); run './cglcert coverage' for the list")
    modules: list[Path] = []
    if plan.backend == "kmod" and hasattr(target, "stage_modules"):
        prog.note(f"module sources for {release} (built on the target)")
        modules = target.stage_modules(plan, release)
    elif plan.backend == "kmod":
        hdrs = kernel.build_dir if kernel else targets.load("local").headers_dir(release)
        if hdrs is None:
            raise InfraError(f"no headers for {release} in the kernel cache: "
                             f"run './cglcert kernels fetch {release}'")
        prog.note(f"modules for {release}")
        modules = cf.build_modules(repo, hdrs, cf.module_build_dir(repo, release, hdrs))
    if plan.backend == "kmod" and debugkernel.is_debug_kernel(kernel):
        prog.note("KTAP programs (reference/kmod/tests)")
        plan.ktap = cf.build_ktap(repo)
    if plan.fuzz_calls > 0:
        prog.note("ABI fuzzer (reference/kmod/tests/aem_fuzz)")
        cf.build_fuzzer(repo)
    prog.note("conformance suite")
    suite = cf.build_suite(repo, repo / "build" / "conformance")
    stress_build = None
    if plan.stress:
        from cglcert.commands import stress as stress_cmd
        prog.note("stress programs")
        stress_build = repo / "build" / "cglcert-stress"
        stress_cmd.build(repo, stress_build)
    art = cf.Artifacts(suite=suite, stress_build=stress_build, modules=modules, kernel=kernel)
    prog.done(", ".join(filter(None, [f"{len(modules)} modules" if modules else "",
                                      "suite", "stress" if stress_build else "",
                                      "fuzzer" if plan.fuzz_calls > 0 else ""])))

    where = (f"{release} under QEMU ({plan.accel}, {plan.smp} CPUs, {plan.mem})"
             if plan.target == "qemu" else f"this machine ({release})" if plan.target == "local"
             else f"{plan.target_url} ({release})")
    prog.step(f"run on {where}, backend {backend}")
    script = cf.target_script(plan, art)
    (plan.run_dir / "certify.sh").write_text(script, encoding="utf-8")
    execution = target.execute(plan, art, script)
    if execution.error:
        first = execution.detail.splitlines()[0] if execution.detail else ""
        prog.fail(f"{execution.error}: {first}")
    else:
        prog.done(f"kernel log: {len(execution.findings)} finding(s)")

    prog.step("judge")
    env = cf.base_environment(plan, release, flavor)
    if kernel is not None:
        env.update(kernel_package_version=kernel.version, kernel_image=str(kernel.vmlinuz))
        if kernel.config is not None:
            env["kernel_debug_options"] = debug_options
    if debugkernel.is_debug_kernel(kernel):
        built = debugkernel.manifest(kernel)
        env.update(debug_kernel_build=built.get("key"),
                   debug_kernel_fragment=built.get("fragment"),
                   timeout_factor=plan.timeout_factor)
    env.update(execution.environment)
    if plan.stress:
        cf.collect_stress(plan, catalog.requirements, env)
    results = cf.judge(catalog.requirements, expected_tests(repo), plan.run_dir, execution,
                       env, backend=plan.backend, stress_wanted=plan.stress,
                       ktap=[p.name for p in plan.ktap], kmemleak=plan.kmemleak,
                       fuzz=plan.fuzz_passes(), trinity=plan.trinity)
    (plan.run_dir / "results.json").write_text(res.results_to_json(results), encoding="utf-8")
    counts = results["summary"]["tests"]
    prog.done(", ".join(f"{n} {o.lower()}" for o, n in counts.items() if n))

    prog.step("report")
    report_dir = plan.run_dir / "report"
    written = _write_reports([plan.run_dir], report_dir)
    prog.done(str(report_dir))

    code = _exit_code(results, execution, args.verdict)
    if not args.json:
        sys.stdout.write(res.render_summary(results))
        for b in results["health"]["blockers"]:
            sys.stdout.write(f"blocker: {b}\n")
        if results["harness"].get("error"):
            sys.stdout.write(f"error: {results['harness']['error']}\n")
    key = res.VERDICTS[args.verdict]
    return {"outcome": OUTCOMES[code], "exit_code": int(code), "run_dir": str(plan.run_dir),
            "kernel": release, "backend": results["environment"].get("backend"),
            "target": plan.target, "conformant": results["verdict"][key]["conformant"],
            "verdict": results["verdict"], "summary": results["summary"],
            "error": results["harness"].get("error"),
            "blockers": results["health"]["blockers"], "reports": written}


OUTCOMES = {ExitCode.OK: "CERTIFIED", ExitCode.FAILED: "NOT CERTIFIED",
            ExitCode.INFRA: "ERROR"}


def run(args: argparse.Namespace) -> int:
    """Certify every (kernel, backend) asked; return the worst exit code."""
    repo = (args.repo or default_repo_root()).resolve()
    _validate(args, repo)
    kernels = list(dict.fromkeys(args.kernel or [None]))
    backends = list(dict.fromkeys(args.backend or ["kmod"]))
    combos = [(k, b) for k in kernels for b in backends]
    matrix_dir = None
    if len(combos) > 1:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        matrix_dir = (args.out or repo / "reports" / "out" / f"{stamp}-matrix").resolve()
    prog = Progress(1 + 5 * len(combos), quiet=args.json)

    prog.step("host packages")
    need = cf.packages_needed(args.target, not args.no_stress, trinity_missing(args))
    try:
        installed = hostdeps.ensure(need, quiet=True)
    except hostdeps.MissingPackages as exc:
        raise InfraError(f"missing Debian packages: {' '.join(exc.packages)}; run: {exc}") \
            from exc
    prog.done(f"installed {' '.join(installed)}" if installed else "all present")

    runs = [certify_one(args, repo, k, b, args.out, matrix_dir, prog) for k, b in combos]
    code = max(r["exit_code"] for r in runs)
    out: dict[str, Any] = runs[0]
    if matrix_dir is not None:
        merged = matrix_dir / "report"
        written = _write_reports([Path(r["run_dir"]) for r in runs], merged)
        out = {"outcome": OUTCOMES[code], "exit_code": code, "run_dir": str(matrix_dir),
               "runs": runs, "reports": written}
    if args.json:
        json.dump({**out, "steps": prog.steps}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return code
    for r in runs:
        state = "conformant" if r["conformant"] else "not conformant"
        sys.stdout.write(f"{r['outcome']}: {r['kernel']}, backend {r['backend']}, "
                         f"{args.verdict.upper()} {state}\n"
                         f"  report: {Path(r['run_dir']) / 'report' / FILES['html']}\n")
    if matrix_dir is not None:
        sys.stdout.write(f"matrix report: {matrix_dir / 'report' / FILES['html']}\n")
    return code
