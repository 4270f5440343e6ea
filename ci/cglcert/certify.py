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
                programs before the unload and kmemleak scans (before and after it); on
                the kmod backend, when asked (by default on the debug kernel), the ABI
                fuzzer's seeded passes and trinity after the KTAP programs.
5. **judge**    ``results.json``: the suite's outcomes; a splat during a test fails that
                test; a splat outside tests, an unacceptable taint or a failed unload blocks
                the verdict; stress thresholds (the catalog's) become tests of their
                requirement; a boot failure, a module that does not load or a harness fault
                is ERROR, never a kernel FAIL; a KTAP program that fails (or splats) and a
                memory leak kmemleak reports block the verdict, as does a fuzz pass with a
                finding, a leak or no summary (the fuzzer died), or trinity that did not
                run; ``results.json`` ``hardening`` holds the fuzz passes and the fault
                sweep's table (:func:`fault_sweep`, :func:`fuzz_results`).
6. **report**   HTML, Markdown, JUnit, KTAP and KCIDB into ``RUN/report/``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno as errno_names
import hashlib
import math
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
    "trinity": ["trinity"],
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
#: The ABI fuzzer of /dev/aem (built with the KTAP programs), relative to the repository.
FUZZER = Path("reference/kmod/tests/aem_fuzz")
#: trinity's runner in the guest (``ci/run-kmod-fuzz --trinity-in-guest SECONDS LOG``).
TRINITY_RUNNER = Path("ci/run-kmod-fuzz")
#: A fuzz pass runs between ``aem-test: begin fuzz.pass-N`` and ``... end fuzz.pass-N``,
#: trinity between the markers of ``fuzz.trinity``.
FUZZ_PREFIX = "fuzz."
PHASE_TRINITY = "fuzz.trinity"
#: The uid the fuzzer and trinity drop to (the KTAP harness's test user).
FUZZ_UID = 1000
#: Threads of the two passes: one (deterministic: a seed replays), then four.
FUZZ_THREADS = (1, 4)
#: On the debug kernel, unless told otherwise: calls per pass, trinity's seconds.
DEBUG_FUZZ_CALLS, DEBUG_TRINITY_SECONDS = 40000, 60
#: Each pass's time bound (aem_fuzz --seconds): 3 ms a call (TCG on 2 cores makes 550-1050
#: calls/s on Debian's kernel), at least 120 s, times Plan.timeout_factor.
FUZZ_SECONDS_PER_CALL, FUZZ_MIN_SECONDS = 0.003, 120
#: Seconds beyond a pass's bound for its leak check and children, and beyond trinity's
#: seconds for its set-up and exit (times Plan.timeout_factor).
FUZZ_MARGIN, TRINITY_MARGIN = 90, 60
#: aem_ktests' fault-injection tests, whose tables the report shows.
FAULT_PROGRAM, FAULT_SWEEP, FAULT_SITES = "aem_ktests", "fault_sweep_fail_nth", "fault_sites_own"


@dataclass(frozen=True)
class FuzzPass:
    """One aem_fuzz pass: its number (1-based), seed, threads, calls and time bound (s)."""

    number: int
    seed: int
    threads: int
    calls: int
    seconds: int

    @property
    def phase(self) -> str:
        """Its kernel-log marker name: ``fuzz.pass-N``."""
        return f"{FUZZ_PREFIX}pass-{self.number}"

    def argv(self, fuzzer: str = "aem_fuzz") -> list[str]:
        """The command line of the pass (as root: the fuzzer drops to uid 1000 itself)."""
        return [fuzzer, "--seed", str(self.seed), "--threads", str(self.threads),
                "--calls", str(self.calls), "--uid", str(FUZZ_UID), "--seconds",
                str(self.seconds), "--ring-file", f"/tmp/ring-{self.number}"]

    def reproduce(self) -> str:
        """The command that replays the pass (the seed; one thread replays exactly)."""
        return (f"aem_fuzz --seed {self.seed} --threads {self.threads} --calls {self.calls} "
                f"--uid {FUZZ_UID}")


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
    #: The ABI fuzzer (kmod backend), after the KTAP programs, modules loaded: calls per
    #: pass (0: no fuzz pass), the first pass's seed (the second's is seed + 1), and
    #: trinity's seconds against /dev/aem (0: no trinity).
    fuzz_calls: int = 0
    fuzz_seed: int = 1
    trinity: int = 0

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

    def fuzz_passes(self) -> list[FuzzPass]:
        """The fuzz passes to run: none, or one per :data:`FUZZ_THREADS` (seed, seed + 1)."""
        if self.fuzz_calls <= 0:
            return []
        bound = self.scaled(max(FUZZ_MIN_SECONDS,
                                math.ceil(self.fuzz_calls * FUZZ_SECONDS_PER_CALL)))
        return [FuzzPass(i + 1, self.fuzz_seed + i, threads, self.fuzz_calls, bound)
                for i, threads in enumerate(FUZZ_THREADS)]

    def fuzz_pass_timeout(self, p: FuzzPass) -> int:
        """The watchdog of one pass: its bound plus the leak check and its children."""
        return p.seconds + self.scaled(FUZZ_MARGIN)

    @property
    def trinity_timeout(self) -> int:
        """The watchdog of trinity: its seconds plus its set-up and exit."""
        return self.trinity + self.scaled(TRINITY_MARGIN) if self.trinity > 0 else 0

    @property
    def fuzz_timeout(self) -> int:
        """Seconds the fuzz phase may take in all (each watchdog, plus its -k 10)."""
        passes = sum(self.fuzz_pass_timeout(p) + 10 for p in self.fuzz_passes())
        return passes + (self.trinity_timeout + 10 if self.trinity > 0 else 0)

    @property
    def kmemleak_timeout(self) -> int:
        """Seconds the leak scans may take in all (each scan walks the whole memory)."""
        return self.scaled(300) if self.kmemleak else 0

    @property
    def target_timeout(self) -> int:
        """Seconds the whole script may take on the target."""
        return (self.suite_timeout + (self.stress_timeout if self.stress else 0)
                + self.ktap_timeout + self.fuzz_timeout + self.kmemleak_timeout
                + self.scaled(120))


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


def packages_needed(target: str, stress: bool, trinity: bool = False) -> list[str]:
    """Debian packages for a run on *target* (*trinity*: a run fuzzes with trinity)."""
    pk = list(PACKAGES["build"])
    if target == "qemu":
        pk += PACKAGES["qemu"]
    elif target.startswith("ssh"):
        pk.append("openssh-client")
    if stress:
        pk += PACKAGES["stress"]
    if trinity:
        pk += PACKAGES["trinity"]
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


def build_modules(repo: Path, kernel_build: Path, out: Path,
                  make_args: Sequence[str] = ()) -> list[Path]:
    """Build the modules against *kernel_build* (a headers tree) in *out*, with *make_args*
    (``AEM_MUTANT=<name>`` for a mutant); load order."""
    src_root = repo / "reference" / "kmod"
    out.mkdir(parents=True, exist_ok=True)
    for f in module_sources(repo):
        dest = out / f.relative_to(src_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists() or dest.read_bytes() != f.read_bytes():
            shutil.copyfile(f, dest)
    _check(["make", "-s", "-C", str(kernel_build), f"M={out}", *make_args, "modules"],
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


def build_fuzzer(repo: Path) -> Path:
    """Build the ABI fuzzer (``make -C reference/kmod/tests aem_fuzz``: static, user
    space); return it."""
    _check(["make", "-s", "-C", str(repo / "reference" / "kmod" / "tests"), FUZZER.name],
           "building the ABI fuzzer (reference/kmod/tests/aem_fuzz)")
    path = repo / FUZZER
    if not path.is_file():
        raise InfraError(f"the build did not produce {path}")
    return path


def fuzz_settings(fuzz_calls: int | None, trinity: int | None, debug: bool) -> tuple[int, int]:
    """(calls per pass, trinity's seconds): those given, else the debug kernel's defaults
    (:data:`DEBUG_FUZZ_CALLS`, :data:`DEBUG_TRINITY_SECONDS`), else none."""
    calls = fuzz_calls if fuzz_calls is not None else DEBUG_FUZZ_CALLS if debug else 0
    secs = trinity if trinity is not None else DEBUG_TRINITY_SECONDS if debug else 0
    return calls, secs


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


def stress_ng_proof(yaml_path: Path, rc: int | None) -> dict[str, Any]:
    """Whether a stress-ng load ran: its exit status and its --yaml metrics (bogo-ops of
    every stressor above 0)."""
    ops: dict[str, int] = {}
    stressor = ""
    try:
        text = yaml_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, val = line.strip().lstrip("- ").partition(":")
        if key == "stressor":
            stressor = val.strip()
        elif key == "bogo-ops" and stressor:
            try:
                ops[stressor] = int(val)
            except ValueError:
                pass
    why = ("stress-ng left no exit status" if rc is None else
           f"stress-ng exited with status {rc}" if rc else
           "stress-ng wrote no metrics" if not ops else
           "a stressor did no work" if not all(ops.values()) else "")
    return {"tool": "stress-ng", "ran": not why, "exit_status": rc, "bogo_ops": ops,
            **({"why": why} if why else {})}


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
    hogs = None
    if cyclic["loaded"] is not None:
        # A "loaded" calibration whose load did not run would be an unloaded one.
        hogs = stress_ng_proof(sdir / "cyclictest-hogs.yaml",
                               read_int(sdir / "cyclictest-hogs.rc"))
        if not hogs["ran"]:
            cyclic["loaded"] = None
    env = {k: environment.get(k) for k in ("kernel", "flavor", "target", "accel", "cpus",
                                          "mem", "git_revision")}
    env["backend_requested"] = plan.backend
    env["time"] = environment.get("date")
    report = st.assemble(list(requirements), runs, env, STRESS_PROFILE[plan.profile], elapsed)
    report["cyclictest"] = {k: v for k, v in cyclic.items() if v is not None}
    if hogs is not None:
        report["cyclictest_load"] = hogs
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
    ``ktap/PROG.{tap,rc}``; per fuzz pass ``fuzz/pass-N.{txt,rc}`` (and ``fuzz/ring-N.txt``,
    the last calls of each thread, when the pass failed), trinity's ``fuzz/trinity.{txt,rc}``;
    ``unload.log`` and ``unload.rc``; with kmemleak
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
                  "# (the hogs prove they ran: stress-ng's metrics, from a writable directory)",
                  "if command -v cyclictest >/dev/null; then",
                  f"  cyclictest -q -m -S -p 95 -i 1000 -h 20000 -D {ct} "
                  '--json="$R/stress/cyclictest-unloaded.json" '
                  '> "$R/stress/cyclictest-unloaded.log" 2>&1',
                  "  if command -v stress-ng >/dev/null; then",
                  f'    (cd "$R/stress" && exec stress-ng --cpu 0 --timeout {ct + 2}s '
                  '--metrics-brief --yaml "$R/stress/cyclictest-hogs.yaml") '
                  '> "$R/stress/cyclictest-hogs.log" 2>&1 & hogs=$!',
                  f"    cyclictest -q -m -S -p 95 -i 1000 -h 20000 -D {ct} "
                  '--json="$R/stress/cyclictest-loaded.json" '
                  '> "$R/stress/cyclictest-loaded.log" 2>&1',
                  '    wait $hogs; echo $? > "$R/stress/cyclictest-hogs.rc"',
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
    if kmod:
        lines += fuzz_script(plan)
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


def fuzz_script(plan: Plan) -> list[str]:
    """The fuzz phase of the target script (kmod backend, modules loaded): each pass of
    aem_fuzz, then trinity, between the kernel-log markers of ``fuzz.pass-N`` and
    ``fuzz.trinity``; nothing when neither is asked."""
    q = shlex.quote
    passes = plan.fuzz_passes()
    if not passes and plan.trinity <= 0:
        return []
    path = str(plan.repo / FUZZER)
    fuzzer = q(path)
    lines = ["# 3b. the ABI fuzzer: seeded passes of aem_fuzz (started as root, it drops to "
             f"uid {FUZZ_UID}), then trinity", 'mkdir -p "$R/fuzz"']
    for p in passes:
        out = f'"$R/fuzz/pass-{p.number}'
        lines += [
            f"if [ -x {fuzzer} ]; then",
            f"  mark begin {p.phase}",
            f"  timeout -k 10 {plan.fuzz_pass_timeout(p)} {shlex.join(p.argv(path))} "
            f'> {out}.txt" 2>&1',
            "  rc=$?",
            f'  echo $rc > {out}.rc"',
            f"  mark end {p.phase}",
            "  # the last calls of each thread, kept in the ring file: what led to a failure",
            f"  [ $rc -eq 0 ] || {fuzzer} --dump-ring /tmp/ring-{p.number} "
            f'> "$R/fuzz/ring-{p.number}.txt" 2>&1',
            "fi",
        ]
    if plan.trinity > 0:
        runner = q(str(plan.repo / TRINITY_RUNNER))
        lines += [
            f"# trinity against /dev/aem as uid {FUZZ_UID} for {plan.trinity} s "
            "(ci/run-kmod-fuzz sets it up; exit 0: it ran)",
            f"mark begin {PHASE_TRINITY}",
            f"timeout -k 10 {plan.trinity_timeout} {runner} --trinity-in-guest {plan.trinity} "
            '"$R/fuzz/trinity.txt"',
            'echo $? > "$R/fuzz/trinity.rc"',
            f"mark end {PHASE_TRINITY}",
        ]
    return lines


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
                            ("not_delivered", "AEM-3.5.1"), ("handler_overlaps", "AEM-3.6.2")):
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


# --------------------------------------------------------------------------- hardening


def ktap_case_diagnostics(text: str) -> dict[str, dict[str, Any]]:
    """Per top-level case of a KTAP document: its outcome (PASS, FAIL, SKIP), reason (the
    skip's, or the harness's ``# NAME: why`` line before a ``not ok``) and the diagnostic
    lines (``# ...``, the ``# `` dropped) printed since the previous case's result line."""
    cases: dict[str, dict[str, Any]] = {}
    diag: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            diag.append(line[1:].strip())
            continue
        m = _KTAP_LINE.match(line.rstrip())
        if not m or line[:1].isspace():
            continue
        name = m["name"].strip()
        directive = (m["directive"] or "").upper()
        outcome = (res.FAIL if m["not"] and directive != "TODO" else
                   res.SKIP if directive == "SKIP" else res.PASS)
        reason = (m["why"] or "").strip()
        if outcome == res.FAIL:
            own = [d[len(name) + 1:].strip() for d in diag if d.startswith(f"{name}:")]
            reason = own[-1] if own else reason
        cases[name] = {"outcome": outcome, "reason": reason, "diagnostics": diag}
        diag = []
    return cases


_SWEEP_HEAD = re.compile(r"^operation\s+points\s+failed\b")
_SWEEP_ROW = {  # with the "leaked" column (since aem_ktests counts it per operation), without
    True: re.compile(r"^(?P<op>[A-Za-z_]\w*)\s+(?P<points>\d+)\s+(?P<failed>\d+)\s+"
                     r"(?P<leaked>-?\d+)\s+(?P<errnos>-|\d+(?:\s+\d+)*)$"),
    False: re.compile(r"^(?P<op>[A-Za-z_]\w*)\s+(?P<points>\d+)\s+(?P<failed>\d+)\s+"
                      r"(?P<errnos>-|\d+(?:\s+\d+)*)$"),
}
_SWEEP_TOTAL = re.compile(r"^fault points met:\s*(\d+)")
_SITE_ROW = re.compile(r"^(?P<site>/\S+)\s+(?P<op>\S+)\s+(?P<result>-?\d+)$")


def errno_name(number: int) -> str:
    """``12`` -> ``ENOMEM`` (Linux numbering; the guest's is the host's)."""
    return errno_names.errorcode.get(number, f"errno {number}")


def parse_fault_sweep(diagnostics: Sequence[str]) -> dict[str, Any]:
    """The table ``fault_sweep_fail_nth`` prints: ``{"rows": [{operation, points, failed,
    leaked (None: not printed), errnos, errno_names}], "points": the total it printed}``."""
    with_leaked = True
    rows: list[dict[str, Any]] = []
    points = None
    for d in diagnostics:
        if _SWEEP_HEAD.match(d):
            with_leaked = "leaked" in d.split()
            continue
        if t := _SWEEP_TOTAL.match(d):
            points = int(t[1])
            continue
        m = _SWEEP_ROW[with_leaked].match(d)
        if not m:
            continue
        errs = [] if m["errnos"] == "-" else [int(e) for e in m["errnos"].split()]
        rows.append({"operation": m["op"], "points": int(m["points"]),
                     "failed": int(m["failed"]),
                     "leaked": int(m["leaked"]) if with_leaked else None,
                     "errnos": errs, "errno_names": [errno_name(e) for e in errs]})
    return {"rows": rows, "points": points}


def parse_fault_sites(diagnostics: Sequence[str]) -> list[dict[str, Any]]:
    """The table ``fault_sites_own`` prints: site, operation, result (0, an id or -errno)
    and its errno's name (None when the result is not an error)."""
    out = []
    for d in diagnostics:
        if m := _SITE_ROW.match(d):
            r = int(m["result"])
            out.append({"site": m["site"], "operation": m["op"], "result": r,
                        "errno": errno_name(-r) if r < 0 else None})
    return out


def _kernel_reports(findings: Sequence[kmsg.Finding]) -> list[dict[str, str]]:
    return [{"kind": f.kind, "message": _first_line(f.message, 200)} for f in findings]


def _case_state(cases: Mapping[str, dict[str, Any]], name: str, ran_program: bool,
                rc: int | None, ran: bool, reports: Sequence[kmsg.Finding],
                ) -> tuple[str, str]:
    """(status, reason) of one aem_ktests case: pass, fail (its own, or a kernel report
    during it, as :func:`apply_kernel_health` judges tests), skip or missing."""
    case = cases.get(name)
    if case is None:
        if not ran_program:
            return "missing", (f"{FAULT_PROGRAM} did not run" +
                               ("" if ran else " (the run ended before the KTAP phase)"))
        stop = f" ({FAULT_PROGRAM} exited with status {rc} before it)" \
            if rc not in (0, None) else ""
        return "missing", f"{name} is not in the output of {FAULT_PROGRAM}{stop}"
    status = {res.PASS: "pass", res.FAIL: "fail", res.SKIP: "skip"}[case["outcome"]]
    if reports and status != "fail":
        why = "; ".join(f"kernel {f.kind} during this test: {_first_line(f.message, 160)}"
                        for f in reports)
        return "fail", f"{why} (the test itself: {status})"
    return status, case["reason"]


def fault_sweep(run_dir: Path, findings: Sequence[kmsg.Finding] = (), *,
                ran: bool = True) -> dict[str, Any]:
    """The fault-injection tables of aem_ktests (RUN/ktap/aem_ktests.tap) for results.json.

    ``fault_sweep_fail_nth`` (the kernel's fail-nth over every operation: the debug kernel)
    gives ``status`` (pass; fail: its own, or a kernel report during it; skip; missing: not
    in the output; error: it passed and printed no table), ``reason``, ``rows``,
    ``points``; ``fault_sites_own`` (the modules' own fault sites) ``own_sites`` and its
    ``own_sites_status``/``own_sites_reason``. The kernel's reports during each test
    (*findings*, attributed by the tests' own markers) are ``kernel_reports`` and
    ``own_sites_kernel_reports``.
    """
    tap = run_dir / "ktap" / f"{FAULT_PROGRAM}.tap"
    rc = read_int(run_dir / "ktap" / f"{FAULT_PROGRAM}.rc")
    text = tap.read_text(errors="replace") if tap.exists() else ""
    cases = ktap_case_diagnostics(text)
    ran_program = tap.exists() or rc is not None
    by = kmsg.by_test(list(findings))
    status, reason = _case_state(cases, FAULT_SWEEP, ran_program, rc, ran,
                                 by.get(FAULT_SWEEP, []))
    table = parse_fault_sweep((cases.get(FAULT_SWEEP) or {}).get("diagnostics") or [])
    rows = table["rows"]
    if status == "pass" and not rows:
        status, reason = "error", (f"{FAULT_SWEEP} passed but printed no table that cglcert "
                                   "reads (did its format change?)")
    points = table["points"]
    if points is None and rows:
        points = sum(r["points"] for r in rows)
    leaked = [r["leaked"] for r in rows]
    site_status, site_reason = _case_state(cases, FAULT_SITES, ran_program, rc, ran,
                                           by.get(FAULT_SITES, []))
    sites = parse_fault_sites((cases.get(FAULT_SITES) or {}).get("diagnostics") or [])
    if site_status == "pass" and not sites:
        site_status, site_reason = "error", (f"{FAULT_SITES} passed but printed no table "
                                             "that cglcert reads (did its format change?)")
    return {"program": FAULT_PROGRAM, "test": FAULT_SWEEP, "status": status,
            "reason": reason, "rows": rows, "points": points,
            "failed": sum(r["failed"] for r in rows) if rows else None,
            "leaked": sum(leaked) if rows and None not in leaked else None,
            "kernel_reports": _kernel_reports(by.get(FAULT_SWEEP, [])),
            "own_sites": sites, "own_sites_status": site_status,
            "own_sites_reason": site_reason,
            "own_sites_kernel_reports": _kernel_reports(by.get(FAULT_SITES, [])),
            "output": f"ktap/{FAULT_PROGRAM}.tap"}


_FUZZ_SUMMARY = re.compile(r"^aem_fuzz: seed=\d+")
_FUZZ_FIELD = re.compile(r"\b(?P<key>[a-z]+(?:/s)?)=(?P<value>-?\d+(?:\.\d+)?)")
_FUZZ_SPLIT = re.compile(r"\(main (?P<main>\d+), children (?P<children>\d+)\)")
_FUZZ_FINDING = re.compile(r"^aem_fuzz: FINDING \d+ \[")
_FUZZ_REPRO = re.compile(r"^\s+reproduce: (?P<cmd>aem_fuzz .*\S)")
_TRINITY_RAN = re.compile(r"\bRan (\d+) syscalls")


def _num(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_fuzz_output(text: str) -> dict[str, Any]:
    """What one aem_fuzz pass printed: ``summary`` (seed, threads, calls, main_calls,
    child_calls, seconds, calls_per_s, findings, leak; None: no summary line, the fuzzer
    died), ``findings`` (its ``FINDING`` lines) and ``reproduce`` (the first command it
    gave to replay a finding, or None)."""
    summary = None
    findings: list[str] = []
    repro = None
    for line in text.splitlines():
        if _FUZZ_SUMMARY.match(line):
            head = line.split(" |", 1)[0]
            f = {m["key"]: _num(m["value"]) for m in _FUZZ_FIELD.finditer(head)}
            split = _FUZZ_SPLIT.search(head)
            summary = {"seed": f.get("seed"), "threads": f.get("threads"),
                       "calls": f.get("calls"),
                       "main_calls": int(split["main"]) if split else None,
                       "child_calls": int(split["children"]) if split else None,
                       "seconds": f.get("seconds"), "calls_per_s": f.get("calls/s"),
                       "findings": f.get("findings"), "leak": f.get("leak")}
        elif _FUZZ_FINDING.match(line):
            findings.append(line.removeprefix("aem_fuzz: ").strip())
        elif repro is None and (m := _FUZZ_REPRO.match(line)):
            repro = m["cmd"]
    return {"summary": summary, "findings": findings, "reproduce": repro}


def _fuzz_pass(run_dir: Path, p: FuzzPass, reports: Sequence[kmsg.Finding], *, ran: bool,
               panicked: bool) -> dict[str, Any]:
    """One pass for results.json, with ``problem``: why it blocks the verdict (or None)."""
    txt, rc = run_dir / "fuzz" / f"pass-{p.number}.txt", \
        read_int(run_dir / "fuzz" / f"pass-{p.number}.rc")
    out = parse_fuzz_output(txt.read_text(errors="replace")) if txt.exists() else \
        {"summary": None, "findings": [], "reproduce": None}
    s = out["summary"] or {}
    findings = s.get("findings")
    if findings is None:
        findings = len(out["findings"])
    problems = []
    if out["summary"] is None:
        if panicked:
            problems.append("no summary line: the kernel panicked during the pass")
        elif rc is None and not txt.exists():
            problems.append("did not run" + (" (the run ended before the fuzz phase)"
                                             if not ran else " (aem_fuzz not found?)"))
        elif rc in (124, 137):
            problems.append(f"no summary line: killed by the watchdog (status {rc}) past its "
                            f"{p.seconds} s bound")
        else:
            problems.append("no summary line: the fuzzer died" +
                            (f" (exit status {rc})" if rc is not None else ""))
    if findings:
        first = f": {_first_line(out['findings'][0], 240)}" if out["findings"] else ""
        problems.append(f"{findings} finding{'s' if findings != 1 else ''}{first}")
    leak = s.get("leak")
    if leak:
        problems.append(f"{leak} registration{'s' if leak != 1 else ''} of uid {FUZZ_UID} "
                        "left after it" if leak > 0 else "its leak check failed")
    if rc not in (0, None) and not problems:
        problems.append(f"exited with status {rc}")
    ring = run_dir / "fuzz" / f"ring-{p.number}.txt"
    return {"pass": p.number, "seed": p.seed, "threads": p.threads,
            "calls_requested": p.calls, "seconds_bound": p.seconds,
            "calls": s.get("calls"), "main_calls": s.get("main_calls"),
            "child_calls": s.get("child_calls"), "seconds": s.get("seconds"),
            "calls_per_s": s.get("calls_per_s"), "findings": findings, "leak": leak, "rc": rc,
            "reproduce": out["reproduce"] or p.reproduce(),
            "finding_messages": out["findings"][:10],
            "kernel_reports": _kernel_reports(reports),
            "output": f"fuzz/{txt.name}", "ring": f"fuzz/{ring.name}" if ring.exists() else None,
            "problem": "; ".join(problems) or None}


def _trinity(run_dir: Path, seconds: int, reports: Sequence[kmsg.Finding], *,
             ran: bool) -> dict[str, Any]:
    """trinity for results.json: seconds, syscalls (its last ``Ran N syscalls``), exit
    status, and ``problem`` when it did not run."""
    log, rc = run_dir / "fuzz" / "trinity.txt", read_int(run_dir / "fuzz" / "trinity.rc")
    text = log.read_text(errors="replace") if log.exists() else ""
    counts = [int(n) for n in _TRINITY_RAN.findall(text)]
    problem = None
    if rc is None and not log.exists():
        problem = "did not run" + ("" if ran else " (the run ended before the fuzz phase)")
    elif rc != 0 or not counts:
        last = next((x.strip() for x in reversed(text.splitlines()) if x.strip()), "")
        problem = (f"did not run (exit status {rc})" +
                   (f": {_first_line(last, 200)}" if last else ""))
    return {"seconds": seconds, "syscalls": max(counts) if counts else None, "rc": rc,
            "uid": FUZZ_UID, "kernel_reports": _kernel_reports(reports),
            "output": "fuzz/trinity.txt", "problem": problem}


def fuzz_results(run_dir: Path, passes: Sequence[FuzzPass], trinity: int,
                 findings: Sequence[kmsg.Finding] = (), *, ran: bool = True,
                 panicked_in: str | None = None) -> dict[str, Any]:
    """The fuzz phase for results.json (RUN/fuzz/): ``passes`` and ``trinity`` (None when
    not asked), each with ``kernel_reports`` (the splats between its markers) and
    ``problem`` (what blocks the verdict, or None). *panicked_in*: the phase the kernel
    panicked in."""
    by = kmsg.by_test(list(findings))
    return {
        "uid": FUZZ_UID,
        "passes": [_fuzz_pass(run_dir, p, by.get(p.phase, []), ran=ran,
                              panicked=panicked_in == p.phase) for p in passes],
        "trinity": _trinity(run_dir, trinity, by.get(PHASE_TRINITY, []), ran=ran)
        if trinity > 0 else None,
    }


def fuzz_blockers(fuzz: Mapping[str, Any]) -> list[str]:
    """The blockers of the fuzz phase: a pass with a finding, a leak, a non-zero exit or no
    summary; trinity that did not run. Each names the seed and the command to replay."""
    out = []
    for p in fuzz.get("passes") or []:
        if p.get("problem"):
            t = p["threads"]
            out.append(f"aem_fuzz pass {p['pass']} (seed {p['seed']}, {t} thread"
                       f"{'s' if t != 1 else ''}, {p['calls_requested']} calls): "
                       f"{p['problem']}; reproduce: {p['reproduce']}")
    tr = fuzz.get("trinity")
    if tr and tr.get("problem"):
        out.append(f"trinity ({tr['seconds']} s against /dev/aem as uid {FUZZ_UID}): "
                   f"{tr['problem']}")
    return out


def _phase_where(test: str | None, passes: Sequence[FuzzPass]) -> str:
    """Where a splat outside the tests happened, for its blocker."""
    if test == PHASE_STRESS:
        return "during the stress pass"
    if test == PHASE_UNLOAD:
        return "while unloading the modules"
    if test == PHASE_KMEMLEAK:
        return "found by the leak scan"
    if test == PHASE_TRINITY:
        return "during trinity"
    for p in passes:
        if test == p.phase:
            return f"during aem_fuzz pass {p.number} (seed {p.seed}; reproduce: {p.reproduce()})"
    return "outside any test"


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
          kmemleak: bool = False, fuzz: Sequence[FuzzPass] = (),
          trinity: int = 0) -> dict[str, Any]:
    """Build results.json from what the target left in *run_dir* and the kernel's health.

    *ktap*: the names of the KTAP programs the script ran (``ktap.PROG`` tests; one that
    does not pass blocks the verdict; aem_ktests' fault-injection tables go into
    ``hardening.fault_sweep``); *kmemleak*: the script scanned for leaks (each leak
    blocks the verdict); *fuzz*, *trinity*: the fuzz passes and trinity's seconds the
    script ran (``hardening.fuzz``; :func:`fuzz_blockers` block the verdict).
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
        blockers.append(f"kernel {f.kind} {_phase_where(f.test, fuzz)}: "
                        f"{_first_line(f.message, 300)}")
    for t in ktap_tests:
        if t.outcome != res.PASS:
            blockers.append(f"KTAP {t.name[len(KTAP_PREFIX):]}: {t.outcome}: "
                            f"{_first_line(t.reason, 300)}")
    hardening: dict[str, Any] = {}
    if FAULT_PROGRAM in ktap:
        hardening["fault_sweep"] = fault_sweep(run_dir, execution.findings, ran=ran)
    if fuzz or trinity > 0:
        hardening["fuzz"] = fuzz_results(
            run_dir, fuzz, trinity, execution.findings, ran=ran,
            panicked_in=running if execution.error == "panic" else None)
        blockers += fuzz_blockers(hardening["fuzz"])
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
    if hardening:
        results["hardening"] = hardening
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
