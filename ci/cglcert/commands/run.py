"""``cglcert run conformance``: build the conformance suite, run it, write ``results.json``.

The suite is the GoogleTest binary ``aem_conformance`` (``conformance/``). It runs with
``AEM_BACKEND`` set and ``--gtest_output=xml:OUT/gtest.xml``; :mod:`cglcert.results` turns the
XML, the catalog and the static scan of the suite's sources into ``OUT/results.json``, the
source of truth for every report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cglcert import ExitCode, InfraError, UsageError, __version__, default_repo_root
from cglcert import results as res
from cglcert.catalog import load_catalog
from cglcert.tags import iter_source_files, scan_source

DESCRIPTION = """\
Run the conformance suite and write DIR/results.json (the source of truth), DIR/gtest.xml
and DIR/suite.log, then print one line per requirement and the closing line
'N passed, N failed, N skipped'.

The suite is built first when needed (cmake configure + build of the aem_conformance target
into build/conformance, or into --build-dir), unless --binary names a built one.

Verdicts: a requirement passes when all its tests pass; it fails when one fails; it is
skipped when its tests were skipped (not decidable on this target: a skip is never a
pass); ERROR when the harness broke (crash, timeout, missing XML) or no test ran. A kernel
is CGL 2.0 conformant when every priority-1 requirement passes, CGL 3.0 when every
requirement does.

Exit code: 0 certified for --verdict (default cgl-2.0), 1 not certified, 2 usage error,
3 infrastructure error (build failure, the suite crashed or timed out, no XML); results.json
is written in every case but a usage error.
"""

SUITES = ("conformance",)
TARGETS = ("host",)
BACKENDS = ("user", "kmod")
BINARY = "aem_conformance"
DEFAULT_BUILD_DIR = Path("build/conformance")
SUITE_SOURCES = ("conformance",)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``run`` subcommand."""
    p = subparsers.add_parser(
        "run", help="run a test suite and write results.json (run conformance)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", choices=SUITES, help="the suite to run")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="directory for results.json, gtest.xml and suite.log (created)")
    p.add_argument("--backend", choices=BACKENDS, default="user",
                   help="libaem backend, exported as AEM_BACKEND (default user)")
    p.add_argument("--target", choices=TARGETS, default="host",
                   help="where the suite runs (default host; QEMU targets come later)")
    p.add_argument("--verdict", choices=tuple(res.VERDICTS), default="cgl-2.0",
                   help="verdict that decides the exit code (default cgl-2.0)")
    p.add_argument("--build-dir", type=Path, default=None, metavar="DIR",
                   help=f"CMake build directory (default <repo>/{DEFAULT_BUILD_DIR}); an "
                        "existing configured one is reused as it is")
    p.add_argument("--binary", type=Path, default=None, metavar="PATH",
                   help="run this aem_conformance binary instead of building one")
    p.add_argument("--timeout", type=float, default=600, metavar="S",
                   help="seconds the suite may run before it is killed (default 600)")
    p.add_argument("--repo", type=Path, default=None, metavar="DIR",
                   help="project root (default: the repository of this cglcert)")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="do not echo the build and suite output")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- environment


def kernel_flavor(release: str) -> str | None:
    """Debian flavor of a kernel release (``amd64``, ``rt-amd64``, ``cloud-amd64``), else None."""
    m = re.match(r"^\d+\.\d+\.\d+-\d+-(?P<flavor>[a-z0-9]+(?:-[a-z0-9]+)*)$", release)
    return m["flavor"] if m else None


def project_version(repo: Path) -> str | None:
    """libaem's version from the top-level CMakeLists.txt (``project(aem VERSION x.y.z``)."""
    try:
        text = (repo / "CMakeLists.txt").read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(r"project\(\s*aem\s+VERSION\s+([0-9.]+)", text)
    return m[1] if m else None


