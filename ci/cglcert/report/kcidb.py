"""KCIDB report (schema v5, kcidb-io) from results.json [+ stress.json].

Objects, all with origin ``cglcert``:

checkouts  one per kernel release under test: ``cglcert:checkout:<release>``. We do not know
           the kernel's source (a distribution kernel, usually), so only the release is
           recorded (comment, misc).
builds     one per kernel release: ``cglcert:build:<release>``, architecture from the
           environment, ``config_name`` the flavor (amd64, rt-amd64, ...) when known.
tests      per run (``<run>`` = a hash of the run's environment, so re-rendering gives the same
           ids and a resubmission replaces rather than duplicates):

           ``cglcert.<REQ>``          the requirement's verdict (comment: its title)
           ``cglcert.<REQ>.<TEST>``   each of its tests (duration, reason as log_excerpt,
                                      measurements in misc)
           ``cglcert.stress.<REQ>.<METRIC>``  each stress threshold, with ``number`` the
                                      measured value and its unit

           Path components are reduced to [A-Za-z0-9_-] as KCIDB requires (``AEM-3.1.1`` ->
           ``AEM-3_1_1``, ``AEM_3_1_1.c1_X`` -> ``AEM_3_1_1_c1_X``); misc keeps the exact
           names. The test environment records the backend, target, accelerator and CPUs.

Status (docs/design.md §6 -> KCIDB): PASS -> PASS, FAIL -> FAIL, SKIP -> SKIP; a test ERROR is
KCIDB ``ERROR`` when the test ran (it has a time) and ``MISS`` when it did not run (the
harness broke or the test is missing from the suite's XML); a requirement ERROR is ``ERROR``.
A stress threshold is PASS or FAIL, or MISS when its metric was not measured.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from cglcert import InfraError
from cglcert.report import model
from cglcert.report.model import Report, Run

__all__ = ["ORIGIN", "VERSION", "render_kcidb", "status_of_requirement", "status_of_test",
           "validate_kcidb"]

ORIGIN = "cglcert"
VERSION = {"major": 5, "minor": 3}
_LOG_EXCERPT_MAX = 16384


def status_of_test(test: dict[str, Any]) -> str:
    outcome = test["outcome"]
    if outcome == model.ERROR:
        return "ERROR" if test.get("time_s") is not None else "MISS"
    return {model.PASS: "PASS", model.FAIL: "FAIL", model.SKIP: "SKIP"}[outcome]


def status_of_requirement(verdict: str) -> str:
    return {model.PASS: "PASS", model.FAIL: "FAIL", model.SKIP: "SKIP",
            model.ERROR: "ERROR"}[verdict]


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    """KCIDB properties cannot be null: drop None values (recursively in dicts)."""
    return {k: _clean(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}


def _excerpt(text: str | None) -> str | None:
    text = (text or "").replace("\x00", "")
    if not text:
        return None
    return text if len(text) <= _LOG_EXCERPT_MAX else text[: _LOG_EXCERPT_MAX - 4] + "\n..."


def _run_key(run: Run) -> str:
    blob = json.dumps({"environment": run.environment, "suite": run.results.get("suite")},
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def _environment(env: dict[str, Any]) -> dict[str, Any]:
    parts = [f"backend {env.get('backend')}" if env.get("backend") else "",
             f"target {env.get('target')}" if env.get("target") else "",
             f"accel {env.get('accel')}" if env.get("accel") else "",
             f"{env.get('cpus')} CPUs" if env.get("cpus") is not None else ""]
    out: dict[str, Any] = {"misc": _clean(dict(env))}
    comment = ", ".join(p for p in parts if p)
    if comment:
        out["comment"] = comment
    return out


class _Builder:
    def __init__(self) -> None:
        self.checkouts: dict[str, dict[str, Any]] = {}
        self.builds: dict[str, dict[str, Any]] = {}
        self.tests: list[dict[str, Any]] = []

    def build_for(self, env: dict[str, Any]) -> str:
        kernel = str(env.get("kernel") or "unknown-kernel")
        key = model.safe_name(kernel)
        checkout_id = f"{ORIGIN}:checkout:{key}"
        build_id = f"{ORIGIN}:build:{key}"
        self.checkouts.setdefault(checkout_id, _clean({
            "id": checkout_id, "origin": ORIGIN,
            "comment": f"Linux {kernel} (the kernel under test; its source is not recorded)",
            "misc": {"kernel_release": kernel},
        }))
        if build_id not in self.builds:
            self.builds[build_id] = _clean({
                "id": build_id, "origin": ORIGIN, "checkout_id": checkout_id,
                "comment": f"Linux kernel {kernel}", "architecture": env.get("machine"),
                "config_name": env.get("flavor"),
                "misc": {"kernel_release": kernel, "flavor": env.get("flavor")},
            })
        return build_id

    def add_run(self, run: Run) -> None:
        env = run.environment
        build_id = self.build_for(env)
        run_key = _run_key(run)
        start = env.get("date")
        environment = _environment(env)

        def test(path: str, status: str, **extra: Any) -> None:
            obj = {"id": f"{ORIGIN}:{run_key}:{path}", "origin": ORIGIN, "build_id": build_id,
                   "path": path, "status": status, "environment": environment,
                   "start_time": start, **extra}
            self.tests.append(_clean(obj))

        for r in run.requirements:
            req_path = f"{ORIGIN}.{model.safe_name(r['id'])}"
            test(req_path, status_of_requirement(r["verdict"]), comment=r.get("title") or None,
                 log_excerpt=_excerpt(r.get("reason")),
                 misc={"requirement": r["id"], "title": r.get("title"),
                       "priority": r.get("priority"), "cgl": r.get("cgl"),
                       "verdict": r["verdict"], "reason": r.get("reason") or None})
            for t in r.get("tests") or []:
                test(f"{req_path}.{model.safe_name(t['name'])}", status_of_test(t),
                     duration=t.get("time_s"), log_excerpt=_excerpt(t.get("reason")),
                     misc={"requirement": r["id"], "test": t["name"],
                           "outcome": t["outcome"], "measurements": t.get("measurements") or {}})
        if run.stress is not None:
            self.add_stress(run, run_key)

    def add_stress(self, run: Run, run_key: str) -> None:
        s = run.stress or {}
        senv = dict(s.get("environment") or {})
        # The stress programs ran where stress.json says (kernel, backend, machine, CPUs).
        env = {k: senv.get(k) for k in ("kernel", "backend", "machine", "cpus")}
        env["kernel"] = env["kernel"] or run.environment.get("kernel")
        build_id = self.build_for({**env, "flavor": run.environment.get("flavor")
                                   if env["kernel"] == run.kernel else None})
        environment = _environment(env)
        for c in model.stress_thresholds(s):
            path = (f"{ORIGIN}.stress.{model.safe_name(c['requirement'])}."
                    f"{model.safe_name(c['metric'])}")
            v = c.get("verdict")
            status = "PASS" if v == "PASS" else "FAIL" if v == "FAIL" else "MISS"
            measured = c.get("measured")
            number = None
            if isinstance(measured, (int, float)) and not isinstance(measured, bool):
                number = _clean({"value": measured, "unit": c.get("unit") or None})
            why = c.get("reason") or (
                f"{c['metric']} = {model.fmt_number(measured)} {c.get('op')} "
                f"{model.fmt_number(c.get('bound'))}")
            self.tests.append(_clean({
                "id": f"{ORIGIN}:{run_key}:{path}", "origin": ORIGIN, "build_id": build_id,
                "path": path, "status": status, "environment": environment,
                "start_time": senv.get("time"), "number": number, "comment": why,
                "misc": {"requirement": c["requirement"], "profile": s.get("profile"),
                         **{k: c.get(k) for k in ("metric", "op", "value", "relative_to",
                                                  "reference", "bound", "ratio", "criterion",
                                                  "verdict")}},
            }))


def render_kcidb(report: Report) -> dict[str, Any]:
    """The KCIDB document (a dict; json.dumps it)."""
    b = _Builder()
    for run in report.runs:
        b.add_run(run)
    return {"version": dict(VERSION), "checkouts": list(b.checkouts.values()),
            "builds": list(b.builds.values()), "tests": b.tests}


def validate_kcidb(doc: dict[str, Any]) -> None:
    """Validate with kcidb-io (the latest schema accepts v5.x documents it is compatible
    with); raise :class:`InfraError` naming the first problem."""
    import jsonschema
    from kcidb_io import schema

    try:
        schema.LATEST.validate(doc)
    except jsonschema.exceptions.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        raise InfraError(f"the KCIDB report is not valid ({schema.LATEST}): {exc.message} "
                         f"at {where or 'top level'}") from exc
