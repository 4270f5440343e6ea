"""The results model: gtest XML in, ``results.json`` (the source of truth) out, with the verdicts.

Everything here is a pure function of its arguments (no subprocess, no clock, no environment),
so the verdict rules are unit-tested on synthetic input (``ci/tests/test_results.py``). The
runner (:mod:`cglcert.commands.run`) collects the environment and runs the suite; renderers
(KTAP, JUnit, HTML, ...) read ``results.json``.

Vocabulary (docs/design.md §6), one for tests and requirements:

``PASS``   the test ran and every check held.
``FAIL``   a check did not hold (the kernel / backend does not meet the criterion).
``SKIP``   the criterion cannot be decided on this target; the reason says why. A skip is
           never a pass.
``ERROR``  the harness broke, not the kernel: the suite binary crashed or timed out, its XML
           is missing or unreadable, a test expected from the sources did not run.

Verdict rules:

* a test's outcome comes from its ``<testcase>``: ``<failure>`` -> FAIL, ``result="skipped"``
  -> SKIP (reason: the skip message), otherwise PASS; a test expected from the static scan of
  the sources but absent from the XML -> ERROR ("did not run"); without any XML every
  expected test is ERROR with the harness's reason;
* a requirement's tests are those whose ``requirement`` property (``AEM_REQ``) names it (the
  static scan of the sources stands in for a test whose property is missing, e.g. one that
  failed in its fixture before ``AEM_REQ`` ran);
* requirement verdict, first rule that applies: no test -> ERROR ("no test ran"); any ERROR ->
  ERROR; any FAIL -> FAIL; all PASS -> PASS; otherwise (all skipped, or passes and skips
  mixed: not fully verified) -> SKIP with the skip reasons;
* CGL 2.0 conformant when every priority-1 requirement of the catalog is PASS; CGL 3.0 when
  every requirement is.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cglcert.catalog import Requirement, requirement_sort_key

__all__ = [
    "ERROR",
    "FAIL",
    "OUTCOMES",
    "PASS",
    "SCHEMA",
    "SKIP",
    "GtestRun",
    "GtestXmlError",
    "TestResult",
    "build_results",
    "cgl_verdicts",
    "count_outcomes",
    "exit_verdict",
    "hardening_lines",
    "parse_gtest_xml",
    "parse_gtest_xml_file",
    "render_summary",
    "requirement_verdict",
    "results_to_json",
]

PASS, FAIL, SKIP, ERROR = "PASS", "FAIL", "SKIP", "ERROR"
OUTCOMES = (PASS, FAIL, SKIP, ERROR)
SCHEMA = "cglcert-results/1"
#: Verdict keys of results.json and the CLI's --verdict values.
VERDICTS = {"cgl-2.0": "cgl_2_0", "cgl-3.0": "cgl_3_0"}

_MEASURE_PREFIX = "measure."
_LOCATION_RE = re.compile(r"^[^\n]*:\d+\n")


class GtestXmlError(ValueError):
    """The gtest XML cannot be read (missing, empty, not XML, not a gtest report)."""


@dataclass(frozen=True)
class TestResult:
    """One test's outcome, as read from the XML (or made up for a test that did not run)."""

    __test__ = False  # not a pytest test class

    name: str  # Suite.Name
    outcome: str  # one of OUTCOMES
    reason: str = ""  # failure or skip message, or what broke
    requirements: tuple[str, ...] = ()
    measurements: Mapping[str, str] = field(default_factory=dict)
    time_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "outcome": self.outcome, "reason": self.reason,
                               "measurements": {k: _number(v) for k, v in self.measurements.items()}}
        if self.time_s is not None:
            out["time_s"] = self.time_s
        return out


@dataclass
class GtestRun:
    """What a gtest XML report holds: the tests and the attributes of ``<testsuites>``."""

    tests: list[TestResult]
    attributes: dict[str, str]


