"""``cglcert coverage``: which catalog requirements have tests, from a static scan of the tags.

Nothing is built or run: the catalog (``conformance/requirements``) is validated and the
test sources are scanned for ``AEM_REQ(...)`` tags (:mod:`cglcert.tags`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cglcert import ExitCode, UsageError, default_repo_root
from cglcert.catalog import CATALOG_DIR, Catalog, load_catalog
from cglcert.tags import ScanResult, TestTag, scan_repo

DESCRIPTION = """\
Show which requirements of the catalog have tests, from the AEM_REQ tags in the test
sources (a static scan: nothing is built or run).

With --check, exit 1 when coverage is incomplete: a requirement without any test, a tag
naming an ID that is not in the catalog, an invalid catalog file, or a tag the scan cannot
read (an argument that is not a string literal, AEM_REQ outside a test body). Exit 0
otherwise.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``coverage`` subcommand."""
    parser = subparsers.add_parser(
        "coverage", help="requirement coverage of the tests (static scan of AEM_REQ tags)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 unless every requirement has a test and nothing is "
                             "unknown, unreadable or invalid")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON on stdout")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list the tests of each requirement")
    parser.add_argument("--repo", metavar="DIR", type=Path, default=None,
                        help="project root to scan (default: the repository of this cglcert)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report, print it, and return the exit code."""
    repo = resolve_repo(args.repo)
    report = build_report(load_catalog(repo), scan_repo(repo))
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report, verbose=args.verbose))
    if args.check and not report["complete"]:
        sys.stderr.write(failure_summary(report))
        return ExitCode.FAILED
    return ExitCode.OK


def resolve_repo(repo: Path | None) -> Path:
    """Return the project root to use; a bad ``--repo`` is a usage error."""
    if repo is None:
        return default_repo_root()
    if not repo.is_dir():
        raise UsageError(f"--repo {repo}: not a directory; pass the project root")
    if not (repo / CATALOG_DIR).is_dir():
        raise UsageError(f"--repo {repo}: no {CATALOG_DIR} in it; pass the project root")
    return repo.resolve()


def _test_ref(test: TestTag) -> dict[str, Any]:
    return {"file": test.file, "line": test.line, "name": test.full_name}


def build_report(catalog: Catalog, scan: ScanResult) -> dict[str, Any]:
    """Combine catalog and scan into the report (the ``--json`` document)."""
    by_req: dict[str, list[dict[str, Any]]] = {r.id: [] for r in catalog.requirements}
    unknown: list[dict[str, Any]] = []
    untagged: list[dict[str, Any]] = []
    for test in sorted(scan.tests, key=lambda t: (t.file, t.line)):
        if not test.requirements:
            untagged.append(_test_ref(test))
        for req in test.requirements:
            if req in by_req:
                by_req[req].append(_test_ref(test))
            elif req not in catalog.known_ids:
                unknown.append({"tag": req, **_test_ref(test)})
    invalid: dict[str, list[dict[str, str]]] = {}
    for problem in catalog.problems:
        invalid.setdefault(problem.file, []).append(
            {"field": problem.field, "message": problem.message})
    requirements = [
        {"id": r.id, "title": r.title, "priority": r.priority, "cgl": r.cgl,
         "tests": by_req[r.id]}
        for r in catalog.requirements
    ]
    tag_errors = [{"file": e.file, "line": e.line, "message": e.message}
                  for e in sorted(scan.errors, key=lambda e: (e.file, e.line))]
    complete = (bool(requirements) and all(r["tests"] for r in requirements)
                and not unknown and not invalid and not tag_errors)
    return {
        "requirements": requirements,
        "unknown_tags": unknown,
        "invalid_files": [{"file": f, "errors": errs} for f, errs in sorted(invalid.items())],
        "tag_errors": tag_errors,
        "untagged_tests": untagged,
        "complete": complete,
    }


def render_text(report: dict[str, Any], verbose: bool = False) -> str:
    """Render the report as a table for a terminal."""
    reqs = report["requirements"]
    width = max([len("Requirement")] + [len(r["id"]) for r in reqs])
    lines = [f"{'Requirement':<{width}}  P  CGL  Tests  Title"]
    if not reqs:
        lines.append("(no valid requirement in the catalog)")
    for r in reqs:
        count = len(r["tests"])
        mark = "" if count else "   <-- no tests"
        lines.append(f"{r['id']:<{width}}  {r['priority']}  {r['cgl']:<3}  {count:>5}  "
                     f"{r['title']}{mark}")
        if verbose:
            lines.extend(f"{'':<{width}}    {t['name']}  ({t['file']}:{t['line']})"
                         for t in r["tests"])
    if report["unknown_tags"]:
        lines += ["", "Unknown tags (no such requirement in the catalog):"]
        lines += [f"  {u['tag']}  in {u['name']} ({u['file']}:{u['line']})"
                  for u in report["unknown_tags"]]
    if report["invalid_files"]:
        lines += ["", "Invalid catalog files:"]
        for entry in report["invalid_files"]:
            lines += [f"  {entry['file']}: {e['field'] + ': ' if e['field'] else ''}"
                      f"{e['message']}" for e in entry["errors"]]
    if report["tag_errors"]:
        lines += ["", "Unreadable tags:"]
        lines += [f"  {e['file']}:{e['line']}: {e['message']}" for e in report["tag_errors"]]
    if verbose and report["untagged_tests"]:
        lines += ["", "Tests without an AEM_REQ tag (not counted):"]
        lines += [f"  {t['name']}  ({t['file']}:{t['line']})" for t in report["untagged_tests"]]
    covered = sum(1 for r in reqs if r["tests"])
    lines += ["", f"{covered}/{len(reqs)} requirements have tests; "
                  f"{len(report['unknown_tags'])} unknown tags; "
                  f"{len(report['invalid_files'])} invalid catalog files; "
                  f"{len(report['tag_errors'])} unreadable tags; "
                  f"{len(report['untagged_tests'])} untagged tests.",
              f"Coverage: {'complete' if report['complete'] else 'INCOMPLETE'}"]
    return "\n".join(lines) + "\n"


def failure_summary(report: dict[str, Any]) -> str:
    """Say on one line per kind what makes coverage incomplete (for ``--check``)."""
    out = []
    untested = [r["id"] for r in report["requirements"] if not r["tests"]]
    if not report["requirements"]:
        out.append("the catalog has no valid requirement")
    if untested:
        out.append(f"requirements without tests: {', '.join(untested)}")
    if report["unknown_tags"]:
        tags = sorted({u["tag"] for u in report["unknown_tags"]})
        out.append(f"unknown tags: {', '.join(tags)}")
    if report["invalid_files"]:
        files = [e["file"] for e in report["invalid_files"]]
        out.append(f"invalid catalog files: {', '.join(files)}")
    if report["tag_errors"]:
        where = [f"{e['file']}:{e['line']}" for e in report["tag_errors"]]
        out.append(f"unreadable tags: {', '.join(where)}")
    return "".join(f"cglcert coverage --check: {line}\n" for line in out)
