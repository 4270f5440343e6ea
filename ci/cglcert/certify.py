"""Certify one kernel: build, run on the target, judge with the kernel's health, report.

``cglcert certify`` (:mod:`cglcert.commands.certify`) is the command line; this module
holds the steps, and the pure parts (the script the target runs, the judgement) are
unit-tested in ``ci/tests/test_certify.py``.

1. **deps**     the Debian packages the run needs (:mod:`cglcert.hostdeps`: installed as
                root, otherwise the exact ``apt-get`` line to run).
2. **kernel**   the kernel to certify, fetched into the cache with its headers
                (:mod:`cglcert.kernels`); the ``local`` target certifies the running one.
3. **build**    the AEM modules for that kernel (``build/certify/kmod/<release>-<hash>/``), the
                conformance suite and the stress programs.
4. **execute**  on the target (:mod:`cglcert.targets`): load the modules, run the suite with
                a kernel-log marker around every test, the stress pass, unload the modules;
                on the debug kernel (:mod:`cglcert.debugkernel`) also the modules' KTAP
                programs before the unload and kmemleak scans (before and after it).
5. **judge**    ``results.json``: the suite's outcomes; a splat during a test fails that
                test; a splat outside tests, an unacceptable taint or a failed unload blocks
                the verdict; stress thresholds (the catalog's) become tests of their
                requirement; a boot failure, a module that does not load or a harness fault
                is ERROR, never a kernel FAIL; a KTAP program that fails (or splats) and a
                memory leak kmemleak reports block the verdict.
6. **report**   HTML, Markdown, JUnit, KTAP and KCIDB into ``RUN/report/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cglcert import InfraError, __version__, kmsg
from cglcert import kernels as kc
from cglcert import results as res
from cglcert.catalog import Requirement

#: Debian packages per need (what ``ci/install-deps`` installs, less the test-only ones).
PACKAGES = {
    "build": ["cmake", "ninja-build", "g++", "make", "pkg-config", "libgtest-dev"],
    "qemu": ["qemu-system-x86", "busybox-static", "lz4"],
    "stress": ["libbenchmark-dev", "liburing-dev", "libuv1-dev", "stress-ng", "rt-tests"],
}
#: The stress profile run by each certification profile (``cglcert stress --<profile>``).
STRESS_PROFILE = {"quick": "smoke", "default": "quick", "full": "full"}
#: Seconds the conformance suite may take on the target, per profile (TCG is slow).
SUITE_TIMEOUT = {"quick": 1200, "default": 1800, "full": 3600}
#: Seconds the stress pass may take on the target.
STRESS_TIMEOUT = {"quick": 600, "default": 1500, "full": 7200}
#: Seconds of each cyclictest run (unloaded, then under stress-ng CPU hogs), per profile.
CYCLICTEST_SECONDS = {"quick": 5, "default": 15, "full": 60}
#: Marker names (``aem-test: begin NAME``) the script puts around its non-gtest phases.
PHASE_STRESS, PHASE_UNLOAD = "cglcert.stress", "cglcert.unload"
PHASE_KMEMLEAK = "cglcert.kmemleak"
#: A KTAP program runs between ``aem-test: begin ktap.PROG`` and ``... end ktap.PROG``.
KTAP_PREFIX = "ktap."
#: Seconds each KTAP program may take on the target (times Plan.timeout_factor).
KTAP_TIMEOUT = 900
#: Seconds kmemleak waits before it reports an object (its jiffies_min_age), plus margin:
#: the pause between the two scans of each leak check.
KMEMLEAK_PAUSE = 6
KMEMLEAK = "/sys/kernel/debug/kmemleak"
SUITE_BINARY = "aem_conformance"
#: The requirements whose thresholds each stress program measures.
STRESS_FEEDS = {"aem_stress_delivery": ("AEM-3.5.1",), "aem_stress_atomicity": ("AEM-3.6.2",),
                "aem_bench_compare": ("AEM-3.3.1",),
                "aem_prio_latency": ("AEM-3.2.1", "AEM-3.2.2")}
STRESS_PREFIX = "stress."


@dataclass
class Plan:
    """What to certify, where and how (validated by the command line)."""

    repo: Path
    run_dir: Path
    kernel: str | None          #: release, flavor or None (default); local: ignored
    backend: str                #: kmod | user
    target: str                 #: qemu | local
    accel: str = "tcg"
    smp: int = 2
    mem: str = "2G"
    profile: str = "default"
    verdict: str = "cgl-2.0"
    append: str = ""
    stress: bool = True
    module_params: dict[str, list[str]] = field(default_factory=dict)  #: module -> PARAM=V
    kernel_modules: Path | None = None  #: qemu, own build: lib/modules/<release> (--kernel IMAGE)
    kernel_headers: Path | None = None  #: qemu, own build: its headers / build folder
    target_url: str = ""        #: ssh target: ssh://[user@]host[:port]
    ssh_options: list[str] = field(default_factory=list)  #: ssh target: ``-o`` options
    python: str = sys.executable
    #: Every timeout is multiplied by this (the debug kernel under TCG is 2-5 times slower).
    timeout_factor: float = 1.0
    #: KTAP programs run after the stress pass, modules loaded (the debug kernel, kmod).
    ktap: list[Path] = field(default_factory=list)
    #: Scan for memory leaks (the kernel has kmemleak): before the suite (the baseline),
    #: before the unload and after it.
    kmemleak: bool = False

    def scaled(self, seconds: float) -> int:
        """*seconds* of a Debian kernel, for this kernel."""
        return int(round(seconds * self.timeout_factor))

    @property
    def suite_timeout(self) -> int:
        return self.scaled(SUITE_TIMEOUT[self.profile])

    @property
    def stress_timeout(self) -> int:
        return self.scaled(STRESS_TIMEOUT[self.profile])

    @property
    def ktap_timeout(self) -> int:
        """Seconds the KTAP phase may take in all."""
        return self.scaled(KTAP_TIMEOUT) * len(self.ktap)

    @property
    def kmemleak_timeout(self) -> int:
        """Seconds the leak scans may take in all (each scan walks the whole memory)."""
        return self.scaled(300) if self.kmemleak else 0

    @property
    def target_timeout(self) -> int:
        """Seconds the whole script may take on the target."""
        return (self.suite_timeout + (self.stress_timeout if self.stress else 0)
                + self.ktap_timeout + self.kmemleak_timeout + self.scaled(120))


@dataclass
class Artifacts:
    """What the build step produced."""

    suite: Path
    stress_build: Path | None
    modules: list[Path] = field(default_factory=list)   #: load order (core first)
    kernel: kc.Kernel | None = None


@dataclass
class Execution:
    """What came back from the target."""

    error: str | None = None        #: None, or qemu's ERROR_KINDS (boot, module, panic, ...)
    detail: str = ""
    kernel_log: str = ""
    log_source: str = "none"        #: dmesg, serial, or none (not readable)
    findings: tuple[kmsg.Finding, ...] = ()
    taint: kmsg.Taint | None = None  #: taint that appeared during the run (or the total)
    environment: dict[str, Any] = field(default_factory=dict)


def module_argument(path: Path, plan: Plan) -> str:
    """``/path/aem.ko max_pending=64``: a module and the parameters given for it."""
    return shlex.join([str(path), *plan.module_params.get(path.stem, [])])


_PARAM_RE = re.compile(r"^(?P<mod>[a-z][a-z0-9_]*)\.(?P<param>[a-z_][a-z0-9_]*)=(?P<value>\S+)$")


def parse_module_params(items: Sequence[str], modules: Sequence[str]) -> dict[str, list[str]]:
    """``["aem.max_pending=64"]`` -> ``{"aem": ["max_pending=64"]}``; ValueError says why."""
    out: dict[str, list[str]] = {}
    for item in items:
        m = _PARAM_RE.match(item)
        if not m:
            raise ValueError(f"{item!r}: give MODULE.PARAM=VALUE, e.g. aem.max_pending=4096")
        if m["mod"] not in modules:
            raise ValueError(f"{item!r}: {m['mod']} is not one of the AEM modules "
                             f"({', '.join(modules)})")
        out.setdefault(m["mod"], []).append(f"{m['param']}={m['value']}")
    return out


def run_name(release: str, backend: str, when: dt.datetime | None = None) -> str:
    """``20261129T141502Z-6.1.0-57-amd64-kmod``: sortable, unique per second and kernel."""
    when = when or dt.datetime.now(dt.timezone.utc)
    return f"{when.strftime('%Y%m%dT%H%M%SZ')}-{release}-{backend}"


def packages_needed(target: str, stress: bool) -> list[str]:
    """Debian packages for a run on *target*."""
    pk = list(PACKAGES["build"])
    if target == "qemu":
        pk += PACKAGES["qemu"]
    elif target.startswith("ssh"):
        pk.append("openssh-client")
    if stress:
        pk += PACKAGES["stress"]
    return pk


# --------------------------------------------------------------------------- build


def _check(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False, cwd=cwd)
    except FileNotFoundError as exc:
        raise InfraError(f"{what}: {cmd[0]} not found") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise InfraError(f"{what} failed ({shlex.join(cmd)}):\n{tail}")


def module_sources(repo: Path) -> list[Path]:
    """The files Kbuild needs to build the modules (sources, headers, Kbuild, uapi)."""
    kmod = repo / "reference" / "kmod"
    files = [p for p in kmod.iterdir() if p.is_file() and (
        p.name == "Kbuild" or (p.suffix in (".c", ".h") and not p.name.endswith(".mod.c")))]
    files += sorted((kmod / "uapi").rglob("*.h"))
    return sorted(files)


def module_names(repo: Path) -> list[str]:
    """Modules Kbuild builds (``obj-m``), the core ``aem`` first."""
    text = (repo / "reference" / "kmod" / "Kbuild").read_text(encoding="utf-8")
    names: list[str] = []
    for m in re.finditer(r"^obj-m\s*[:+]?=\s*(.+)$", text, re.M):
        names += [o[:-2] for o in m[1].split() if o.endswith(".o")]
    return sorted(dict.fromkeys(names), key=lambda n: (n != "aem", n))


def module_build_dir(repo: Path, release: str, headers: Path) -> Path:
    """``build/certify/kmod/<release>-<hash of the headers' path>``: two kernels with the
    same release name (Debian's and a vendor's rebuild) never share module objects."""
    tag = hashlib.sha256(str(headers.resolve()).encode()).hexdigest()[:8]
    return repo / "build" / "certify" / "kmod" / f"{release}-{tag}"


def build_modules(repo: Path, kernel_build: Path, out: Path) -> list[Path]:
    """Build the modules against *kernel_build* (a headers tree) in *out*; load order."""
    src_root = repo / "reference" / "kmod"
    out.mkdir(parents=True, exist_ok=True)
    for f in module_sources(repo):
        dest = out / f.relative_to(src_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != f.read_bytes():
            shutil.copyfile(f, dest)
    _check(["make", "-s", "-C", str(kernel_build), f"M={out}", "modules"],
           f"building the modules against {kernel_build}")
    mods = [out / f"{n}.ko" for n in module_names(repo)]
    missing = [m.name for m in mods if not m.is_file()]
    if missing:
        raise InfraError(f"the module build did not produce {', '.join(missing)} in {out}")
    return mods


#: The KTAP programs of reference/kmod/tests, in the order they run (those built).
KTAP_PROGRAMS = ("aem_test", "aem_ktests")


def build_ktap(repo: Path) -> list[Path]:
    """Build the modules' KTAP programs (``make -C reference/kmod tests``: static, user
    space); return those that exist, in :data:`KTAP_PROGRAMS` order."""
    _check(["make", "-s", "-C", str(repo / "reference" / "kmod"), "tests"],
           "building the KTAP programs of reference/kmod/tests")
    progs = [repo / "reference" / "kmod" / "tests" / p for p in KTAP_PROGRAMS]
    found = [p for p in progs if p.is_file()]
    if not found:
        raise InfraError("make -C reference/kmod tests built none of "
                         + ", ".join(KTAP_PROGRAMS))
    return found


def build_suite(repo: Path, build_dir: Path) -> Path:
    """Configure (once) and build ``aem_conformance``; return the binary."""
    if not (build_dir / "CMakeCache.txt").exists():
        _check(["cmake", "-S", str(repo), "-B", str(build_dir), "-G", "Ninja",
                "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DAEM_BUILD_TESTS=ON",
                "-DAEM_BUILD_EXAMPLES=OFF"], "configuring the conformance suite")
    _check(["cmake", "--build", str(build_dir), "--target", SUITE_BINARY],
           "building the conformance suite")
    binary = build_dir / "conformance" / SUITE_BINARY
    if not binary.is_file():
        raise InfraError(f"the build did not produce {binary}")
    return binary


# --------------------------------------------------------------------------- the target script


def stress_programs(profile: str) -> list[tuple[str, list[str], int, bool]]:
    """(program, argv, seconds allowed, needs stress-ng) of the stress pass of *profile*."""
    from argparse import Namespace

    from cglcert.commands import stress as st
    sprof = STRESS_PROFILE[profile]
    ns = Namespace(full=sprof == "full", quick=sprof == "quick", smoke=sprof == "smoke",
                   duration=None)
    out = []
    for prog, argv in st.profile(ns, True):
        dur = float(argv[argv.index("--duration") + 1]) if "--duration" in argv else 0.0
        budget = int(600 + 2 * dur + (3000 if sprof == "full" else 0))
        out.append((prog, argv, budget, "--stress-ng" in argv))
    return out


def cyclictest_summary(path: Path) -> dict[str, Any] | None:
    """p50/p99/max (us) over every thread of a cyclictest --json file with -h; None if
    absent. Samples beyond the histogram's range count at its end (a lower bound)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    hist: dict[int, int] = {}
    worst, cycles = 0, 0
    for th in (doc.get("thread") or {}).values():
        for us, n in (th.get("histogram") or {}).items():
            hist[int(us)] = hist.get(int(us), 0) + int(n)
        worst = max(worst, int(th.get("max") or 0))
        cycles += int(th.get("cycles") or 0)
    total = sum(hist.values())
    if not total:
        return None

    def pct(q: float) -> int:
        seen = 0
        for us in sorted(hist):
            seen += hist[us]
            if seen >= q * total:
                return us
        return max(hist)

    return {"threads": len(doc.get("thread") or {}), "cycles": cycles, "p50_us": pct(0.50),
            "p99_us": pct(0.99), "p99_9_us": pct(0.999), "max_us": worst,
            "histogram_us": {str(k): hist[k] for k in sorted(hist) if hist[k]}}


