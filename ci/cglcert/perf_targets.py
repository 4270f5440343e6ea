"""The project's performance targets for the reference AEM, judged from one stress run.

These are the goals the stress harnesses were built to measure (throughput against epoll
and io_uring, wakeup latency against epoll, flat cost up to 10^6 registrations, priority
latency under load, kernel memory per registration). They are not CGL requirements: the
catalog's thresholds decide the verdicts; a missed target is reported beside its peers,
with the figure, and never changes an exit code.

Each target is a ratio or a figure of the programs' own JSON (``aem_bench_compare``,
``aem_prio_latency``) measured in the same run on the same machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TARGETS", "evaluate"]

Outputs = Mapping[str, Mapping[str, Any]]  # program -> its JSON output


@dataclass(frozen=True)
class Target:
    id: str
    text: str
    op: str  # ">=" or "<="
    bound: float
    unit: str
    #: (measured, peers text) or (None, why it is not measured)
    measure: Callable[[Outputs], tuple[float | None, str]]


def _mechs(o: Outputs) -> Mapping[str, Any]:
    return (o.get("aem_bench_compare") or {}).get("mechanisms") or {}


def _aem_evfd(o: Outputs) -> tuple[str, Mapping[str, Any]] | None:
    for name, m in _mechs(o).items():
        if name.startswith("aem_") and name.endswith("_evfd") and m.get("available"):
            return name, m
    return None


def _avail(o: Outputs, name: str) -> Mapping[str, Any] | None:
    m = _mechs(o).get(name)
    return m if m and m.get("available") else None


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _throughput_ratio(peer: str) -> Callable[[Outputs], tuple[float | None, str]]:
    def measure(o: Outputs) -> tuple[float | None, str]:
        aem, ref = _aem_evfd(o), _avail(o, peer)
        if not aem or not ref:
            return None, f"no throughput of {'AEM (evfd)' if not aem else peer} in this run"
        peers = [f"{n} {_fmt(m['throughput_events_per_s'] / ref['throughput_events_per_s'])}x"
                 for n, m in _mechs(o).items()
                 if m.get("available") and n not in (aem[0], peer)]
        return (aem[1]["throughput_events_per_s"] / ref["throughput_events_per_s"],
                f"{aem[0]} {_fmt(aem[1]['throughput_events_per_s'])}/s, {peer} "
                f"{_fmt(ref['throughput_events_per_s'])}/s; others against {peer}: "
                + ", ".join(peers))
    return measure


def _latency_vs_epoll(o: Outputs) -> tuple[float | None, str]:
    aem, ep = _aem_evfd(o), _avail(o, "epoll")
    if not aem or not ep:
        return None, "no wakeup latency of AEM (evfd) or epoll in this run"
    peers = [f"{n} p99 {m['latency_ns']['p99']} ns" for n, m in _mechs(o).items()
             if m.get("available") and n not in (aem[0], "epoll")]
    return (aem[1]["latency_ns"]["p99"] / ep["latency_ns"]["p99"],
            f"{aem[0]} p99 {aem[1]['latency_ns']['p99']} ns, epoll p99 "
            f"{ep['latency_ns']['p99']} ns; " + ", ".join(peers))


def _sweep(o: Outputs) -> dict[str, dict[int, Mapping[str, Any]]]:
    by: dict[str, dict[int, Mapping[str, Any]]] = {}
    for p in (o.get("aem_bench_compare") or {}).get("scaling") or []:
        if p.get("ok"):
            by.setdefault(str(p.get("mechanism")), {})[int(p["n"])] = p
    return by


def _cost_ratio(o: Outputs) -> tuple[float | None, str]:
    sw = _sweep(o)
    aem = sw.get("aem") or {}
    if 10 not in aem or 1000000 not in aem:
        done = max(aem) if aem else 0
        return None, f"the AEM sweep reached {done} registrations, not 10 and 10^6"
    peers = [f"{m} x{_fmt(pts[max(pts)]['cost_per_event_ns'] / pts[10]['cost_per_event_ns'])} "
             f"at {max(pts)}" for m, pts in sw.items() if m != "aem" and 10 in pts]
    return (aem[1000000]["cost_per_event_ns"] / aem[10]["cost_per_event_ns"],
            f"{_fmt(aem[10]['cost_per_event_ns'])} ns at 10, "
            f"{_fmt(aem[1000000]['cost_per_event_ns'])} ns at 10^6; " + ", ".join(peers))


def _prio_ratio(o: Outputs) -> tuple[float | None, str]:
    m = (o.get("aem_prio_latency") or {}).get("metrics") or {}
    lo, un = m.get("high_prio_latency_p99_loaded"), m.get("high_prio_latency_p99_unloaded")
    if not lo or not un:
        return None, "no aem_prio_latency run"
    peers = f"p99 {un} ns unloaded, {lo} ns loaded"
    lo_n = m.get("high_prio_latency_p99_loaded_no_enforcement")
    un_n = m.get("high_prio_latency_p99_unloaded_no_enforcement")
    if lo_n and un_n:
        peers += f"; without enforcement x{_fmt(lo_n / un_n)} ({un_n} -> {lo_n} ns)"
    return lo / un, peers


def _kernel_memory(o: Outputs) -> tuple[float | None, str]:
    sw = _sweep(o)
    aem = sw.get("aem") or {}
    if not aem:
        return None, "no AEM sweep in this run"
    n = max(aem)
    if n < 10000:
        return None, f"the AEM sweep stopped at {n} registrations: too few to weigh the slab"
    if "slab_bytes_per_registration" not in aem[n]:
        return None, "the sweep did not weigh the slab"
    peers = [f"{m} {_fmt(pts[max(pts)].get('slab_bytes_per_registration', 0))} B at {max(pts)}"
             for m, pts in sw.items() if m != "aem" and max(pts) >= 10000]
    return (float(aem[n].get("slab_bytes_per_registration", 0)),
            f"slab growth over {n} registrations, of which the idle ones are software "
            f"events; " + ", ".join(peers))


TARGETS: Sequence[Target] = (
    Target("throughput_vs_epoll", "Event throughput at least 1.5x epoll + eventfd", ">=", 1.5,
           "x", _throughput_ratio("epoll")),
    Target("throughput_vs_io_uring", "Event throughput at least io_uring's (multishot poll)",
           ">=", 1.0, "x", _throughput_ratio("io_uring")),
    Target("latency_p99_vs_epoll", "Activation-to-handler p99 no worse than epoll's", "<=", 1.0,
           "x", _latency_vs_epoll),
    Target("cost_1e6_vs_10", "Cost per event at 10^6 registrations within 1.3x of at 10", "<=",
           1.3, "x", _cost_ratio),
    Target("prio_p99_loaded_vs_unloaded",
           "High-priority p99 under full CPU load within 2x of unloaded (enforcement on)", "<=",
           2.0, "x", _prio_ratio),
    Target("kernel_bytes_per_registration", "Kernel memory per registration at most 256 bytes",
           "<=", 256.0, "B", _kernel_memory),
)


def evaluate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target from the runs of ``cglcert stress`` (the first output of each
    program): measured, bound, met (None: not measured, with why) and the peers."""
    outputs: dict[str, Mapping[str, Any]] = {}
    for r in runs:
        o = r.get("output")
        if isinstance(o, dict) and o.get("program") and o["program"] not in outputs:
            outputs[o["program"]] = o
    rows = []
    for t in TARGETS:
        try:
            measured, detail = t.measure(outputs)
        except (KeyError, TypeError, ZeroDivisionError, ValueError) as exc:
            measured, detail = None, f"the programs' output lacks a figure ({exc!r})"
        row: dict[str, Any] = {"id": t.id, "target": t.text, "op": t.op, "bound": t.bound,
                               "unit": t.unit}
        if measured is None:
            row |= {"measured": None, "met": None, "why": detail}
        else:
            met = measured >= t.bound if t.op == ">=" else measured <= t.bound
            row |= {"measured": round(measured, 4), "met": met, "peers": detail}
        rows.append(row)
    return rows
