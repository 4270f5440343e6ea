"""``cglcert stress``: run the stress harnesses and benchmarks, judge the catalog's thresholds.

Builds ``stress/`` (CMake, its own build directory) when needed, runs

* ``aem_stress_delivery``   guaranteed delivery (plain, then under stress-ng when installed),
* ``aem_stress_atomicity``  one handler at a time per context, races of clean/disable/prio,
* ``aem_bench_compare``     AEM against epoll, io_uring, RT signals, poll, select, libuv;
                            the registration-count sweep,
* ``aem_prio_latency``      latency per priority, unloaded / CPU hogs / hogs + flood, with and
                            without priority enforcement,
* ``aem_micro``             Google Benchmark micro-benchmarks (when built),

and writes ``DIR/stress.json``: ``environment``, ``runs`` (every program's command, exit code,
time and JSON output), ``metrics`` (the catalog's metric names), ``verdicts`` (every
threshold of the catalog, relative ones against their calibration metric of the same run)
and ``targets`` (the project's performance targets, :mod:`cglcert.perf_targets`: reported,
never part of the exit code).

Exit codes: 0 every threshold passed and nothing was lost; 1 an occurrence was lost or
duplicated, handlers overlapped, or a threshold failed or could not be measured; 3 a program
could not be built or crashed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cglcert import ExitCode, InfraError, UsageError, default_repo_root
from cglcert import perf_targets
from cglcert.catalog import Requirement, Threshold, load_catalog

PROGRAMS = ("aem_stress_delivery", "aem_stress_atomicity", "aem_bench_compare",
            "aem_prio_latency")
MICRO = "aem_micro"
#: Requirements this command decides (their thresholds name the metrics it produces).
REQUIREMENTS = ("AEM-3.2.1", "AEM-3.2.2", "AEM-3.3.1", "AEM-3.5.1", "AEM-3.6.2")

DESCRIPTION = """\
Run the stress harnesses and side-by-side benchmarks of stress/ and judge the catalog's
measured thresholds (AEM-3.2.1, 3.2.2, 3.3.1, 3.5.1, 3.6.2). Relative thresholds are
evaluated against the calibration metric measured in the same run (DESIGN §8).

