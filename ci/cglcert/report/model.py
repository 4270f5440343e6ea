"""The report model: one or more runs (``results.json`` [+ ``stress.json`` beside it]).

Every renderer (HTML, Markdown, JUnit, KTAP, KCIDB) reads a :class:`Report` built here and
nothing else, so what a report shows is what the runs recorded: this module only selects and
reshapes numbers, it never computes a verdict of its own (the verdicts are those of
``results.json``, :mod:`cglcert.results`, and of ``stress.json``,
:mod:`cglcert.commands.stress`).

A run is a directory holding ``results.json`` (or the path of that file); ``stress.json`` in
the same directory, when present, adds the stress section and the charts. Several runs make
a matrix of requirements against (kernel, backend).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cglcert import InfraError, UsageError
from cglcert.catalog import requirement_sort_key
from cglcert.results import ERROR, FAIL, OUTCOMES, PASS, SCHEMA, SKIP

__all__ = [
    "CGL_VERSIONS",
    "Report",
    "Run",
    "delivery_counts",
    "latency_phases",
    "load_report",
    "load_run",
    "mechanism_latencies",
    "performance_targets",
    "scaling_series",
    "stress_thresholds",
]

RESULTS = "results.json"
STRESS = "stress.json"
#: results.json verdict keys and how reports name them.
CGL_VERSIONS = (("cgl_2_0", "CGL 2.0"), ("cgl_3_0", "CGL 3.0"))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InfraError(f"{path}: cannot read the {what}: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InfraError(f"{path}: the {what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InfraError(f"{path}: the {what} is not a JSON object")
    return doc


@dataclass
class Run:
    """One run: its results.json, its stress.json (or None) and where they came from."""

    path: Path  # the run directory
    results: dict[str, Any]
    stress: dict[str, Any] | None = None
    index: int = 0  # position among the report's runs (0-based)
    label: str = ""  # "kernel / backend", made unique among the runs

    @property
    def environment(self) -> dict[str, Any]:
        return dict(self.results.get("environment") or {})

    @property
    def kernel(self) -> str:
        return str(self.environment.get("kernel") or "unknown-kernel")

    @property
    def backend(self) -> str:
        return str(self.environment.get("backend") or "unknown-backend")

    @property
    def requirements(self) -> list[dict[str, Any]]:
        return list(self.results.get("requirements") or [])

    @property
    def anchor(self) -> str:
        """A prefix for HTML ids, unique in the report."""
        return f"run{self.index + 1}"

    def requirement(self, req_id: str) -> dict[str, Any] | None:
        return next((r for r in self.requirements if r.get("id") == req_id), None)

    def tests(self) -> list[dict[str, Any]]:
        """Every test once (a test tagging two requirements is listed under both)."""
        seen: dict[str, dict[str, Any]] = {}
        for r in self.requirements:
            for t in r.get("tests") or []:
                seen.setdefault(t["name"], t)
        return list(seen.values())


def load_run(path: Path) -> Run:
    """Load a run directory (or a results.json path) and the stress.json beside it."""
    path = Path(path)
    if path.is_dir():
        directory, results_file = path, path / RESULTS
    elif path.name.endswith(".json") and path.exists():
        directory, results_file = path.parent, path
    else:
        raise UsageError(f"{path}: not a run directory (expected {path}/{RESULTS}, written by "
                         "'cglcert run conformance --out DIR')")
    if not results_file.exists():
        hint = " (it holds only stress.json; the report needs the conformance results too)" \
            if (directory / STRESS).exists() else ""
        raise UsageError(f"{directory}: no {RESULTS}{hint}; write one with "
                         f"'cglcert run conformance --out {directory}'")
    results = _read_json(results_file, "results")
    if results.get("schema") != SCHEMA:
        raise InfraError(f"{results_file}: not a cglcert results file (schema "
                         f"{results.get('schema')!r}, expected {SCHEMA!r})")
    for key in ("requirements", "verdict", "summary"):
        if key not in results:
            raise InfraError(f"{results_file}: '{key}' is missing")
    stress_file = directory / STRESS
    stress = _read_json(stress_file, "stress report") if stress_file.exists() else None
    return Run(directory, results, stress)


@dataclass
class Report:
    """The runs of a report, in command-line order."""

    runs: list[Run]
    generated_by: str = ""
    sources: list[str] = field(default_factory=list)

    @property
    def single(self) -> bool:
        return len(self.runs) == 1

    def requirement_ids(self) -> list[str]:
        """Every requirement of any run, in catalog order."""
        ids = {r["id"] for run in self.runs for r in run.requirements}
        return sorted(ids, key=requirement_sort_key)

    def info_of(self, req_id: str) -> dict[str, Any]:
        """Title, priority and CGL version of a requirement (from the first run that has it)."""
        for run in self.runs:
            r = run.requirement(req_id)
            if r is not None:
                return {"id": req_id, "title": r.get("title", ""),
                        "priority": r.get("priority"), "cgl": r.get("cgl")}
        return {"id": req_id, "title": "", "priority": None, "cgl": None}

    def matrix(self) -> list[dict[str, Any]]:
        """Rows: requirement info + one cell per run (verdict, reason, tests passed/total);
        a run whose results do not list the requirement has cell None."""
        rows = []
        for req_id in self.requirement_ids():
            cells = []
            for run in self.runs:
                r = run.requirement(req_id)
                if r is None:
                    cells.append(None)
                    continue
                tests = r.get("tests") or []
                cells.append({"verdict": r["verdict"], "reason": r.get("reason", ""),
                              "passed": sum(1 for t in tests if t["outcome"] == PASS),
                              "tests": len(tests)})
            rows.append({**self.info_of(req_id), "cells": cells})
        return rows


def _label(run: Run) -> str:
    env = run.environment
    parts = [run.kernel, run.backend]
    if env.get("accel") not in (None, "", "none"):
        parts.append(str(env["accel"]))
    return " / ".join(parts)


def load_report(paths: Sequence[Path], generated_by: str = "") -> Report:
    """Load the runs; label each by kernel / backend, numbered when two share a label."""
    if not paths:
        raise UsageError("no run given: pass one or more directories written by "
                         "'cglcert run conformance --out DIR'")
    runs = [load_run(p) for p in paths]
    counts: dict[str, int] = {}
    for i, run in enumerate(runs):
        run.index = i
        base = _label(run)
        counts[base] = counts.get(base, 0) + 1
        run.label = base if counts[base] == 1 else f"{base} #{counts[base]}"
    return Report(runs, generated_by, [str(r.path) for r in runs])


# ---------------------------------------------------------------------------------------------
# Reading stress.json (the shapes are those printed by the stress programs, see stress/*.cpp
# and cglcert.commands.stress). Each helper returns [] when the data is not there.

def _outputs(stress: Mapping[str, Any] | None, program: str) -> list[tuple[list[str], dict]]:
    """(argv, output) of every run of ``program`` that printed its JSON."""
    out = []
    for r in (stress or {}).get("runs") or []:
        o = r.get("output")
        if isinstance(o, dict) and (o.get("program") == program or r.get("program") == program):
            out.append((list(r.get("argv") or []), o))
    return out


def _bucket_label(upper_ns: int | float) -> str:
    """Label of a log2 bucket by its upper bound: '<1us', '<2us', ... '<1.0ms'."""
    v = float(upper_ns)
    if v >= 1e6:
        return f"<{v / 1e6:.3g}ms"
    if v >= 1e3:
        return f"<{v / 1e3:.3g}us"
    return f"<{v:.0f}ns"


def _dist(d: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("n", "min", "p50", "p90", "p99", "p99_9", "max", "mean")
    return {k: d.get(k) for k in keys} | {
        "hist": [(int(b), int(c)) for b, c in (d.get("hist_log2_ns") or [])]}


def latency_phases(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """aem_prio_latency: per phase, the latency distribution of every priority."""
    phases = []
    for _argv, o in _outputs(stress, "aem_prio_latency"):
        for ph in o.get("phases") or []:
            by_prio = ph.get("latency_ns_by_priority") or {}
            prios = sorted(by_prio, key=lambda p: int(p) if str(p).isdigit() else -1,
                           reverse=True)
            phases.append({
                "name": ph.get("name", "?"), "enforcement": ph.get("enforcement"),
                "flood_handled": ph.get("flood_handled"), "missing": ph.get("missing"),
                "priorities": [{"priority": p, **_dist(by_prio[p])} for p in prios],
            })
    return phases


def mechanism_latencies(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """aem_bench_compare: latency and throughput of every mechanism, side by side."""
    mechs = []
    for _argv, o in _outputs(stress, "aem_bench_compare"):
        for name, m in (o.get("mechanisms") or {}).items():
            if not m.get("available"):
                mechs.append({"name": name, "available": False,
                              "reason": m.get("reason") or m.get("error") or "unavailable"})
                continue
            mechs.append({"name": name, "available": True,
                          "throughput": m.get("throughput_events_per_s"),
                          "vs_epoll": (m.get("vs_epoll") or {}).get("throughput_ratio"),
                          **_dist(m.get("latency_ns") or {})})
    return mechs


def scaling_series(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """aem_bench_compare: cost per event against the number of registrations, per mechanism."""
    series: dict[str, list[tuple[float, float]]] = {}
    failed: dict[str, list[int]] = {}
    for _argv, o in _outputs(stress, "aem_bench_compare"):
        for p in o.get("scaling") or []:
            mech = str(p.get("mechanism", "?"))
            n, cost = p.get("n"), p.get("cost_per_event_ns")
            if p.get("ok") and isinstance(n, (int, float)) and isinstance(cost, (int, float)):
                series.setdefault(mech, []).append((n, cost))
            else:
                failed.setdefault(mech, []).append(n)
    names = list(dict.fromkeys([*series, *failed]))
    return [{"name": m, "points": sorted(series.get(m, [])), "failed_n": failed.get(m, [])}
            for m in names]


def delivery_counts(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """aem_stress_delivery (per family) and aem_stress_atomicity: activated, delivered, lost,
    duplicated occurrences, as counted by the programs."""
    rows = []
    for argv, o in _outputs(stress, "aem_stress_delivery"):
        tag = " (stress-ng load)" if "--stress-ng" in argv else ""
        for fam, f in (o.get("families") or {}).items():
            rows.append({"name": f"{fam}{tag}", "program": "aem_stress_delivery",
                         "activated": f.get("activated"), "delivered": f.get("delivered"),
                         "lost": f.get("lost"), "duplicated": f.get("duplicated")})
    for _argv, o in _outputs(stress, "aem_stress_atomicity"):
        rows.append({"name": "atomicity races", "program": "aem_stress_atomicity",
                     "activated": o.get("occurrences_activated"),
                     "delivered": o.get("occurrences_delivered"),
                     "lost": o.get("lost"), "duplicated": o.get("duplicated")})
    return rows


def performance_targets(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The project's performance targets as ``cglcert stress`` judged them (stress.json
    ``targets``; :mod:`cglcert.perf_targets`): target, measured, bound, met, peers."""
    return [dict(t) for t in (stress or {}).get("targets") or [] if isinstance(t, Mapping)]


