"""``cglcert soak``: durations, rounds, checkpoints that survive a kill, failing at a loss."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cglcert import UsageError, default_repo_root
from cglcert.commands import soak

REPO = default_repo_root()

# Fake harnesses: print the JSON the real ones print, after SOAK_FAKE_SLEEP seconds; the
# delivery one loses an occurrence in round SOAK_FAKE_LOSE_AT, the atomicity one sees an
# overlap in round SOAK_FAKE_OVERLAP_AT (rounds counted in files under SOAK_FAKE_DIR).
FAKE = r"""#!/bin/sh
n=$(cat "$SOAK_FAKE_DIR/{name}.n" 2>/dev/null || echo 0); n=$((n + 1))
echo $n > "$SOAK_FAKE_DIR/{name}.n"
sleep "${{SOAK_FAKE_SLEEP:-0}}"
[ "${{SOAK_FAKE_CRASH_AT:-0}}" = "$n" ] && {{ echo "boom" >&2; kill -SEGV $$; }}
{body}
"""
DELIVERY = r"""lost=0; [ "${SOAK_FAKE_LOSE_AT:-0}" = "$n" ] && lost=1
echo "{\"program\":\"aem_stress_delivery\",\"backend\":\"user\",\"config\":{\"stress_ng_started\":false},\"occurrences_activated\":1000,\"occurrences_delivered\":$((1000 - lost)),\"lost\":$lost,\"duplicated\":0,\"raise_errors\":0,\"unknown_ids\":0,\"elapsed_s\":0.5,\"ok\":true}"
[ $lost = 0 ]"""
ATOMICITY = r"""ov=0; [ "${SOAK_FAKE_OVERLAP_AT:-0}" = "$n" ] && ov=1
echo "{\"program\":\"aem_stress_atomicity\",\"backend\":\"user\",\"handler_overlaps\":$ov,\"same_registration_overlaps\":0,\"delivered_after_clean\":0,\"occurrences_activated\":10,\"occurrences_delivered\":10,\"lost\":0,\"duplicated\":0,\"ok\":true}"
[ $ov = 0 ]"""


@pytest.fixture
def fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A build directory whose stress/ holds the fake harnesses; returns the build dir."""
    build = tmp_path / "build"
    (build / "stress").mkdir(parents=True)
    for name, body in (("aem_stress_delivery", DELIVERY), ("aem_stress_atomicity", ATOMICITY)):
        p = build / "stress" / name
        p.write_text(FAKE.format(name=name, body=body))
        p.chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("SOAK_FAKE_DIR", str(state))
    monkeypatch.setenv("SOAK_FAKE_SLEEP", "0.05")
    return build


def _soak_args(build: Path, out: Path, *extra: str) -> list[str]:
    return ["soak", "--build-dir", str(build), "--no-build", "--no-stress-ng",
            "--out", str(out), *extra]


def _load(out: Path) -> dict[str, Any]:
    return json.loads((out / "soak.json").read_text(encoding="utf-8"))


def _check_round(r: dict[str, Any]) -> None:
    for key in ("round", "time", "offset_s", "elapsed_s", "load", "activated", "delivered",
                "lost", "duplicated", "overlaps", "metrics", "programs", "verdict", "reason"):
        assert key in r, key
    assert set(r["programs"]) == set(soak.PROGRAMS)


# --- pure parts ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [("90", 90), ("45s", 45), ("30m", 1800),
                                           ("8h", 28800), ("1.5d", 129600), (" 2 m ", 120)])
def test_parse_duration(text: str, seconds: float) -> None:
    assert soak.parse_duration("--duration", text) == seconds