Profiles: --quick (about 2 minutes on 2 CPUs), default (about 5 minutes), --full (long
runs, 1e6 registrations for every mechanism the fd limit allows). --duration S sets the
delivery stress time.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``stress`` subcommand."""
    parser = subparsers.add_parser(
        "stress", help="stress harnesses and benchmarks; judge the measured thresholds",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    prof = parser.add_mutually_exclusive_group()
    prof.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    prof.add_argument("--full", action="store_true", help="long runs, the full sweep")
    prof.add_argument("--smoke", action="store_true",
                      help="seconds-long runs that only check the plumbing (cglcert's tests)")
    parser.add_argument("--duration", type=float, metavar="S", default=None,
                        help="seconds of delivery stress (per delivery run)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="directory for stress.json")
    parser.add_argument("--fail-on", choices=("any", "losses"), default="any",
                        help="any (default): exit 1 on a loss, an overlap or a missed "
                             "threshold; losses: only on a lost or duplicated occurrence, an "
                             "overlap or a failed program (CI on shared machines, where "
                             "latency ratios are noise)")
    add_program_args(parser)
    parser.set_defaults(func=run)


def add_program_args(parser: argparse.ArgumentParser) -> None:
    """The options of every command that builds and runs the stress programs (stress, soak)."""
    parser.add_argument("--backend", choices=("user", "kmod"), default=None,
                        help="AEM backend (AEM_BACKEND); default: what libaem picks")
    parser.add_argument("--build-dir", type=Path, default=None, metavar="DIR",
                        help="CMake build directory (default: <repo>/build/cglcert-stress)")
    parser.add_argument("--no-build", action="store_true",
                        help="use the programs already in --build-dir")
    parser.add_argument("--no-stress-ng", action="store_true",
                        help="do not use stress-ng even when it is installed")
    parser.add_argument("--repo", type=Path, default=None, metavar="DIR",
                        help="project root (default: the repository of this cglcert)")


# ---------------------------------------------------------------------------------------------
# Threshold evaluation (pure; tested on synthetic numbers).

def evaluate_threshold(th: Threshold, metrics: dict[str, Any]) -> dict[str, Any]:
    """Judge one threshold: ``metric op value`` (times ``relative_to`` when set)."""
    out: dict[str, Any] = {
        "metric": th.metric, "op": th.op, "value": th.value, "relative_to": th.relative_to,
        "unit": th.unit, "criterion": th.criterion,
    }
    measured = metrics.get(th.metric)
    out["measured"] = measured
    if not isinstance(measured, (int, float)) or isinstance(measured, bool):
        out.update(verdict="MISSING", reason=f"metric {th.metric} was not measured")
        return out
    bound: float = th.value
    if th.relative_to is not None:
        ref = metrics.get(th.relative_to)
        out["reference"] = ref
        if not isinstance(ref, (int, float)) or isinstance(ref, bool):
            out.update(verdict="MISSING",
                       reason=f"calibration metric {th.relative_to} was not measured")
            return out
        bound = th.value * ref
        out["ratio"] = (measured / ref) if ref else None
    out["bound"] = bound
    ok = measured <= bound if th.op == "<=" else measured >= bound
    out["verdict"] = "PASS" if ok else "FAIL"
    return out


def evaluate(requirements: list[Requirement], metrics: dict[str, Any]) -> dict[str, Any]:
    """Verdict per requirement: PASS (every threshold passed), FAIL, or MISSING."""
    verdicts: dict[str, Any] = {}
    for req in requirements:
        if not req.thresholds:
            continue
        checks = [evaluate_threshold(th, metrics) for th in req.thresholds]
        states = {c["verdict"] for c in checks}
        verdict = "FAIL" if "FAIL" in states else "MISSING" if "MISSING" in states else "PASS"
        verdicts[req.id] = {"verdict": verdict, "title": req.title, "thresholds": checks}
    return verdicts


def collect_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The catalog's metrics (and the totals behind the exit code) from the runs' JSON."""
    m: dict[str, Any] = {}
    act = dele = lost = dup = overlaps = not_delivered = 0
    drain_s = 0.0
    seen_delivery = seen_atomicity = False
    for run in runs:
        out = run.get("output")
        if not isinstance(out, dict):
            continue
        prog = out.get("program")
        if prog in ("aem_stress_delivery", "aem_stress_atomicity"):
            act += int(out.get("occurrences_activated", 0))
            dele += int(out.get("occurrences_delivered", 0))
            lost += int(out.get("lost", 0))
            dup += int(out.get("duplicated", 0))
            not_delivered += int(out.get("not_delivered", 0))
            drain_s = max(drain_s, float((out.get("drain") or {}).get("drain_s", 0.0)))
            seen_delivery = seen_delivery or prog == "aem_stress_delivery"
        if prog == "aem_stress_atomicity":
            seen_atomicity = True
            overlaps += int(out.get("handler_overlaps", 0))
            overlaps += int(out.get("same_registration_overlaps", 0))
            lost += int(out.get("delivered_after_clean", 0))
        if prog in ("aem_bench_compare", "aem_prio_latency"):
            for k, v in (out.get("metrics") or {}).items():
                m[k] = v
    if seen_delivery:
        m["occurrences_activated"] = act
        m["occurrences_delivered"] = dele
        m["occurrences_lost"] = lost
        m["occurrences_duplicated"] = dup
        m["occurrences_not_delivered"] = not_delivered
        m["delivery_drain_s"] = round(drain_s, 3)
    if seen_atomicity:
        m["handler_overlaps"] = overlaps
    return m


# ---------------------------------------------------------------------------------------------
# Building and running.