def stress_thresholds(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One row per catalog threshold evaluated by ``cglcert stress`` (stress.json verdicts)."""
    rows = []
    for req_id, v in sorted(((stress or {}).get("verdicts") or {}).items(),
                            key=lambda kv: requirement_sort_key(kv[0])):
        for c in v.get("thresholds") or []:
            rows.append({"requirement": req_id, "title": v.get("title", ""),
                         "requirement_verdict": v.get("verdict"), **c})
    return rows


def stress_runs(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The programs ``cglcert stress`` ran: exit code, time, or why one was skipped."""
    rows = []
    for r in (stress or {}).get("runs") or []:
        rows.append({"program": r.get("program"), "argv": " ".join(r.get("argv") or []),
                     "exit_code": r.get("exit_code"), "elapsed_s": r.get("elapsed_s"),
                     "skipped": r.get("skipped"),
                     "json": isinstance(r.get("output"), dict)})
    return rows


def bucket_label(upper_ns: int | float) -> str:
    """Public name of :func:`_bucket_label` (chart axes)."""
    return _bucket_label(upper_ns)


# ---------------------------------------------------------------------------------------------
# Small shared helpers for the renderers.

def debug_options(run: Run) -> list[str] | None:
    """The kernel's debug options as results.json recorded them (``CONFIG_`` dropped), or
    None when the run did not record them (no .config known)."""
    opts = run.environment.get("kernel_debug_options")
    if not isinstance(opts, list):
        return None
    return [str(o).removeprefix("CONFIG_") for o in opts]


def one_line(text: str | None, width: int = 0) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``width`` when width > 0."""
    line = " ".join((text or "").split())
    if width and len(line) > width:
        line = line[: width - 3] + "..."
    return line


def fmt_number(v: Any) -> str:
    """A measured value as shown: integers as they are, floats to 4 significant digits."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(fmt_number(x) for x in v)
    return str(v)


def safe_name(text: str) -> str:
    """``text`` reduced to [A-Za-z0-9_-] (KCIDB path components, file names)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def outcome_counts(items: Iterable[str]) -> dict[str, int]:
    counts = {o: 0 for o in OUTCOMES}
    for o in items:
        counts[o] = counts.get(o, 0) + 1
    return counts


__all__ += ["ERROR", "FAIL", "PASS", "SKIP", "bucket_label", "fmt_number", "one_line",
            "outcome_counts", "safe_name", "stress_runs"]
