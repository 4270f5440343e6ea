"""Mutation testing of the conformance suite: the mutants, the kill matrix, the verdict.

A *mutant* is libaem built with one named defect (``-DAEM_MUTANT=<name>``; the defects are
``#if AEM_MUTANT(name)`` blocks of ``reference/lib/src/user/engine.cpp`` and
``reference/lib/src/c_api.cpp``, the list is ``reference/lib/src/mutant.hpp``). The suite
*kills* a mutant when, run against it, a requirement's verdict is FAIL. Each mutant here
declares the requirement(s) its defect breaks (``expected``): the suite proves itself when
every mutant is killed by every one of its expected requirements.

Everything here is a pure function of its arguments (the results documents of
:mod:`cglcert.results`), unit-tested on synthetic input (``ci/tests/test_mutants.py``);
:mod:`cglcert.commands.mutants` builds the mutants and runs the suite.

Rules, per mutant, from its ``results.json`` and the control's (the library without a
defect, built and run the same way; optional):

* a requirement *kills* the mutant when its verdict is FAIL and it is not FAIL in the
  control (a requirement failing without any defect proves nothing);
* status, first rule that applies: ``error`` when the harness broke (build failure, crash,
  time-out: no verdict can be attributed); ``killed`` when every expected requirement kills
  it; ``killed-elsewhere`` when other requirements kill it but not all the expected ones;
  ``survived`` when no requirement kills it;
* the run is OK when every mutant is ``killed`` (and the control ran cleanly).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cglcert.results import ERROR, FAIL, PASS, SKIP

__all__ = [
    "CONTROL",
    "ERRORED",
    "KILLED",
    "KILLED_ELSEWHERE",
    "MUTANTS",
    "KMOD_MUTANTS",
    "BACKEND_MUTANTS",
    "kbuild_mutants",
    "SCHEMA",
    "STATUSES",
    "SURVIVED",
    "Mutant",
    "build_document",
    "by_name",
    "document_to_json",
    "header_mutants",
    "judge",
    "render_matrix",
    "short_label",
    "verdicts_of",
]

SCHEMA = "cglcert-mutants/1"
#: The name of the control run: the library without a defect.
CONTROL = "control"
HEADER = Path("reference/lib/src/mutant.hpp")

KILLED, KILLED_ELSEWHERE, SURVIVED, ERRORED = "killed", "killed-elsewhere", "survived", "error"
STATUSES = (KILLED, KILLED_ELSEWHERE, SURVIVED, ERRORED)


@dataclass(frozen=True)
class Mutant:
    """One injected defect and the requirement(s) that must catch it."""

    name: str
    description: str
    expected: tuple[str, ...]


#: The mutants, in the order they are built and shown. ``expected``: the requirements whose
#: acceptance criteria the defect breaks, each of which must FAIL.
MUTANTS: tuple[Mutant, ...] = (
    Mutant("drop_occurrence",
           "one evsoft_raise() in a thousand (per registration) is counted as an activation but "
           "never queued",
           ("AEM-3.5.1",)),
    Mutant("fifo_dispatch",
           "every priority on one FIFO level: handlers run in activation order",
           ("AEM-3.1.5", "AEM-3.2.1")),
    Mutant("overlap",
           "a second worker thread serves the EXEC_THREAD queue: two handlers of one "
           "execution context run at once",
           ("AEM-3.6.2",)),
    Mutant("deliver_disabled",
           "a disabled registration is queued and its handler called all the same",
           ("AEM-3.1.7",)),
    Mutant("reuse_live_id",
           "ids wrap after 4096 without skipping the live ones",
           ("AEM-3.1.4",)),
    Mutant("ignore_limit",
           "the registration limit (AEM_MAX_REGISTRATIONS) is not enforced",
           ("AEM-3.5.4",)),
    Mutant("wrong_handler_arg",
           "the accept handler gets the accepted fd where the listening fd belongs",
           ("AEM-3.1.2",)),
    # PRF.1.4 does not catch it: its 200 us timer test (c4) compares the expirations handed
    # to the handler with the activations only after a DISABLE/ENABLE too short for
    # expirations to merge, so a lost overrun shows only under load.
    Mutant("lose_timer_overruns",
           "a timer handler is told one expiration however many it consumes",
           ("AEM-3.6.3",)),
    Mutant("lose_read_data",
           "the second chunk read from each socket is dropped",
           ("AEM-3.6.5", "AEM-3.4.1")),
    Mutant("skip_error_notification",
           "errors are counted in the statistics but never reported to the error handler",
           ("AEM-3.5.2",)),
)


#: The kernel modules' mutants (``make AEM_MUTANT=<name>``; ``if (AEM_MUTANT(name))`` blocks
#: of reference/kmod/, the list is ``AEM_MUTANTS`` in reference/kmod/Kbuild). libaem runs on
#: the kmod backend unchanged: the suite must see each defect through it. Not here: a defect
#: in the kernel's pop order (lowest priority first, LIFO within a level). libaem takes every
#: pending delivery out of the kernel before it runs a handler and orders them itself, so
#: through the API such a mutant is equivalent (both survived the suite); the kernel's own
#: order is tested by reference/kmod/tests/aem_test.c (priority_order) on the raw ioctls.
KMOD_MUTANTS: tuple[Mutant, ...] = (
    Mutant("merge_drops_count",
           "aem.ko: an activation merged into a pending one loses its occurrences",
           ("AEM-3.5.1", "AEM-3.6.1")),
    Mutant("pending_limit_ignored",
           "aem.ko: max_pending is not enforced: everything is queued",
           ("AEM-3.5.4",)),
    Mutant("overflow_notice_lost",
           "aem.ko: a registration held over the pending limit is never reported (no "
           "AEM_EV_OVERLOAD delivery)",
           ("AEM-3.5.4",)),
    Mutant("timer_overruns_lost",
           "aem.ko: the periods a parked timer missed count as one",
           ("AEM-3.6.3",)),
    Mutant("timer_fires_once",
           "aem.ko: a periodic timer fires once and never again",
           ("AEM-3.6.3",)),
    Mutant("timeout_never_fires",
           "aem.ko: AEM_CTL_SET_TIMEOUT arms a timeout that never reports",
           ("AEM-3.1.7",)),
    Mutant("read_drops_chunk",
           "aem.ko: every second chunk read from a socket is freed, never delivered",
           ("AEM-3.6.5",)),
    Mutant("read_eof_lost",
           "aem.ko: the end of a socket's stream is never reported to the reader",
           ("AEM-3.6.5",)),
    Mutant("accept_drops_connection",
           "aem.ko: every second accepted connection is closed, never delivered",
           ("AEM-3.1.2",)),
    # (Not "STATS report deliveries as activations": AEM-3.6.3 c4 then waits for a count
    # that never moves, 100 timers x its 10 s give-up: the run times out, no verdict.)
    Mutant("stats_pending_zero",
           "aem.ko: AEM_CTL_STATS reports nothing pending in the kernel",
           ("AEM-3.1.7",)),
)

#: The mutants of each backend.
BACKEND_MUTANTS: dict[str, tuple[Mutant, ...]] = {"user": MUTANTS, "kmod": KMOD_MUTANTS}
#: The kmod mutants' list, for the check that it and KMOD_MUTANTS agree.
KBUILD = Path("reference/kmod/Kbuild")


def by_name(backend: str = "user") -> dict[str, Mutant]:
    """The mutants of *backend* by name."""
    return {m.name: m for m in BACKEND_MUTANTS[backend]}


def kbuild_mutants(text: str) -> list[str]:
    """Mutant names reference/kmod/Kbuild accepts (its ``AEM_MUTANTS :=`` list)."""
    m = re.search(r"(?m)^AEM_MUTANTS\s*:=((?:.*\\\n)*.*)$", text)
    return m[1].replace("\\", " ").split() if m else []


def header_mutants(text: str) -> list[str]:
    """Mutant names declared by ``mutant.hpp`` (its ``#define AEM_MUTANT_<name> 0`` lines,
    the list CMake validates ``AEM_MUTANT`` against)."""
    return re.findall(r"(?m)^#define AEM_MUTANT_([a-z0-9_]+) 0$", text)


def short_label(req_id: str) -> str:
    """A requirement ID for a matrix column: ``AEM-3.1.5`` -> ``3.1.5``, ``PRF.1.4`` ->
    ``PRF1.4``."""
    if req_id.startswith("AEM-"):
        return req_id[4:]
    return req_id.replace(".", "", 1) if req_id.count(".") >= 2 else req_id


def verdicts_of(results: Mapping[str, Any] | None) -> dict[str, str]:
    """Requirement ID -> verdict of a results.json document (empty for None)."""
    if not results:
        return {}
    return {r["id"]: r["verdict"] for r in results.get("requirements", [])}


def _failing_tests(results: Mapping[str, Any], req_id: str) -> list[str]:
    for r in results.get("requirements", []):
        if r["id"] == req_id:
            return [t["name"] for t in r.get("tests", []) if t.get("outcome") == FAIL]
    return []


def judge(mutant: Mutant, results: Mapping[str, Any] | None, *,
          control: Mapping[str, Any] | None = None, error: str | None = None) -> dict[str, Any]:
    """The judgement of one mutant from its results.json (None: it has none, ``error`` says
    why) and the control's results.json (None: no control run)."""
    harness_error = error or (results or {}).get("harness", {}).get("error")
    verdicts = verdicts_of(results)
    base = verdicts_of(control)
    failing = [rid for rid, v in verdicts.items() if v == FAIL]
    killed_by = [rid for rid in failing if base.get(rid) != FAIL]
    also_in_control = [rid for rid in failing if base.get(rid) == FAIL]
    missed = [rid for rid in mutant.expected if rid not in killed_by]
    if harness_error or results is None:
        status = ERRORED
    elif not missed:
        status = KILLED
    elif killed_by:
        status = KILLED_ELSEWHERE
    else:
        status = SURVIVED
    unknown = [rid for rid in mutant.expected if verdicts and rid not in verdicts]
    return {
        "name": mutant.name,
        "description": mutant.description,
        "expected": list(mutant.expected),
        "status": status,
        "killed_by": killed_by,
        "expected_missed": missed,
        "failing_in_control_too": also_in_control,
        "unknown_expected": unknown,
        "failing_tests": {rid: _failing_tests(results, rid) for rid in killed_by}
        if results else {},
        "verdicts": verdicts,
        "error": harness_error or (None if results is not None else "no results"),
    }


