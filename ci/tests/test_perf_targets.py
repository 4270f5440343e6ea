"""``cglcert.perf_targets``: the project's performance targets from the programs' JSON."""

from __future__ import annotations

from typing import Any

from cglcert import perf_targets


def _mech(tput: float, p99: int) -> dict[str, Any]:
    return {"available": True, "throughput_events_per_s": tput,
            "latency_ns": {"p50": p99 // 2, "p99": p99}}


def _point(mech: str, n: int, cost: float, slab: float = 0.0) -> dict[str, Any]:
    return {"mechanism": mech, "n": n, "ok": True, "cost_per_event_ns": cost,
            "slab_bytes_per_registration": slab}


def _runs(**over: Any) -> list[dict[str, Any]]:
    bench = {
        "program": "aem_bench_compare",
        "mechanisms": {"epoll": _mech(100.0, 1000), "aem_kmod_evfd": _mech(160.0, 900),
                       "io_uring": _mech(150.0, 800), "rtsig": {"available": False}},
        "scaling": [_point("aem", 10, 100.0), _point("aem", 1000000, 120.0, 200.0),
                    _point("poll", 10, 100.0), _point("poll", 100000, 9000.0, 500.0)],
    }
    prio = {"program": "aem_prio_latency", "metrics": {
        "high_prio_latency_p99_unloaded": 100, "high_prio_latency_p99_loaded": 190,
        "high_prio_latency_p99_unloaded_no_enforcement": 100,
        "high_prio_latency_p99_loaded_no_enforcement": 900}}
    bench.update(over)
    return [{"program": "aem_bench_compare", "output": bench},
            {"program": "aem_prio_latency", "output": prio}]


def _by_id(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in rows}


def test_every_target_met_and_the_peers_named() -> None:
    rows = _by_id(perf_targets.evaluate(_runs()))
    assert set(rows) == {t.id for t in perf_targets.TARGETS}
    assert all(r["met"] is True for r in rows.values()), rows
    assert rows["throughput_vs_epoll"]["measured"] == 1.6
    assert "io_uring" in rows["throughput_vs_epoll"]["peers"]
    assert rows["cost_1e6_vs_10"]["measured"] == 1.2
    assert "poll x90 at 100000" in rows["cost_1e6_vs_10"]["peers"]
    assert "without enforcement x9" in rows["prio_p99_loaded_vs_unloaded"]["peers"]
    assert rows["kernel_bytes_per_registration"]["measured"] == 200.0


def test_a_missed_target_is_reported_with_its_figure() -> None:
    runs = _runs(mechanisms={"epoll": _mech(100.0, 1000), "aem_user_evfd": _mech(120.0, 2000),
                             "io_uring": _mech(150.0, 800)})
    rows = _by_id(perf_targets.evaluate(runs))
    assert rows["throughput_vs_epoll"]["met"] is False
    assert rows["throughput_vs_epoll"]["measured"] == 1.2
    assert rows["throughput_vs_io_uring"]["met"] is False
    assert rows["latency_p99_vs_epoll"]["measured"] == 2.0
    assert rows["latency_p99_vs_epoll"]["met"] is False


def test_a_sweep_short_of_a_million_is_not_measured_never_met() -> None:
    runs = _runs(scaling=[_point("aem", 10, 100.0), _point("aem", 65536, 100.0, 210.0)])
    rows = _by_id(perf_targets.evaluate(runs))
    assert rows["cost_1e6_vs_10"]["met"] is None
    assert "65536" in rows["cost_1e6_vs_10"]["why"]
    assert rows["kernel_bytes_per_registration"]["met"] is True  # 65536 weighs the slab


def test_no_programs_no_figures() -> None:
    rows = perf_targets.evaluate([{"program": "aem_bench_compare", "output": None}])
    assert all(r["met"] is None and r["why"] for r in rows)


def test_no_slab_figure_is_not_measured_not_zero() -> None:
    runs = _runs(scaling=[{"mechanism": "aem", "n": 1000000, "ok": True,
                           "cost_per_event_ns": 1.0}])
    row = _by_id(perf_targets.evaluate(runs))["kernel_bytes_per_registration"]
    assert row["met"] is None and row["measured"] is None