def _number(value: str) -> int | float | str:
    """Measurements are recorded as strings; give JSON numbers where they are numbers."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _clean_message(text: str) -> str:
    """Drop gtest's ``file:line`` first line and surrounding blanks from a message."""
    text = (text or "").strip()
    if "\n" in text and _LOCATION_RE.match(text):
        text = _LOCATION_RE.sub("", text, count=1).strip()
    if re.fullmatch(r"[^\s:]+:\d+", text):  # a bare location: nothing else was said
        return ""
    return text


def _properties(case: ET.Element) -> dict[str, str]:
    """Properties of a testcase: ``<properties><property>`` (gtest >= 1.10) or attributes."""
    props: dict[str, str] = {}
    for prop in case.iter("property"):
        name = prop.get("name")
        if name is not None:
            props[name] = prop.get("value", "")
    standard = {"name", "status", "result", "time", "timestamp", "classname", "file", "line",
                "value_param", "type_param"}
    for key, value in case.attrib.items():
        if key not in standard:
            props.setdefault(key, value)
    return props


def parse_gtest_xml(text: str) -> GtestRun:
    """Parse a gtest XML report into test results; raise :class:`GtestXmlError` if unusable."""
    if not text.strip():
        raise GtestXmlError("the gtest XML is empty")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise GtestXmlError(f"the gtest XML is not well-formed: {exc}") from exc
    if root.tag != "testsuites":
        raise GtestXmlError(f"not a gtest report: root element <{root.tag}>, expected <testsuites>")
    tests: list[TestResult] = []
    for suite in root.iter("testsuite"):
        for case in suite.iter("testcase"):
            name = f"{case.get('classname') or suite.get('name', '')}.{case.get('name', '')}"
            props = _properties(case)
            reqs = tuple(props.get("requirement", "").split())
            measurements = {k[len(_MEASURE_PREFIX):]: v for k, v in props.items()
                            if k.startswith(_MEASURE_PREFIX)}
            failures = [f for f in case if f.tag in ("failure", "error")]
            skipped = case.find("skipped")
            try:
                time_s: float | None = float(case.get("time", ""))
            except ValueError:
                time_s = None
            if case.get("status") == "notrun":
                outcome, reason = SKIP, "disabled (not run)"
            elif failures:
                messages = [_clean_message(f.get("message") or f.text or "") for f in failures]
                outcome, reason = FAIL, "\n".join(m for m in messages if m) or "failed"
            elif case.get("result") == "skipped" or skipped is not None:
                message = "" if skipped is None else (skipped.get("message") or skipped.text or "")
                outcome, reason = SKIP, _clean_message(message) or "skipped (no reason given)"
            else:
                outcome, reason = PASS, ""
            tests.append(TestResult(name, outcome, reason, reqs, measurements, time_s))
    return GtestRun(tests, dict(root.attrib))


def parse_gtest_xml_file(path: Path) -> GtestRun:
    """Read and parse ``path``; a missing or unreadable file is a :class:`GtestXmlError`."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError as exc:
        raise GtestXmlError(f"{path} was not written (the suite crashed or was killed?)") from exc
    except OSError as exc:
        raise GtestXmlError(f"{path}: cannot read: {exc}") from exc
    return parse_gtest_xml(text)


def requirement_verdict(tests: Sequence[TestResult]) -> tuple[str, str]:
    """The verdict of one requirement from its tests' outcomes, and why (module docstring)."""
    if not tests:
        return ERROR, "no test ran"
    by: dict[str, list[TestResult]] = {o: [] for o in OUTCOMES}
    for t in tests:
        by[t.outcome].append(t)
    if by[ERROR]:
        return ERROR, "; ".join(f"{t.name}: {t.reason or 'error'}" for t in by[ERROR])
    if by[FAIL]:
        return FAIL, f"{len(by[FAIL])} of {len(tests)} tests failed: " + \
            ", ".join(t.name for t in by[FAIL])
    if len(by[PASS]) == len(tests):
        return PASS, ""
    reasons = "; ".join(f"{t.name}: {t.reason}" for t in by[SKIP])
    if not by[PASS]:
        return SKIP, f"all {len(tests)} tests skipped: {reasons}"
    return SKIP, f"not fully verified: {len(by[SKIP])} of {len(tests)} tests skipped: {reasons}"


