"""Markdown report (GitHub-flavoured tables): verdicts, requirement table, evidence, kernel
hardening, stress.

The same content as the HTML page without the charts: for a merge request comment, a wiki
page or a terminal. With several runs, the matrix comes first, then one section per run.
"""

from __future__ import annotations

from typing import Any

from cglcert.report import model
from cglcert.report.model import Report, Run

__all__ = ["render_markdown"]


def _cell(text: Any, width: int = 0) -> str:
    """Table-safe text: one line, pipes escaped."""
    return model.one_line(model.fmt_number(text) if not isinstance(text, str) else text,
                          width).replace("|", "\\|")


def _table(header: list[str], rows: list[list[Any]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] * len(header)
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out


def _verdict_lines(run: Run) -> list[str]:
    lines = []
    for key, label in model.CGL_VERSIONS:
        v = (run.results.get("verdict") or {}).get(key)
        if v is None:
            continue
        state = "**CONFORMANT**" if v.get("conformant") else "**NOT CONFORMANT**"
        extra = f"; not passing: {', '.join(v['not_passing'])}" if v.get("not_passing") else ""
        if v.get("blockers"):
            extra += f"; kernel health blockers: {len(v['blockers'])}"
        lines.append(f"- {label}: {state} ({v.get('scope', '')}, "
                     f"{v.get('requirements')} requirements{extra})")
    health = run.results.get("health")
    if isinstance(health, dict):
        taint = (health.get("taint") or {}).get("letters") or "none"
        blockers = health.get("blockers") or []
        lines.append(f"- Kernel health (log from {health.get('log_source')}, taint during the "
                     f"run: {taint}): " + ("clean" if not blockers and not health.get("findings")
                                          else f"{len(health.get('findings') or [])} finding(s)"))
        lines += [f"  - BLOCKER: {b}" for b in blockers]
    return lines


def _fault_lines(fault: dict[str, Any] | None) -> list[str]:
    """aem_ktests' fault-injection table, or why there is none (an error when the test ran
    and printed none)."""
    if fault is None:
        return ["Fault injection (aem_ktests): not run (it runs with the KTAP programs on the "
                "debug kernel, `--kernel debug`).", ""]
    lines = [f"Fault injection (`{fault['program']}`: the kernel's fail-nth over every "
             "operation, then the modules' own fault sites):", ""]
    for t in fault["tests"]:
        state = {"pass": "ok", "fail": "**FAIL**", "skip": "skipped",
                 "missing": "**ERROR**", "error": "**ERROR**"}.get(t["status"], t["status"])
        why = f": {model.one_line(t['reason'], 300)}" if t["reason"] else ""
        lines.append(f"- `{t['test']}`: {state}{why}")
    lines.append("")
    if fault["rows"]:
        rows = [[f"**{r['name']}**" if r["kind"] == "total" else f"`{r['name']}`",
                 r["points"], r["failed"], r["errnos"],
                 "-" if r["leaked"] is None else r["leaked"], r["reports"]]
                for r in fault["rows"]]
        lines += _table(["Operation / site", "Fault points (one failure injected at each)",
                         "Calls that returned an error", "Errnos seen",
                         "Registrations leaked", "Kernel reports"], rows,
                        ["l", "r", "r", "l", "r", "r"]) + [""]
        lines += ["Kernel reports: what the kernel reported (KASAN, lockdep, WARN...) during "
                  "each test, on its total row.", ""]
    elif any(t["status"] in ("pass", "fail", "error") for t in fault["tests"]):
        lines += ["**ERROR**: the fault-injection tests ran but no table was read from "
                  f"`{fault['output']}`.", ""]
    return lines


def _hardening_lines(run: Run) -> list[str]:
    """The "Kernel hardening" section: debug options, KTAP, kmemleak, fuzzers, faults."""
    h = model.hardening(run)
    if h is None:
        return []
    lines = ["### Kernel hardening", ""]
    opts = h["debug_options"]
    if opts is not None:
        lines.append(f"- Kernel debug options ({len(opts)}, from its .config): "
                     + (" ".join(f"`{o}`" for o in opts) or "none"))
    if h["ktap_totals"] is not None:
        t = h["ktap_totals"]
        lines.append(f"- KTAP totals: {t['ok']} ok, {t['not_ok']} not ok, {t['skip']} skipped "
                     f"in {len(h['ktap'])} program(s)")
    else:
        lines.append("- KTAP programs: not run (they run on the debug kernel, "
                     "`--kernel debug`)")
    for k in h["ktap"]:
        failed = f" (not ok: {', '.join(k['failed'])})" if k.get("failed") else ""
        ran = " (did not run)" if k.get("exit_code") is None else ""
        lines.append(f"- KTAP `{k.get('program')}`: {k.get('ok')} ok, {k.get('not_ok')} "
                     f"not ok, {k.get('skip')} skipped{ran}{failed}")
    m = h["kmemleak"]
    if isinstance(m, dict):
        extra = "; ".join(m.get("problems") or [])
        lines.append(f"- kmemleak: scans {', '.join(m.get('scans') or []) or 'none'}; "
                     f"{m.get('leaks')} leak(s), {m.get('aem_leaks')} with an AEM module "
                     f"frame; {m.get('baseline_objects')} reported before the suite, not "
                     "counted" + (f"; {extra}" if extra else ""))
    else:
        lines.append("- kmemleak: not scanned (the kernel has no CONFIG_DEBUG_KMEMLEAK)")
    if h["fuzz"] is None:
        why = ("the user backend has no /dev/aem" if h["user_backend"] else
               "`--fuzz-calls N`; on by default with `--kernel debug`")
        lines.append(f"- ABI fuzzer (aem_fuzz): not run ({why})")
    elif not h["fuzz"]:
        lines.append("- ABI fuzzer (aem_fuzz): no pass (`--fuzz-calls 0`)")
    tr = h["trinity"]
    if tr is not None:
        got = (f"{tr['seconds']} s, {model.fmt_number(tr.get('syscalls'))} syscalls, exit "
               f"{tr.get('rc')}, kernel reports {tr['reports']}")
        lines.append(f"- trinity (ioctl, mmap, poll, read, write on /dev/aem as uid "
                     f"{tr.get('uid')}): " + (f"**{tr['problem']}** ({got})"
                                            if tr.get("problem") else got))
    elif h["fuzz"] is not None or not h["user_backend"]:
        lines.append("- trinity: not run (`--trinity SECONDS`; 60 s by default with "
                     "`--kernel debug`)")
    lines.append("")
    if h["fuzz"]:
        lines += [f"ABI fuzzer (aem_fuzz, seeded, as uid {h['fuzz_uid']}; one thread replays "
                  "a seed exactly):", ""]
        rows = []
        for p in h["fuzz"]:
            result = "clean" if not p.get("problem") else \
                f"**{p['problem']}**; reproduce: `{p['reproduce']}`"
            rows.append([p["pass"], p["seed"], p["threads"], p["calls_requested"], p["made"],
                         p.get("seconds"), p.get("calls_per_s"), p.get("findings"),
                         p.get("leak"), p["reports"], p.get("rc"), result])
        lines += _table(["Pass", "Seed", "Threads", "Calls asked", "Calls made (main + "
                         "children)", "Seconds", "Calls/s", "Findings", "Leaked",
                         "Kernel reports", "Exit", "Result"],
                        rows, ["r"] * 11 + ["l"]) + [""]
    lines += _fault_lines(h["fault"])
    return lines


def _stress_lines(run: Run) -> list[str]:
    s = run.stress
    if s is None:
        return [f"_No stress.json beside results.json in `{run.path}`: no stress evidence or "
                f"charts for this run (`./cglcert stress --out {run.path}` writes it)._", ""]
    summ = s.get("summary") or {}
    lines = [f"Profile **{s.get('profile')}**, {model.fmt_number(s.get('elapsed_s'))} s; "
             f"lost {summ.get('lost')}, duplicated {summ.get('duplicated')}, "
             f"handler overlaps {summ.get('handler_overlaps')}.", ""]
    th = model.stress_thresholds(s)
    if th:
        rows = []
        for c in th:
            rel = (f"{model.fmt_number(c.get('value'))} x {c['relative_to']} = "
                   f"{model.fmt_number(c.get('reference'))}" if c.get("relative_to")
                   else model.fmt_number(c.get("value")))
            rows.append([c["requirement"], c.get("criterion") or "", c["metric"],
                         f"{model.fmt_number(c.get('measured'))} {c.get('unit') or ''}".strip(),
                         c.get("op", ""), c.get("bound", ""), rel, c.get("ratio", ""),
                         c.get("verdict", "")])
        lines += _table(["Requirement", "Criterion", "Metric", "Measured", "Op", "Bound",
                         "Threshold", "Ratio", "Verdict"], rows,
                        ["l", "l", "l", "r", "l", "r", "l", "r", "l"]) + [""]
    targets = model.performance_targets(s)
    if targets:
        lines += ["Performance targets (the project's, not CGL's; same run):", ""]
        met = {True: "met", False: "missed", None: "not measured"}
        rows = [[t["target"], f"{model.fmt_number(t['measured'])} {t['unit']}"
                 if t["measured"] is not None else "", f"{t['op']} {t['bound']} {t['unit']}",
                 met[t["met"]], t.get("peers") or t.get("why") or ""] for t in targets]
        lines += _table(["Target", "Measured", "Bound", "Met", "Figures and peers"], rows,
                        ["l", "r", "l", "l", "l"]) + [""]
    phases = model.latency_phases(s)
    if phases:
        lines += ["Latency per priority (aem_prio_latency):", ""]
        rows = [[ph["name"], p["priority"], p["n"], p["p50"], p["p99"], p["p99_9"], p["max"]]
                for ph in phases for p in ph["priorities"]]
        lines += _table(["Phase", "Priority", "n", "p50 ns", "p99 ns", "p99.9 ns", "max ns"],
                        rows, ["l", "l", "r", "r", "r", "r", "r"]) + [""]
    scaling = model.scaling_series(s)
    if scaling:
        lines += ["Scalability (ns per delivered event against live registrations):", ""]
        rows = [[se["name"], "; ".join(f"{model.fmt_number(n)} -> {model.fmt_number(c)}"
                                       for n, c in se["points"])] for se in scaling]
        lines += _table(["Mechanism", "Registrations -> ns per event"], rows) + [""]
    delivery = model.delivery_counts(s)
    if delivery:
        lines += ["Delivery counts:", ""]
        rows = [[d["name"], d["activated"], d["delivered"],
                 "" if d.get("pending") is None else d["pending"], d["lost"], d["duplicated"]]
                for d in delivery]
        lines += _table(["Family", "Activated", "Delivered", "Not delivered", "Lost",
                         "Duplicated"], rows, ["l", "r", "r", "r", "r", "r"]) + [""]
    mechs = [m for m in model.mechanism_latencies(s) if m["available"]]
    if mechs:
        lines += ["Mechanisms side by side (same run, same machine):", ""]
        rows = [[m["name"], m["throughput"], m["vs_epoll"], m["delivery_syscalls"],
                 m["delivery_syscalls_one"], m["app_syscalls"], m["ctx_switches"], m["n"],
                 m["p50"], m["p99"], m["p99_9"], m["max"]] for m in mechs]
        lines += _table(["Mechanism", "events/s", "x epoll", "syscalls/event (delivery)",
                         "one in flight", "app syscalls/event", "ctx switches/event", "n",
                         "p50 ns", "p99 ns", "p99.9 ns", "max ns"], rows,
                        ["l"] + ["r"] * 11) + [""]
        lines += _costs_note(mechs)
    return lines


def _costs_note(mechs: list[dict[str, Any]]) -> list[str]:
    """What the cost columns count, and why they are empty where they are (each reason once)."""
    note = ("Syscalls/event (delivery): the system calls the mechanism made between activation "
            "and handler entry, per delivered event; the application's own calls (the "
            "producer's write/raise, the handler's read) are counted apart (app "
            "syscalls/event). Ctx switches/event: every counted thread's context switches per "
            "delivered event. Counted over the throughput phase (one in flight: over the "
            "latency phase, each event delivered alone; the harness's futex and clock calls "
            "counted apart) with perf software events and tracepoints (raw_syscalls:sys_enter, "
            "context-switches; no PMU needed); an empty cell was not counted.")
    lines = [note, ""]
    for why, names in model.costs_not_counted(mechs):
        lines += [f"Costs not counted for {', '.join(names)}: {model.one_line(why)}", ""]
    return lines


def _run_lines(run: Run, title: str) -> list[str]:
    res = run.results
    env = run.environment
    lines = [f"## {title}{run.label}", ""] + _verdict_lines(run) + [""]
    t = (res.get("summary") or {}).get("tests") or {}
    q = (res.get("summary") or {}).get("requirements") or {}
    lines.append("Requirements: " + ", ".join(f"{q.get(o, 0)} {o}" for o in model.OUTCOMES)
                 + "; tests: " + ", ".join(f"{t.get(o, 0)} {o}" for o in model.OUTCOMES) + ".")
    lines.append("")
    if (res.get("harness") or {}).get("error"):
        lines += [f"**Harness error:** {model.one_line(res['harness']['error'])}", ""]
    lines += ["Environment: " + ", ".join(f"{k} `{model.fmt_number(v)}`"
                                          for k, v in env.items() if v is not None), ""]
    rows = []
    for r in run.requirements:
        tests = r.get("tests") or []
        passed = sum(1 for x in tests if x["outcome"] == model.PASS)
        rows.append([f"`{r['id']}`", r.get("title", ""), r.get("priority"), r.get("cgl"),
                     f"**{r['verdict']}**" if r["verdict"] != model.PASS else r["verdict"],
                     f"{passed}/{len(tests)}", model.one_line(r.get("reason", ""), 160)])
    lines += _table(["Requirement", "Title", "P", "CGL", "Verdict", "Tests", "Reason"], rows,
                    ["l", "l", "r", "l", "l", "r", "l"]) + [""]
    lines += ["### Evidence", ""]
    for r in run.requirements:
        lines.append(f"<details><summary>{r['id']} {r.get('title', '')}: {r['verdict']}"
                     "</summary>")
        lines.append("")
        rows = []
        for x in r.get("tests") or []:
            meas = ", ".join(f"{k}={model.fmt_number(v)}"
                             for k, v in sorted((x.get("measurements") or {}).items()))
            rows.append([f"`{x['name']}`", x["outcome"],
                         model.fmt_number(x.get("time_s")), model.one_line(x.get("reason"), 200),
                         meas])
        if rows:
            lines += _table(["Test", "Outcome", "Time (s)", "Reason", "Measurements"], rows,
                            ["l", "l", "r", "l", "l"])
        else:
            lines.append(f"No test: {model.one_line(r.get('reason', ''))}")
        lines += ["", "</details>", ""]
    if res.get("unknown_tags"):
        lines += ["Unknown requirement tags: " + "; ".join(
            f"`{u['test']}` tags `{u['tag']}`" for u in res["unknown_tags"]), ""]
    if res.get("untagged_tests"):
        lines += ["Tests tagging no requirement: " + ", ".join(
            f"`{n}`" for n in res["untagged_tests"]), ""]
    lines += _hardening_lines(run)
    lines += ["### Stress", ""] + _stress_lines(run)
    return lines


def render_markdown(report: Report) -> str:
    """The whole Markdown document."""
    lines = ["# CGL asynchronous events: certification report", ""]
    if report.single:
        lines += _run_lines(report.runs[0], "Kernel ")
    else:
        lines += ["## Matrix: requirements against kernel / backend", ""]
        header = ["Requirement", "Title", "P", "CGL"] + [r.label for r in report.runs]
        rows: list[list[Any]] = []
        for key, label in model.CGL_VERSIONS:
            cells = []
            for run in report.runs:
                v = (run.results.get("verdict") or {}).get(key)
                cells.append("n/a" if v is None else
                             "**CONFORMANT**" if v.get("conformant") else "NOT CONFORMANT")
            rows.append([f"**{label}**", "verdict", "", ""] + cells)
        for row in report.matrix():
            cells = ["absent" if c is None else f"{c['verdict']} {c['passed']}/{c['tests']}"
                     for c in row["cells"]]
            rows.append([f"`{row['id']}`", row["title"], row["priority"], row["cgl"]] + cells)
        lines += _table(header, rows) + [""]
        for i, run in enumerate(report.runs, 1):
            lines += _run_lines(run, f"Run {i}: ")
    lines += ["---", "", "Every number is read from the runs' results.json and stress.json ("
              + ", ".join(f"`{r.path}`" for r in report.runs) + ")."
              + (f" {report.generated_by}" if report.generated_by else ""), ""]
    return "\n".join(lines)
