"""``cglcert lava``: LAVA job and test definitions for a fleet; LAVA cases from results.json.

``lava job`` writes ``DIR/job.yaml`` (submit it with ``lavacli jobs submit``), the test
definition ``DIR/cglcert-conformance.yaml`` (for a test-definitions repository) and, for
``qemu`` devices, the ramdisk ``DIR/ramdisk.cpio.gz``. ``lava results`` runs on the device:
it turns results.json (and stress.json) into ``lava-test-case`` commands (see
:mod:`cglcert.lava`). Only the standard library is imported here, so ``lava results`` also
works with a bare python3 (``PYTHONPATH=ci python3 -m cglcert lava results ...``).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cglcert import ExitCode, InfraError, UsageError, default_repo_root
from cglcert import kernels as kc
from cglcert import lava

DESCRIPTION = """\
Write a LAVA job that runs the CGL conformance suite (with --stress also cglcert stress
--quick, with --soak T also cglcert soak) on a LAVA-managed device and reports every
requirement, test and measurement with lava-test-case.

  cglcert lava job --out DIR [options]       DIR/job.yaml, DIR/cglcert-conformance.yaml
                                              (+ DIR/ramdisk.cpio.gz for qemu devices)
  cglcert lava results RESULTS.json [--stress STRESS.json] [--soak SOAK.json]
                                              lava-test-case commands (run on the device)

qemu devices (default): the job deploys Debian's kernel and a ramdisk to tmpfs and boots
with QEMU; by default the ramdisk mounts the worker's root read-only over 9p at /host and
the suite runs from --project-dir chrooted there (the worker needs the project built).
--no-host-root: the ramdisk (--ramdisk) must itself hold the project at --project-dir.
x86 lab boards (--device-type x86 ...): deploy to tftp, boot with --boot-method ipxe or
grub, and give --ramdisk: a gzip'd cpio rootfs holding the project at --project-dir.

