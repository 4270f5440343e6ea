"""Self-contained HTML report: inline CSS and SVG, no script, no external asset.

The page is ``reports/templates/report.html.j2`` (Jinja2, autoescaped) filled from the
context built here: the verdict per CGL version, the environment, the requirement table with
every test and its evidence (outcome, reason, measurements, time), the kernel hardening
(debug options, KTAP, kmemleak, the ABI fuzzer, trinity, the fault-injection table), and,
from stress.json,
the threshold verdicts and the charts (latency distributions per priority, the scalability
curve, delivery counts, the mechanisms side by side). With several runs, the matrix of
requirements against (kernel, backend) comes first, then one section per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from cglcert import InfraError, default_repo_root
from cglcert.report import model, svg
from cglcert.report.model import Report, Run

__all__ = ["TEMPLATE", "render_html", "run_context"]

TEMPLATE = "report.html.j2"


def template_dir() -> Path:
    return default_repo_root() / "reports" / "templates"


def _environment(run: Run) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in run.environment.items()]


def _requirements(run: Run) -> list[dict[str, Any]]:
    rows = []
    for r in run.requirements:
        tests = []
        for t in r.get("tests") or []:
            tests.append({"name": t["name"], "outcome": t["outcome"],
                          "reason": t.get("reason", ""), "time_s": t.get("time_s"),
                          "measurements": sorted((t.get("measurements") or {}).items())})
        rows.append({"id": r["id"], "title": r.get("title", ""), "priority": r.get("priority"),
                     "cgl": r.get("cgl"), "verdict": r["verdict"], "reason": r.get("reason", ""),
                     "tests": tests, "total": len(tests),
                     "passed": sum(1 for t in tests if t["outcome"] == model.PASS)})
    return rows


def _verdicts(run: Run) -> list[dict[str, Any]]:
    out = []
    for key, label in model.CGL_VERSIONS:
        v = (run.results.get("verdict") or {}).get(key)
        if v is None:
            continue
        out.append({"key": key, "label": label, "conformant": bool(v.get("conformant")),
                    "scope": v.get("scope", ""), "requirements": v.get("requirements"),
                    "not_passing": list(v.get("not_passing") or []),
                    "blockers": list(v.get("blockers") or [])})
    return out


def _health(run: Run) -> dict[str, Any] | None:
    """The kernel's health during the run (cglcert certify), or None (host runs)."""
    h = run.results.get("health")
    if not isinstance(h, dict):
        return None
    taint = h.get("taint") or {}
    return {"log_source": h.get("log_source"), "blockers": list(h.get("blockers") or []),
            "findings": [{"kind": f.get("kind"), "message": f.get("message"),
                          "test": f.get("test")} for f in h.get("findings") or []],
            "taint": taint.get("letters") if taint else None,
            "debug_options": model.debug_options(run),
            "ktap": list(h.get("ktap") or []), "kmemleak": h.get("kmemleak")}


