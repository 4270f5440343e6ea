"""Kernel-health oracle: find splats in kernel log text and decode the taint mask.

A kernel WARN/BUG/oops/lockdep report/stall or an unacceptable taint during a
test is a FAIL of that test (docs/design.md §6).  The reports of a debug kernel
(KASAN, KFENCE, UBSAN, kmemleak, DEBUG_OBJECTS, DEBUG_LIST, hung-task and soft-lockup
detectors) have their own kinds; DEBUG_ATOMIC_SLEEP's "BUG: sleeping function called
from invalid context" is a ``bug``.  :func:`scan` works on any of
the usual renderings of the kernel log:

* ``dmesg``:           ``[   12.345678] WARNING: CPU: 1 PID: 42 at ...``
* ``dmesg -r``:        ``<4>[   12.345678] WARNING: ...``
* ``/dev/kmsg``:       ``4,1234,12345678,-;WARNING: ...``
* a serial console log, where user-space output may be interleaved (use
  ``kernel_only=True`` there so only timestamped kernel lines are considered).

Test attribution: the runner writes ``aem-test: begin <name>`` and
``aem-test: end <name>`` to ``/dev/kmsg`` around each test; a finding between
the two gets ``Finding.test == <name>``.  Findings outside any begin/end pair
have ``test=None`` (boot, or between tests).  A delayed report (hung task,
RCU stall) is attributed to the test that is running when it is printed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

__all__ = [
    "Finding", "Taint", "Report", "scan", "classify", "decode_taint", "check", "by_test",
    "TAINT_FLAGS", "ACCEPTABLE_TAINT", "BEGIN_MARKER", "END_MARKER",
]

BEGIN_MARKER = "aem-test: begin"
END_MARKER = "aem-test: end"

# Order matters: the first matching pattern names the finding, so the specific
# reports (lockdep, KASAN, soft lockup...) come before the generic WARNING:/BUG:.
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("panic", re.compile(r"Kernel panic - not syncing")),
    ("lockdep", re.compile(
        r"(?:WARNING|INFO): (?:possible (?:circular|recursive) locking"
        r"|inconsistent lock state|possible irq lock inversion"
        r"|suspicious RCU usage|bad unlock balance|held lock freed"
        r"|lock held when returning to user space|nested lock was not taken"
        r"|bad contention detected|lockdep bfs error)"
        r"|possible circular locking dependency detected"
        r"|-safe -> \w+-unsafe lock order detected"
        r"|BUG: Invalid wait context")),
    ("kasan", re.compile(r"BUG: KASAN: |KASAN: \S+ in ")),
    ("kfence", re.compile(r"BUG: KFENCE: ")),
    ("kmsan", re.compile(r"BUG: KMSAN: ")),
    ("ubsan", re.compile(r"\bUBSAN: ")),
    # kmemleak: the report of /sys/kernel/debug/kmemleak, or the log with kmemleak.verbose=1.
    ("kmemleak", re.compile(r"unreferenced object 0x[0-9a-f]+ \(size \d+\)")),
    # DEBUG_OBJECTS: "ODEBUG: free active (active state 0) object: ... object type: timer_list".
    ("debugobjects", re.compile(r"\bODEBUG: \S+ .*\(active state \d+\)")),
    # SLUB debugging (slub_debug=...): "BUG kmalloc-64 (Not tainted): Poison overwritten".
    ("slub", re.compile(r"(?:^|\] )BUG [\w.:-]+ \((?:Not tainted|Tainted: [^)]*)\): ")),
    ("soft_lockup", re.compile(r"BUG: soft lockup - CPU#\d+ stuck")),
    ("hard_lockup", re.compile(r"Watchdog detected hard LOCKUP on cpu")),
    ("rcu_stall", re.compile(
        r"INFO: rcu_\w+ (?:self-)?detected (?:expedited )?stalls?"
        r"|rcu_\w+ kthread (?:timer wakeup didn't happen|starved)")),
    ("hung_task", re.compile(r"INFO: task .+:\d+ blocked for more than \d+ seconds")),
    ("workqueue_lockup", re.compile(r"BUG: workqueue lockup")),
    ("list_corruption", re.compile(r"\blist_(?:add|del)(?:_rcu)? corruption|\blist_add double add")),
    ("refcount", re.compile(r"\brefcount_t: (?:underflow|overflow|saturated|addition on 0|decrement hit 0)")),
    ("bad_page", re.compile(r"BUG: Bad (?:page state|page map|rss-counter)")),
    ("gpf", re.compile(r"general protection fault")),
    ("bug", re.compile(r"(?:^|\] )BUG: |kernel BUG at ")),
    ("oops", re.compile(r"(?:^|\] )Oops(?::| -|\b)|^\S[^:]*: [0-9a-f]{4} \[#\d+\]")),
    ("warning", re.compile(r"(?:^|\] )WARNING: ")),
]

#: Lines kept after a finding as context for the report.
_CONTEXT_LINES = 12
#: A report stays "open" until "---[ end trace" or this many lines: generic
#: follow-ups inside it (the "Oops:" header after "BUG: kernel NULL pointer
#: dereference", "invalid opcode" after "kernel BUG at") join the same finding.
_REPORT_SPAN = 40
_FOLLOW_UP = frozenset({"oops", "bug", "gpf", "warning"})
_END_TRACE = re.compile(r"---\[ end trace|---\[ end Kernel panic")

# One kernel log line: optional "<4>" level or "4,123,456,-;" kmsg header, optional
# "[    1.234567]" timestamp (and "[  T123]"/"[  C1]" caller id), then the message.
_LINE_RE = re.compile(
    r"^(?:<\d+>|\d+,\d+,\d+,[^;]*;)?"
    r"(?P<ts>\[\s*\d+\.\d+\](?:\[\s*[TC]\d+\])?)?\s?"
    r"(?P<msg>.*)$"
)
_MARKER_RE = re.compile(r"\baem-test: (?P<what>begin|end) (?P<name>\S+)")


@dataclass(frozen=True)
class Finding:
    """One splat in the kernel log."""

    kind: str            #: panic, lockdep, kasan, kfence, ubsan, kmemleak, soft_lockup, rcu_stall, hung_task, bug, oops, gpf, warning, ...
    message: str         #: the matching log message (timestamp stripped)
    lineno: int          #: 1-based line number in the scanned text
    test: str | None = None          #: test running when it was printed (markers)
    context: tuple[str, ...] = field(default=(), compare=False)  #: following lines
    related: tuple[str, ...] = ()    #: kinds of follow-up lines of the same report (e.g. "oops")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["context"] = list(self.context)
        d["related"] = list(self.related)
        return d

    def __str__(self) -> str:
        where = f" [test {self.test}]" if self.test else ""
        return f"{self.kind}{where}: {self.message}"


def _split(line: str) -> tuple[bool, str]:
    """Return (has_kernel_prefix, message) for one line of log text."""
    line = line.rstrip("\r\n").replace("\r", "")
    m = _LINE_RE.match(line)
    assert m is not None  # the regex matches any string
    prefixed = bool(m["ts"]) or line.startswith("<") or bool(re.match(r"\d+,\d+,\d+,", line))
    return prefixed, m["msg"]


def classify(message: str) -> str | None:
    """Kind of splat that *message* (one log message) starts, or None."""
    for kind, pat in _PATTERNS:
        if pat.search(message):
            return kind
    return None


def scan(text: str, *, kernel_only: bool = False) -> list[Finding]:
    """Return the splats in *text*, in log order, attributed to tests by markers.

    With ``kernel_only=True`` lines without a kernel prefix (timestamp, level or
    kmsg header) are ignored: use it for a serial console log, where the test
    command's own output is mixed in.
    """
    lines = text.splitlines()
    findings: list[Finding] = []
    current: str | None = None
    open_idx: int | None = None   # index in findings of the report still being printed
    open_until = -1
    for i, raw in enumerate(lines):
        prefixed, msg = _split(raw)
        if kernel_only and not prefixed:
            continue
        mk = _MARKER_RE.search(msg)
        if mk:
            if mk["what"] == "begin":
                current = mk["name"]
            elif current == mk["name"] or current is None:
                current = None
            continue
        if _END_TRACE.search(msg):
            open_idx = None
            continue
        kind = classify(msg)
        if kind is None:
            continue
        if open_idx is not None and i <= open_until and kind in _FOLLOW_UP:
            prev = findings[open_idx]
            findings[open_idx] = Finding(prev.kind, prev.message, prev.lineno, prev.test,
                                         prev.context, prev.related + (kind,))
            continue
        ctx = tuple(_split(x)[1] for x in lines[i + 1:i + 1 + _CONTEXT_LINES])
        findings.append(Finding(kind=kind, message=msg.strip(), lineno=i + 1, test=current, context=ctx))
        open_idx, open_until = len(findings) - 1, i + _REPORT_SPAN
    return findings


def by_test(findings: list[Finding]) -> dict[str | None, list[Finding]]:
    """Group findings by the test they are attributed to (None: outside tests)."""
    out: dict[str | None, list[Finding]] = {}
    for f in findings:
        out.setdefault(f.test, []).append(f)
    return out


# --------------------------------------------------------------------------- taint

#: (bit, letter, meaning) as in the kernel's taint_flags[] (kernel/panic.c, 6.1).
TAINT_FLAGS: list[tuple[int, str, str]] = [
    (0, "P", "proprietary module was loaded"),
    (1, "F", "module was force loaded"),
    (2, "S", "kernel running on an out of specification system"),
    (3, "R", "module was force unloaded"),
    (4, "M", "processor reported a Machine Check Exception"),
    (5, "B", "bad page referenced or unexpected page flags"),
    (6, "U", "taint requested by user space"),
    (7, "D", "kernel died recently (OOPS or BUG)"),
    (8, "A", "ACPI table overridden by user"),
    (9, "W", "kernel issued warning"),
    (10, "C", "staging driver was loaded"),
    (11, "I", "workaround for bug in platform firmware applied"),
    (12, "O", "externally-built (out-of-tree) module was loaded"),
    (13, "E", "unsigned module was loaded"),
    (14, "L", "soft lockup occurred"),
    (15, "K", "kernel has been live patched"),
    (16, "X", "auxiliary taint (distribution-defined)"),
    (17, "T", "kernel was built with the struct randomization plugin"),
    (18, "N", "an in-kernel test has been run"),
]

#: Taint bits a certification run tolerates: our own module is out of tree (O)
#: and unsigned (E).  Everything else fails the run.
ACCEPTABLE_TAINT = (1 << 12) | (1 << 13)


@dataclass(frozen=True)
class Taint:
    """A decoded ``/proc/sys/kernel/tainted`` value."""

    value: int
    letters: str                 #: set flags, e.g. "OE"
    reasons: tuple[str, ...]     #: meanings of the set flags
    unacceptable: str            #: set flags other than O and E, e.g. "DW"

    @property
    def ok(self) -> bool:
        return not self.unacceptable

    def kernel_string(self) -> str:
        """The kernel's own rendering, as in ``Tainted: G           OE``."""
        out = []
        for bit, letter, _ in TAINT_FLAGS:
            if self.value & (1 << bit):
                out.append(letter)
            else:
                out.append("G" if bit == 0 else " ")
        return "".join(out).rstrip() or "G"

    def to_dict(self) -> dict:
        return {"value": self.value, "letters": self.letters, "reasons": list(self.reasons),
                "unacceptable": self.unacceptable, "ok": self.ok}