def profile(args: argparse.Namespace, stress_ng: bool) -> list[tuple[str, list[str]]]:
    """The programs and arguments of the chosen profile."""
    full, quick = args.full, args.quick
    if getattr(args, "smoke", False):
        dur = args.duration if args.duration is not None else 2
        return [
            ("aem_stress_delivery", ["--duration", f"{dur:g}", "--checkpoint", "1"]),
            ("aem_stress_atomicity", ["--rounds", "4", "--round-ms", "100"]),
            ("aem_bench_compare", ["--latency-samples", "2000", "--events", "50000",
                                   "--batches", "3", "--batch-ms", "10",
                                   "--peer-max-n", "1000"]),
            ("aem_prio_latency", ["--samples", "600", "--period-us", "300"]),
            (MICRO, ["--benchmark_format=json", "--benchmark_min_time=0.01"]),
        ]
    dur = args.duration if args.duration is not None else (120 if full else 10 if quick else 30)
    runs: list[tuple[str, list[str]]] = [
        ("aem_stress_delivery", ["--duration", f"{dur:g}", "--checkpoint",
                                 "10" if dur > 30 else "2"]),
    ]
    if stress_ng:
        runs.append(("aem_stress_delivery", ["--duration", f"{dur:g}", "--checkpoint",
                                             "10" if dur > 30 else "2", "--stress-ng"]))
    runs.append(("aem_stress_atomicity",
                 ["--rounds", "200" if full else "20" if quick else "60",
                  "--round-ms", "500" if full else "250"]))
    runs.append(("aem_bench_compare", ["--full"] if full else []))
    runs.append(("aem_prio_latency",
                 ["--samples", "20000" if full else "3000" if quick else "8000"]))
    runs.append((MICRO, ["--benchmark_format=json",
                         "--benchmark_min_time=" + ("0.5" if full else "0.05")]))
    return runs


