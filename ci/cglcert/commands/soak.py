"""``cglcert soak``: the stress harnesses in rounds for a long time, checkpointed per round.

Each round runs ``aem_stress_delivery`` (about 70 % of the round; every other round under
stress-ng load when it is installed) and ``aem_stress_atomicity`` (the rest), with the
building blocks of :mod:`cglcert.commands.stress` (build, run_program, collect_metrics,
environment). After every round ``DIR/soak.json`` is rewritten atomically (temporary file,
fsync, rename) with the round appended, so a run killed at any moment leaves a valid file
holding every finished round.

soak.json (``schema: cglcert-soak/1``): ``status`` (running, passed, failed, error,
interrupted), ``started``, ``updated``, ``duration_s``, ``round_s``, ``environment``,
``rounds`` (one checkpoint each: ``round``, ``time``, ``offset_s``, ``elapsed_s``, ``load``,
``activated``, ``delivered``, ``lost``, ``duplicated``, ``overlaps``, ``metrics``,
``programs`` (exit code and time of each), ``verdict`` PASS/FAIL/ERROR, ``reason``),
``totals`` and ``failure`` (the first failing round and why, or null).

Exit codes: 0 the duration was spent and no round lost, duplicated or overlapped anything;
1 a round lost or duplicated an occurrence, handlers overlapped, or a harness reported a
failure (the soak stops at that round); 2 usage error; 3 a program could not be built,
crashed or printed no JSON; 130 interrupted (SIGINT or SIGTERM; soak.json says so).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cglcert import ExitCode, InfraError, UsageError, default_repo_root
from cglcert.commands import stress

SCHEMA = "cglcert-soak/1"
PROGRAMS = ("aem_stress_delivery", "aem_stress_atomicity")
#: Shortest round (seconds): both programs need about a second to start and drain.
MIN_ROUND_S = 1.0
MAX_DURATION_S = 30 * 86400.0
DEFAULT_ROUND_S = 60.0
DELIVERY_SHARE = 0.7
#: aem_stress_atomicity rounds of --round-ms 100 take about 0.4 s each (setup and drain).
ATOMICITY_ROUND_S = 0.4

DESCRIPTION = """\
Run the guaranteed-delivery and atomicity harnesses of stress/ in rounds until --duration
is spent (the nightly soak on lab hardware). After each round a checkpoint (time,
activated and delivered counts, losses, duplicates, handler overlaps, metrics) is appended
to DIR/soak.json, rewritten atomically: a killed soak still leaves valid results up to its
last finished round. The soak stops and exits 1 at the first round that lost or duplicated
an occurrence or saw handlers overlap.

Durations: seconds, or a number with s, m, h or d (90, 45s, 30m, 8h, 1.5d).
Every other round runs the delivery harness under stress-ng load when stress-ng is
installed (--no-stress-ng: never).