def decode_taint(value: int | str, acceptable: int = ACCEPTABLE_TAINT) -> Taint:
    """Decode a taint mask (int or the text of /proc/sys/kernel/tainted)."""
    v = int(str(value).strip() or "0")
    letters, reasons, bad = [], [], []
    for bit, letter, meaning in TAINT_FLAGS:
        if v & (1 << bit):
            letters.append(letter)
            reasons.append(meaning)
            if not acceptable & (1 << bit):
                bad.append(letter)
    known = sum(1 << b for b, _, _ in TAINT_FLAGS)
    if v & ~known:
        letters.append("?")
        reasons.append(f"unknown taint bits 0x{v & ~known:x}")
        bad.append("?")
    return Taint(value=v, letters="".join(letters), reasons=tuple(reasons), unacceptable="".join(bad))


# --------------------------------------------------------------------------- combined

@dataclass(frozen=True)
class Report:
    """Kernel health after a run: splats plus taint."""

    findings: tuple[Finding, ...]
    taint: Taint | None
    new_taint: Taint | None = None   #: bits that appeared during the run (if a baseline was given)

    @property
    def ok(self) -> bool:
        taint = self.new_taint or self.taint
        return not self.findings and (taint is None or taint.ok)

    def problems(self) -> list[str]:
        """Human-readable list of what makes the kernel unhealthy."""
        out = [str(f) for f in self.findings]
        taint = self.new_taint or self.taint
        if taint is not None and not taint.ok:
            out.append(f"tainted {taint.value} ({taint.letters}): "
                       + "; ".join(taint.reasons))
        return out

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "findings": [f.to_dict() for f in self.findings],
            "taint": self.taint.to_dict() if self.taint else None,
            "new_taint": self.new_taint.to_dict() if self.new_taint else None,
        }


def check(text: str, tainted: int | str | None = None, *, tainted_before: int | str | None = None,
          kernel_only: bool = False) -> Report:
    """Scan *text* and decode *tainted*; with *tainted_before*, judge only new taint bits."""
    taint = decode_taint(tainted) if tainted is not None and str(tainted).strip() else None
    new = None
    if taint is not None and tainted_before is not None and str(tainted_before).strip():
        new = decode_taint(taint.value & ~decode_taint(tainted_before).value)
    return Report(findings=tuple(scan(text, kernel_only=kernel_only)), taint=taint, new_taint=new)