def build(repo: Path, build_dir: Path) -> None:
    """Configure (once) and build the stress programs."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise InfraError("cmake not found: apt-get install cmake ninja-build")
    if not (build_dir / "CMakeCache.txt").exists():
        cmd = [cmake, "-S", str(repo), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
               "-DAEM_BUILD_TESTS=OFF", "-DAEM_BUILD_EXAMPLES=OFF"]
        if shutil.which("ninja"):
            cmd += ["-G", "Ninja"]
        _check(cmd, "configure")
    targets = list(PROGRAMS)
    _check([cmake, "--build", str(build_dir), "--target", *targets], "build")
    # aem_micro exists only with Google Benchmark; build it when CMake defined it.
    subprocess.run([cmake, "--build", str(build_dir), "--target", MICRO],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def _check(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise InfraError(f"stress: {what} failed ({' '.join(cmd)}):\n{tail}")


def run_program(path: Path, argv: list[str], env: dict[str, str],
                timeout: float) -> dict[str, Any]:
    """Run one program; parse the JSON object it prints."""
    cmd = [str(path), *argv]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              check=False)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc = -1
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = (exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")) \
            + f"\ntimed out after {timeout:.0f}s"
    run: dict[str, Any] = {"program": path.name, "argv": argv, "exit_code": rc,
                           "elapsed_s": round(time.monotonic() - t0, 3)}
    try:
        run["output"] = json.loads(out)
    except json.JSONDecodeError:
        run["output"] = None
    run["stderr_tail"] = err.strip().splitlines()[-10:]
    return run


def environment(repo: Path, env: dict[str, str], backend: str | None) -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "backend_requested": backend or "default",
        "python": platform.python_version(),
    }
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        info["git_revision"] = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
            check=False).stdout.strip() or None
    except OSError:
        info["git_revision"] = None
    sng = shutil.which("stress-ng")
    if sng:
        v = subprocess.run([sng, "--version"], capture_output=True, text=True, check=False)
        info["stress_ng"] = v.stdout.strip()
    info["aem_env"] = {k: v for k, v in env.items() if k.startswith("AEM_")}
    return info


def run(args: argparse.Namespace) -> int:
    """Build, run the profile, write stress.json, print the summary."""
    repo = (args.repo or default_repo_root()).resolve()
    if not (repo / "stress" / "CMakeLists.txt").exists():
        raise UsageError(f"{repo}: no stress/CMakeLists.txt; pass --repo DIR (the project root)")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    catalog = load_catalog(repo)
    build_dir = (args.build_dir or repo / "build" / "cglcert-stress").resolve()
    if not args.no_build:
        sys.stderr.write(f"cglcert stress: building in {build_dir}\n")
        build(repo, build_dir)
    bindir = build_dir / "stress"
    missing = [p for p in PROGRAMS if not (bindir / p).exists()]
    if missing:
        raise InfraError(f"stress: not built: {', '.join(missing)} (in {bindir})")
    env = dict(os.environ)
    if args.backend:
        env["AEM_BACKEND"] = args.backend
    use_sng = shutil.which("stress-ng") is not None and not args.no_stress_ng
    args.out.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    runs: list[dict[str, Any]] = []
    for prog, argv in profile(args, use_sng):
        path = bindir / prog
        if not path.exists():
            runs.append({"program": prog, "argv": argv, "skipped": "not built (needs "
                         "libbenchmark-dev)" if prog == MICRO else "not built"})
            continue
        sys.stderr.write(f"cglcert stress: {prog} {' '.join(argv)}\n")
        budget = 600.0 + 2 * float(args.duration or 0) + (3000 if args.full else 0)
        runs.append(run_program(path, argv, env, budget))

    profile_name = ("full" if args.full else "quick" if args.quick
                    else "smoke" if args.smoke else "default")
    report = assemble(catalog.requirements, runs, environment(repo, env, args.backend),
                      profile_name, time.monotonic() - t0)
    out_file = args.out / "stress.json"
    out_file.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(render_summary(report, out_file))
    return exit_code(report, losses_only=args.fail_on == "losses")


def assemble(requirements: list[Requirement], runs: list[dict[str, Any]],
             env: dict[str, Any], profile_name: str, elapsed: float) -> dict[str, Any]:
    """stress.json from the programs' runs: metrics, the catalog's verdicts, the summary."""
    metrics = collect_metrics(runs)
    verdicts = evaluate([r for r in requirements if r.thresholds], metrics)
    crashed = [r for r in runs if "skipped" not in r and (
        r.get("output") is None or r["exit_code"] not in (0, 1))]
    bad_runs = [r for r in runs if "skipped" not in r and r.get("exit_code") == 1]
    failed_reqs = sorted(k for k, v in verdicts.items() if v["verdict"] != "PASS")
    report = {
        "environment": dict(env),
        "profile": profile_name,
        "elapsed_s": round(elapsed, 1),
        "runs": runs,
        "metrics": metrics,
        "verdicts": verdicts,
        "targets": perf_targets.evaluate(runs),
        "summary": {"lost": int(metrics.get("occurrences_lost", 0)),
                    "duplicated": int(metrics.get("occurrences_duplicated", 0)),
                    "not_delivered": int(metrics.get("occurrences_not_delivered", 0)),
                    "handler_overlaps": int(metrics.get("handler_overlaps", 0)),
                    "failed_requirements": failed_reqs,
                    "failed_programs": [r["program"] for r in bad_runs],
                    "crashed_programs": [r["program"] for r in crashed]},
    }
    backend = next((r["output"].get("backend") for r in runs
                    if isinstance(r.get("output"), dict) and r["output"].get("backend")), None)
    report["environment"]["backend"] = backend
    return report


def exit_code(report: dict[str, Any], losses_only: bool = False) -> int:
    """3 when a program crashed; 1 when anything was lost, overlapped or a program failed,
    or (unless *losses_only*) a threshold was missed; else 0."""
    s = report["summary"]
    if s["crashed_programs"]:
        return ExitCode.INFRA
    if (s["lost"] or s["duplicated"] or s.get("not_delivered") or s["handler_overlaps"]
            or s["failed_programs"]):
        return ExitCode.FAILED
    if s["failed_requirements"] and not losses_only:
        return ExitCode.FAILED
    return ExitCode.OK


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _costs_text(costs: Any) -> str:
    """' delivery-syscalls/event=D ctx-switches/event=C' from a mechanism's perf-counted
    costs, when counted."""
    if not isinstance(costs, dict) or not costs.get("available"):
        return ""
    out = ""
    for label, key in (("delivery-syscalls/event", "delivery_syscalls_per_event"),
                       ("ctx-switches/event", "context_switches_per_event")):
        if costs.get(key) is not None:
            out += f" {label}={_fmt(costs[key])}"
    return out


def _mechanism_lines(mechs: dict[str, Any]) -> list[str]:
    """aem_bench_compare's mechanisms, one line each: throughput, latency and, when counted,
    the delivery system calls and context switches per event; why they were not, once."""
    lines = ["  mechanism            events/s   vs epoll   p50 ns   p99 ns  "
             "p99.9 ns   max ns"]
    not_counted: dict[str, list[str]] = {}
    for name, m in mechs.items():
        if not m.get("available"):
            lines.append(f"  {name:18} unavailable")
            continue
        d = m["latency_ns"]
        ratio = m.get("vs_epoll", {}).get("throughput_ratio")
        costs = m.get("costs")
        lines.append(f"  {name:18} {m['throughput_events_per_s']:10.4g} "
                     f"{_fmt(ratio):>9} {d['p50']:8} {d['p99']:8} {d['p99_9']:9} "
                     f"{d['max']:8}{_costs_text(costs)}")
        if isinstance(costs, dict) and not costs.get("available"):
            not_counted.setdefault(str(costs.get("why") or "not counted"), []).append(name)
    lines += [f"  costs not counted for {', '.join(names)}: {why}"
              for why, names in not_counted.items()]
    return lines


def render_summary(report: dict[str, Any], out_file: Path) -> str:
    """Human summary: runs, the peers' ratios, verdicts."""
    lines = [f"cglcert stress ({report['profile']}, backend "
             f"{report['environment'].get('backend')}, {report['elapsed_s']}s)"]
    for r in report["runs"]:
        if "skipped" in r:
            lines.append(f"  {r['program']:22} skipped: {r['skipped']}")
            continue
        o = r.get("output") or {}
        extra = ""
        if "lost" in o:
            extra = f" activated={o.get('occurrences_activated')} lost={o.get('lost')} " \
                    f"duplicated={o.get('duplicated')}"
            if "not_delivered" in o:
                drain = o.get("drain") or {}
                extra += (f" not_delivered={o['not_delivered']} drain="
                          f"{_fmt(drain.get('drain_s'))}s ({drain.get('ended')})")
            if isinstance(o.get("load"), dict):
                ld = o["load"]
                extra += (" load=" + ("ran " + ",".join(f"{k}:{v}" for k, v in
                                                          ld.get("bogo_ops", {}).items())
                                      if ld.get("ran") else f"DID NOT RUN ({ld.get('why')})"))
        if "handler_overlaps" in o:
            extra += f" overlaps={o['handler_overlaps']}"
        lines.append(f"  {r['program']:22} exit {r['exit_code']} in {r['elapsed_s']}s{extra}")
    for r in report["runs"]:
        o = r.get("output") or {}
        if o.get("program") == "aem_bench_compare":
            lines += _mechanism_lines(o.get("mechanisms", {}))
    lines.append("  metrics: " + ", ".join(f"{k}={_fmt(v)}" for k, v in
                                           sorted(report["metrics"].items())))
    for rid, v in report["verdicts"].items():
        detail = "; ".join(
            f"{c['metric']}={_fmt(c.get('measured'))} {c['op']} {_fmt(c.get('bound'))}"
            + (f" (ratio {_fmt(c['ratio'])})" if c.get("ratio") is not None else "")
            for c in v["thresholds"])
        lines.append(f"  {v['verdict']:7} {rid}: {detail}")
    for t in report.get("targets") or []:
        met = {True: "met", False: "MISSED", None: "n/a"}[t["met"]]
        got = _fmt(t["measured"]) if t["measured"] is not None else t.get("why", "")
        lines.append(f"  target {met:6} {t['id']}: {got} ({t['op']} {_fmt(t['bound'])})")
    s = report["summary"]
    lines.append(f"  lost={s['lost']} duplicated={s['duplicated']} "
                 f"not_delivered={s.get('not_delivered', 0)} "
                 f"overlaps={s['handler_overlaps']}; report: {out_file}")
    return "\n".join(lines) + "\n"
