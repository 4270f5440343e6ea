"""``cglcert mutants``: build libaem with each injected defect, run the suite, print the kill
matrix.

For every mutant of :data:`cglcert.mutants.MUTANTS` (and first a control build without a
defect): configure the shared build tree with ``-DAEM_MUTANT=<name>``, build the
``aem_conformance`` target (only libaem's objects recompile: the defect is a compile
definition of the library alone, and Ninja rebuilds what a changed command line affects),
copy the binary to ``OUT/<name>/`` and run it through ``cglcert run conformance``'s own code
(:func:`cglcert.commands.run.run`), which writes ``OUT/<name>/results.json``. Then
:mod:`cglcert.mutants` judges each mutant and this writes ``OUT/mutants.json`` and prints the
matrix.
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
from cglcert import mutants as mut
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
                   choices=[m.name for m in mut.MUTANTS],
                   help="run this mutant only (repeatable; default: all)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"directory for mutants.json and one folder per mutant (default "
                        f"<repo>/{DEFAULT_OUT})")
    p.add_argument("--build-dir", type=Path, default=None, metavar="DIR",
                   help=f"the shared CMake build tree (default <repo>/{DEFAULT_OUT}/{TREE})")
    p.add_argument("--no-control", action="store_true",
                   help="skip the control run (the library without a defect)")
    p.add_argument("--backend", choices=("user",), default="user",
                   help="libaem backend (the defects are in the user backend)")
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


def run_suite(repo: Path, binary: Path, out: Path, backend: str, timeout: float) -> \
        dict[str, Any] | None:
    """Run the suite through ``cglcert run conformance``'s code; return results.json."""
    args = argparse.Namespace(
        suite="conformance", out=out, backend=backend, target="host", verdict="cgl-2.0",
        build_dir=None, binary=binary, timeout=timeout, repo=repo, quiet=True)
    summary = out / "summary.txt"
    out.mkdir(parents=True, exist_ok=True)
    with open(summary, "w", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), \
            contextlib.redirect_stderr(fh):
        run_cmd.run(args)
    try:
        return json.loads((out / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run(args: argparse.Namespace) -> int:
    """Build and run every selected mutant; print the matrix; return the exit code."""
    repo = (args.repo or default_repo_root()).resolve()
    if not (repo / "conformance").is_dir() or not (repo / mut.HEADER).is_file():
        raise UsageError(f"--repo {repo}: no conformance/ or {mut.HEADER} in it; pass the "
                         "project root")
    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    declared = mut.header_mutants((repo / mut.HEADER).read_text(encoding="utf-8"))
    table = mut.by_name()
    if sorted(declared) != sorted(table):
        raise InfraError(f"{mut.HEADER} declares {sorted(declared)} but cglcert/mutants.py "
                         f"{sorted(table)}: keep them the same")
    selected = [table[n] for n in dict.fromkeys(args.only)] if args.only else list(mut.MUTANTS)
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
    try:
        if not args.no_control:
            binary, built = build_one(repo, tree, mut.CONTROL, "", out / mut.CONTROL,
                                      args.quiet)
            _say(args.quiet, f"cglcert mutants: running the suite ({mut.CONTROL})")
            control_results = run_suite(repo, binary, out / mut.CONTROL, args.backend,
                                        args.timeout)
            err = (control_results or {}).get("harness", {}).get("error") \
                if control_results else "no results.json"
            control_doc = {"verdicts": mut.verdicts_of(control_results), "error": err}
            timing[mut.CONTROL] = {"build_s": round(built, 1),
                                   "suite_s": _suite_s(control_results)}
        judgements = []
        for m in selected:
            binary, built = build_one(repo, tree, m.name, m.name, out / m.name, args.quiet)
            _say(args.quiet, f"cglcert mutants: running the suite ({m.name})")
            results = run_suite(repo, binary, out / m.name, args.backend, args.timeout)
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
        extra={"build_dir": str(tree), "timing": timing,
               "duration_s": round(time.monotonic() - start, 1)})
    (out / "mutants.json").write_text(mut.document_to_json(doc), encoding="utf-8")
    sys.stdout.write(mut.render_matrix(doc))
    sys.stdout.write(f"total {doc['duration_s']:.0f} s; mutants.json in {out}\n")
    if control_doc and control_doc["error"]:
        sys.stderr.write(f"cglcert mutants: the control run broke: {control_doc['error']}\n")
        return ExitCode.INFRA
    return ExitCode.OK if doc["ok"] else ExitCode.FAILED


def _suite_s(results: dict[str, Any] | None) -> float | None:
    return (results or {}).get("harness", {}).get("duration_s")