def cgl_verdicts(requirements: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """CGL 2.0 (every priority-1 requirement PASS) and CGL 3.0 (every requirement PASS)."""

    def verdict(scope: list[Mapping[str, Any]], what: str) -> dict[str, Any]:
        blocking = [r["id"] for r in scope if r["verdict"] != PASS]
        return {"conformant": bool(scope) and not blocking, "scope": what,
                "requirements": len(scope), "not_passing": blocking}

    reqs = list(requirements)
    return {
        "cgl_2_0": verdict([r for r in reqs if r["priority"] == 1],
                           "every priority-1 requirement passes"),
        "cgl_3_0": verdict(reqs, "every requirement passes"),
    }


def _expected_error(name: str, reqs: tuple[str, ...], why: str) -> TestResult:
    return TestResult(name, ERROR, why, reqs)


def build_results(
    catalog: Iterable[Requirement],
    tests: Sequence[TestResult] | None,
    environment: Mapping[str, Any],
    *,
    expected: Mapping[str, Sequence[str]] | None = None,
    harness_error: str | None = None,
    harness: Mapping[str, Any] | None = None,
    suite: str = "conformance",
) -> dict[str, Any]:
    """Assemble the results.json document.

    ``tests`` are the parsed results (None when there is no usable XML: ``harness_error`` then
    says why); ``expected`` maps every test found by the static scan of the suite's sources
    (``Suite.Name``) to the requirement IDs it tags.
    """
    expected = {k: tuple(v) for k, v in (expected or {}).items()}
    results: list[TestResult] = []
    if tests is None:
        why = harness_error or "the suite produced no results"
        results = [_expected_error(n, r, why) for n, r in sorted(expected.items())]
    else:
        seen = set()
        for t in tests:
            seen.add(t.name)
            if not t.requirements and expected.get(t.name):
                t = TestResult(t.name, t.outcome, t.reason, expected[t.name], t.measurements,
                               t.time_s)
            results.append(t)
        for name, reqs in sorted(expected.items()):
            if name not in seen:
                results.append(_expected_error(
                    name, reqs, harness_error or "did not run (missing from the gtest XML)"))
    catalog = sorted(catalog, key=lambda r: requirement_sort_key(r.id))
    known = {r.id for r in catalog}
    by_req: dict[str, list[TestResult]] = {r.id: [] for r in catalog}
    unknown: list[dict[str, str]] = []
    untagged: list[str] = []
    for t in results:
        if not t.requirements:
            untagged.append(t.name)
        for req in t.requirements:
            if req in known:
                by_req[req].append(t)
            else:
                unknown.append({"test": t.name, "tag": req})
    requirements = []
    for r in catalog:
        verdict, reason = requirement_verdict(by_req[r.id])
        if harness_error and verdict == ERROR and not by_req[r.id]:
            reason = f"no test ran ({harness_error})"
        requirements.append({
            "id": r.id, "title": r.title, "priority": r.priority, "cgl": r.cgl,
            "verdict": verdict, "reason": reason,
            "tests": [t.to_json() for t in by_req[r.id]],
        })
    return {
        "schema": SCHEMA,
        "suite": suite,
        "environment": dict(environment),
        "harness": {**dict(harness or {}), "error": harness_error},
        "requirements": requirements,
        "verdict": cgl_verdicts(requirements),
        "summary": {
            "tests": count_outcomes(results),
            "requirements": {o: sum(1 for r in requirements if r["verdict"] == o)
                             for o in OUTCOMES},
        },
        "unknown_tags": unknown,
        "untagged_tests": sorted(untagged),
    }


def count_outcomes(tests: Iterable[TestResult]) -> dict[str, int]:
    """Tests per outcome (each test once, however many requirements it tags)."""
    counts = {o: 0 for o in OUTCOMES}
    for t in tests:
        counts[t.outcome] += 1
    return counts


def exit_verdict(results: Mapping[str, Any], verdict: str = "cgl-2.0") -> bool:
    """True when ``results`` certify the kernel for ``verdict`` (``cgl-2.0`` or ``cgl-3.0``)."""
    return bool(results["verdict"][VERDICTS[verdict]]["conformant"])


def results_to_json(results: Mapping[str, Any]) -> str:
    """Serialise results.json (stable key order, trailing newline)."""
    return json.dumps(results, indent=2, sort_keys=False) + "\n"


def _first_line(text: str, width: int) -> str:
    """The reason on one line: whitespace collapsed, cut to ``width``."""
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def hardening_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per part of ``results["hardening"]`` (cglcert certify): each fuzz pass,
    trinity, the fault sweep; none when the run recorded none."""
    hard = results.get("hardening") or {}
    lines = []
    fuzz = hard.get("fuzz") or {}
    for p in fuzz.get("passes") or []:
        state = p.get("problem") or "clean"
        lines.append(f"aem_fuzz pass {p.get('pass')} (seed {p.get('seed')}, "
                     f"{p.get('threads')} thread(s)): {p.get('calls')} calls, "
                     f"{p.get('calls_per_s')} calls/s, {p.get('findings')} findings, leak "
                     f"{p.get('leak')}: {_first_line(state, 120)}")
    tr = fuzz.get("trinity")
    if tr:
        lines.append(f"trinity: {tr.get('seconds')} s, {tr.get('syscalls')} syscalls: "
                     + _first_line(tr.get("problem") or "ran", 120))
    fs = hard.get("fault_sweep")
    if fs:
        rows = fs.get("rows") or []
        figures = (f"{fs.get('points')} fault points over {len(rows)} operations, "
                   f"{fs.get('leaked')} registrations leaked; " if rows else "")
        lines.append(f"fault sweep: {figures}{fs.get('status')}"
                     + (f" ({_first_line(fs.get('reason') or '', 100)})"
                        if fs.get("reason") else ""))
    return lines


def render_summary(results: Mapping[str, Any], width: int = 100) -> str:
    """The per-requirement table and the closing ``N passed, N failed, N skipped`` line."""
    reqs = results["requirements"]
    idw = max([len("Requirement")] + [len(r["id"]) for r in reqs])
    lines = [f"{'Requirement':<{idw}}  P  CGL  Verdict  Tests  Title / reason"]
    for r in reqs:
        n = len(r["tests"])
        passed = sum(1 for t in r["tests"] if t["outcome"] == PASS)
        lines.append(f"{r['id']:<{idw}}  {r['priority']}  {r['cgl']:<3}  {r['verdict']:<7}  "
                     f"{passed:>2}/{n:<2}  {r['title']}")
        if r["verdict"] != PASS:
            for t in r["tests"]:
                if t["outcome"] != PASS:
                    why = _first_line(t["reason"], width - idw - 20)
                    lines.append(f"{'':<{idw}}     {t['outcome']:<5} {t['name']}: {why}")
            if not r["tests"]:
                lines.append(f"{'':<{idw}}     {_first_line(r['reason'], width - idw - 6)}")
    env = results.get("environment", {})
    lines.append("")
    if results.get("harness", {}).get("error"):
        lines.append(f"harness error: {results['harness']['error']}")
    lines += hardening_lines(results)
    for key, label in (("cgl_2_0", "CGL 2.0"), ("cgl_3_0", "CGL 3.0")):
        v = results["verdict"][key]
        state = "CONFORMANT" if v["conformant"] else "not conformant"
        extra = "" if v["conformant"] else f" (not passing: {', '.join(v['not_passing'])})"
        lines.append(f"{label}: {state}{extra}")
    if env:
        lines.append(f"kernel {env.get('kernel', '?')}, backend {env.get('backend', '?')}, "
                     f"{env.get('cpus', '?')} CPUs, accel {env.get('accel', '?')}")
    c = results["summary"]["tests"]
    closing = f"{c[PASS]} passed, {c[FAIL]} failed, {c[SKIP]} skipped"
    if c[ERROR]:
        closing += f", {c[ERROR]} errors"
    lines.append(closing)
    return "\n".join(lines) + "\n"