Check a job without a server:  lava-run --validate --device DEVICE.yaml --job-id 1
--output-dir /tmp/lava DIR/job.yaml   (or --validate-device DEVICE.yaml here).
"""

_DEVICE_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")
_URL_SCHEMES = ("http", "https", "file")
_MAX_MINUTES = 24 * 60
OS_CHOICES = ("oe", "debian", "ubuntu", "fedora")
#: Minutes the default job timeout leaves beyond its actions' timeouts.
JOB_MARGIN_MINUTES = 10


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``lava`` subcommand with ``job`` and ``results``."""
    parser = subparsers.add_parser(
        "lava", help="LAVA job and test definitions; lava-test-case lines from results.json",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="lava_command", metavar="ACTION")

    j = sub.add_parser("job", help="write the LAVA job, test definition (and ramdisk)",
                       description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    j.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory for job.yaml, cglcert-conformance.yaml, ramdisk.cpio.gz")
    j.add_argument("--device-type", default="qemu", metavar="NAME",
                   help="LAVA device type (default qemu)")
    j.add_argument("--boot-method", choices=sorted(lava.BOOT_METHODS), default=None,
                   help="qemu for qemu devices (the default there); ipxe or grub "
                        "(tftp deploy) for lab boards (default ipxe)")
    j.add_argument("--kernel", default=None, metavar="RELEASE|URL|PATH",
                   help="Debian kernel release or flavor from the kernel cache (fetched if "
                        "needed; default: Debian's default amd64 kernel), or the URL / path "
                        "of a bzImage")
    j.add_argument("--ramdisk", default=None, metavar="URL|PATH",
                   help="gzip'd newc cpio rootfs; default for qemu with a cached kernel: "
                        "built into DIR/ramdisk.cpio.gz (busybox + 9p, see --no-host-root)")
    j.add_argument("--os", choices=OS_CHOICES, default=None,
                   help="the rootfs's OS as LAVA names it; decides the test shell: oe "
                        "(/bin/sh, busybox) or debian / ubuntu / fedora (/bin/bash) (default: oe "
                        "for the built ramdisk, debian for --ramdisk)")
    j.add_argument("--no-host-root", action="store_true",
                   help="qemu: do not share the worker's root into the guest; the ramdisk "
                        "must then hold the project at --project-dir")
    j.add_argument("--project-dir", default=None, metavar="PATH",
                   help="absolute path of the built project on the device (default: this "
                        "repository with the worker's root shared, else /opt/aem-cgl)")
    j.add_argument("--suite-binary", default=None, metavar="PATH",
                   help="absolute path of a built aem_conformance on the device (default: "
                        "PROJECT/build/conformance/conformance/aem_conformance when it exists "
                        "on this host; else the device builds the suite)")
    j.add_argument("--backend", choices=("user", "kmod"), default="user",
                   help="libaem backend on the device (default user)")
    j.add_argument("--verdict", choices=("cgl-2.0", "cgl-3.0"), default="cgl-2.0",
                   help="verdict passed to cglcert run (default cgl-2.0)")
    j.add_argument("--stress", action="store_true",
                   help="also run cglcert stress --quick and report its thresholds "
                        f"(adds {lava.STRESS_EXTRA_MINUTES} minutes to the test timeout)")
    j.add_argument("--soak", default=None, metavar="T",
                   help="also run cglcert soak for T (30m, 8h, ...) and report it (adds T to "
                        "the test timeout)")
    j.add_argument("--soak-round", default="60", metavar="S",
                   help="soak round length (default 60 s)")
    j.add_argument("--stress-build-dir", default=None, metavar="PATH",
                   help="absolute path of a build directory with built stress programs on "
                        "the device (stress and soak run with --no-build; default: "
                        "PROJECT/build/cglcert-stress when built on this host with the "
                        "worker's root shared, else they build on the device)")
    j.add_argument("--job-name", default=None, metavar="TEXT",
                   help="job name (default: 'cglcert conformance RELEASE (DEVICE-TYPE)')")
    j.add_argument("--priority", default="medium", metavar="P",
                   help="high, medium, low or 0..100 (default medium)")
    j.add_argument("--visibility", choices=("public", "personal"), default="public",
                   help="job visibility (default public)")
    j.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="device tag the device must have; repeatable")
    j.add_argument("--smp", type=int, default=2, metavar="N",
                   help="qemu: virtual CPUs (default 2)")
    j.add_argument("--memory", type=int, default=2048, metavar="MB",
                   help="qemu: guest memory in MiB (default 2048)")
    j.add_argument("--append", default="", metavar="ARGS", help="extra kernel command line")
    j.add_argument("--job-timeout", type=int, default=None, metavar="MIN",
                   help="minutes for the whole job (default: deploy + boot x retries + test "
                        f"+ {JOB_MARGIN_MINUTES})")
    for name, default, what in (("deploy", lava.DEFAULT_TIMEOUTS["deploy"], "the deploy action"),
                                ("boot", lava.DEFAULT_TIMEOUTS["boot"], "the boot action"),
                                ("test", lava.DEFAULT_TIMEOUTS["test"], "the test action")):
        j.add_argument(f"--{name}-timeout", type=int, default=default, metavar="MIN",
                       help=f"minutes for {what} (default {default})")
    j.add_argument("--failure-retry", type=int, default=1, metavar="N",
                   help="boot attempts before the job fails (default 1)")
    j.add_argument("--testdef-repo", default=None, metavar="URL",
                   help="take the test definition from this git repository (commit "
                        "DIR/cglcert-conformance.yaml there) instead of inlining it in the job")
    j.add_argument("--testdef-path", default=None, metavar="PATH",
                   help=f"path of the test definition in --testdef-repo "
                        f"(default {lava.TESTDEF_NAME}.yaml)")
    j.add_argument("--testdef-revision", default=None, metavar="REV",
                   help="git revision of --testdef-repo (default: its default branch)")
    j.add_argument("--validate-device", type=Path, default=None, metavar="DEVICE.yaml",
                   help="run 'lava-run --validate' on the job against this rendered device "
                        "configuration (needs Debian's lava-dispatcher)")
    j.add_argument("--repo", type=Path, default=None, metavar="DIR",
                   help="project root (default: the repository of this cglcert)")
    j.set_defaults(func=run_job)

    r = sub.add_parser("results", help="lava-test-case commands from results.json (on the device)")
    r.add_argument("results", type=Path, metavar="RESULTS.json",
                   help="results.json of cglcert run")
    r.add_argument("--stress", type=Path, default=None, metavar="STRESS.json",
                   help="stress.json of cglcert stress, reported as stress.* cases")
    r.add_argument("--soak", type=Path, default=None, metavar="SOAK.json",
                   help="soak.json of cglcert soak, reported as soak.* cases")
    r.add_argument("--format", choices=("commands", "txt"), default="commands",
                   help="commands: lava-test-case lines to source in a test step (and "
                        "lava-test-raise on a harness error); txt: Linaro result.txt lines")
    r.set_defaults(func=run_results)
    parser.set_defaults(func=lambda args: _no_action(parser))


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    raise UsageError("an action is required: job or results")