@pytest.mark.parametrize("text", ["", "m", "5x", "-3", "1h30m", "1e3"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="30m, 8h"):
        soak.parse_duration("--duration", text)


def test_round_plan() -> None:
    odd = dict(soak.round_plan(60, 1, stress_ng=True))
    even = dict(soak.round_plan(60, 2, stress_ng=True))
    assert "--stress-ng" not in odd["aem_stress_delivery"]
    assert "--stress-ng" in even["aem_stress_delivery"], "every other round under load"
    assert "--stress-ng" not in dict(soak.round_plan(60, 2, False))["aem_stress_delivery"]
    d = odd["aem_stress_delivery"]
    assert float(d[d.index("--duration") + 1]) == pytest.approx(42)
    a = odd["aem_stress_atomicity"]
    assert int(a[a.index("--rounds") + 1]) == 45
    short = dict(soak.round_plan(1, 1, False))
    assert int(short["aem_stress_atomicity"][1]) >= 1


def _run(program: str, code: int = 0, **out: Any) -> dict[str, Any]:
    base = {"program": program, "occurrences_activated": 10, "occurrences_delivered": 10,
            "lost": 0, "duplicated": 0}
    if program == "aem_stress_atomicity":
        base.update(handler_overlaps=0, same_registration_overlaps=0, delivered_after_clean=0)
    base.update(out)
    return {"program": program, "argv": [], "exit_code": code, "elapsed_s": 1.0,
            "output": base, "stderr_tail": []}


def test_checkpoint_verdicts() -> None:
    ok = soak.checkpoint(1, 0.0, 2.0, [_run("aem_stress_delivery"), _run("aem_stress_atomicity")])
    assert ok["verdict"] == "PASS" and ok["activated"] == 20 and ok["delivered"] == 20
    lost = soak.checkpoint(2, 2.0, 2.0, [_run("aem_stress_delivery", 1, lost=1,
                                              occurrences_delivered=9),
                                         _run("aem_stress_atomicity")])
    assert lost["verdict"] == "FAIL" and lost["lost"] == 1 and "lost=1" in lost["reason"]
    ov = soak.checkpoint(3, 4.0, 2.0, [_run("aem_stress_delivery"),
                                       _run("aem_stress_atomicity", 1, handler_overlaps=2)])
    assert ov["verdict"] == "FAIL" and ov["overlaps"] == 2
    harness = soak.checkpoint(4, 6.0, 2.0, [_run("aem_stress_delivery", 1),
                                            _run("aem_stress_atomicity")])
    assert harness["verdict"] == "FAIL" and "aem_stress_delivery" in harness["reason"]
    crash = _run("aem_stress_delivery", -11)
    crash["output"] = None
    err = soak.checkpoint(5, 8.0, 2.0, [crash, _run("aem_stress_atomicity")])
    assert err["verdict"] == "ERROR" and "aem_stress_delivery" in err["reason"]


def test_soak_loop_with_fake_clock(tmp_path: Path) -> None:
    """Rounds until the duration is spent; the last round is cut to what remains."""
    now = [0.0]

    def clock() -> float:
        return now[0]

    def runner(path: Path, argv: list[str], env: dict[str, str], budget: float) -> dict:
        if path.name == "aem_stress_delivery":
            now[0] += float(argv[argv.index("--duration") + 1]) / soak.DELIVERY_SHARE
        return dict(_run(path.name), argv=argv)

    doc: dict[str, Any] = {"rounds": [], "status": "running"}
    code = soak.soak(doc, tmp_path / "soak.json", tmp_path, {}, duration_s=25, round_s=10,
                     stress_ng=False, runner=runner, clock=clock)
    assert code == 0 and doc["status"] == "passed"
    assert [r["round"] for r in doc["rounds"]] == [1, 2, 3]
    assert doc["rounds"][2]["programs"]["aem_stress_delivery"]["argv"][1] == "3.5"
    assert json.loads((tmp_path / "soak.json").read_text())["totals"]["rounds"] == 3


# --- the command, with fake harnesses -----------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--duration", "soon"], "30m, 8h"),
    (["--duration", "0.5"], "--duration 0.5"),
    (["--duration", "31d"], "30 days"),
    (["--duration", "10", "--round", "0.2"], "at least 1 s"),
    (["--duration", "10", "--round", "1m"], "longer than --duration"),
])
def test_usage_errors(tmp_path: Path, fake_build: Path, run_cli: Callable[..., Any],
                      extra: list[str], message: str) -> None:
    r = run_cli(*_soak_args(fake_build, tmp_path / "out", *extra))
    assert r.code == 2 and message in r.err
    assert not (tmp_path / "out" / "soak.json").exists()


def test_refuses_to_overwrite(tmp_path: Path, fake_build: Path,
                              run_cli: Callable[..., Any]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "soak.json").write_text("{}")
    r = run_cli(*_soak_args(fake_build, out, "--duration", "1"))
    assert r.code == 2 and "--force" in r.err
    assert (out / "soak.json").read_text() == "{}"
    r = run_cli(*_soak_args(fake_build, out, "--duration", "1", "--round", "1", "--force"))
    assert r.code == 0, r.err