def collect_stress(plan: Plan, requirements: Sequence[Requirement],
                   environment: Mapping[str, Any]) -> dict[str, Any] | None:
    """stress.json from what the target's stress pass left in RUN/stress/ (None: it never ran)."""
    from cglcert.commands import stress as st
    sdir = plan.run_dir / "stress"
    if not sdir.is_dir():
        return None
    runs: list[dict[str, Any]] = []
    elapsed = 0.0
    for i, (prog, argv, _budget, needs_sng) in enumerate(stress_programs(plan.profile)):
        base = sdir / f"{i:02d}-{prog}"
        rc = read_int(base.with_suffix(".rc"))
        if not base.with_suffix(".start").exists():
            why = ("stress-ng is not installed on the target" if needs_sng else
                   "not built (needs libbenchmark-dev)" if prog == st.MICRO else "not built")
            runs.append({"program": prog, "argv": argv, "skipped": why})
            continue
        try:
            took = float(base.with_suffix(".end").read_text()) - \
                float(base.with_suffix(".start").read_text())
        except (OSError, ValueError):
            took = 0.0
        elapsed += took
        try:
            output = json.loads(base.with_suffix(".json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            output = None
        err = base.with_suffix(".err")
        tail = err.read_text(errors="replace").strip().splitlines()[-10:] if err.exists() else []
        if rc in (124, 137):
            tail.append(f"timed out after {plan.scaled(_budget)} s")
        runs.append({"program": prog, "argv": argv, "exit_code": -1 if rc is None else rc,
                     "elapsed_s": round(took, 3), "output": output, "stderr_tail": tail})
    cyclic = {phase: cyclictest_summary(sdir / f"cyclictest-{phase}.json")
              for phase in ("unloaded", "loaded")}
    env = {k: environment.get(k) for k in ("kernel", "flavor", "target", "accel", "cpus",
                                          "mem", "git_revision")}
    env["backend_requested"] = plan.backend
    env["time"] = environment.get("date")
    report = st.assemble(list(requirements), runs, env, STRESS_PROFILE[plan.profile], elapsed)
    report["cyclictest"] = {k: v for k, v in cyclic.items() if v is not None}
    for phase, c in report["cyclictest"].items():
        for key in ("p50_us", "p99_us", "max_us"):
            report["metrics"][f"cyclictest_{key}_{phase}"] = c[key]
    (plan.run_dir / "stress.json").write_text(json.dumps(report, indent=2) + "\n",
                                              encoding="utf-8")
    return report


def target_script(plan: Plan, art: Artifacts) -> str:
    """The shell script the target runs (as root, from the repository).

    It needs nothing but a POSIX shell and coreutils on the target (no Python), and writes
    into the run directory: ``gtest.xml``, ``suite.log`` and ``suite.rc``; per stress
    program ``stress/NN-PROG.{json,err,rc,start,end}``; per KTAP program
    ``ktap/PROG.{tap,rc}``; ``unload.log`` and ``unload.rc``; with kmemleak
    ``kmemleak-{baseline,loaded,unloaded}.{txt,rc}``. Each phase runs even when the one
    before failed: the judgement needs them all.
    """
    q = shlex.quote
    run = plan.run_dir
    lines = [
        "# written by cglcert certify (ci/cglcert/certify.py)",
        "set -u",
        f"R={q(str(run))}",
        f"cd {q(str(plan.repo))}",
        f"export AEM_BACKEND={q(plan.backend)} AEM_KMSG_MARKERS=1",
        'mark() { echo "<5>aem-test: $1 $2" > /dev/kmsg 2>/dev/null || :; }',
    ]
    if plan.kmemleak:
        lines += [
            "# kmemleak reports an object found unreferenced, unchanged, in two scans: scan",
            "# twice, a pause apart, and keep the report (judged on the host)",
            "leakcheck() {",
            f'  {{ echo scan > {KMEMLEAK} && sleep {KMEMLEAK_PAUSE} && echo scan > {KMEMLEAK} '
            f'&& cat {KMEMLEAK} > "$R/kmemleak-$1.txt"; }} 2> "$R/kmemleak-$1.err"',
            '  echo $? > "$R/kmemleak-$1.rc"',
            "}",
            "# 0. the leaks already there (boot): not the run's",
            "leakcheck baseline",
        ]
    lines += [
        "# 1. the conformance suite (it writes its own per-test markers)",
        f"timeout -k 10 {plan.suite_timeout} {q(str(art.suite))} "
        '--gtest_output=xml:"$R/gtest.xml" --gtest_color=no > "$R/suite.log" 2>&1',
        'echo $? > "$R/suite.rc"',
    ]
    if plan.stress and art.stress_build is not None:
        ct = CYCLICTEST_SECONDS[plan.profile]
        lines += ["# 2. the stress pass: each program's JSON into $R/stress/ (judged on the host)",
                  f"mark begin {PHASE_STRESS}", 'mkdir -p "$R/stress"',
                  "# the kernel's own scheduling latency, the calibration beside AEM's "
                  "(cyclictest, rt-tests)",
                  "if command -v cyclictest >/dev/null; then",
                  f"  cyclictest -q -m -S -p 95 -i 1000 -h 20000 -D {ct} "
                  '--json="$R/stress/cyclictest-unloaded.json" > /dev/null 2>&1',
                  "  if command -v stress-ng >/dev/null; then",
                  f"    stress-ng --cpu 0 --timeout {ct + 5} > /dev/null 2>&1 & hogs=$!",
                  f"    cyclictest -q -m -S -p 95 -i 1000 -h 20000 -D {ct} "
                  '--json="$R/stress/cyclictest-loaded.json" > /dev/null 2>&1',
                  "    kill $hogs 2>/dev/null; wait $hogs 2>/dev/null",
                  "  fi",
                  "fi"]
        for i, (prog, argv, budget, needs_sng) in enumerate(stress_programs(plan.profile)):
            base = f'"$R/stress/{i:02d}-{prog}'
            path = q(str(art.stress_build / "stress" / prog))
            cond = f"[ -x {path} ]" + (" && command -v stress-ng >/dev/null" if needs_sng else "")
            lines += [
                f"if {cond}; then",
                f"  date +%s.%N > {base}.start\"",
                f"  timeout -k 10 {plan.scaled(budget)} {path} {shlex.join(argv)} > {base}.json\" "
                f"2> {base}.err\"",
                f"  echo $? > {base}.rc\"",
                f"  date +%s.%N > {base}.end\"",
                "fi",
            ]
        lines.append(f"mark end {PHASE_STRESS}")
    kmod = plan.backend == "kmod" and bool(art.modules)
    if kmod and plan.ktap:
        lines += ["# 3. the modules' own KTAP programs (output judged on the host)",
                  'mkdir -p "$R/ktap"']
        for prog in plan.ktap:
            name, path = prog.name, q(str(prog))
            lines += [
                f"if [ -x {path} ]; then",
                f"  mark begin {KTAP_PREFIX}{name}",
                f'  timeout -k 10 {plan.scaled(KTAP_TIMEOUT)} {path} > "$R/ktap/{name}.tap" 2>&1',
                f'  echo $? > "$R/ktap/{name}.rc"',
                f"  mark end {KTAP_PREFIX}{name}",
                "fi",
            ]
    if kmod and plan.kmemleak:
        lines += ["# leaks with the modules loaded (their frames are named in the report)",
                  f"mark begin {PHASE_KMEMLEAK}", "leakcheck loaded", f"mark end {PHASE_KMEMLEAK}"]
    if kmod:
        names = " ".join(q(m.stem) for m in reversed(art.modules))
        lines += [
            "# 4. unload: fails when a context or registration was left behind",
            f"mark begin {PHASE_UNLOAD}",
            f'rmmod {names} > "$R/unload.log" 2>&1',
            'echo $? > "$R/unload.rc"',
            f"mark end {PHASE_UNLOAD}",
        ]
    if plan.kmemleak:
        lines += ["# 5. leaks after the unload (what the modules' exit did not free)",
                  f"mark begin {PHASE_KMEMLEAK}", "leakcheck unloaded",
                  f"mark end {PHASE_KMEMLEAK}"]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- judgement


def read_int(path: Path) -> int | None:
    """The integer a target wrote into *path* (an exit status, a taint), or None."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _first_line(text: str, width: int = 300) -> str:
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= width else line[: width - 3] + "..."


def stress_tests(stress: Mapping[str, Any] | None,
                 requirements: Sequence[Requirement]) -> list[res.TestResult]:
    """The stress thresholds of the catalog as tests of their requirements.

    ``stress.<criterion>.<metric>``: PASS or FAIL as judged by ``cglcert stress``; a metric
    that was not measured is SKIP with the reason; no stress.json at all (the pass never
    ran: the target died first) makes every threshold ERROR; a program that crashed is an
    ERROR test of the requirements it measures.
    """
    out: list[res.TestResult] = []
    verdicts = (stress or {}).get("verdicts") or {}
    for req in requirements:
        checks = (verdicts.get(req.id) or {}).get("thresholds", [])
        metrics = [th.metric for th in req.thresholds]
        for i, th in enumerate(req.thresholds):
            name = f"{STRESS_PREFIX}{req.id}.{th.criterion or 'c'}_{th.metric}"
            if metrics.count(th.metric) > 1:
                name += "_min" if th.op == ">=" else "_max"
            if stress is None:
                why = "the stress pass did not run or left no results"
                out.append(res.TestResult(name, res.ERROR, why, (req.id,)))
                continue
            # cglcert stress judges the thresholds in catalog order
            check = checks[i] if i < len(checks) and checks[i].get("metric") == th.metric \
                else None
            if check is None:
                out.append(res.TestResult(name, res.SKIP, f"{th.metric} was not judged",
                                          (req.id,)))
                continue
            meas = {k: str(check[k]) for k in ("measured", "bound", "ratio",
                                                           "reference")
                    if isinstance(check.get(k), (int, float))}
            if check.get("verdict") == "PASS":
                out.append(res.TestResult(name, res.PASS, "", (req.id,), meas))
            elif check.get("verdict") == "FAIL":
                rel = f" x {th.relative_to}" if th.relative_to else ""
                why = (f"{th.metric} = {check.get('measured')} {th.unit or ''}, "
                       f"not {th.op} {th.value}{rel} (bound {check.get('bound')})")
                out.append(res.TestResult(name, res.FAIL, why, (req.id,), meas))
            else:
                out.append(res.TestResult(name, res.SKIP, check.get("reason") or
                                          f"{th.metric} was not measured", (req.id,)))
    if stress is not None:
        for run in stress.get("runs") or []:
            if "skipped" in run or (run.get("output") is not None
                                    and run.get("exit_code") in (0, 1)):
                continue
            prog = str(run.get("program"))
            tail = " | ".join(run.get("stderr_tail") or [])[-300:]
            for req_id in STRESS_FEEDS.get(prog, ()):
                if any(r.id == req_id for r in requirements):
                    out.append(res.TestResult(
                        f"{STRESS_PREFIX}{req_id}.{prog}", res.ERROR,
                        f"{prog} {' '.join(run.get('argv') or [])} ended with status "
                        f"{run.get('exit_code')} and no result: {tail}", (req_id,)))
        summary = stress.get("summary") or {}
        for key, req_id in (("lost", "AEM-3.5.1"), ("duplicated", "AEM-3.5.1"),
                            ("handler_overlaps", "AEM-3.6.2")):
            if any(r.id == req_id for r in requirements) and key in summary:
                n = int(summary[key] or 0)
                out.append(res.TestResult(
                    f"{STRESS_PREFIX}{req_id}.{key}", res.PASS if n == 0 else res.FAIL,
                    "" if n == 0 else f"{n} {key.replace('_', ' ')} under stress",
                    (req_id,), {key: str(n)}))
    return out


def apply_kernel_health(tests: list[res.TestResult], findings: Sequence[kmsg.Finding],
                        ) -> tuple[list[res.TestResult], list[kmsg.Finding]]:
    """Fail every test during which the kernel reported a splat.

    Returns the tests and the findings not attributed to one of them (they block the
    verdict as a whole: the kernel was unhealthy outside any test).
    """
    by_test = kmsg.by_test(list(findings))
    names = {t.name for t in tests}
    out: list[res.TestResult] = []
    for t in tests:
        fs = by_test.get(t.name)
        if not fs or t.outcome == res.ERROR:
            out.append(t)
            continue
        why = "; ".join(f"kernel {f.kind} during this test: {_first_line(f.message, 160)}"
                        for f in fs)
        reason = why + (f" (the test itself: {t.outcome}"
                        + (f": {_first_line(t.reason, 120)}" if t.reason else "") + ")")
        out.append(res.TestResult(t.name, res.FAIL, reason, t.requirements, t.measurements,
                                  t.time_s))
    rest = [f for f in findings if f.test not in names]
    return out, rest


_KTAP_LINE = re.compile(r"^(?P<not>not )?ok (?P<n>\d+)(?: -)? (?P<name>[^#]*?)\s*"
                        r"(?:#\s*(?P<directive>\w+)\b\s*(?P<why>.*))?$")
_KTAP_PLAN = re.compile(r"^1\.\.(\d+)")


def parse_ktap(text: str) -> dict[str, Any]:
    """The top level of a KTAP document: ``{"planned": N or None, "cases": [{number, name,
    outcome (PASS, FAIL or SKIP), reason}]}``; indented subtest lines are not counted."""
    cases: list[dict[str, Any]] = []
    planned = None
    for line in text.splitlines():
        if line[:1].isspace():
            continue
        pm = _KTAP_PLAN.match(line)
        if pm and planned is None:
            planned = int(pm[1])
            continue
        m = _KTAP_LINE.match(line.rstrip())
        if not m:
            continue
        directive = (m["directive"] or "").upper()
        if m["not"] and directive != "TODO":
            outcome = res.FAIL
        elif directive == "SKIP":
            outcome = res.SKIP
        else:
            outcome = res.PASS
        cases.append({"number": int(m["n"]), "name": m["name"].strip(), "outcome": outcome,
                      "reason": (m["why"] or "").strip()})
    return {"planned": planned, "cases": cases}


def ktap_results(run_dir: Path, programs: Sequence[str], *, ran: bool = True,
                 ) -> tuple[list[res.TestResult], list[dict[str, Any]]]:
    """One test per KTAP program (``ktap.PROG``) from ``RUN/ktap/PROG.{tap,rc}``, and the
    per-program summary for results.json. *ran*: False when the target broke before the
    phase (the programs are then ERROR)."""
    tests: list[res.TestResult] = []
    summary: list[dict[str, Any]] = []
    for prog in programs:
        name = f"{KTAP_PREFIX}{prog}"
        tap = run_dir / "ktap" / f"{prog}.tap"
        rc = read_int(run_dir / "ktap" / f"{prog}.rc")
        doc = parse_ktap(tap.read_text(errors="replace")) if tap.exists() else \
            {"planned": None, "cases": []}
        cases = doc["cases"]
        count = {o: sum(1 for c in cases if c["outcome"] == o) for o in (res.PASS, res.FAIL,
                                                                       res.SKIP)}
        failed = [c["name"] for c in cases if c["outcome"] == res.FAIL]
        info = {"program": prog, "exit_code": rc, "planned": doc["planned"],
                "ok": count[res.PASS], "not_ok": count[res.FAIL], "skip": count[res.SKIP],
                "failed": failed, "cases": [c["name"] for c in cases], "output": str(tap)}
        summary.append(info)
        meas = {"ok": str(count[res.PASS]), "not_ok": str(count[res.FAIL]),
                "skip": str(count[res.SKIP])}
        if rc is None:
            why = ("did not run: " + ("the program was not built" if ran else
                                      "the run ended before the KTAP phase"))
            tests.append(res.TestResult(name, res.ERROR, why, (), meas))
        elif failed:
            tests.append(res.TestResult(name, res.FAIL, f"{len(failed)} not ok: "
                                        + ", ".join(failed[:20]), (), meas))
        elif rc in (124, 137):
            tests.append(res.TestResult(name, res.ERROR, f"timed out after {len(cases)} "
                                        "test(s)", (), meas))
        elif rc != 0 or not cases or (doc["planned"] is not None
                                       and len(cases) < doc["planned"]):
            tests.append(res.TestResult(
                name, res.ERROR, f"exited with status {rc} after {len(cases)} of "
                f"{doc['planned'] if doc['planned'] is not None else '?'} test(s)", (), meas))
        else:
            tests.append(res.TestResult(name, res.PASS, "", (), meas))
    return tests, summary


_LEAK_HEAD = re.compile(r"^unreferenced object (?P<addr>0x[0-9a-f]+) \(size (?P<size>\d+)\):")
_LEAK_COMM = re.compile(r'^\s*comm "(?P<comm>[^"]*)", pid (?P<pid>\d+)')
# "[<ffffffffc0123456>] aem_reg_alloc+0x5c/0x120 [aem]"; the address may be hashed away
# ("[<(____ptrval____)>]") when the kernel has no entropy yet (a guest under TCG).
_LEAK_FRAME = re.compile(r"^\s*\[<[^>]*>\] (?P<frame>\S+(?: \[\w+\])?)")
_AEM_FRAME = re.compile(r"\[aem\w*\]$")


def parse_kmemleak(text: str) -> list[dict[str, Any]]:
    """The objects of a ``/sys/kernel/debug/kmemleak`` report: address, size, comm, pid,
    backtrace frames, the report's lines, and ``aem``: a frame is an AEM module's."""
    out: list[dict[str, Any]] = []
    for line in text.splitlines():
        m = _LEAK_HEAD.match(line.strip())
        if m:
            out.append({"address": m["addr"], "size": int(m["size"]), "comm": None, "pid": None,
                        "backtrace": [], "lines": [line.strip()], "aem": False})
            continue
        if not out:
            continue
        obj = out[-1]
        obj["lines"].append(line.rstrip())
        if (c := _LEAK_COMM.match(line)) and obj["comm"] is None:
            obj["comm"], obj["pid"] = c["comm"], int(c["pid"])
        elif f := _LEAK_FRAME.match(line):
            obj["backtrace"].append(f["frame"])
            obj["aem"] = obj["aem"] or bool(_AEM_FRAME.search(f["frame"]))
    return out


_ALLOC_FRAMES = re.compile(r"^(?:kmemleak_|__?kmalloc|kmalloc|kmem_cache_alloc|slab_|"
                           r"__?kvmalloc|kvmalloc|__?vmalloc|vmalloc|__alloc_pages|alloc_pages|"
                           r"__?kzalloc|kzalloc|kmalloc_trace|__kmem_cache_alloc|krealloc|"
                           r"kmemdup|kstrdup|pcpu_|__alloc_percpu|alloc_percpu)")


def _leak_origin(obj: Mapping[str, Any]) -> str:
    """The frame that names a leak: the first AEM frame, else the first that is not the
    allocator's."""
    frames = list(obj.get("backtrace") or [])
    for f in frames:
        if _AEM_FRAME.search(f):
            return f
    return next((f for f in frames if not _ALLOC_FRAMES.match(f)), frames[0] if frames else "?")


def kmemleak_check(run_dir: Path, wanted: bool, ran: bool = True,
                   ) -> tuple[list[kmsg.Finding], dict[str, Any] | None]:
    """The leaks the run's kmemleak scans found (RUN/kmemleak-*.txt) as findings of the
    kmemleak phase, and the summary for results.json (None when not *wanted*).

    A leak is an object reported after the run (with the modules loaded, or after their
    unload) that the baseline scan (before the suite) did not report; an object of the
    baseline counts too when one of its frames is an AEM module's (leaked at load).
    """
    if not wanted:
        return [], None
    reports: dict[str, list[dict[str, Any]]] = {}
    problems: list[str] = []
    for phase in ("baseline", "loaded", "unloaded"):
        txt, rc = run_dir / f"kmemleak-{phase}.txt", read_int(run_dir / f"kmemleak-{phase}.rc")
        if rc is None and not txt.exists():
            continue
        if rc != 0:
            err = run_dir / f"kmemleak-{phase}.err"
            why = err.read_text(errors="replace").strip() if err.exists() else ""
            problems.append(f"the {phase} scan failed (status {rc}): "
                            f"{_first_line(why, 200) or 'kmemleak is off or disabled itself'}")
            continue
        reports[phase] = parse_kmemleak(txt.read_text(errors="replace"))
    baseline = {o["address"] for o in reports.get("baseline", []) if not o["aem"]}
    leaks: dict[str, dict[str, Any]] = {}
    for phase in ("baseline", "loaded", "unloaded"):
        for o in reports.get(phase, []):
            if o["address"] not in baseline and o["address"] not in leaks:
                leaks[o["address"]] = {**o, "phase": phase}
    after = [p for p in ("loaded", "unloaded") if p in reports]
    if ran and not after and not problems:
        problems.append("no leak scan ran after the suite")
    findings = []
    for o in leaks.values():
        comm = f", comm {o['comm']}" if o["comm"] else ""
        msg = (f"{o['lines'][0].rstrip(':')} from {_leak_origin(o)}{comm} "
               f"(scan {o['phase']})")
        findings.append(kmsg.Finding(kind="kmemleak", message=msg, lineno=0,
                                     test=PHASE_KMEMLEAK, context=tuple(o["lines"][1:40])))
    summary = {"scans": sorted(reports, key=("baseline", "loaded", "unloaded").index),
               "baseline_objects": len(reports.get("baseline", [])), "leaks": len(leaks),
               "aem_leaks": sum(1 for o in leaks.values() if o["aem"]),
               "problems": problems,
               "files": [f"kmemleak-{p}.txt" for p in reports]}
    return findings, summary


def hung_test(kernel_log: str) -> str | None:
    """The test whose begin marker has no end marker (the one running at a hang/panic)."""
    current = None
    for m in re.finditer(r"aem-test: (begin|end) (\S+)", kernel_log):
        current = m[2] if m[1] == "begin" else None
    return current


def judge(requirements: Sequence[Requirement], expected: Mapping[str, Sequence[str]],
          run_dir: Path, execution: Execution, environment: Mapping[str, Any], *,
          backend: str, stress_wanted: bool, ktap: Sequence[str] = (),
          kmemleak: bool = False) -> dict[str, Any]:
    """Build results.json from what the target left in *run_dir* and the kernel's health.

    *ktap*: the names of the KTAP programs the script ran (``ktap.PROG`` tests; one that
    does not pass blocks the verdict); *kmemleak*: the script scanned for leaks (each leak
    blocks the verdict).
    """
    harness_error: str | None = None
    tests: list[res.TestResult] | None = None
    env = dict(environment)
    blockers: list[str] = []
    suite_rc = read_int(run_dir / "suite.rc")
    harness: dict[str, Any] = {"gtest_xml": "gtest.xml", "log": "suite.log",
                               "exit_code": suite_rc, "target_error": execution.error,
                               "target_detail": execution.detail or None}
    running = hung_test(execution.kernel_log)
    if execution.error == "panic" and running:
        # The kernel died in a test: that test FAILs, the rest did not run (ERROR).
        harness_error = f"not run: the kernel panicked during {running}"
    elif execution.error is not None:
        harness_error = f"{execution.error}: {_first_line(execution.detail, 400)}"
    xml = run_dir / "gtest.xml"
    if execution.error in (None, "panic", "timeout", "no-result") and xml.is_file():
        try:
            parsed = res.parse_gtest_xml_file(xml)
            tests = parsed.tests
            env["backend"] = parsed.attributes.get("aem_backend", backend)
            if env["backend"] == "none":
                tests, harness_error = None, f"libaem could not start the '{backend}' backend"
            env["libaem_version"] = parsed.attributes.get("aem_version")
            if suite_rc == 124 or suite_rc == 137:
                harness_error = harness_error or "the suite timed out on the target"
            elif suite_rc not in (0, 1) and harness_error is None:
                harness_error = f"the suite exited with status {suite_rc}"
        except res.GtestXmlError as exc:
            harness_error = harness_error or str(exc)
    elif harness_error is None:
        harness_error = ("the suite timed out on the target" if suite_rc in (124, 137) else
                         f"the suite left no gtest XML (exit status {suite_rc})")
    ran = execution.error is None
    ktap_tests, ktap_summary = ktap_results(run_dir, ktap, ran=ran) if ktap else ([], [])
    # A KTAP program's own markers name its cases: a splat in one is the program's.
    case_of = {c: f"{KTAP_PREFIX}{k['program']}" for k in ktap_summary for c in k["cases"]}
    findings = [dataclasses.replace(f, test=case_of[f.test])
                if f.test in case_of and f.test not in expected else f
                for f in execution.findings]
    leaks, leak_summary = kmemleak_check(run_dir, kmemleak, ran=ran)
    findings += leaks
    if tests is not None:
        tests, outside = apply_kernel_health(tests + ktap_tests, findings)
        ktap_tests = [t for t in tests if t.name.startswith(KTAP_PREFIX)]
    else:
        ktap_tests, outside = apply_kernel_health(ktap_tests, findings)
        outside = [f for f in outside if f.test != running]
        if running and execution.error == "panic":
            reqs = tuple(expected.get(running, ()))
            tests = [res.TestResult(running, res.FAIL, "the kernel panicked during this test: "
                                    + _first_line(execution.detail, 300), reqs)]
        if running and running.startswith(KTAP_PREFIX):
            ktap_tests = [dataclasses.replace(t, outcome=res.FAIL, reason="the kernel panicked "
                                              "during this program: "
                                              + _first_line(execution.detail, 300))
                          if t.name == running else t for t in ktap_tests]
        if ktap_tests:
            tests = (tests or []) + ktap_tests
    for f in outside:
        where = "during the stress pass" if f.test == PHASE_STRESS else \
            "while unloading the modules" if f.test == PHASE_UNLOAD else \
            "found by the leak scan" if f.test == PHASE_KMEMLEAK else "outside any test"
        blockers.append(f"kernel {f.kind} {where}: {_first_line(f.message, 300)}")
    for t in ktap_tests:
        if t.outcome != res.PASS:
            blockers.append(f"KTAP {t.name[len(KTAP_PREFIX):]}: {t.outcome}: "
                            f"{_first_line(t.reason, 300)}")
    for p in (leak_summary or {}).get("problems", []):
        blockers.append(f"kmemleak: {p}")
    if execution.taint is not None and not execution.taint.ok:
        blockers.append(f"kernel tainted {execution.taint.letters} during the run: "
                        + "; ".join(execution.taint.reasons))
    unload_rc = read_int(run_dir / "unload.rc")
    if backend == "kmod" and execution.error is None and unload_rc not in (0, None):
        log = (run_dir / "unload.log").read_text(errors="replace") \
            if (run_dir / "unload.log").exists() else ""
        blockers.append(f"unloading the modules failed (status {unload_rc}): "
                        f"{_first_line(log, 200) or 'a context or registration leaked'}")
    stress: dict[str, Any] | None = None
    stress_rc = None
    if stress_wanted:
        try:
            stress = json.loads((run_dir / "stress.json").read_text(encoding="utf-8"))
            from cglcert.commands.stress import exit_code as stress_exit
            stress_rc = int(stress_exit(stress))
        except (OSError, ValueError, KeyError):
            stress = None
        if execution.error is None or stress is not None:
            tests = (tests or []) + stress_tests(stress, requirements)
    harness["stress_exit_code"] = stress_rc
    harness["unload_exit_code"] = unload_rc
    results = res.build_results(requirements, tests, env, expected=expected,
                                harness_error=harness_error, harness=harness)
    results["health"] = {
        "log_source": execution.log_source,
        "findings": [f.to_dict() for f in execution.findings],
        "taint": execution.taint.to_dict() if execution.taint else None,
        "blockers": blockers,
    }
    if ktap:
        results["health"]["ktap"] = ktap_summary
    if leak_summary is not None:
        results["health"]["kmemleak"] = leak_summary
        results["health"]["findings"] += [f.to_dict() for f in leaks]
    if blockers:
        for v in results["verdict"].values():
            v["conformant"] = False
            v["blockers"] = blockers
    return results


# --------------------------------------------------------------------------- environment


def base_environment(plan: Plan, release: str, flavor: str | None) -> dict[str, Any]:
    """results.json's environment before the target adds what it knows."""
    return {
        "target": plan.target, "kernel": release, "flavor": flavor, "backend": plan.backend,
        "backend_requested": plan.backend, "accel": plan.accel if plan.target == "qemu" else
        "none", "cpus": plan.smp if plan.target == "qemu" else None,
        "mem": plan.mem if plan.target == "qemu" else None, "profile": plan.profile,
        "module_params": {m: list(v) for m, v in plan.module_params.items()},
        "kernel_cmdline_extra": plan.append or None,
        "cglcert_version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "git_revision": _git_revision(plan.repo),
    }


def _git_revision(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=False).stdout.strip()
    except OSError:
        return None
    return out or None