# --------------------------------------------------------------------------- validation

def artifact_url(option: str, value: str) -> str:
    """An http(s):// or file:// URL as is; an existing local file as a file:// URL."""
    if "://" in value:
        u = urlparse(value)
        if u.scheme not in _URL_SCHEMES or not (u.netloc or u.path) or \
                (u.scheme == "file" and not u.path.startswith("/")):
            raise UsageError(f"{option} {value}: not a usable URL; give http://, https:// or "
                             "file:///absolute/path (LAVA downloads it), or a local file")
        if u.scheme == "file" and not Path(u.path).is_file():
            sys.stderr.write(f"cglcert lava: warning: {option} {value}: {u.path} does not "
                             "exist on this host; the LAVA worker must have it there\n")
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"{option} {value}: no such file; give a file, or an http(s):// or "
                         "file:// URL")
    return path.resolve().as_uri()


def _check_abs(option: str, value: str) -> str:
    if not value.startswith("/") or "\n" in value or '"' in value or " " in value:
        raise UsageError(f"{option} {value!r}: must be an absolute path on the device without "
                         "spaces or quotes (e.g. /opt/aem-cgl)")
    return value


def _priority(value: str) -> str | int:
    if value in ("high", "medium", "low"):
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if not 0 <= n <= 100:
        raise UsageError(f"--priority {value}: give high, medium, low or a number 0..100")
    return n


def _timeouts(args: argparse.Namespace) -> dict[str, int]:
    t = {}
    for name in ("job", "deploy", "boot", "test"):
        v = getattr(args, f"{name}_timeout")
        if v is None:  # --job-timeout: derived below
            continue
        if not 1 <= v <= _MAX_MINUTES:
            raise UsageError(f"--{name}-timeout {v}: give whole minutes, 1..{_MAX_MINUTES}")
        t[name] = v
    test = lava.test_minutes(t["test"], args.stress, _soak_minutes(args))
    need = t["deploy"] + t["boot"] * max(1, args.failure_retry) + test
    t.setdefault("job", need + JOB_MARGIN_MINUTES)
    if t["job"] < need:
        raise UsageError(
            f"--job-timeout {t['job']} is shorter than deploy + boot x retries + test = {need} "
            f"minutes{' (with --stress)' if args.stress else ''}"
            f"{' (with --soak)' if args.soak else ''}: LAVA would cancel the job "
            f"before its actions may end; give --job-timeout {need} or more, or shorten the "
            "action timeouts")
    t["connection"] = lava.DEFAULT_TIMEOUTS["connection"]
    return t


