"""JUnit XML: one ``<testsuite>`` per requirement (and one for the stress thresholds).

Layout, as CI servers (Jenkins, GitLab, ...) read it::

    <testsuites name="cglcert" tests failures errors skipped time>
      <testsuite name="AEM-3.1.1" tests failures errors skipped time timestamp hostname>
        <properties> requirement, title, priority, cgl, verdict, reason, kernel, backend
        <testcase classname="AEM_3_1_1" name="c1_EveryFamily..." time>
          <properties> requirement, measure.<name> per measurement
          <failure|error|skipped message type>full reason</...>

``classname``/``name`` are the gtest suite and test names (as gtest's own XML has them).
With several runs each suite name is prefixed by the run label and each classname by the
run label made dot-free (``6_1_0-31-amd64___user.AEM_3_1_1``), so CI servers keep the runs
apart. A test tagging two requirements appears under both. A requirement without any test
gets one ``requirement`` testcase carrying its ERROR. Stress thresholds (stress.json) form
the ``stress`` suite: one testcase per metric, ``<failure>`` when it misses its bound,
``<error>`` when it was not measured.

The document validates against ``reports/schema/junit.xsd`` (our own schema of this layout;
:func:`validate_junit`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from cglcert import InfraError, default_repo_root
from cglcert.report import model
from cglcert.report.model import Report, Run

__all__ = ["SCHEMA_FILE", "render_junit", "validate_junit"]

SCHEMA_FILE = Path("reports") / "schema" / "junit.xsd"
_BAD_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: Any) -> str:
    """Text XML 1.0 can carry (control characters dropped)."""
    return _BAD_XML.sub("", "" if text is None else str(text))


def _props(parent: ET.Element, items: list[tuple[str, Any]]) -> None:
    if not items:
        return
    props = ET.SubElement(parent, "properties")
    for name, value in items:
        ET.SubElement(props, "property", name=_x(name),
                      value=_x(model.fmt_number(value) if not isinstance(value, str) else value))


def _split(name: str) -> tuple[str, str]:
    """gtest ``Suite.Name`` -> (classname, name)."""
    suite, dot, test = name.partition(".")
    return (suite, test) if dot else ("", name)


def _outcome(case: ET.Element, outcome: str, reason: str) -> None:
    first = model.one_line(reason, 200)
    if outcome == model.FAIL:
        el = ET.SubElement(case, "failure", message=_x(first or "failed"), type="FAIL")
        el.text = _x(reason)
    elif outcome == model.ERROR:
        el = ET.SubElement(case, "error", message=_x(first or "error"), type="ERROR")
        el.text = _x(reason)
    elif outcome == model.SKIP:
        ET.SubElement(case, "skipped", message=_x(first or "skipped"))


def _counts(suite: ET.Element, outcomes: list[str], time_s: float | None) -> None:
    c = model.outcome_counts(outcomes)
    suite.set("tests", str(len(outcomes)))
    suite.set("failures", str(c[model.FAIL]))
    suite.set("errors", str(c[model.ERROR]))
    suite.set("skipped", str(c[model.SKIP]))
    if time_s is not None:
        suite.set("time", f"{time_s:.3f}")


def _run_suites(root: ET.Element, run: Run, prefix: str) -> list[str]:
    env = run.environment
    cls_prefix = f"{model.safe_name(run.label)}." if prefix else ""
    all_outcomes: list[str] = []
    for r in run.requirements:
        suite = ET.SubElement(root, "testsuite", name=_x(f"{prefix}{r['id']}"))
        if env.get("date"):
            suite.set("timestamp", _x(env["date"]))
        _props(suite, [("requirement", r["id"]), ("title", r.get("title", "")),
                       ("priority", r.get("priority")), ("cgl", r.get("cgl")),
                       ("verdict", r["verdict"]), ("reason", r.get("reason", "")),
                       ("kernel", run.kernel), ("backend", run.backend)])
        outcomes: list[str] = []
        total = 0.0
        timed = False
        for t in r.get("tests") or []:
            cls, name = _split(t["name"])
            case = ET.SubElement(suite, "testcase", classname=_x(cls_prefix + cls), name=_x(name))
            if t.get("time_s") is not None:
                case.set("time", f"{float(t['time_s']):.3f}")
                total += float(t["time_s"])
                timed = True
            _props(case, [("requirement", r["id"])] + [
                (f"measure.{k}", v) for k, v in sorted((t.get("measurements") or {}).items())])
            _outcome(case, t["outcome"], t.get("reason", ""))
            outcomes.append(t["outcome"])
        if not r.get("tests"):
            case = ET.SubElement(suite, "testcase", classname=_x(cls_prefix + r["id"]),
                                 name="requirement")
            _outcome(case, r["verdict"], r.get("reason", "") or "no test ran")
            outcomes.append(r["verdict"])
        _counts(suite, outcomes, total if timed else None)
        all_outcomes += outcomes
    thresholds = model.stress_thresholds(run.stress)
    if thresholds:
        suite = ET.SubElement(root, "testsuite", name=_x(f"{prefix}stress"))
        stress_env = (run.stress or {}).get("environment") or {}
        if stress_env.get("time"):
            suite.set("timestamp", _x(stress_env["time"]))
        _props(suite, [("profile", (run.stress or {}).get("profile")),
                       ("kernel", stress_env.get("kernel")),
                       ("backend", stress_env.get("backend"))])
        outcomes = []
        for c in thresholds:
            cls = f"{cls_prefix}stress.{model.safe_name(c['requirement'])}"
            case = ET.SubElement(suite, "testcase", classname=_x(cls), name=_x(c["metric"]))
            _props(case, [(k, c.get(k)) for k in ("requirement", "criterion", "measured", "op",
                                                  "bound", "value", "relative_to", "reference",
                                                  "ratio", "unit") if c.get(k) is not None])
            v = c.get("verdict")
            outcome = (model.PASS if v == "PASS" else model.FAIL if v == "FAIL"
                       else model.ERROR)
            why = c.get("reason") or (
                f"{c['metric']} = {model.fmt_number(c.get('measured'))} {c.get('op')} "
                f"{model.fmt_number(c.get('bound'))}" + (
                    f" (ratio {model.fmt_number(c['ratio'])})" if c.get("ratio") is not None
                    else ""))
            _outcome(case, outcome, why)
            outcomes.append(outcome)
        _counts(suite, outcomes, None)
        all_outcomes += outcomes
    return all_outcomes


def render_junit(report: Report) -> str:
    """The JUnit XML document (UTF-8, with declaration)."""
    root = ET.Element("testsuites", name="cglcert")
    outcomes: list[str] = []
    for run in report.runs:
        prefix = "" if report.single else f"{run.label}: "
        outcomes += _run_suites(root, run, prefix)
    c = model.outcome_counts(outcomes)
    root.set("tests", str(len(outcomes)))
    root.set("failures", str(c[model.FAIL]))
    root.set("errors", str(c[model.ERROR]))
    root.set("skipped", str(c[model.SKIP]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") \
        + "\n"


def validate_junit(text: str, schema: Path | None = None) -> None:
    """Validate against the schema; raise :class:`InfraError` naming the first problem."""
    import xmlschema  # imported here: only validation needs it

    path = schema or default_repo_root() / SCHEMA_FILE
    try:
        xsd = xmlschema.XMLSchema(str(path))
    except (OSError, xmlschema.XMLSchemaException) as exc:
        raise InfraError(f"{path}: cannot load the JUnit schema: {exc}") from exc
    errors = list(xsd.iter_errors(text))
    if errors:
        raise InfraError(f"the JUnit XML does not match {path}: {errors[0].reason} "
                         f"at {errors[0].path}")