def _latency_charts(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart per phase: share of each priority's samples in each log2 latency bucket."""
    charts = []
    for ph in phases:
        bounds = sorted({b for p in ph["priorities"] for b, _ in p["hist"]})
        if not bounds:
            continue
        cats = [model.bucket_label(b) for b in bounds]
        index = {b: i for i, b in enumerate(bounds)}
        series = []
        for p in ph["priorities"]:
            n = sum(c for _, c in p["hist"]) or 1
            pts = [(index[b], 100.0 * c / n,
                    f"priority {p['priority']}, {model.bucket_label(b)}: {c} of {n} samples")
                   for b, c in p["hist"]]
            series.append({"name": f"priority {p['priority']}", "points": pts})
        title = f"Latency by priority: phase {ph['name']}"
        charts.append({
            "title": title, "phase": ph,
            "svg": Markup(svg.line_chart(
                series, title=title, x_label="latency bucket (log2, upper bound)",
                y_label="% of the priority's samples", x_categories=cats,
                desc="Share of each priority's activation-to-handler latency samples per "
                     "log2 bucket (aem_prio_latency, stress.json)")),
        })
    return charts


def _mechanism_chart(mechs: list[dict[str, Any]]) -> Markup | None:
    avail = [m for m in mechs if m["available"] and m["hist"]]
    if not avail:
        return None
    bounds = sorted({b for m in avail for b, _ in m["hist"]})
    cats = [model.bucket_label(b) for b in bounds]
    index = {b: i for i, b in enumerate(bounds)}
    series = []
    for m in avail:
        n = sum(c for _, c in m["hist"]) or 1
        series.append({"name": m["name"], "points": [
            (index[b], 100.0 * c / n, f"{m['name']}, {model.bucket_label(b)}: {c} of {n}")
            for b, c in m["hist"]]})
    return Markup(svg.line_chart(
        series, title="Wakeup latency per mechanism", x_label="latency bucket (log2, upper bound)",
        y_label="% of samples", x_categories=cats,
        desc="aem_bench_compare latency distributions, same run, same machine"))


def _scaling_chart(series: list[dict[str, Any]]) -> Markup | None:
    drawn = [{"name": s["name"], "points": s["points"]} for s in series if s["points"]]
    if not drawn:
        return None
    return Markup(svg.line_chart(
        drawn, title="Scalability: cost per event against live registrations",
        x_label="registrations in the context", y_label="ns per delivered event",
        log_x=True, log_y=True,
        desc="aem_bench_compare scaling sweep: amortised cost per delivered event"))


def _delivery_chart(rows: list[dict[str, Any]]) -> Markup | None:
    if not rows:
        return None
    cats = [r["name"] for r in rows]
    series = [{"name": "activated", "values": [r["activated"] for r in rows]},
              {"name": "delivered", "values": [r["delivered"] for r in rows]}]
    return Markup(svg.bar_chart(
        cats, series, title="Delivery counts: occurrences activated and delivered",
        y_label="occurrences", log_y=True,
        desc="aem_stress_delivery per event family and aem_stress_atomicity"))


def _stress(run: Run) -> dict[str, Any] | None:
    s = run.stress
    if s is None:
        return None
    phases = model.latency_phases(s)
    mechs = model.mechanism_latencies(s)
    scaling = model.scaling_series(s)
    delivery = model.delivery_counts(s)
    return {
        "environment": sorted((s.get("environment") or {}).items()),
        "profile": s.get("profile"), "elapsed_s": s.get("elapsed_s"),
        "summary": s.get("summary") or {}, "metrics": sorted((s.get("metrics") or {}).items()),
        "thresholds": model.stress_thresholds(s), "targets": model.performance_targets(s),
        "runs": model.stress_runs(s),
        "cyclictest": sorted((s.get("cyclictest") or {}).items()),
        "latency_charts": _latency_charts(phases), "phases": phases,
        "mechanisms": mechs, "mechanism_chart": _mechanism_chart(mechs),
        "scaling": scaling, "scaling_chart": _scaling_chart(scaling),
        "delivery": delivery, "delivery_chart": _delivery_chart(delivery),
    }


def run_context(run: Run) -> dict[str, Any]:
    """What the template shows of one run."""
    res = run.results
    return {
        "anchor": run.anchor, "label": run.label, "path": str(run.path),
        "suite": res.get("suite", ""), "schema": res.get("schema", ""),
        "environment": _environment(run), "harness": res.get("harness") or {},
        "verdicts": _verdicts(run), "summary": res.get("summary") or {},
        "health": _health(run), "hardening": model.hardening(run),
        "requirements": _requirements(run),
        "unknown_tags": res.get("unknown_tags") or [],
        "untagged_tests": res.get("untagged_tests") or [],
        "stress": _stress(run),
    }


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        autoescape=jinja2.select_autoescape(("html", "j2")),
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = model.fmt_number
    env.filters["oneline"] = model.one_line
    return env


def render_html(report: Report) -> str:
    """The whole page."""
    try:
        template = _env().get_template(TEMPLATE)
    except jinja2.TemplateNotFound as exc:
        raise InfraError(f"report template missing: {template_dir() / TEMPLATE}") from exc
    runs = [run_context(r) for r in report.runs]
    return template.render(
        report=report, runs=runs, single=report.single,
        matrix=report.matrix(), columns=[r.label for r in report.runs],
        outcomes=("PASS", "FAIL", "SKIP", "ERROR"), generated_by=report.generated_by)