Exit codes: 0 passed, 1 loss/duplicate/overlap/harness failure, 2 usage error,
3 build failure or crashed harness, 130 interrupted.
"""

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``soak`` subcommand."""
    p = subparsers.add_parser(
        "soak", help="stress harnesses in rounds for a long time, checkpointed to soak.json",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", required=True, metavar="T",
                   help="how long to soak: seconds or 30m, 8h, 1d")
    p.add_argument("--round", default=None, metavar="S",
                   help=f"length of one round (default {DEFAULT_ROUND_S:g} s, or --duration "
                        "when shorter; at least 1 s, at most --duration)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="directory for soak.json (created)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing DIR/soak.json (default: refuse, it is evidence)")
    stress.add_program_args(p)
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- pure helpers

def parse_duration(option: str, text: str) -> float:
    """Seconds from ``90``, ``45s``, ``30m``, ``8h``, ``1.5d``; UsageError otherwise."""
    m = _DURATION_RE.match(str(text))
    if not m:
        raise UsageError(f"{option} {text!r}: give seconds or a number with s, m, h or d "
                         "(e.g. 90, 30m, 8h)")
    return float(m[1]) * _UNIT_S[m[2]]


def round_plan(round_s: float, index: int, stress_ng: bool) -> list[tuple[str, list[str]]]:
    """The programs and arguments of round *index* (1-based) lasting about *round_s*."""
    delivery_s = max(0.5, round_s * DELIVERY_SHARE)
    checkpoint = max(1, int(delivery_s // 10)) if delivery_s >= 2 else 1
    delivery = ["--duration", f"{round(delivery_s, 2):g}", "--checkpoint", str(checkpoint)]
    if stress_ng and index % 2 == 0:
        delivery.append("--stress-ng")
    atom_rounds = max(1, int(round_s * (1 - DELIVERY_SHARE) / ATOMICITY_ROUND_S))
    return [("aem_stress_delivery", delivery),
            ("aem_stress_atomicity", ["--rounds", str(atom_rounds), "--round-ms", "100"])]


def checkpoint(index: int, offset_s: float, elapsed_s: float,
               runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One round's record (verdict PASS, FAIL or ERROR) from its programs' runs."""
    m = stress.collect_metrics(runs)
    lost = int(m.get("occurrences_lost", 0))
    dup = int(m.get("occurrences_duplicated", 0))
    late = int(m.get("occurrences_not_delivered", 0))
    overlaps = int(m.get("handler_overlaps", 0))
    metrics: dict[str, Any] = {}
    programs: dict[str, Any] = {}
    crashed, failed = [], []
    load = "none"
    for r in runs:
        out = r.get("output") if isinstance(r.get("output"), dict) else None
        programs[r["program"]] = {"exit_code": r.get("exit_code"),
                                  "elapsed_s": r.get("elapsed_s"), "argv": r.get("argv")}
        if out is None or r.get("exit_code") not in (0, 1):
            crashed.append(r["program"])
            programs[r["program"]]["stderr_tail"] = r.get("stderr_tail", [])
            continue
        if r.get("exit_code") == 1:
            failed.append(r["program"])
            programs[r["program"]]["stderr_tail"] = r.get("stderr_tail", [])
        if out.get("program") == "aem_stress_delivery":
            if (out.get("load") or {}).get("ran"):   # stress-ng proved it ran
                load = "stress-ng"
            el = out.get("elapsed_s") or r.get("elapsed_s")
            if el:
                metrics["delivery_per_s"] = round(int(out.get("occurrences_delivered", 0)) / el)
            for key in ("raise_errors", "error_notifications", "overflow_notifications",
                        "unknown_ids", "socket_eof_not_exactly_once"):
                if key in out:
                    metrics[key] = out[key]
        elif out.get("program") == "aem_stress_atomicity":
            for key in ("delivered_after_clean", "same_registration_overlaps",
                        "dropped_by_clean", "registration_errors"):
                if key in out:
                    metrics[f"atomicity_{key}"] = out[key]
    if crashed:
        verdict, reason = "ERROR", f"crashed or printed no JSON: {', '.join(crashed)}"
    elif lost or dup or late or overlaps:
        verdict = "FAIL"
        reason = (f"lost={lost} duplicated={dup} not_delivered={late} "
                  f"handler_overlaps={overlaps}")
    elif failed:
        verdict, reason = "FAIL", f"harness reported a failure: {', '.join(failed)}"
    else:
        verdict, reason = "PASS", ""
    return {
        "round": index, "time": _now(), "offset_s": round(offset_s, 3),
        "elapsed_s": round(elapsed_s, 3), "load": load,
        "activated": int(m.get("occurrences_activated", 0)),
        "delivered": int(m.get("occurrences_delivered", 0)),
        "lost": lost, "duplicated": dup, "overlaps": overlaps,
        "metrics": metrics, "programs": programs, "verdict": verdict, "reason": reason,
    }


def totals(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over the rounds."""
    keys = ("activated", "delivered", "lost", "duplicated", "overlaps")
    t: dict[str, Any] = {k: sum(int(r.get(k, 0)) for r in rounds) for k in keys}
    t["rounds"] = len(rounds)
    t["elapsed_s"] = round(sum(float(r.get("elapsed_s", 0)) for r in rounds), 3)
    return t


def write_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON so that a reader (or a kill at any moment) sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a CI job cancelled, a lab scheduler's kill) raises KeyboardInterrupt."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# --------------------------------------------------------------------------- the soak

Runner = Callable[[Path, list[str], dict[str, str], float], dict[str, Any]]


def soak(doc: dict[str, Any], out_file: Path, bindir: Path, env: dict[str, str],
         duration_s: float, round_s: float, stress_ng: bool,
         runner: Runner = stress.run_program,
         clock: Callable[[], float] = time.monotonic) -> int:
    """Run rounds until *duration_s* is spent or a round fails; checkpoint each to *out_file*."""
    t0 = clock()
    index = 0
    try:
        while True:
            offset = clock() - t0
            remaining = duration_s - offset
            if remaining < MIN_ROUND_S:
                break
            index += 1
            this_round = min(round_s, remaining)
            runs = []
            r0 = clock()
            for prog, argv in round_plan(this_round, index, stress_ng):
                budget = 120.0 + 3 * this_round
                runs.append(runner(bindir / prog, argv, env, budget))
            cp = checkpoint(index, offset, clock() - r0, runs)
            doc["rounds"].append(cp)
            doc["totals"] = totals(doc["rounds"])
            doc["updated"] = _now()
            if cp["verdict"] != "PASS":
                doc["status"] = "failed" if cp["verdict"] == "FAIL" else "error"
                doc["failure"] = {"round": index, "verdict": cp["verdict"],
                                  "reason": cp["reason"]}
                write_atomic(out_file, doc)
                _print_round(cp)
                return ExitCode.FAILED if cp["verdict"] == "FAIL" else ExitCode.INFRA
            write_atomic(out_file, doc)
            _print_round(cp)
    except KeyboardInterrupt:
        doc["status"] = "interrupted"
        doc["updated"] = _now()
        write_atomic(out_file, doc)
        raise
    doc["status"] = "passed"
    doc["updated"] = _now()
    write_atomic(out_file, doc)
    return ExitCode.OK


def _print_round(cp: dict[str, Any]) -> None:
    sys.stdout.write(
        f"round {cp['round']:4} +{cp['offset_s']:.0f}s {cp['verdict']:5} load={cp['load']:9} "
        f"activated={cp['activated']} delivered={cp['delivered']} lost={cp['lost']} "
        f"duplicated={cp['duplicated']} overlaps={cp['overlaps']}"
        + (f"  ({cp['reason']})" if cp["reason"] else "") + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Validate, build, soak, summarise."""
    duration = parse_duration("--duration", args.duration)
    round_s = (parse_duration("--round", args.round) if args.round is not None
               else min(DEFAULT_ROUND_S, duration))
    if not MIN_ROUND_S <= duration <= MAX_DURATION_S:
        raise UsageError(f"--duration {args.duration}: give {MIN_ROUND_S:g} s .. 30 days")
    if round_s < MIN_ROUND_S:
        raise UsageError(f"--round {args.round}: a round needs at least {MIN_ROUND_S:g} s")
    if round_s > duration:
        raise UsageError(f"--round {args.round} is longer than --duration {args.duration}: "
                         "give a shorter --round (or a longer --duration)")
    repo = (args.repo or default_repo_root()).resolve()
    if not args.no_build and not (repo / "stress" / "CMakeLists.txt").exists():
        raise UsageError(f"{repo}: no stress/CMakeLists.txt; pass --repo DIR (the project root)")
    out_file = args.out / "soak.json"
    if out_file.exists() and not args.force:
        raise UsageError(f"{out_file} exists (results of an earlier soak); choose another "
                         "--out or pass --force to overwrite it")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {args.out}: cannot create the directory: {exc}") from exc
    build_dir = (args.build_dir or repo / "build" / "cglcert-stress").resolve()
    if not args.no_build:
        sys.stderr.write(f"cglcert soak: building in {build_dir}\n")
        stress.build(repo, build_dir)
    bindir = build_dir / "stress"
    missing = [p for p in PROGRAMS if not (bindir / p).exists()]
    if missing:
        raise InfraError(f"soak: not built: {', '.join(missing)} (in {bindir}); run without "
                         "--no-build, or build them: cmake --build DIR --target "
                         + " ".join(PROGRAMS))
    env = dict(os.environ)
    if args.backend:
        env["AEM_BACKEND"] = args.backend
    use_sng = shutil.which("stress-ng") is not None and not args.no_stress_ng
    doc: dict[str, Any] = {
        "schema": SCHEMA, "status": "running", "started": _now(), "updated": _now(),
        "duration_s": duration, "round_s": round_s, "stress_ng": use_sng,
        "environment": stress.environment(repo, env, args.backend),
        "rounds": [], "totals": totals([]), "failure": None,
    }
    write_atomic(out_file, doc)
    sys.stderr.write(f"cglcert soak: {duration:g} s in rounds of {round_s:g} s; "
                     f"checkpoints in {out_file}\n")
    with _sigterm_as_interrupt():
        code = soak(doc, out_file, bindir, env, duration, round_s, use_sng)
    t = doc["totals"]
    sys.stdout.write(f"soak {doc['status']}: {t['rounds']} rounds in {t['elapsed_s']:.0f} s, "
                     f"activated={t['activated']} delivered={t['delivered']} lost={t['lost']} "
                     f"duplicated={t['duplicated']} overlaps={t['overlaps']}; "
                     f"report: {out_file}\n")
    return code
