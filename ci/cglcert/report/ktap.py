"""KTAP (Documentation/dev-tools/ktap.rst, "KTAP version 1") from results.json.

One top-level test per requirement, its tests as a nested KTAP subtest (two spaces deeper,
own version and plan lines, results before the parent's line)::

    KTAP version 1
    # cglcert conformance: kernel 6.1.0-31-amd64, backend user, ...
    # CGL 2.0: CONFORMANT
    1..24
      KTAP version 1
      # Subtest: AEM-3.1.1
      # Event registration (priority 1, CGL 2.0)
      1..4
      ok 1 AEM_3_1_1.c1_EveryFamilyReturnsAPositiveId
      # expected 3, got 2           <- a failure's reason, before its line
      not ok 2 AEM_3_1_1.c2_...
      ok 3 AEM_3_1_1.c3_... # SKIP user backend: ...
      not ok 4 AEM_3_1_1.c4_... # ERROR did not run (missing from the gtest XML)
    not ok 1 AEM-3.1.1

Outcomes: PASS ``ok``, FAIL ``not ok``, SKIP ``ok ... # SKIP reason``, ERROR
``not ok ... # ERROR reason``. A requirement's line carries its results.json verdict the same
way (a requirement whose tests passed and skipped is SKIP: not fully verified). A requirement
without a test is one ``not ok N ID # ERROR no test ran`` line. When stress.json is there,
one more top-level test, ``stress``, holds a subtest per catalog threshold. Several runs
nest one level deeper: one top-level test per run, named by kernel and backend.
"""

from __future__ import annotations

from typing import Any

from cglcert.report import model
from cglcert.report.model import Report, Run

__all__ = ["render_ktap"]

_MAX_DIAG_LINES = 20


def _result(ok: bool, n: int, name: str, directive: str = "", why: str = "") -> str:
    line = f"{'ok' if ok else 'not ok'} {n} {name}"
    if directive:
        line += f" # {directive}"
        reason = model.one_line(why, 300)
        if reason:
            line += f" {reason}"
    return line


def _outcome_line(n: int, name: str, outcome: str, reason: str) -> str:
    if outcome == model.PASS:
        return _result(True, n, name)
    if outcome == model.SKIP:
        return _result(True, n, name, "SKIP", reason or "skipped")
    if outcome == model.ERROR:
        return _result(False, n, name, "ERROR", reason or "error")
    return _result(False, n, name)


def _diag(text: str) -> list[str]:
    lines = [ln.rstrip() for ln in (text or "").strip().splitlines() if ln.strip()]
    if len(lines) > _MAX_DIAG_LINES:
        lines = lines[:_MAX_DIAG_LINES] + [f"... ({len(lines) - _MAX_DIAG_LINES} more lines)"]
    return [f"# {ln}" for ln in lines]


def _indent(lines: list[str], by: str = "  ") -> list[str]:
    return [by + ln for ln in lines]


def _requirement_block(n: int, r: dict[str, Any]) -> tuple[list[str], bool]:
    """Lines of one requirement (its subtest, then its result line) and whether it is ok."""
    verdict, reason = r["verdict"], r.get("reason", "")
    tests = r.get("tests") or []
    out: list[str] = []
    if tests:
        sub = ["KTAP version 1", f"# Subtest: {r['id']}",
               f"# {model.one_line(r.get('title', ''))} (priority {r.get('priority')}, "
               f"CGL {r.get('cgl')})", f"1..{len(tests)}"]
        for i, t in enumerate(tests, 1):
            if t["outcome"] == model.FAIL:
                sub += _diag(t.get("reason", ""))
            meas = t.get("measurements") or {}
            if meas and t["outcome"] != model.SKIP:
                sub.append("# " + ", ".join(f"{k}={model.fmt_number(v)}"
                                            for k, v in sorted(meas.items())))
            sub.append(_outcome_line(i, t["name"], t["outcome"], t.get("reason", "")))
        out += _indent(sub)
    if verdict == model.FAIL:
        out += _diag(reason)
    out.append(_outcome_line(n, r["id"], verdict, reason if verdict != model.FAIL else ""))
    return out, verdict in (model.PASS, model.SKIP)


def _stress_block(n: int, run: Run) -> tuple[list[str], bool] | None:
    rows = model.stress_thresholds(run.stress)
    if not rows:
        return None
    s = run.stress or {}
    sub = ["KTAP version 1", "# Subtest: stress",
           f"# cglcert stress, profile {s.get('profile')}: catalog thresholds", f"1..{len(rows)}"]
    all_ok = True
    for i, c in enumerate(rows, 1):
        name = f"{c['requirement']}:{c['metric']}"
        bound = (f"{c['metric']}={model.fmt_number(c.get('measured'))} {c.get('op')} "
                 f"{model.fmt_number(c.get('bound'))}" + (
                     f" (ratio {model.fmt_number(c['ratio'])} to {c.get('relative_to')})"
                     if c.get("ratio") is not None else ""))
        v = c.get("verdict")
        if v == "PASS":
            sub += [f"# {bound}", _result(True, i, name)]
        elif v == "FAIL":
            sub += [f"# {bound}", _result(False, i, name)]
            all_ok = False
        else:
            sub.append(_result(False, i, name, "ERROR", c.get("reason") or "not measured"))
            all_ok = False
    return _indent(sub) + [_result(all_ok, n, "stress")], all_ok


def _run_lines(run: Run) -> tuple[list[str], bool]:
    """Header diagnostics, plan and blocks of one run (not indented), and whether all ok."""
    env = run.environment
    lines = [f"# cglcert {run.results.get('suite', 'conformance')}: kernel {run.kernel}, "
             f"backend {run.backend}, accel {env.get('accel', '?')}, {env.get('cpus', '?')} "
             f"CPUs, {env.get('date', '')}".rstrip(", ")]
    for key, label in model.CGL_VERSIONS:
        v = (run.results.get("verdict") or {}).get(key)
        if v is not None:
            lines.append(f"# {label}: " + ("CONFORMANT" if v.get("conformant") else
                                           "NOT CONFORMANT (not passing: "
                                           + ", ".join(v.get("not_passing") or []) + ")"))
    harness_error = (run.results.get("harness") or {}).get("error")
    if harness_error:
        lines += _diag(f"harness error: {harness_error}")
    blocks = []
    for i, r in enumerate(run.requirements, 1):
        blocks.append(_requirement_block(i, r))
    stress = _stress_block(len(blocks) + 1, run)
    if stress is not None:
        blocks.append(stress)
    lines.append(f"1..{len(blocks)}")
    for block, _ok in blocks:
        lines += block
    return lines, all(ok for _, ok in blocks)


def render_ktap(report: Report) -> str:
    """The KTAP document."""
    if report.single:
        lines, _ok = _run_lines(report.runs[0])
        return "\n".join(["KTAP version 1"] + lines) + "\n"
    out = ["KTAP version 1", f"# cglcert: {len(report.runs)} runs", f"1..{len(report.runs)}"]
    for i, run in enumerate(report.runs, 1):
        lines, ok = _run_lines(run)
        name = model.safe_name(run.label)
        out += _indent(["KTAP version 1", f"# Subtest: {name}"] + lines)
        out.append(_result(ok, i, name))
    return "\n".join(out) + "\n"