def test_missing_programs(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    r = run_cli(*_soak_args(tmp_path / "nothing", tmp_path / "out", "--duration", "2"))
    assert r.code == 3 and "not built" in r.err


def test_passes_and_checkpoints_every_round(tmp_path: Path, fake_build: Path,
                                            run_cli: Callable[..., Any]) -> None:
    out = tmp_path / "out"
    r = run_cli(*_soak_args(fake_build, out, "--duration", "3", "--round", "1"))
    assert r.code == 0, r.err
    doc = _load(out)
    assert doc["schema"] == soak.SCHEMA and doc["status"] == "passed"
    assert doc["failure"] is None and doc["duration_s"] == 3 and doc["round_s"] == 1
    assert len(doc["rounds"]) >= 2
    for i, rnd in enumerate(doc["rounds"], 1):
        _check_round(rnd)
        assert rnd["round"] == i and rnd["verdict"] == "PASS"
    assert doc["totals"]["rounds"] == len(doc["rounds"])
    assert doc["totals"]["activated"] == 1010 * len(doc["rounds"])
    assert f"soak passed: {len(doc['rounds'])} rounds" in r.out


@pytest.mark.parametrize("var, field, reason", [
    ("SOAK_FAKE_LOSE_AT", "lost", "lost=1"),
    ("SOAK_FAKE_OVERLAP_AT", "overlaps", "handler_overlaps=1"),
])
def test_stops_at_first_loss_or_overlap(tmp_path: Path, fake_build: Path,
                                        run_cli: Callable[..., Any],
                                        monkeypatch: pytest.MonkeyPatch,
                                        var: str, field: str, reason: str) -> None:
    monkeypatch.setenv(var, "2")
    out = tmp_path / "out"
    r = run_cli(*_soak_args(fake_build, out, "--duration", "1h", "--round", "1"))
    assert r.code == 1, r.err
    doc = _load(out)
    assert doc["status"] == "failed"
    assert [x["verdict"] for x in doc["rounds"]] == ["PASS", "FAIL"], "stops at round 2"
    assert doc["rounds"][1][field] == 1
    assert doc["failure"]["round"] == 2 and reason in doc["failure"]["reason"]
    assert doc["totals"]["rounds"] == 2


def test_crash_is_infrastructure_error(tmp_path: Path, fake_build: Path,
                                       run_cli: Callable[..., Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOAK_FAKE_CRASH_AT", "1")
    out = tmp_path / "out"
    r = run_cli(*_soak_args(fake_build, out, "--duration", "1h", "--round", "1"))
    assert r.code == 3
    doc = _load(out)
    assert doc["status"] == "error" and doc["rounds"][0]["verdict"] == "ERROR"
    assert doc["rounds"][0]["programs"]["aem_stress_delivery"]["stderr_tail"] == ["boom"]


def _start(build: Path, out: Path, state_env: dict[str, str]) -> subprocess.Popen[str]:
    env = dict(os.environ, **state_env, PYTHONPATH=str(REPO / "ci"))
    return subprocess.Popen(
        [sys.executable, "-m", "cglcert", *_soak_args(build, out, "--duration", "1h",
                                                      "--round", "1")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_rounds(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if len(_load(out)["rounds"]) >= n:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"no {n} rounds in {timeout} s")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_soak_leaves_valid_results(tmp_path: Path, fake_build: Path,
                                               sig: signal.Signals) -> None:
    out = tmp_path / "out"
    proc = _start(fake_build, out, {"SOAK_FAKE_DIR": os.environ["SOAK_FAKE_DIR"],
                                    "SOAK_FAKE_SLEEP": "0.2"})
    try:
        _wait_rounds(out, 2, proc)
        proc.send_signal(sig)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    doc = _load(out)  # valid JSON whatever the moment of the kill
    assert len(doc["rounds"]) >= 2
    for i, rnd in enumerate(doc["rounds"], 1):
        _check_round(rnd)
        assert rnd["round"] == i and rnd["verdict"] == "PASS"
    assert doc["totals"]["rounds"] == len(doc["rounds"])
    assert not list(out.glob(".soak.json.tmp*")) or sig == signal.SIGKILL
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL and doc["status"] == "running"
    else:
        assert code == 130 and doc["status"] == "interrupted"


# --- one short real soak ----------------------------------------------------------------------

needs_toolchain = pytest.mark.skipif(
    shutil.which("cmake") is None or shutil.which("c++") is None,
    reason="cmake and a C++ compiler are needed to build stress/")


@needs_toolchain
def test_real_short_soak(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    out = tmp_path / "out"
    r = run_cli("soak", "--duration", "4", "--round", "2", "--backend", "user",
                "--no-stress-ng", "--out", str(out))
    assert r.code == 0, r.out + r.err
    doc = _load(out)
    assert doc["status"] == "passed" and len(doc["rounds"]) >= 2
    for rnd in doc["rounds"]:
        _check_round(rnd)
        assert rnd["activated"] == rnd["delivered"] > 0
        assert rnd["lost"] == rnd["duplicated"] == rnd["overlaps"] == 0
        assert rnd["metrics"]["delivery_per_s"] > 0
    assert doc["environment"]["kernel"]
