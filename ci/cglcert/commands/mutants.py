"""``cglcert mutants``: build libaem (or the kernel modules) with each injected defect, run the
suite, print the kill matrix.

For every mutant of :data:`cglcert.mutants.MUTANTS` (and first a control build without a
defect): configure the shared build tree with ``-DAEM_MUTANT=<name>``, build the
``aem_conformance`` target (only libaem's objects recompile: the defect is a compile
definition of the library alone, and Ninja rebuilds what a changed command line affects),
copy the binary to ``OUT/<name>/`` and run it through ``cglcert run conformance``'s own code
(:func:`cglcert.commands.run.run`), which writes ``OUT/<name>/results.json``. Then
:mod:`cglcert.mutants` judges each mutant and this writes ``OUT/mutants.json`` and prints the
matrix.

With ``--backend kmod`` the defects are in the kernel modules (``make AEM_MUTANT=<name>``, the
list is ``AEM_MUTANTS`` in reference/kmod/Kbuild): the suite is built once, without a defect,
and each variant of the modules is built against Debian's 6.1 headers into ``OUT/<name>/kmod``,
loaded into Debian's kernel under QEMU (``cglcert boot``), and the suite runs there on the kmod
backend; its gtest XML becomes ``OUT/<name>/results.json`` as in ``cglcert run``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cglcert import ExitCode, InfraError, UsageError, default_repo_root
from cglcert import certify as cf
from cglcert import mutants as mut
from cglcert import results as res
from cglcert.catalog import load_catalog, requirement_sort_key
from cglcert.commands import run as run_cmd

DESCRIPTION = """\
Mutation testing: prove that the conformance suite catches real defects. Each mutant is
libaem built with one named defect (-DAEM_MUTANT=<name>, see reference/lib/src/mutant.hpp);
the suite runs against it (as 'cglcert run conformance' does) and the requirement(s) the
defect breaks must FAIL. Prints the kill matrix (mutant x requirement) and writes
OUT/mutants.json, and per mutant OUT/<name>/results.json, gtest.xml, suite.log, summary.txt.

A control run (the library without a defect) comes first unless --no-control: a requirement
that fails in the control kills nothing.

The mutants share one build tree (--build-dir, default build/mutants/tree): switching
mutants recompiles only libaem's objects (about 10 s each on 2 CPUs); the first build of the
tree takes a minute or two. A full run takes about 15 minutes on 2 CPUs, most of it in the
suite waiting out the time-outs of tests a defect breaks (drop_occurrence alone: 7 minutes).

--backend kmod: the kernel modules' mutants instead (reference/kmod/Kbuild lists them), each
run in Debian's kernel under QEMU. --focus runs only the tests of the requirements the
selected mutants must fail (the control too): a quick check that each is caught, not a full
matrix. A full kmod run is 11 boots of the whole suite (about 3 minutes each under TCG
without a defect, longer where one makes tests wait out their time-outs).