def _soak_minutes(args: argparse.Namespace) -> int:
    """Minutes of --soak (0 without), validated like ``cglcert soak`` does."""
    if not args.soak:
        return 0
    from cglcert.commands.soak import MIN_ROUND_S, parse_duration  # needs the venv

    duration = parse_duration("--soak", args.soak)
    round_s = parse_duration("--soak-round", args.soak_round)
    if duration < MIN_ROUND_S or round_s < MIN_ROUND_S or round_s > duration:
        raise UsageError(f"--soak {args.soak} --soak-round {args.soak_round}: give a soak of "
                         f"at least {MIN_ROUND_S:g} s and a round between {MIN_ROUND_S:g} s "
                         "and the soak's duration")
    if " " in args.soak.strip() or " " in args.soak_round.strip():
        raise UsageError("--soak, --soak-round: write the number and unit together (30m)")
    return -(-int(duration) // 60)


def _kernel(args: argparse.Namespace) -> tuple[str, str, Any]:
    """(URL, release label, cached Kernel or None) of --kernel."""
    spec = args.kernel
    if spec and ("://" in spec or "/" in spec):
        url = artifact_url("--kernel", spec)
        m = re.search(r"vmlinuz-(\d+\.\d+\.\d+-\d+-[a-z0-9-]+)", spec)
        return url, (m[1] if m else Path(urlparse(url).path).name), None
    try:
        release = kc.resolve(spec)
        kc.parse_release(release)
    except kc.KernelError as exc:
        raise UsageError(f"--kernel: {exc}") from exc
    kernel = kc.cached(release)
    if kernel is None:
        sys.stderr.write(f"cglcert lava: fetching {release} into the kernel cache\n")
        try:
            kernel = kc.fetch(release, headers=False)
        except kc.KernelError as exc:
            raise InfraError(f"--kernel {release}: {exc}") from exc
    return kernel.vmlinuz.resolve().as_uri(), release, kernel


def validate_job_args(args: argparse.Namespace) -> None:
    """Checks that need no kernel or file system (the rest is in :func:`run_job`)."""
    if not _DEVICE_TYPE_RE.match(args.device_type):
        raise UsageError(f"--device-type {args.device_type!r}: a LAVA device type name such as "
                         "qemu, x86 or bcm2711-rpi-4-b (letters, digits, _ . + -)")
    if args.boot_method is None:
        args.boot_method = "qemu" if args.device_type == "qemu" else "ipxe"
    if (args.device_type == "qemu") != (args.boot_method == "qemu"):
        raise UsageError(f"--boot-method {args.boot_method} does not fit --device-type "
                         f"{args.device_type}: qemu devices boot with 'qemu', lab boards with "
                         "ipxe or grub")
    if args.boot_method != "qemu" and args.ramdisk is None:
        raise UsageError(f"--device-type {args.device_type} needs --ramdisk URL: a gzip'd cpio "
                         "rootfs holding the built project at --project-dir")
    if args.boot_method != "qemu" and args.no_host_root:
        raise UsageError("--no-host-root is for qemu devices only (lab boards never see the "
                         "worker's root)")
    if not 1 <= args.smp <= 64:
        raise UsageError(f"--smp {args.smp}: give 1..64 virtual CPUs")
    if not 256 <= args.memory <= 65536:
        raise UsageError(f"--memory {args.memory}: give 256..65536 MiB")
    if not 1 <= args.failure_retry <= 10:
        raise UsageError(f"--failure-retry {args.failure_retry}: give 1..10 boot attempts")
    for tag in args.tag:
        if not _TAG_RE.match(tag):
            raise UsageError(f"--tag {tag!r}: a LAVA device tag (letters, digits, _ . : + -)")
    if args.job_name is not None and (not args.job_name.strip() or len(args.job_name) > 200
                                      or "\n" in args.job_name):
        raise UsageError("--job-name: give one line of 1..200 characters")
    if '"' in args.append or "\n" in args.append:
        raise UsageError("--append: kernel arguments without double quotes or newlines")
    if args.testdef_repo is None and (args.testdef_path or args.testdef_revision):
        raise UsageError("--testdef-path and --testdef-revision need --testdef-repo URL")
    if args.testdef_path is not None and (args.testdef_path.startswith("/") or
                                          not args.testdef_path.endswith((".yaml", ".yml"))):
        raise UsageError(f"--testdef-path {args.testdef_path}: a relative path to a .yaml "
                         "file inside --testdef-repo")
    _priority(args.priority)
    _timeouts(args)


# --------------------------------------------------------------------------- actions

def run_job(args: argparse.Namespace) -> int:
    """Write job.yaml, the test definition and (qemu) the ramdisk."""
    validate_job_args(args)
    repo = (args.repo or default_repo_root()).resolve()
    host_root = args.boot_method == "qemu" and not args.no_host_root
    project = _check_abs("--project-dir", args.project_dir or
                         (str(repo) if host_root else "/opt/aem-cgl"))
    binary = args.suite_binary
    if binary is None:
        cand = Path(project) / "build/conformance/conformance/aem_conformance"
        binary = str(cand) if host_root and cand.is_file() else ""
    elif binary:
        _check_abs("--suite-binary", binary)
    stress_build = args.stress_build_dir
    if stress_build is None:
        cand = Path(project) / "build/cglcert-stress"
        built = all((cand / "stress" / p).is_file()
                    for p in ("aem_stress_delivery", "aem_stress_atomicity"))
        stress_build = str(cand) if host_root and built and (args.stress or args.soak) else ""
    elif stress_build:
        _check_abs("--stress-build-dir", stress_build)
    if args.ramdisk is None and args.no_host_root:
        raise UsageError("--no-host-root needs --ramdisk URL: a gzip'd cpio rootfs holding "
                         "the built project at --project-dir")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory: {exc}") from exc
    kernel_url, release, kernel = _kernel(args)
    if args.ramdisk is not None:
        ramdisk_url = artifact_url("--ramdisk", args.ramdisk)
    elif kernel is None:
        raise UsageError("--kernel is a URL: give --ramdisk too (the ramdisk carries the "
                         "kernel's 9p modules, so it is built only for a cached kernel)")
    else:
        try:
            ramdisk = lava.build_ramdisk(kernel, out / "ramdisk.cpio.gz")
        except kc.KernelError as exc:
            raise InfraError(f"cannot build the ramdisk: {exc}") from exc
        ramdisk_url = ramdisk.resolve().as_uri()
    opts = lava.JobOptions(
        kernel_url=kernel_url, ramdisk_url=ramdisk_url, kernel_release=release,
        device_type=args.device_type, boot_method=args.boot_method, job_name=args.job_name,
        priority=_priority(args.priority), visibility=args.visibility, tags=args.tag,
        smp=args.smp, memory_mb=args.memory, host_root=host_root, project_dir=project,
        backend=args.backend, verdict=args.verdict, stress=args.stress, suite_binary=binary,
        stress_build_dir=stress_build, soak=(args.soak or "").strip(),
        soak_minutes=_soak_minutes(args), soak_round=args.soak_round.strip(),
        kernel_args=args.append, timeouts=_timeouts(args), failure_retry=args.failure_retry,
        os=args.os or ("debian" if args.ramdisk is not None else "oe"),
        testdef_repo=args.testdef_repo, testdef_path=args.testdef_path,
        testdef_revision=args.testdef_revision)
    job_file, testdef_file = out / "job.yaml", out / f"{lava.TESTDEF_NAME}.yaml"
    job_file.write_text(lava.dump_yaml(lava.job_definition(opts)), encoding="utf-8")
    testdef = lava.test_definition(lava.testdef_params(
        project_dir=project, chroot="/host" if host_root else "", backend=args.backend,
        verdict=args.verdict, stress=args.stress, suite_binary=binary,
        stress_build_dir=stress_build, soak=opts.soak, soak_round=opts.soak_round))
    testdef_file.write_text(lava.dump_yaml(testdef), encoding="utf-8")
    print(f"job:             {job_file}\ntest definition: {testdef_file}\n"
          f"kernel:          {kernel_url}\nramdisk:         {ramdisk_url}")
    if args.validate_device is not None:
        ok, text = validate_with_lava_run(job_file, args.validate_device, out / "lava-validate")
        sys.stderr.write(text)
        print(f"lava-run --validate: {'ok' if ok else 'FAILED'}")
        return ExitCode.OK if ok else ExitCode.FAILED
    return ExitCode.OK


LAVA_RUN = "/usr/bin/lava-run"


def validate_with_lava_run(job: Path, device: Path, workdir: Path,
                           lava_run: str = LAVA_RUN, timeout: float = 300) -> tuple[bool, str]:
    """Run ``lava-run --validate``; return (valid, the tail of its output)."""
    if not Path(lava_run).is_file():
        raise InfraError(f"{lava_run} not found: apt-get install lava-dispatcher (Debian)")
    if not device.is_file():
        raise UsageError(f"--validate-device {device}: no such file (a rendered LAVA device "
                         "configuration, e.g. from a device dictionary and qemu.jinja2)")
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [lava_run, "--validate", "--job-id", "1", "--output-dir", str(workdir),
           "--device", str(device), str(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"lava-run --validate did not finish within {timeout:g} s") from exc
    text = proc.stdout + proc.stderr
    tail = "\n".join(text.strip().splitlines()[-25:]) + "\n"
    return proc.returncode == 0, tail


def _read_json(option: str, path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"{option} {path}: no such file (did the run write it?)") from exc
    except OSError as exc:
        raise InfraError(f"{option} {path}: cannot read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InfraError(f"{option} {path}: not JSON ({exc}); was the run killed while "
                         "writing it?") from exc
    if not isinstance(data, dict):
        raise InfraError(f"{option} {path}: not a JSON object")
    return data


def run_results(args: argparse.Namespace) -> int:
    """Print the LAVA cases of results.json (and stress.json)."""
    results = _read_json("RESULTS.json", args.results)
    if not str(results.get("schema", "")).startswith("cglcert-results/") or \
            "requirements" not in results:
        raise UsageError(f"{args.results}: not a cglcert results.json (no schema "
                         "'cglcert-results/1'); give the file cglcert run wrote")
    stress = _read_json("--stress", args.stress) if args.stress else None
    if stress is not None and "verdicts" not in stress:
        raise UsageError(f"--stress {args.stress}: not a cglcert stress.json (no 'verdicts')")
    soak = _read_json("--soak", args.soak) if args.soak else None
    if soak is not None and not str(soak.get("schema", "")).startswith("cglcert-soak/"):
        raise UsageError(f"--soak {args.soak}: not a cglcert soak.json (no schema "
                         "'cglcert-soak/1')")
    cases, error = lava.lava_cases(results, stress, soak)
    sys.stdout.write(lava.render_cases(cases, error, args.format))
    if error:
        sys.stderr.write(f"cglcert lava: harness error: {error}\n")
    return ExitCode.OK