def host_environment(repo: Path, backend: str, target: str) -> dict[str, Any]:
    """What results.json records about the machine the suite runs on."""
    release = platform.release()
    return {
        "target": target,
        "kernel": release,
        "flavor": kernel_flavor(release),
        "backend": backend,
        "backend_requested": backend,
        "accel": "none",
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "libaem_version": project_version(repo),
        "cglcert_version": __version__,
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def expected_tests(repo: Path) -> dict[str, tuple[str, ...]]:
    """Tests of the suite's sources (static scan) and the requirement IDs each one tags."""
    found: dict[str, tuple[str, ...]] = {}
    for path in iter_source_files(repo, SUITE_SOURCES):
        rel = path.relative_to(repo).as_posix()
        scan = scan_source(path.read_text(encoding="utf-8", errors="replace"), rel)
        for t in scan.tests:
            found[t.full_name] = t.requirements
    return found


# --------------------------------------------------------------------------- build and run


def _echo(quiet: bool, text: str) -> None:
    if not quiet and text:
        sys.stderr.write(text if text.endswith("\n") else text + "\n")


def build_suite(repo: Path, build_dir: Path, quiet: bool) -> Path:
    """Configure (once) and build the aem_conformance target; return the binary."""
    cmds = []
    if not (build_dir / "CMakeCache.txt").exists():
        cmds.append(["cmake", "-S", str(repo), "-B", str(build_dir), "-G", "Ninja",
                     "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DAEM_BUILD_TESTS=ON",
                     "-DAEM_BUILD_EXAMPLES=OFF"])
    cmds.append(["cmake", "--build", str(build_dir), "--target", BINARY])
    for cmd in cmds:
        _echo(quiet, "+ " + " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise InfraError(f"{cmd[0]} not found: install CMake and Ninja (ci/install-deps)") \
                from exc
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise InfraError(f"building the suite failed ({' '.join(cmd)}):\n{tail}")
    binary = build_dir / "conformance" / BINARY
    if not binary.is_file():
        raise InfraError(f"the build did not produce {binary}")
    return binary


def focus_filter(focus: list[str]) -> str:
    """The gtest filter of the tests of the requirements *focus*: the suite names a test's
    fixture after its requirement (AEM-3.5.1 -> AEM_3_5_1)."""
    return ":".join(re.sub(r"[-.]", "_", rid) + ".*" for rid in focus)


def run_suite(binary: Path, xml: Path, log: Path, backend: str, timeout: float,
              quiet: bool, focus: list[str] | None = None) -> \
        tuple[int | None, str | None, float]:
    """Run the suite (only the tests of *focus* when given); return (exit status, harness
    error or None, seconds)."""
    env = dict(os.environ, AEM_BACKEND=backend)
    if xml.exists():
        xml.unlink()
    cmd = [str(binary), f"--gtest_output=xml:{xml}", "--gtest_color=no"]
    if focus:
        cmd.append(f"--gtest_filter={focus_filter(focus)}")
    _echo(quiet, "+ AEM_BACKEND=" + backend + " " + " ".join(cmd))
    start = time.monotonic()
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as exc:
            return None, f"cannot start {binary}: {exc}", 0.0
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, f"timeout: the suite did not finish within {timeout:g} s (killed)", \
                time.monotonic() - start
    took = time.monotonic() - start
    if code < 0:
        return code, f"the suite was killed by signal {-code} ({_signame(-code)})", took
    return code, None, took


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return "unknown"


def run(args: argparse.Namespace) -> int:
    """Build, run, write results.json, print the summary; return the exit code."""
    repo = (args.repo or default_repo_root()).resolve()
    if not (repo / "conformance").is_dir():
        raise UsageError(f"--repo {repo}: no conformance/ in it; pass the project root")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create the directory: {exc}") from exc
    catalog = load_catalog(repo)
    if catalog.problems:
        raise InfraError(f"the requirement catalog is invalid ({len(catalog.problems)} problems); "
                         "run './cglcert coverage' for the list")
    expected = expected_tests(repo)
    focus = getattr(args, "focus", None)  # cglcert mutants --focus: these requirements only
    if focus:
        expected = {n: r for n, r in expected.items() if set(r) & set(focus)}
    env = host_environment(repo, args.backend, args.target)
    xml, log = out / "gtest.xml", out / "suite.log"
    harness: dict[str, Any] = {"gtest_xml": xml.name, "log": log.name, "exit_code": None,
                               "duration_s": None, "binary": None}
    harness_error: str | None = None
    tests: list[res.TestResult] | None = None
    try:
        binary = args.binary if args.binary else build_suite(
            repo, (args.build_dir or repo / DEFAULT_BUILD_DIR).resolve(), args.quiet)
    except InfraError as exc:
        binary, harness_error = None, f"build failed: {exc}"
    if binary is not None:
        harness["binary"] = str(binary)
        if not Path(binary).is_file():
            harness_error = f"{binary}: no such file"
        else:
            code, harness_error, took = run_suite(Path(binary).resolve(), xml.resolve(), log,
                                                  args.backend, args.timeout, args.quiet,
                                                  focus)
            harness["exit_code"], harness["duration_s"] = code, round(took, 3)
            if harness_error is None:
                try:
                    parsed = res.parse_gtest_xml_file(xml)
                    tests = parsed.tests
                    env["backend"] = parsed.attributes.get("aem_backend", args.backend)
                    if env["backend"] == "none":
                        tests = None
                        harness_error = (f"libaem could not start the '{args.backend}' "
                                         f"backend (see {log})")
                    env["libaem_version"] = parsed.attributes.get("aem_version") or \
                        env["libaem_version"]
                    if code not in (0, 1):
                        harness_error = f"the suite exited with status {code}"
                except res.GtestXmlError as exc:
                    harness_error = str(exc)
            if harness_error and tests is None and log.exists():
                harness["log_tail"] = log.read_text(errors="replace").splitlines()[-20:]
    results = res.build_results(catalog.requirements, tests, env, expected=expected,
                                harness_error=harness_error, harness=harness)
    (out / "results.json").write_text(res.results_to_json(results), encoding="utf-8")
    sys.stderr.write(f"cglcert run: results in {out / 'results.json'}\n")
    sys.stdout.write(res.render_summary(results))
    if harness_error:
        sys.stderr.write(f"cglcert run: harness error: {harness_error}\n")
        return ExitCode.INFRA
    return ExitCode.OK if res.exit_verdict(results, args.verdict) else ExitCode.FAILED