Exit code: 0 every mutant killed by its expected requirement(s); 1 a mutant survived, was
killed only by other requirements, or its suite crashed or timed out; 2 usage error; 3
infrastructure error (configure or build failure, the control run broke).
"""

DEFAULT_OUT = Path("build/mutants")
TREE = "tree"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``mutants`` subcommand."""
    p = subparsers.add_parser(
        "mutants", help="build libaem with injected defects; the suite must catch each one",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", action="append", default=None, metavar="NAME",
                   help="run this mutant only (repeatable; default: all of the backend)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"directory for mutants.json and one folder per mutant (default "
                        f"<repo>/{DEFAULT_OUT})")
    p.add_argument("--build-dir", type=Path, default=None, metavar="DIR",
                   help=f"the shared CMake build tree (default <repo>/{DEFAULT_OUT}/{TREE})")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control run (the library without a defect)")
    p.add_argument("--backend", choices=("user", "kmod"), default="user",
                   help="user: libaem's defects, the suite on the user backend (default); "
                        "kmod: the kernel modules' defects, the suite on the kmod backend in "
                        "Debian's kernel under QEMU")
    p.add_argument("--focus", action="store_true",
                   help="run only the tests of the requirements the selected mutants must fail")
    p.add_argument("--timeout", type=float, default=1200, metavar="S",
                   help="seconds each suite run may take before it is killed (default 1200: "
                        "a mutant makes tests wait out their time-outs)")
    p.add_argument("--repo", type=Path, default=None, metavar="DIR",
                   help="project root (default: the repository of this cglcert)")
    p.add_argument("-q", "--quiet", action="store_true", help="print the matrix only")
    p.set_defaults(func=run)


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def configure(repo: Path, tree: Path, mutant: str) -> None:
    """Configure the shared tree for ``mutant`` ('' for none); check the cache took it."""
    cmd = ["cmake", "-S", str(repo), "-B", str(tree)]
    if not (tree / "CMakeCache.txt").exists():
        cmd += ["-G", "Ninja", "-DCMAKE_BUILD_TYPE=RelWithDebInfo", "-DAEM_BUILD_TESTS=ON"]
    cmd += ["-DAEM_BUILD_EXAMPLES=OFF", f"-DAEM_MUTANT={mutant}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise InfraError("cmake not found: install CMake and Ninja (ci/install-deps)") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise InfraError(f"configuring {tree} for mutant '{mutant or 'none'}' failed:\n{tail}")
    cache = (tree / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace")
    if f"AEM_MUTANT:STRING={mutant}\n" not in cache:
        raise InfraError(f"{tree}/CMakeCache.txt does not say AEM_MUTANT={mutant}")


def build_one(repo: Path, tree: Path, name: str, mutant: str, dest: Path,
              quiet: bool) -> tuple[Path, float]:
    """Configure and build one variant; copy its binary into ``dest``; (binary, seconds)."""
    start = time.monotonic()
    configure(repo, tree, mutant)
    _say(quiet, f"cglcert mutants: building {name}")
    binary = run_cmd.build_suite(repo, tree, quiet=True)
    dest.mkdir(parents=True, exist_ok=True)
    copy = dest / run_cmd.BINARY
    shutil.copy2(binary, copy)
    return copy, time.monotonic() - start


def only_focus(results: dict[str, Any] | None, focus: list[str] | None) -> \
        dict[str, Any] | None:
    """*results* with only the requirements of *focus* (the others did not run)."""
    if results is None or focus is None:
        return results
    results["requirements"] = [r for r in results.get("requirements", []) if r["id"] in focus]
    results["focus"] = focus
    return results


def _focused(path: Path, focus: list[str] | None) -> dict[str, Any] | None:
    """results.json at *path*, rewritten with only the requirements of *focus* (a focused
    run's file then shows no ERROR for requirements it never meant to run)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if focus is not None:
        only_focus(doc, focus)
        path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def run_suite(repo: Path, binary: Path, out: Path, backend: str, timeout: float,
              focus: list[str] | None = None) -> dict[str, Any] | None:
    """Run the suite through ``cglcert run conformance``'s code; return results.json."""
    args = argparse.Namespace(
        suite="conformance", out=out, backend=backend, target="host", verdict="cgl-2.0",
        build_dir=None, binary=binary, timeout=timeout, repo=repo, quiet=True, focus=focus)
    summary = out / "summary.txt"
    out.mkdir(parents=True, exist_ok=True)
    with open(summary, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        run_cmd.run(args)
    return _focused(out / "results.json", focus)


class KmodRunner:
    """The kmod backend's side: the suite built once, the modules per variant, the suite run
    in Debian's kernel under QEMU."""

    def __init__(self, repo: Path, tree: Path, args: argparse.Namespace,
                 focus: list[str] | None) -> None:
        self.repo, self.tree, self.args, self.focus = repo, tree, args, focus
        self.binary: Path | None = None
        # Debian's newest 6.1 headers, as reference/kmod/Makefile picks them (and the
        # kernel 'cglcert boot' boots by default is of the same ABI)
        heads = sorted(Path("/usr/src").glob("linux-headers-6.1.0-*-amd64"),
                       key=lambda p: int(p.name.split("-")[3]))
        if not heads:
            raise InfraError("no /usr/src/linux-headers-6.1.0-*-amd64: run ci/install-deps")
        self.headers = heads[-1]

    def build_suite(self) -> None:
        configure(self.repo, self.tree, "")
        _say(self.args.quiet, "cglcert mutants: building the suite (no defect)")
        self.binary = run_cmd.build_suite(self.repo, self.tree, quiet=True)

    def build_modules(self, name: str, mutant: str, dest: Path) -> float:
        start = time.monotonic()
        _say(self.args.quiet, f"cglcert mutants: building the modules ({name})")
        self.modules = cf.build_modules(self.repo, self.headers, dest / "kmod",
                                        make_args=[f"AEM_MUTANT={mutant}"] if mutant else [])
        return time.monotonic() - start

    def run(self, out: Path) -> dict[str, Any] | None:
        """Boot, run the suite on the kmod backend, unload; results.json from the XML."""
        assert self.binary is not None
        guest = out / "guest"
        shutil.rmtree(guest, ignore_errors=True)
        guest.mkdir(parents=True)
        filt = f" --gtest_filter='{run_cmd.focus_filter(self.focus)}'" if self.focus else ""
        script = (f"AEM_BACKEND=kmod timeout -k 10 {int(self.args.timeout)} {self.binary}"
                  f' --gtest_output=xml:"$CGLCERT_RESULTS/gtest.xml" --gtest_color=no{filt}'
                  ' > "$CGLCERT_RESULTS/suite.log" 2>&1; echo $? > "$CGLCERT_RESULTS/suite.rc"')
        # --strict: the script always ends 0, so exit 1 says the kernel log (WARN, BUG,
        # oops, lockdep) or the taint was unhealthy: no verdict can be attributed then.
        cmd = [str(self.repo / "cglcert"), "boot", "--strict", "--results", str(guest),
               "--timeout", str(int(self.args.timeout) + 60)]
        for m in self.modules:
            cmd += ["--module", str(m)]
        cmd += ["--", "sh", "-c", script]
        start = time.monotonic()
        with open(out / "boot.log", "w", encoding="utf-8") as log:
            boot = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        took = time.monotonic() - start
        xml, log_path = guest / "gtest.xml", guest / "suite.log"
        code = cf.read_int(guest / "suite.rc")
        harness: dict[str, Any] = {"gtest_xml": str(xml), "log": str(log_path),
                                   "exit_code": code, "duration_s": round(took, 3),
                                   "binary": str(self.binary), "boot_exit_code": boot.returncode}
        error, tests = None, None
        if boot.returncode == 3:
            error = f"the guest did not run the suite (cglcert boot: see {out / 'boot.log'})"
        elif boot.returncode != 0:
            error = (f"the kernel log or taint was unhealthy, or the kernel panicked "
                     f"(cglcert boot exit {boot.returncode}: see {out / 'boot.log'})")
        elif code not in (0, 1):
            error = f"the suite exited with status {code} (see {log_path})"
        else:
            try:
                tests = res.parse_gtest_xml_file(xml).tests
            except res.GtestXmlError as exc:
                error = str(exc)
        env = {"backend": "kmod", "kernel_headers": str(self.headers),
               "mutant_modules": [str(m) for m in self.modules]}
        expected = run_cmd.expected_tests(self.repo)
        if self.focus:
            expected = {n: r for n, r in expected.items() if set(r) & set(self.focus)}
        results = res.build_results(load_catalog(self.repo).requirements, tests, env,
                                    expected=expected, harness_error=error, harness=harness)
        (out / "results.json").write_text(res.results_to_json(results), encoding="utf-8")
        return _focused(out / "results.json", self.focus)


def run(args: argparse.Namespace) -> int:
    """Build and run every selected mutant; print the matrix; return the exit code."""
    repo = (args.repo or default_repo_root()).resolve()
    if not (repo / "conformance").is_dir() or not (repo / mut.HEADER).is_file():
        raise UsageError(f"--repo {repo}: no conformance/ or {mut.HEADER} in it; pass the "
                         "project root")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    table = mut.by_name(args.backend)
    if args.backend == "kmod":
        where = mut.KBUILD
        declared = mut.kbuild_mutants((repo / mut.KBUILD).read_text(encoding="utf-8"))
    else:
        where = mut.HEADER
        declared = mut.header_mutants((repo / mut.HEADER).read_text(encoding="utf-8"))
    if sorted(declared) != sorted(table):
        raise InfraError(f"{where} declares {sorted(declared)} but cglcert/mutants.py "
                         f"{sorted(table)}: keep them the same")
    unknown = [n for n in args.only or [] if n not in table]
    if unknown:
        raise UsageError(f"--only {', '.join(unknown)}: no such {args.backend} mutant; one of: "
                         f"{', '.join(table)}")
    selected = [table[n] for n in dict.fromkeys(args.only)] if args.only else \
        list(mut.BACKEND_MUTANTS[args.backend])
    focus = sorted({r for m in selected for r in m.expected}) if args.focus else None
    out = (args.out or repo / DEFAULT_OUT).resolve()
    tree = (args.build_dir or repo / DEFAULT_OUT / TREE).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        tree.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out} or {tree}: {exc}") from exc
    lock = open(tree / ".cglcert-mutants.lock", "w")  # noqa: SIM115  # held to the end
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        raise InfraError(f"{tree} is in use by another 'cglcert mutants'; pass another "
                         "--build-dir") from exc
    start = time.monotonic()
    timing: dict[str, dict[str, float | None]] = {}
    control_doc: dict[str, Any] | None = None
    control_results = None
    kmod = KmodRunner(repo, tree, args, focus) if args.backend == "kmod" else None
    try:
        if kmod is not None:
            kmod.build_suite()
        if not args.no_control:
            if kmod is not None:
                binary, built = None, kmod.build_modules(mut.CONTROL, "", out / mut.CONTROL)
            else:
                binary, built = build_one(repo, tree, mut.CONTROL, "", out / mut.CONTROL,
                                          args.quiet)
            _say(args.quiet, f"cglcert mutants: running the suite ({mut.CONTROL})")
            control_results = kmod.run(out / mut.CONTROL) if kmod is not None else \
                run_suite(repo, binary, out / mut.CONTROL, args.backend, args.timeout,
                          focus)
            err = (control_results or {}).get("harness", {}).get("error") \
                if control_results else "no results.json"
            control_doc = {"verdicts": mut.verdicts_of(control_results), "error": err}
            timing[mut.CONTROL] = {"build_s": round(built, 1),
                                   "suite_s": _suite_s(control_results)}
        judgements = []
        for m in selected:
            if kmod is not None:
                binary, built = None, kmod.build_modules(m.name, m.name, out / m.name)
            else:
                binary, built = build_one(repo, tree, m.name, m.name, out / m.name,
                                          args.quiet)
            _say(args.quiet, f"cglcert mutants: running the suite ({m.name})")
            results = kmod.run(out / m.name) if kmod is not None else \
                run_suite(repo, binary, out / m.name, args.backend, args.timeout, focus)
            j = mut.judge(m, results, control=control_results)
            j["results"] = str(out / m.name / "results.json")
            judgements.append(j)
            timing[m.name] = {"build_s": round(built, 1), "suite_s": _suite_s(results)}
            _say(args.quiet, f"cglcert mutants: {m.name}: {j['status']}"
                             + (f" by {', '.join(j['killed_by'])}" if j["killed_by"] else ""))
    finally:
        with contextlib.suppress(InfraError):
            configure(repo, tree, "")  # leave the tree without a defect
        lock.close()
    ids = sorted((r.id for r in load_catalog(repo).requirements), key=requirement_sort_key)
    doc = mut.build_document(
        judgements, requirements=ids, control=control_doc,
        environment=(control_results or {}).get("environment") or {},
        extra={"backend": args.backend, "focus": focus, "build_dir": str(tree),
               "timing": timing, "duration_s": round(time.monotonic() - start, 1)})
    (out / "mutants.json").write_text(mut.document_to_json(doc), encoding="utf-8")
    sys.stdout.write(mut.render_matrix(doc))
    sys.stdout.write(f"total {doc['duration_s']:.0f} s; mutants.json in {out}\n")
    if control_doc and control_doc["error"]:
        sys.stderr.write(f"cglcert mutants: the control run broke: {control_doc['error']}\n")
        return ExitCode.INFRA
    return ExitCode.OK if doc["ok"] else ExitCode.FAILED


def _suite_s(results: dict[str, Any] | None) -> float | None:
    return (results or {}).get("harness", {}).get("duration_s")