def build_document(judgements: Sequence[Mapping[str, Any]], *,
                   requirements: Sequence[str],
                   control: Mapping[str, Any] | None = None,
                   environment: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The mutants.json document. ``control``: ``{"verdicts": ..., "error": ...}`` of the
    control run, or None when it did not run; ``requirements``: the catalog's IDs, in order."""
    counts = {s: sum(1 for j in judgements if j["status"] == s) for s in STATUSES}
    control_ok = control is None or not control.get("error")
    ok = bool(judgements) and control_ok and counts[KILLED] == len(judgements)
    return {
        "schema": SCHEMA,
        "environment": dict(environment or {}),
        "requirements": list(requirements),
        "control": None if control is None else dict(control),
        "mutants": [dict(j) for j in judgements],
        "summary": {"mutants": len(judgements), **counts, "control_ok": control_ok},
        "ok": ok,
        **dict(extra or {}),
    }


_CELL = {FAIL: "X", PASS: ".", SKIP: "-", ERROR: "E"}


def _cell(verdict: str | None, expected: bool, in_control: bool) -> str:
    mark = _CELL.get(verdict or "", "?")
    if verdict == FAIL and in_control:
        mark = "x"  # fails without the defect too: no kill
    return f"[{mark}]" if expected else f" {mark} "


def _columns(doc: Mapping[str, Any]) -> list[str]:
    """The requirements worth a column: expected by a mutant, or not PASS/SKIP somewhere."""
    rows = list(doc["mutants"]) + ([doc["control"]] if doc.get("control") else [])
    wanted = set()
    for j in doc["mutants"]:
        wanted.update(j["expected"])
    for row in rows:
        wanted.update(rid for rid, v in row.get("verdicts", {}).items() if v in (FAIL, ERROR))
    return [rid for rid in doc["requirements"] if rid in wanted] + \
        sorted(wanted - set(doc["requirements"]))


def render_matrix(doc: Mapping[str, Any]) -> str:
    """The kill matrix (mutant x requirement), one line per mutant with its status, then
    the closing summary line."""
    cols = _columns(doc)
    labels = [short_label(c) for c in cols]
    widths = [max(3, len(lb)) for lb in labels]
    names = [j["name"] for j in doc["mutants"]] + ([CONTROL] if doc.get("control") else [])
    nw = max([len("mutant")] + [len(n) for n in names])
    base = doc.get("control") or {}
    in_control = {rid for rid, v in base.get("verdicts", {}).items() if v == FAIL}
    head = f"{'mutant':<{nw}}  " + " ".join(f"{lb:^{w}}" for lb, w in zip(labels, widths)) + \
        "  status"
    lines = [head]
    for j in doc["mutants"]:
        cells = []
        for rid, w in zip(cols, widths):
            v = j["verdicts"].get(rid)
            cells.append(f"{_cell(v, rid in j['expected'], rid in in_control):^{w}}")
        status = j["status"]
        if status == ERRORED:
            status += f": {_first_line(j.get('error') or '', 60)}"
        elif j["expected_missed"]:
            status += f" (not by {', '.join(j['expected_missed'])})"
        lines.append(f"{j['name']:<{nw}}  " + " ".join(cells) + f"  {status}")
    if doc.get("control"):
        cells = [f"{_cell(base.get('verdicts', {}).get(rid), False, False):^{w}}"
                 for rid, w in zip(cols, widths)]
        state = f"error: {_first_line(base['error'], 60)}" if base.get("error") else "baseline"
        lines.append(f"{CONTROL:<{nw}}  " + " ".join(cells) + f"  {state}")
    lines.append("")
    lines.append("X FAIL (kills)  x FAIL in the control too (no kill)  . PASS  - SKIP  "
                 "E ERROR  [ ] expected to kill")
    for j in doc["mutants"]:
        killed_by = ", ".join(j["killed_by"]) or "nothing"
        lines.append(f"  {j['name']}: {j['description']}; expected {', '.join(j['expected'])}; "
                     f"killed by {killed_by}")
    s = doc["summary"]
    lines.append("")
    tail = f"{s[KILLED]} of {s['mutants']} mutants killed by their requirements"
    others = [f"{s[k]} {k}" for k in (KILLED_ELSEWHERE, SURVIVED, ERRORED) if s[k]]
    if others:
        tail += " (" + ", ".join(others) + ")"
    if doc.get("control") is None:
        tail += "; no control run"
    elif not s["control_ok"]:
        tail += "; the control run failed"
    lines.append(tail)
    return "\n".join(lines) + "\n"


def _first_line(text: str, width: int) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def document_to_json(doc: Mapping[str, Any]) -> str:
    """Serialise mutants.json (stable key order, trailing newline)."""
    return json.dumps(doc, indent=2) + "\n"

