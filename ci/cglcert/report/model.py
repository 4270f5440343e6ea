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
    "costs_not_counted",
    "delivery_counts",
    "latency_phases",
    "load_report",
    "load_run",
    "mechanism_costs",
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


def _per_event(costs: Mapping[str, Any], key: str) -> float | None:
    v = costs.get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def mechanism_costs(m: Mapping[str, Any]) -> dict[str, Any]:
    """A mechanism's ``costs`` (system calls and context switches per delivered event, counted
    with perf over the throughput phase; ``delivery_syscalls_one`` over the latency phase, one
    event in flight): every figure None when the run did not count them (older stress.json:
    no ``costs``), ``costs_why`` saying why when it could not."""
    c = m.get("costs")
    c = c if isinstance(c, Mapping) else {}
    ok = bool(c.get("available"))
    one = m.get("latency_costs")  # the latency phase: one event in flight
    one = one if isinstance(one, Mapping) and one.get("available") else {}
    return {"delivery_syscalls": _per_event(c, "delivery_syscalls_per_event") if ok else None,
            "delivery_syscalls_one": _per_event(one, "delivery_syscalls_per_event"),
            "app_syscalls": _per_event(c, "app_syscalls_per_event") if ok else None,
            "ctx_switches": _per_event(c, "context_switches_per_event") if ok else None,
            "costs_why": None if ok or not c else str(c.get("why") or "not counted")}


