"""``cglcert report``: every format from a synthetic results.json (+ stress.json), the matrix
of several runs, then from a real run of the conformance suite (integration).

Schemas: JUnit against ``reports/schema/junit.xsd`` (xmlschema), KCIDB with kcidb-io's own
validation (``kcidb_io.schema.LATEST.validate``). The HTML is parsed with html.parser and,
when chromium is installed, rendered headless (``--dump-dom``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import xmlschema
from kcidb_io import schema as kcidb_schema

from cglcert import default_repo_root, perf_targets
from cglcert.report import kcidb, ktap, svg
from cglcert.report.junit import SCHEMA_FILE
from cglcert.report.model import costs_not_counted, load_report, mechanism_latencies

REPO = default_repo_root()
EVIL = 'expected <b>3</b> & got "2" <script>alert(1)</script>\x07'


def _test(name: str, outcome: str, reason: str = "", meas: dict | None = None,
          time_s: float | None = 0.01) -> dict[str, Any]:
    t: dict[str, Any] = {"name": name, "outcome": outcome, "reason": reason,
                         "measurements": meas or {}}
    if time_s is not None:
        t["time_s"] = time_s
    return t


def synthetic_results(kernel: str = "6.1.0-31-amd64", backend: str = "user") -> dict[str, Any]:
    """A results.json covering every outcome: PASS (with measurements), FAIL, SKIP (mixed),
    ERROR (a test that did not run) and ERROR (no test at all)."""
    reqs = [
        {"id": "AEM-3.1.1", "title": "Event registration", "priority": 1, "cgl": "2.0",
         "verdict": "PASS", "reason": "",
         "tests": [_test("AEM_3_1_1.c1_Ids", "PASS", meas={"live_ids": 10000}),
                   _test("AEM_3_1_1.c2_Errno", "PASS")]},
        {"id": "AEM-3.3.1", "title": "Scalable event system", "priority": 1, "cgl": "2.0",
         "verdict": "FAIL", "reason": "1 of 2 tests failed: AEM_3_3_1.c1_Cost",
         "tests": [_test("AEM_3_3_1.c1_Cost", "FAIL", EVIL + "\nsecond line",
                         {"cost_per_event_1e6_registrations": 134.173}),
                   _test("AEM_3_3_1.c2_Million", "PASS")]},
        {"id": "AEM-3.5.3", "title": "Security", "priority": 2, "cgl": "3.0", "verdict": "SKIP",
         "reason": "not fully verified: 1 of 2 tests skipped",
         "tests": [_test("AEM_3_5_3.c1_Forbidden", "PASS"),
                   _test("AEM_3_5_3.c3_Upcalls", "SKIP", "user backend: handlers run in "
                         "aem_dispatch()", time_s=0.0)]},
        {"id": "AEM-3.6.1", "title": "Queuing", "priority": 1, "cgl": "2.0", "verdict": "ERROR",
         "reason": "AEM_3_6_1.c1_Queue: did not run (missing from the gtest XML)",
         "tests": [_test("AEM_3_6_1.c1_Queue", "ERROR",
                         "did not run (missing from the gtest XML)", time_s=None)]},
        {"id": "PRF.5.0", "title": "Efficient low-level asynchronous events", "priority": 2,
         "cgl": "5.0", "verdict": "ERROR", "reason": "no test ran", "tests": []},
    ]
    return {
        "schema": "cglcert-results/1", "suite": "conformance",
        "environment": {"target": "host", "kernel": kernel, "flavor": "amd64",
                        "backend": backend, "accel": "none", "cpus": 2, "machine": "x86_64",
                        "date": "2026-01-02T03:04:05+00:00"},
        "harness": {"exit_code": 1, "duration_s": 1.5, "error": None},
        "requirements": reqs,
        "verdict": {
            "cgl_2_0": {"conformant": False, "scope": "every priority-1 requirement passes",
                        "requirements": 3, "not_passing": ["AEM-3.3.1", "AEM-3.6.1"]},
            "cgl_3_0": {"conformant": False, "scope": "every requirement passes",
                        "requirements": 5,
                        "not_passing": ["AEM-3.3.1", "AEM-3.5.3", "AEM-3.6.1", "PRF.5.0"]},
        },
        "summary": {"tests": {"PASS": 4, "FAIL": 1, "SKIP": 1, "ERROR": 1},
                    "requirements": {"PASS": 1, "FAIL": 1, "SKIP": 1, "ERROR": 2}},
        "unknown_tags": [], "untagged_tests": [],
    }


def _dist(n: int, p50: int, p99: int, hist: list[list[int]]) -> dict[str, Any]:
    return {"n": n, "min": 900, "p50": p50, "p90": p50 + 10, "p99": p99, "p99_9": p99 + 1,
            "max": p99 + 2, "mean": p50 + 0.5, "hist_log2_ns": hist}


# aem_bench_compare's perf-counted costs of one mechanism (throughput phase).
COSTS = {"available": True, "events": 200000, "threads": 3, "syscalls": 412500,
         "app_syscalls": 400000, "delivery_syscalls_per_event": 0.0625,
         "app_syscalls_per_event": 2.0, "context_switches_per_event": 0.91234}
# ... and of its latency phase (one event in flight).
ONE_COSTS = {"available": True, "events": 2000, "threads": 3, "syscalls": 10004,
             "app_syscalls": 8000, "delivery_syscalls_per_event": 1.002,
             "app_syscalls_per_event": 4.0, "context_switches_per_event": 1.1}
NO_TRACEPOINT = "no raw_syscalls tracepoint: tracefs not mounted"


def synthetic_stress() -> dict[str, Any]:
    prio = {"0": _dist(100, 8935, 23529, [[4096, 2], [8192, 40], [16384, 58]]),
            "63": _dist(300, 7973, 27162, [[4096, 10], [8192, 200], [16384, 90]])}
    doc = {
        "environment": {"time": "2026-01-02T04:00:00+00:00", "kernel": "6.1.0-31-amd64",
                        "machine": "x86_64", "cpus": 2, "backend": "user"},
        "profile": "smoke", "elapsed_s": 7.6,
        "runs": [
            {"program": "aem_stress_delivery", "argv": ["--duration", "2"], "exit_code": 0,
             "elapsed_s": 2.1, "output": {
                 "program": "aem_stress_delivery", "families": {
                     "soft": {"activated": 1997412, "delivered": 1997412, "lost": 0,
                              "duplicated": 0},
                     "timer": {"activated": 31128, "delivered": 31128, "lost": 0,
                               "duplicated": 0}}}},
            {"program": "aem_bench_compare", "argv": [], "exit_code": 0, "elapsed_s": 2.7,
             "output": {"program": "aem_bench_compare", "mechanisms": {
                 "epoll": {"available": True, "throughput_events_per_s": 1773680.0,
                           "vs_epoll": {"throughput_ratio": 1},
                           "latency_ns": _dist(2000, 6270, 9668, [[2048, 34], [4096, 274]]),
                           "costs": COSTS, "latency_costs": ONE_COSTS},
                 # An older stress.json: no "costs" at all.
                 "poll": {"available": True, "throughput_events_per_s": 912000.0,
                          "vs_epoll": {"throughput_ratio": 0.5142},
                          "latency_ns": _dist(2000, 7100, 9900, [[2048, 20], [4096, 288]])},
                 # Costs not counted: the same reason twice, shown once.
                 "rtsig": {"available": True, "throughput_events_per_s": 650000.0,
                           "vs_epoll": {"throughput_ratio": 0.3665},
                           "latency_ns": _dist(2000, 8100, 12000, [[8192, 308]]),
                           "costs": {"available": False, "why": NO_TRACEPOINT}},
                 "select": {"available": True, "throughput_events_per_s": 600000.0,
                            "vs_epoll": {"throughput_ratio": 0.3383},
                            "latency_ns": _dist(2000, 8200, 12500, [[8192, 308]]),
                            "costs": {"available": False, "why": NO_TRACEPOINT}},
                 "io_uring": {"available": False, "reason": "liburing missing"}},
                 "scaling": [
                     {"mechanism": "aem", "n": 10, "ok": True, "cost_per_event_ns": 2743.46},
                     {"mechanism": "aem", "n": 1000000, "ok": True,
                      "cost_per_event_ns": 3267.36},
                     {"mechanism": "poll", "n": 10, "ok": True, "cost_per_event_ns": 941},
                     {"mechanism": "poll", "n": 1000, "ok": True, "cost_per_event_ns": 25140}]}},
            {"program": "aem_prio_latency", "argv": [], "exit_code": 0, "elapsed_s": 1.6,
             "output": {"program": "aem_prio_latency", "phases": [
                 {"name": "unloaded", "enforcement": True, "flood_handled": 0, "missing": 0,
                  "latency_ns_by_priority": prio}]}},
            {"program": "aem_micro", "argv": [], "skipped": "not built (needs libbenchmark-dev)"},
        ],
        "metrics": {"cost_per_event_1e6_registrations": 3267.36},
        "verdicts": {
            "AEM-3.3.1": {"verdict": "PASS", "title": "Scalable event system", "thresholds": [
                {"metric": "cost_per_event_1e6_registrations", "op": "<=", "value": 1.3,
                 "relative_to": "cost_per_event_10_registrations", "unit": "ns",
                 "criterion": "c1", "measured": 3267.36, "reference": 2743.46,
                 "ratio": 1.1909632362053757, "bound": 3566.498, "verdict": "PASS"}]},
            "AEM-3.2.1": {"verdict": "MISSING", "title": "Event priority", "thresholds": [
                {"metric": "high_prio_latency_p99_loaded", "op": "<=", "value": 2.0,
                 "relative_to": "high_prio_latency_p99_unloaded", "unit": "ns",
                 "criterion": "c3", "measured": None, "verdict": "MISSING",
                 "reason": "metric high_prio_latency_p99_loaded was not measured"}]},
        },
        "summary": {"lost": 0, "duplicated": 0, "handler_overlaps": 0,
                    "failed_requirements": ["AEM-3.2.1"], "crashed_programs": []},
    }
    doc["targets"] = perf_targets.evaluate(doc["runs"])  # as cglcert stress writes them
    return doc


def write_run(root: Path, name: str, results: dict[str, Any],
              stress: dict[str, Any] | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(results), encoding="utf-8")
    if stress is not None:
        (d / "stress.json").write_text(json.dumps(stress), encoding="utf-8")
    return d


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path, "run", synthetic_results(), synthetic_stress())


# ----------------------------------------------------------------------------- checkers

class _Page(HTMLParser):
    """What the tests look for in the HTML: requirement rows, verdict text, assets."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str]] = []  # (requirement, verdict)
        self.matrix_rows = 0
        self.svgs = 0
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "tr" and "req" in (a.get("class") or "").split():
            self.rows.append((a.get("data-requirement") or "", a.get("data-verdict") or ""))
        if tag == "tr" and "matrix-row" in (a.get("class") or "").split():
            self.matrix_rows += 1
        if tag == "svg":
            self.svgs += 1
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith("#"):
                self.urls.append(str(a[key]))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse_html(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    page.text = [" ".join("".join(page.text).split())]
    return page


def check_html(text: str, results: list[dict[str, Any]], stress: list[bool]) -> _Page:
    page = parse_html(text)
    body = page.text[0]
    assert not page.urls, f"external references: {page.urls}"
    assert not ({"script", "link", "img", "iframe"} & page.tags)
    for res in results:
        for key, label in (("cgl_2_0", "CGL 2.0"), ("cgl_3_0", "CGL 3.0")):
            state = "CONFORMANT" if res["verdict"][key]["conformant"] else "NOT CONFORMANT"
            assert f"{label}: {state}" in body
    want = [(r["id"], r["verdict"]) for res in results for r in res["requirements"]]
    assert page.rows == want
    for res in results:
        for r in res["requirements"]:
            for t in r["tests"]:
                assert t["name"] in body
    if any(stress):
        assert page.svgs >= 3
    if not all(stress):
        assert "No stress.json beside results.json" in body
    return page


def parse_ktap(text: str) -> dict[str, Any]:
    """Parse KTAP into {"plan": n, "tests": [{"ok", "n", "name", "directive", "sub"}]},
    checking the version line, indentation and plan counts on the way."""
    lines = text.splitlines()

    def block(i: int, indent: str) -> tuple[dict[str, Any], int]:
        assert lines[i] == f"{indent}KTAP version 1", (i, lines[i])
        i += 1
        plan = None
        tests: list[dict[str, Any]] = []
        pending_sub = None
        while i < len(lines):
            line = lines[i]
            if not line.startswith(indent):
                break
            rest = line[len(indent):]
            if rest.startswith("  KTAP version 1"):
                pending_sub, i = block(i, indent + "  ")
                continue
            if rest.startswith(" "):
                raise AssertionError(f"unexpected indentation at line {i + 1}: {line!r}")
            m = re.fullmatch(r"1\.\.(\d+)", rest)
            if m:
                assert plan is None, f"second plan at line {i + 1}"
                plan = int(m.group(1))
            elif rest.startswith("#"):
                pass
            else:
                m = re.fullmatch(r"(ok|not ok) (\d+) ([^#\s]+)(?: # (SKIP|ERROR)(?: (.*))?)?",
                                 rest)
                assert m, f"not a KTAP result line {i + 1}: {line!r}"
                tests.append({"ok": m.group(1) == "ok", "n": int(m.group(2)),
                              "name": m.group(3), "directive": m.group(4),
                              "reason": m.group(5) or "", "sub": pending_sub})
                pending_sub = None
            i += 1
        assert plan is not None, f"no plan in block at {indent!r}"
        assert [t["n"] for t in tests] == list(range(1, plan + 1)), "results do not match plan"
        return {"plan": plan, "tests": tests}, i

    doc, end = block(0, "")
    assert end == len(lines)
    return doc


def check_ktap_run(doc: dict[str, Any], res: dict[str, Any], with_stress: bool) -> None:
    reqs = res["requirements"]
    assert doc["plan"] == len(reqs) + (1 if with_stress else 0)
    for r, t in zip(reqs, doc["tests"]):
        assert t["name"] == r["id"]
        assert t["ok"] == (r["verdict"] in ("PASS", "SKIP")), r["id"]
        assert t["directive"] == {"SKIP": "SKIP", "ERROR": "ERROR"}.get(r["verdict"])
        if r["tests"]:
            sub = t["sub"]
            assert sub is not None and sub["plan"] == len(r["tests"])
            for x, st in zip(r["tests"], sub["tests"]):
                assert st["name"] == x["name"]
                assert st["ok"] == (x["outcome"] in ("PASS", "SKIP"))
                if x["outcome"] == "SKIP":
                    assert st["directive"] == "SKIP" and st["reason"], st
        else:
            assert t["sub"] is None
    if with_stress:
        assert doc["tests"][-1]["name"] == "stress" and doc["tests"][-1]["sub"]


def check_junit(text: str) -> ET.Element:
    xsd = xmlschema.XMLSchema(str(REPO / SCHEMA_FILE))
    xsd.validate(text)
    root = ET.fromstring(text)
    cases = list(root.iter("testcase"))
    assert int(root.get("tests")) == len(cases)
    assert int(root.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
    assert int(root.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
    assert int(root.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
    return root


def check_kcidb(doc: dict[str, Any]) -> None:
    kcidb_schema.LATEST.validate(doc)
    assert doc["version"]["major"] == 5
    ids = [t["id"] for t in doc["tests"]]
    assert len(ids) == len(set(ids))
    build_ids = {b["id"] for b in doc["builds"]}
    checkout_ids = {c["id"] for c in doc["checkouts"]}
    assert all(t["build_id"] in build_ids and t["origin"] == "cglcert" for t in doc["tests"])
    assert all(b["checkout_id"] in checkout_ids for b in doc["builds"])


# ----------------------------------------------------------------------------- synthetic

def test_every_format_from_a_synthetic_run(run_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    r = run_cli("report", str(run_dir), "--out", str(out))
    assert r.code == 0, r.err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["junit.xml", "kcidb.json", "report.html", "report.ktap", "report.md"]
    res = synthetic_results()

    page = check_html((out / "report.html").read_text(), [res], [True])
    body = page.text[0]
    assert EVIL.replace("\x07", "")[:20] in body  # shown as text, not markup
    assert "<script>" not in (out / "report.html").read_text()
    for number in ("27162", "3267", "1997412", "25140", "1773680"):  # straight from stress.json
        assert number in body
    assert "liburing missing" in body and "not measured" in body
    # The project's targets beside the catalog's thresholds: 3267.36 / 2743.46 at 10^6.
    assert "Performance targets" in body and "1.191" in body
    assert "no throughput of AEM (evfd) in this run" in body  # not measured, and why

    md = (out / "report.md").read_text()
    assert "CGL 2.0: **NOT CONFORMANT**" in md
    for req in res["requirements"]:
        assert f"| `{req['id']}` |" in md
    assert "| unloaded | 63 | 300 | 7973 | 27162 |" in md
    assert re.search(r"\| Cost per event at 10\^6 .* \| 1\.191 x \| <= 1\.3 x \| met \|", md)

    root = check_junit((out / "junit.xml").read_text())
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == [r["id"] for r in res["requirements"]] + ["stress"]
    fail = suites["AEM-3.3.1"].find("testcase/failure")
    assert fail is not None and "second line" in fail.text
    assert suites["AEM-3.5.3"].find("testcase/skipped").get("message").startswith("user backend")
    assert suites["AEM-3.6.1"].find("testcase/error") is not None
    assert suites["PRF.5.0"].find("testcase/error").get("message") == "no test ran"
    assert suites["stress"].get("errors") == "1"  # the threshold whose metric is missing
    meas = {p.get("name"): p.get("value") for p in
            suites["AEM-3.1.1"].iter("property")}
    assert meas["measure.live_ids"] == "10000"

    doc = parse_ktap((out / "report.ktap").read_text())
    check_ktap_run(doc, res, with_stress=True)
    assert "# CGL 2.0: NOT CONFORMANT" in (out / "report.ktap").read_text()

    kc = json.loads((out / "kcidb.json").read_text())
    check_kcidb(kc)
    by_path = {t["path"]: t for t in kc["tests"]}
    assert by_path["cglcert.AEM-3_1_1"]["status"] == "PASS"
    assert by_path["cglcert.AEM-3_3_1.AEM_3_3_1_c1_Cost"]["status"] == "FAIL"
    assert by_path["cglcert.AEM-3_3_1.AEM_3_3_1_c1_Cost"]["misc"]["test"] == "AEM_3_3_1.c1_Cost"
    assert by_path["cglcert.AEM-3_5_3"]["status"] == "SKIP"
    assert by_path["cglcert.AEM-3_6_1.AEM_3_6_1_c1_Queue"]["status"] == "MISS"  # did not run
    assert by_path["cglcert.PRF_5_0"]["status"] == "ERROR"
    th = by_path["cglcert.stress.AEM-3_3_1.cost_per_event_1e6_registrations"]
    assert th["status"] == "PASS" and th["number"] == {"value": 3267.36, "unit": "ns"}
    assert by_path["cglcert.stress.AEM-3_2_1.high_prio_latency_p99_loaded"]["status"] == "MISS"


def test_mechanism_costs_beside_throughput(run_dir, tmp_path, run_cli):
    """Costs counted (epoll), absent from an older stress.json (poll), not counted with a
    reason (rtsig, select: one reason, shown once)."""
    mechs = {m["name"]: m for m in mechanism_latencies(synthetic_stress())}
    assert (mechs["epoll"]["delivery_syscalls"], mechs["epoll"]["app_syscalls"],
            mechs["epoll"]["ctx_switches"], mechs["epoll"]["costs_why"]) == (0.0625, 2.0,
                                                                           0.91234, None)
    assert mechs["epoll"]["delivery_syscalls_one"] == 1.002
    assert mechs["poll"]["delivery_syscalls_one"] is None
    for name, why in (("poll", None), ("rtsig", NO_TRACEPOINT), ("select", NO_TRACEPOINT)):
        m = mechs[name]
        assert (m["delivery_syscalls"], m["app_syscalls"], m["ctx_switches"]) == (None,) * 3
        assert m["costs_why"] == why, name
    assert costs_not_counted(mechs.values()) == [(NO_TRACEPOINT, ["rtsig", "select"])]

    out = tmp_path / "out"
    assert run_cli("report", str(run_dir), "--out", str(out), "--format", "html,md").code == 0
    md = (out / "report.md").read_text()
    assert ("| Mechanism | events/s | x epoll | syscalls/event (delivery) | one in flight "
            "| app syscalls/event | ctx switches/event | n | p50 ns |") in md
    assert "| epoll | 1773680 | 1 | 0.0625 | 1.002 | 2 | 0.9123 | 2000 | 6270 |" in md
    assert "| poll | 912000 | 0.5142 |  |  |  |  | 2000 | 7100 |" in md
    assert "| rtsig | 650000 | 0.3665 |  |  |  |  | 2000 | 8100 |" in md
    assert "between activation and handler entry" in md and "no PMU needed" in md
    assert f"Costs not counted for rtsig, select: {NO_TRACEPOINT}" in md
    assert md.count(NO_TRACEPOINT) == 1

    html = (out / "report.html").read_text()
    empty = '<td class="num"></td>' * 4
    assert ('<td>epoll</td><td class="num">1773680</td><td class="num">1</td>'
            '<td class="num">0.0625</td><td class="num">1.002</td><td class="num">2</td>'
            '<td class="num">0.9123</td><td class="num">2000</td>') in html
    assert f'<td>poll</td><td class="num">912000</td><td class="num">0.5142</td>{empty}' in html
    assert f'<td>rtsig</td><td class="num">650000</td><td class="num">0.3665</td>{empty}' in html
    assert '<td colspan="11" class="muted">unavailable: liburing missing</td>' in html
    body = parse_html(html).text[0]
    assert "syscalls/event (delivery)" in body and "ctx switches/event" in body
    assert "between activation and handler entry" in body and "no PMU needed" in body
    assert f"Costs not counted for rtsig, select: {NO_TRACEPOINT}" in body
    assert body.count(NO_TRACEPOINT) == 1


def test_mechanisms_without_any_costs_still_render(tmp_path, run_cli):
    """A stress.json from before the costs were counted: blank cells, no reason."""
    stress = synthetic_stress()
    for m in stress["runs"][1]["output"]["mechanisms"].values():
        m.pop("costs", None)
        m.pop("latency_costs", None)
    d = write_run(tmp_path, "run", synthetic_results(), stress)
    out = tmp_path / "out"
    assert run_cli("report", str(d), "--out", str(out), "--format", "html,md").code == 0
    md = (out / "report.md").read_text()
    assert "| epoll | 1773680 | 1 |  |  |  |  | 2000 | 6270 |" in md
    assert "Costs not counted" not in md
    body = parse_html((out / "report.html").read_text()).text[0]
    assert "ctx switches/event" in body and "Costs not counted" not in body


def test_without_stress_the_charts_section_says_so(tmp_path, run_cli):
    d = write_run(tmp_path, "run", synthetic_results())
    out = tmp_path / "out"
    assert run_cli("report", str(d), "--out", str(out), "--format", "html,md,ktap").code == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.ktap", "report.md"]
    page = check_html((out / "report.html").read_text(), [synthetic_results()], [False])
    assert page.svgs == 0
    assert "No stress.json beside results.json" in (out / "report.md").read_text()
    check_ktap_run(parse_ktap((out / "report.ktap").read_text()), synthetic_results(), False)


def test_several_runs_make_a_matrix(tmp_path, run_cli):
    a = synthetic_results()
    b = synthetic_results("6.1.0-31-rt-amd64", "kmod")
    b["environment"]["flavor"] = "rt-amd64"
    b["requirements"] = [r for r in b["requirements"] if r["id"] != "PRF.5.0"]
    b["requirements"][0]["verdict"] = "FAIL"
    c = copy.deepcopy(a)  # same kernel and backend as a: labelled apart
    c["environment"]["date"] = "2026-01-03T00:00:00+00:00"
    dirs = [write_run(tmp_path, "a", a, synthetic_stress()), write_run(tmp_path, "b", b),
            write_run(tmp_path, "c", c)]
    out = tmp_path / "out"
    r = run_cli("report", *map(str, dirs), "--out", str(out))
    assert r.code == 0, r.err
    report = load_report(dirs)
    assert [x.label for x in report.runs] == ["6.1.0-31-amd64 / user", "6.1.0-31-rt-amd64 / kmod",
                                              "6.1.0-31-amd64 / user #2"]

    page = check_html((out / "report.html").read_text(), [a, b, c], [True, False, False])
    assert page.matrix_rows == 5
    assert "absent" in page.text[0]  # PRF.5.0 is not in run b

    md = (out / "report.md").read_text()
    assert "| Requirement | Title | P | CGL | 6.1.0-31-amd64 / user | 6.1.0-31-rt-amd64 / kmod |" \
        in md
    assert "| `AEM-3.1.1` | Event registration | 1 | 2.0 | PASS 2/2 | FAIL 2/2 | PASS 2/2 |" in md

    root = check_junit((out / "junit.xml").read_text())
    names = [s.get("name") for s in root.iter("testsuite")]
    assert "6.1.0-31-rt-amd64 / kmod: AEM-3.1.1" in names
    assert len(names) == len(set(names))

    doc = parse_ktap((out / "report.ktap").read_text())
    assert doc["plan"] == 3
    for t, res, st in zip(doc["tests"], (a, b, c), (True, False, False)):
        check_ktap_run(t["sub"], res, st)
    assert [t["ok"] for t in doc["tests"]] == [False, False, False]

    kc = json.loads((out / "kcidb.json").read_text())
    check_kcidb(kc)
    assert len(kc["builds"]) == 2 and len(kc["checkouts"]) == 2
    assert {b["config_name"] for b in kc["builds"]} == {"amd64", "rt-amd64"}


def test_ktap_all_pass_is_ok_everywhere(tmp_path):
    res = synthetic_results()
    res["requirements"] = res["requirements"][:1]
    d = write_run(tmp_path, "run", res)
    text = ktap.render_ktap(load_report([d]))
    assert text.splitlines()[:2] == ["KTAP version 1", text.splitlines()[1]]
    assert "not ok" not in text
    assert text.rstrip().endswith("ok 1 AEM-3.1.1")


def test_kcidb_validation_catches_a_bad_document(run_dir):
    doc = kcidb.render_kcidb(load_report([run_dir]))
    kcidb.validate_kcidb(doc)
    bad = copy.deepcopy(doc)
    bad["tests"][0]["status"] = "BROKEN"
    with pytest.raises(jsonschema.exceptions.ValidationError):
        kcidb_schema.LATEST.validate(bad)
    bad = copy.deepcopy(doc)
    bad["tests"][0]["path"] = "AEM-3.1.1.has dots and spaces"
    with pytest.raises(jsonschema.exceptions.ValidationError):
        kcidb_schema.LATEST.validate(bad)


def test_junit_schema_rejects_a_broken_document():
    xsd = xmlschema.XMLSchema(str(REPO / SCHEMA_FILE))
    ok = ('<testsuites name="x" tests="1" failures="0" errors="0" skipped="0">'
          '<testsuite name="s" tests="1" failures="0" errors="0" skipped="0">'
          '<testcase name="t" classname="c"/></testsuite></testsuites>')
    assert xsd.is_valid(ok)
    assert not xsd.is_valid(ok.replace(' tests="1" failures="0" errors="0" skipped="0">'
                                       '<testcase', '><testcase'))
    assert not xsd.is_valid(ok.replace('<testcase name="t" classname="c"/>',
                                       '<testcase classname="c"/>'))
    assert not xsd.is_valid(ok.replace('tests="1"', 'tests="one"', 1))


@pytest.mark.parametrize("setup, code, message", [
    ("missing", 2, "not a run directory"),
    ("empty", 2, "no results.json"),
    ("stress-only", 2, "holds only stress.json"),
    ("not-json", 3, "not valid JSON"),
    ("wrong-schema", 3, "not a cglcert results file"),
])
def test_bad_inputs(tmp_path, run_cli, setup, code, message):
    d = tmp_path / "run"
    if setup != "missing":
        d.mkdir()
    if setup == "stress-only":
        (d / "stress.json").write_text("{}")
    if setup == "not-json":
        (d / "results.json").write_text("{nope")
    if setup == "wrong-schema":
        (d / "results.json").write_text(json.dumps({"schema": "other/1"}))
    r = run_cli("report", str(d), "--out", str(tmp_path / "out"))
    assert r.code == code
    assert message in r.err
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_a_usage_error(run_dir, tmp_path, run_cli):
    r = run_cli("report", str(run_dir), "--out", str(tmp_path / "o"), "--format", "html,pdf")
    assert r.code == 2 and "unknown format pdf" in r.err


def test_results_json_path_is_accepted(run_dir, tmp_path, run_cli):
    out = tmp_path / "out"
    assert run_cli("report", str(run_dir / "results.json"), "--out", str(out),
                   "--format", "md").code == 0
    assert "Profile **smoke**" in (out / "report.md").read_text()  # stress.json beside it


def test_svg_helpers_draw_only_given_values():
    chart = svg.bar_chart(["a", "b"], [{"name": "s<1>", "values": [10, 0]}], title="T & U",
                          y_label="count", log_y=True)
    root = ET.fromstring(chart)  # well-formed XML
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect")
            if e.find("{http://www.w3.org/2000/svg}title") is not None]
    assert [b.find("{http://www.w3.org/2000/svg}title").text for b in bars] == ["s<1>, a: 10"]
    assert "1 zero value(s) not drawn" in chart
    line = svg.line_chart([{"name": "x", "points": [(10, 5), (1000, 7, "tip")]}], title="L",
                          x_label="n", y_label="ns", log_x=True)
    root = ET.fromstring(line)
    tips = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "x: 10 -> 5" in tips and "tip" in tips
    assert "no data" in svg.line_chart([], title="E", x_label="", y_label="")
    assert svg.nice_ticks(0, 97) == [0, 20, 40, 60, 80, 100]


# ----------------------------------------------------------------------------- integration

@pytest.fixture(scope="module")
def real_run() -> Path:
    """A real results.json: the conformance suite on the user backend (reuses
    build/conformance when it is configured)."""
    out = Path(tempfile.mkdtemp(prefix="cglcert-report-")) / "run"
    proc = subprocess.run([str(REPO / "cglcert"), "run", "conformance", "--out",
                           str(out), "--backend", "user", "-q"],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def real_reports(real_run: Path) -> Path:
    out = real_run.parent / "reports"
    proc = subprocess.run([str(REPO / "cglcert"), "report",
                           str(real_run), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_every_format_from_a_real_run(real_run, real_reports):
    res = json.loads((real_run / "results.json").read_text())
    check_html((real_reports / "report.html").read_text(), [res], [False])
    md = (real_reports / "report.md").read_text()
    for r in res["requirements"]:
        assert f"| `{r['id']}` |" in md
    root = check_junit((real_reports / "junit.xml").read_text())
    assert [s.get("name") for s in root.iter("testsuite")] == [r["id"] for r in
                                                               res["requirements"]]
    check_ktap_run(parse_ktap((real_reports / "report.ktap").read_text()), res, False)
    kc = json.loads((real_reports / "kcidb.json").read_text())
    check_kcidb(kc)
    assert len(kc["tests"]) == len(res["requirements"]) + sum(
        len(r["tests"]) for r in res["requirements"])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None,
                    reason="chromium is not installed (apt-get install -y chromium)")
def test_real_report_renders_in_headless_chromium(real_run, real_reports):
    res = json.loads((real_run / "results.json").read_text())
    profile = tempfile.mkdtemp(prefix="cglcert-chromium-")
    try:
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--dump-dom",
             (real_reports / "report.html").resolve().as_uri()],
            capture_output=True, text=True, timeout=180, check=False,
            env={**os.environ, "HOME": profile})
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = parse_html(proc.stdout)
    text = dom.text[0]
    for key, label in (("cgl_2_0", "CGL 2.0"), ("cgl_3_0", "CGL 3.0")):
        state = "CONFORMANT" if res["verdict"][key]["conformant"] else "NOT CONFORMANT"
        assert f"{label}: {state}" in text
    assert dom.rows == [(r["id"], r["verdict"]) for r in res["requirements"]]