def costs_not_counted(mechs: Iterable[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """(why, mechanisms) for every reason the costs of available mechanisms were not counted,
    in order of first appearance: each reason once."""
    by_why: dict[str, list[str]] = {}
    for m in mechs:
        if m.get("available") and m.get("costs_why"):
            by_why.setdefault(m["costs_why"], []).append(m["name"])
    return list(by_why.items())


def mechanism_latencies(stress: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """aem_bench_compare: latency, throughput and costs of every mechanism, side by side."""
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
                          **mechanism_costs(m), **_dist(m.get("latency_ns") or {})})
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
    """aem_stress_delivery (per family) and aem_stress_atomicity: activated, delivered,
    pending (not delivered when the drain ended: late, and a failure too), lost and duplicated
    occurrences, as counted by the programs with the registrations' STATS."""
    rows = []
    for argv, o in _outputs(stress, "aem_stress_delivery"):
        tag = " (stress-ng load)" if "--stress-ng" in argv else ""
        for fam, f in (o.get("families") or {}).items():
            rows.append({"name": f"{fam}{tag}", "program": "aem_stress_delivery",
                         "activated": f.get("activated"), "delivered": f.get("delivered"),
                         "pending": f.get("pending"),
                         "lost": f.get("lost"), "duplicated": f.get("duplicated")})
    for _argv, o in _outputs(stress, "aem_stress_atomicity"):
        rows.append({"name": "atomicity races", "program": "aem_stress_atomicity",
                     "activated": o.get("occurrences_activated"),
                     "delivered": o.get("occurrences_delivered"), "pending": None,
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


def _errnos(numbers: Iterable[int], names: Sequence[str] | None = None) -> str:
    """``ENOMEM (12), EFAULT (14)``, or ``none``."""
    nums = list(numbers)
    names = list(names or [])
    return ", ".join(f"{names[i] if i < len(names) else 'errno'} ({n})"
                     for i, n in enumerate(nums)) or "none"


def _reports(reports: Sequence[Mapping[str, Any]] | None) -> str:
    """``0``, or ``2 (kasan, lockdep)``: the kernel's reports during a test or phase."""
    kinds = [str(r.get("kind")) for r in reports or []]
    return f"{len(kinds)} ({', '.join(dict.fromkeys(kinds))})" if kinds else "0"


def fault_table(fs: Mapping[str, Any]) -> dict[str, Any]:
    """aem_ktests' fault injection (results.json ``hardening.fault_sweep``) as the report's
    table: one row per operation of the fail-nth sweep and their total, one per own fault
    site and theirs; with the two tests' status and reason (``errors``: what the report
    must flag: a test that ran and left no table, or is missing from the output)."""
    rows: list[dict[str, Any]] = []
    sweep = list(fs.get("rows") or [])
    for r in sweep:
        rows.append({"kind": "operation", "name": r.get("operation"), "points": r.get("points"),
                     "failed": r.get("failed"),
                     "errnos": _errnos(r.get("errnos") or [], r.get("errno_names")),
                     "leaked": r.get("leaked"), "reports": ""})
    if sweep:
        seen: dict[int, str] = {}
        for r in sweep:
            for i, e in enumerate(r.get("errnos") or []):
                seen.setdefault(e, (r.get("errno_names") or [])[i]
                                if i < len(r.get("errno_names") or []) else "errno")
        rows.append({"kind": "total", "name": f"fail-nth sweep: {len(sweep)} operations",
                     "points": fs.get("points"), "failed": fs.get("failed"),
                     "errnos": _errnos(seen, list(seen.values())), "leaked": fs.get("leaked"),
                     "reports": _reports(fs.get("kernel_reports"))})
    sites = list(fs.get("own_sites") or [])
    for st in sites:
        res = st.get("result")
        err = isinstance(res, int) and res < 0
        rows.append({"kind": "site", "name": f"{st.get('site')} ({st.get('operation')})",
                     "points": 1, "failed": 1 if err else 0,
                     "errnos": f"{st.get('errno')} ({-res})" if err else f"none (result {res})",
                     "leaked": None, "reports": ""})
    if sites:
        failed = [s for s in sites if isinstance(s.get("result"), int) and s["result"] < 0]
        errs = {-s["result"]: str(s.get("errno")) for s in failed}
        rows.append({"kind": "total", "name": f"own fault sites: {len(sites)}",
                     "points": len(sites), "failed": len(failed),
                     "errnos": _errnos(errs, list(errs.values())),
                     "leaked": 0 if fs.get("own_sites_status") == "pass" else None,
                     "reports": _reports(fs.get("own_sites_kernel_reports"))})
    tests = [{"test": fs.get("test") or "fault_sweep_fail_nth", "status": fs.get("status"),
              "reason": fs.get("reason") or ""},
             {"test": "fault_sites_own", "status": fs.get("own_sites_status"),
              "reason": fs.get("own_sites_reason") or ""}]
    errors = [f"{t['test']}: {t['reason'] or t['status']}" for t in tests
              if t["status"] in ("missing", "error")]
    return {"rows": rows, "tests": tests, "errors": errors,
            "program": fs.get("program") or "aem_ktests", "output": fs.get("output")}


def fuzz_passes(fuzz: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The fuzz passes of results.json ``hardening.fuzz`` as the report shows them."""
    keys = ("pass", "seed", "threads", "calls", "calls_requested", "seconds", "calls_per_s",
            "findings", "leak", "rc", "reproduce", "problem", "ring", "output")
    out = []
    for p in (fuzz or {}).get("passes") or []:
        made = fmt_number(p.get("calls")) or "none"
        if p.get("main_calls") is not None and p.get("child_calls") is not None:
            made += f" ({fmt_number(p['main_calls'])} + {fmt_number(p['child_calls'])})"
        out.append({**{k: p.get(k) for k in keys}, "made": made,
                    "reports": _reports(p.get("kernel_reports"))})
    return out


def trinity(fuzz: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """trinity's run (results.json ``hardening.fuzz.trinity``) as the report shows it."""
    tr = (fuzz or {}).get("trinity")
    if not isinstance(tr, Mapping):
        return None
    return {**{k: tr.get(k) for k in ("seconds", "syscalls", "rc", "uid", "problem")},
            "reports": _reports(tr.get("kernel_reports"))}


def hardening(run: Run) -> dict[str, Any] | None:
    """The report's "Kernel hardening" section of a ``cglcert certify`` run (None when the
    run recorded no kernel health): the kernel's debug options, the KTAP programs and their
    totals, kmemleak, the fuzz passes and trinity, and aem_ktests' fault-injection table
    (None: not run; the debug kernel runs it)."""
    h = run.results.get("health")
    if not isinstance(h, dict):
        return None
    hard = run.results.get("hardening") or {}
    ktap = [dict(k) for k in h.get("ktap") or []]
    totals = {k: sum(int(p.get(k) or 0) for p in ktap) for k in ("ok", "not_ok", "skip")}
    fuzz = hard.get("fuzz")
    fs = hard.get("fault_sweep")
    return {"debug_options": debug_options(run), "ktap": ktap,
            "ktap_totals": totals if ktap else None, "kmemleak": h.get("kmemleak"),
            "fuzz": fuzz_passes(fuzz) if fuzz else None, "fuzz_uid": (fuzz or {}).get("uid"),
            "trinity": trinity(fuzz),
            "fault": fault_table(fs) if isinstance(fs, Mapping) else None,
            "user_backend": run.backend == "user"}


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


__all__ += ["ERROR", "FAIL", "PASS", "SKIP", "bucket_label", "fault_table", "fmt_number",
            "fuzz_passes", "hardening", "one_line", "trinity", "outcome_counts", "safe_name",
            "stress_runs"]
