"""``cglcert certify``'s kernel hardening: aem_ktests' fault-injection tables, the ABI
fuzzer's passes and trinity (the target script, the parsers, the blockers), their command
line options, and the report's "Kernel hardening" section."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from cglcert import certify as cf
from cglcert import kmsg
from cglcert import results as res
from cglcert.commands import certify as cmd

from conftest import REPO
from test_certify import CATALOG, EXPECTED, all_pass
from test_kmsg_debug import BOOT_LEAK, write_ktap, write_scans

# --------------------------------------------------------------------------- aem_ktests

SWEEP_ROWS = """\
# operation        points failed leaked  errnos seen
# register_soft        14      1      0  14 
# register_timer       15      2      0  14 12 
# ring_setup            9      3      0  12 
# ctl_stats             4      0      0  - 
"""
SITES = """\
# site                                     operation      result
# /sys/kernel/debug/aem/fail_reg_alloc     register_soft  -12
# /sys/kernel/debug/aem/fail_ring_alloc    ring_setup     -12
# /sys/kernel/debug/aem/fail_wait_alloc    wait           -12
# /sys/kernel/debug/aem/fail_arena_setup   arena_setup    0
"""


def ktests(sweep: str, sites: str = SITES + "ok 13 fault_sites_own\n") -> str:
    """aem_ktests' output around the two fault-injection tests (as harness.c prints it)."""
    return ("KTAP version 1\n1..13\nok 1 reg_basic\n# 12 registrations\nok 2 fd_hup\n"
            + "".join(f"ok {i} t{i}\n" for i in range(3, 12)) + sweep + sites + "# 0 failed\n")


GOOD = ktests(SWEEP_ROWS + "# fault points met: 140\nok 12 fault_sweep_fail_nth\n")
FAILED = ktests("# operation        points failed leaked  errnos seen\n"
                "# register_soft        14      1      0  14 \n"
                "# register_timer       15      2      2  14 12 \n"
                "# fault_sweep_fail_nth: register_timer: 2 registrations left after its "
                "sweep\nnot ok 12 fault_sweep_fail_nth\n")
SKIPPED = ktests("ok 12 fault_sweep_fail_nth # SKIP no failslab or fail-nth: a kernel with "
                 "CONFIG_FAILSLAB (the debug kernel)\n")


def test_parse_the_fault_sweep_table(tmp_path: Path) -> None:
    write_ktap(tmp_path, "aem_ktests", GOOD, 0)
    fs = cf.fault_sweep(tmp_path)
    assert (fs["status"], fs["reason"], fs["points"]) == ("pass", "", 140)
    assert [(r["operation"], r["points"], r["failed"], r["leaked"], r["errnos"])
            for r in fs["rows"]] == [("register_soft", 14, 1, 0, [14]),
                                     ("register_timer", 15, 2, 0, [14, 12]),
                                     ("ring_setup", 9, 3, 0, [12]), ("ctl_stats", 4, 0, 0, [])]
    assert fs["rows"][1]["errno_names"] == ["EFAULT", "ENOMEM"]
    assert (fs["failed"], fs["leaked"], fs["kernel_reports"]) == (6, 0, [])
    assert fs["own_sites_status"] == "pass"
    assert fs["own_sites"][0] == {"site": "/sys/kernel/debug/aem/fail_reg_alloc",
                                  "operation": "register_soft", "result": -12,
                                  "errno": "ENOMEM"}
    assert fs["own_sites"][3]["errno"] is None


def test_a_failed_sweep_keeps_its_rows_and_the_harness_reason(tmp_path: Path) -> None:
    write_ktap(tmp_path, "aem_ktests", FAILED, 1)
    fs = cf.fault_sweep(tmp_path)
    assert fs["status"] == "fail"
    assert fs["reason"] == "register_timer: 2 registrations left after its sweep"
    assert [r["leaked"] for r in fs["rows"]] == [0, 2] and fs["leaked"] == 2
    assert fs["points"] == 29  # no total line: the rows' sum


def test_a_skipped_sweep_says_why(tmp_path: Path) -> None:
    write_ktap(tmp_path, "aem_ktests", SKIPPED, 0)
    fs = cf.fault_sweep(tmp_path)
    assert fs["status"] == "skip" and fs["rows"] == [] and fs["points"] is None
    assert fs["reason"].startswith("no failslab or fail-nth")
    assert fs["own_sites_status"] == "pass" and len(fs["own_sites"]) == 4


def test_a_missing_sweep_or_table_is_an_error_not_nothing(tmp_path: Path) -> None:
    fs = cf.fault_sweep(tmp_path)
    assert fs["status"] == "missing" and fs["reason"] == "aem_ktests did not run"
    assert cf.fault_sweep(tmp_path, ran=False)["reason"].endswith(
        "(the run ended before the KTAP phase)")
    write_ktap(tmp_path, "aem_ktests", "KTAP version 1\n1..13\nok 1 reg_basic\n", 139)
    fs = cf.fault_sweep(tmp_path)
    assert fs["status"] == "missing"
    assert fs["reason"] == ("fault_sweep_fail_nth is not in the output of aem_ktests "
                            "(aem_ktests exited with status 139 before it)")
    write_ktap(tmp_path, "aem_ktests", ktests("ok 12 fault_sweep_fail_nth\n"), 0)
    fs = cf.fault_sweep(tmp_path)
    assert fs["status"] == "error" and "printed no table" in fs["reason"]


def test_the_sweep_before_the_leaked_column() -> None:
    table = cf.parse_fault_sweep(["operation        points failed  errnos seen",
                                  "register_soft        14      1  14",
                                  "ctl_stats             4      0  -"])
    assert [(r["operation"], r["failed"], r["leaked"], r["errnos"]) for r in table["rows"]] \
        == [("register_soft", 1, None, [14]), ("ctl_stats", 0, None, [])]


def test_kernel_reports_during_the_sweep_are_its_own(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_ktests", GOOD, 0)
    kasan = kmsg.Finding("kasan", "BUG: KASAN: use-after-free in aem_reg_free+0x3c/0x60 [aem]",
                         10, "fault_sweep_fail_nth")
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(findings=(kasan,)),
                 {"kernel": "6.1.192-debug"}, backend="kmod", stress_wanted=False,
                 ktap=["aem_ktests"])
    fs = r["hardening"]["fault_sweep"]
    assert [k["kind"] for k in fs["kernel_reports"]] == ["kasan"]
    assert fs["status"] == "fail" and fs["reason"] == (
        "kernel kasan during this test: BUG: KASAN: use-after-free in aem_reg_free+0x3c/0x60 "
        "[aem] (the test itself: pass)")
    assert len(fs["rows"]) == 4  # the table is still there
    assert fs["own_sites_kernel_reports"] == [] and fs["own_sites_status"] == "pass"
    assert any(b.startswith("KTAP aem_ktests: FAIL: kernel kasan during this test")
               for b in r["health"]["blockers"])
    assert "fuzz" not in r["hardening"]


# --------------------------------------------------------------------------- the fuzzer

SUMMARY = ("aem_fuzz: seed={seed} threads={threads} calls=46892 (main 40002, children 6890) "
           "seconds=14.1 calls/s=2835 findings={findings} leak={leak} | INFO 1570 (ok 1419 "
           "EINVAL 151); REGISTER 9000 (ok 8000 EBUSY 1000); other: fork 12\n")
HEADER = ("# aem_fuzz seed={seed} threads={threads} calls=40000 actions=0 seconds=120 "
          "uid=1000 skip=\naem_fuzz: seed {seed} (uid 1000, families 0x3f, min period 100000 "
          "ns, limits 4096 1024)\n")
FINDING = ("aem_fuzz: FINDING 1 [T0 call 812, seed {seed}]: WAIT returned 3 deliveries of an "
           "id never registered\n  call: 812 WAIT(ctx 2, max 16) =>3\n  last 2 calls of T0:\n"
           "    811 RAISE(ctx 2, id 7) =>0\n    812 WAIT(ctx 2, max 16) =>3\n"
           "  reproduce: aem_fuzz --seed {seed} --threads 1 --calls 40000 --actions 812 "
           "--uid 1000\n")


def write_pass(run: Path, n: int, text: str | None, rc: int | None) -> None:
    (run / "fuzz").mkdir(exist_ok=True)
    if text is not None:
        (run / "fuzz" / f"pass-{n}.txt").write_text(text)
    if rc is not None:
        (run / "fuzz" / f"pass-{n}.rc").write_text(f"{rc}\n")


def clean_pass(seed: int, threads: int) -> str:
    return (HEADER.format(seed=seed, threads=threads)
            + SUMMARY.format(seed=seed, threads=threads, findings=0, leak=0))


def write_trinity(run: Path, text: str, rc: int) -> None:
    (run / "fuzz").mkdir(exist_ok=True)
    (run / "fuzz" / "trinity.txt").write_text(text)
    (run / "fuzz" / "trinity.rc").write_text(f"{rc}\n")


PASSES = cf.Plan(repo=REPO, run_dir=Path("/nonexistent"), kernel=None, backend="kmod",
                 target="qemu", fuzz_calls=40000, fuzz_seed=1).fuzz_passes()
TRINITY_LOG = ("[main] Ran 1187 syscalls. Successes: 402  Failures: 785\n"
               "[main] Ran 25112 syscalls. Successes: 8730  Failures: 16382\n")


def test_parse_a_clean_pass() -> None:
    out = cf.parse_fuzz_output(clean_pass(2, 4))
    assert out["summary"] == {"seed": 2, "threads": 4, "calls": 46892, "main_calls": 40002,
                              "child_calls": 6890, "seconds": 14.1, "calls_per_s": 2835,
                              "findings": 0, "leak": 0}
    assert out["findings"] == [] and out["reproduce"] is None


def test_parse_a_pass_with_a_finding() -> None:
    out = cf.parse_fuzz_output(HEADER.format(seed=1, threads=1) + FINDING.format(seed=1)
                               + SUMMARY.format(seed=1, threads=1, findings=1, leak=0))
    assert out["summary"]["findings"] == 1
    assert out["findings"] == ["FINDING 1 [T0 call 812, seed 1]: WAIT returned 3 deliveries "
                               "of an id never registered"]
    assert out["reproduce"] == ("aem_fuzz --seed 1 --threads 1 --calls 40000 --actions 812 "
                                "--uid 1000")


def test_clean_passes_and_trinity_certify(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_pass(tmp_path, 1, clean_pass(1, 1), 0)
    write_pass(tmp_path, 2, clean_pass(2, 4), 0)
    write_trinity(tmp_path, TRINITY_LOG, 0)
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), {"kernel": "k"},
                 backend="kmod", stress_wanted=False, fuzz=PASSES, trinity=60)
    assert r["health"]["blockers"] == [] and r["verdict"]["cgl_2_0"]["conformant"]
    fuzz = r["hardening"]["fuzz"]
    p1, p2 = fuzz["passes"]
    assert {k: p1[k] for k in ("seed", "threads", "calls", "seconds", "calls_per_s",
                               "findings", "leak", "rc")} == {
        "seed": 1, "threads": 1, "calls": 46892, "seconds": 14.1, "calls_per_s": 2835,
        "findings": 0, "leak": 0, "rc": 0}
    assert (p2["seed"], p2["threads"], p2["calls_requested"]) == (2, 4, 40000)
    assert p1["reproduce"] == "aem_fuzz --seed 1 --threads 1 --calls 40000 --uid 1000"
    assert p1["problem"] is None and p1["kernel_reports"] == []
    assert fuzz["trinity"]["syscalls"] == 25112 and fuzz["trinity"]["problem"] is None
    assert "fault_sweep" not in r["hardening"]
    json.dumps(r)  # results.json stays JSON


@pytest.mark.parametrize("text, rc, problem", [
    (HEADER.format(seed=1, threads=1) + FINDING.format(seed=1)
     + SUMMARY.format(seed=1, threads=1, findings=1, leak=0), 1,
     "1 finding: FINDING 1 [T0 call 812, seed 1]: WAIT returned 3 deliveries"),
    (clean_pass(1, 1).replace("leak=0", "leak=3"), 1, "3 registrations of uid 1000 left after"),
    (clean_pass(1, 1).replace("leak=0", "leak=-1"), 1, "its leak check failed"),
    (HEADER.format(seed=1, threads=1), 139, "no summary line: the fuzzer died (exit status 139)"),
    (HEADER.format(seed=1, threads=1), 124, "no summary line: killed by the watchdog (status 124)"),
    (clean_pass(1, 1), 2, "exited with status 2"),
    (None, None, "did not run (aem_fuzz not found?)"),
])
def test_a_pass_that_is_not_clean_blocks_with_its_seed(tmp_path: Path, text, rc,
                                                       problem) -> None:
    all_pass(tmp_path)
    write_pass(tmp_path, 1, text, rc)
    write_pass(tmp_path, 2, clean_pass(2, 4), 0)
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), {"kernel": "k"},
                 backend="kmod", stress_wanted=False, fuzz=PASSES)
    (blocker,) = r["health"]["blockers"]
    assert blocker.startswith("aem_fuzz pass 1 (seed 1, 1 thread, 40000 calls): " + problem), \
        blocker
    repro = ("aem_fuzz --seed 1 --threads 1 --calls 40000 --actions 812 --uid 1000"
             if "FINDING" in (text or "") else
             "aem_fuzz --seed 1 --threads 1 --calls 40000 --uid 1000")
    assert blocker.endswith(f"; reproduce: {repro}")
    assert not r["verdict"]["cgl_2_0"]["conformant"]
    assert r["hardening"]["fuzz"]["passes"][0]["problem"].startswith(problem)


def test_a_fuzzer_that_died_has_no_figures(tmp_path: Path) -> None:
    write_pass(tmp_path, 1, HEADER.format(seed=1, threads=1)
               + "aem_fuzz: signal 11 at address 0x8 (pid 301); backtrace:\n", 139)
    (p,) = cf.fuzz_results(tmp_path, PASSES[:1], 0)["passes"]
    assert (p["calls"], p["calls_per_s"], p["findings"], p["leak"], p["rc"]) == \
        (None, None, 0, None, 139)


def test_the_run_ended_before_the_fuzz_phase(tmp_path: Path) -> None:
    fuzz = cf.fuzz_results(tmp_path, PASSES, 60, ran=False)
    assert [p["problem"] for p in fuzz["passes"]] == \
        ["did not run (the run ended before the fuzz phase)"] * 2
    assert fuzz["trinity"]["problem"] == "did not run (the run ended before the fuzz phase)"
    assert len(cf.fuzz_blockers(fuzz)) == 3


def test_trinity_that_did_not_run_blocks(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_pass(tmp_path, 1, clean_pass(1, 1), 0)
    write_pass(tmp_path, 2, clean_pass(2, 4), 0)
    write_trinity(tmp_path, "Error opening tracing_on : Permission denied\n"
                  "trinity did not run (exit 139)\n", 1)
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), {"kernel": "k"},
                 backend="kmod", stress_wanted=False, fuzz=PASSES, trinity=60)
    assert r["health"]["blockers"] == [
        "trinity (60 s against /dev/aem as uid 1000): did not run (exit status 1): trinity "
        "did not run (exit 139)"]
    assert r["hardening"]["fuzz"]["trinity"]["syscalls"] is None


def test_a_splat_during_a_pass_is_blamed_on_it(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_pass(tmp_path, 1, clean_pass(1, 1), 0)
    write_pass(tmp_path, 2, clean_pass(2, 4), 0)
    write_trinity(tmp_path, TRINITY_LOG, 0)
    log = ("[1.0] aem-test: begin fuzz.pass-2\n"
           "[2.0] BUG: KASAN: slab-use-after-free in aem_wait+0x1c4/0x2a0 [aem]\n"
           "[2.1] ---[ end trace 0000000000000000 ]---\n"
           "[3.0] aem-test: end fuzz.pass-2\n[4.0] aem-test: begin fuzz.trinity\n"
           "[5.0] WARNING: CPU: 0 PID: 77 at aem_core.c:100 aem_mmap+0x1/0x2 [aem]\n"
           "[6.0] aem-test: end fuzz.trinity\n")
    findings = tuple(kmsg.scan(log))
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(findings=findings),
                 {"kernel": "k"}, backend="kmod", stress_wanted=False, fuzz=PASSES,
                 trinity=60)
    assert r["health"]["blockers"] == [
        "kernel kasan during aem_fuzz pass 2 (seed 2; reproduce: aem_fuzz --seed 2 "
        "--threads 4 --calls 40000 --uid 1000): BUG: KASAN: slab-use-after-free in "
        "aem_wait+0x1c4/0x2a0 [aem]",
        "kernel warning during trinity: WARNING: CPU: 0 PID: 77 at aem_core.c:100 "
        "aem_mmap+0x1/0x2 [aem]"]
    fuzz = r["hardening"]["fuzz"]
    assert [k["kind"] for k in fuzz["passes"][1]["kernel_reports"]] == ["kasan"]
    assert [k["kind"] for k in fuzz["trinity"]["kernel_reports"]] == ["warning"]


def test_a_panic_during_a_pass(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_pass(tmp_path, 1, HEADER.format(seed=1, threads=1), None)
    log = "[1.0] aem-test: begin fuzz.pass-1\n[2.0] Kernel panic - not syncing: Fatal exception\n"
    ex = cf.Execution(error="panic", detail="Kernel panic - not syncing: Fatal exception",
                      kernel_log=log, findings=tuple(kmsg.scan(log)))
    r = cf.judge(CATALOG, EXPECTED, tmp_path, ex, {"kernel": "k"}, backend="kmod",
                 stress_wanted=False, fuzz=PASSES)
    blockers = r["health"]["blockers"]
    assert any(b.startswith("kernel panic during aem_fuzz pass 1 (seed 1") for b in blockers)
    assert any(b.startswith("aem_fuzz pass 1 (seed 1, 1 thread, 40000 calls): no summary "
                            "line: the kernel panicked during the pass") for b in blockers)
    assert any(b.startswith("aem_fuzz pass 2 (seed 2, 4 threads, 40000 calls): did not run")
               for b in blockers)


# --------------------------------------------------------------------------- the script


def art(tmp_path: Path) -> cf.Artifacts:
    return cf.Artifacts(suite=tmp_path / "suite", stress_build=None,
                        modules=[tmp_path / "aem.ko", tmp_path / "aem_timer.ko"])


def test_the_fuzz_phase_runs_after_ktap_and_before_the_unload(tmp_path: Path) -> None:
    plan = cf.Plan(repo=REPO, run_dir=tmp_path, kernel="debug", backend="kmod", target="qemu",
                   timeout_factor=4, kmemleak=True, stress=False,
                   ktap=[REPO / "reference/kmod/tests/aem_ktests"],
                   fuzz_calls=40000, fuzz_seed=7, trinity=60)
    s = cf.target_script(plan, art(tmp_path))
    fuzzer = str(REPO / cf.FUZZER)
    assert (f"{fuzzer} --seed 7 --threads 1 --calls 40000 --uid 1000 --seconds 480 "
            "--ring-file /tmp/ring-1 > \"$R/fuzz/pass-1.txt\" 2>&1") in s
    assert f"{fuzzer} --seed 8 --threads 4 --calls 40000 --uid 1000 --seconds 480 " in s
    assert f"timeout -k 10 {480 + 90 * 4} {fuzzer}" in s
    assert f"{REPO / 'ci/run-kmod-fuzz'} --trinity-in-guest 60 \"$R/fuzz/trinity.txt\"" in s
    assert f"{fuzzer} --dump-ring /tmp/ring-2 > \"$R/fuzz/ring-2.txt\"" in s
    order = ["mark begin ktap.aem_ktests", "mark begin fuzz.pass-1", "mark end fuzz.pass-1",
             "mark begin fuzz.pass-2", "mark end fuzz.pass-2", "mark begin fuzz.trinity",
             "mark end fuzz.trinity", "leakcheck loaded", "rmmod aem_timer aem",
             "leakcheck unloaded"]
    at = [s.index(x) for x in order]
    assert at == sorted(at), s
    assert s.count("--seed ") == 2
    assert plan.fuzz_timeout == 2 * (480 + 360 + 10) + 60 + 240 + 10
    assert plan.target_timeout == (cf.SUITE_TIMEOUT["default"] + cf.KTAP_TIMEOUT + 300 + 120
                                   ) * 4 + plan.fuzz_timeout


def test_no_fuzz_phase_unless_asked(tmp_path: Path) -> None:
    plain = cf.Plan(repo=REPO, run_dir=tmp_path, kernel=None, backend="kmod", target="qemu")
    s = cf.target_script(plain, art(tmp_path))
    assert "aem_fuzz" not in s and "fuzz." not in s and "trinity" not in s
    assert plain.fuzz_timeout == 0 and plain.fuzz_passes() == []
    user = cf.Plan(repo=REPO, run_dir=tmp_path, kernel=None, backend="user", target="qemu",
                   fuzz_calls=100, trinity=5)
    assert "aem_fuzz" not in cf.target_script(user, art(tmp_path))
    only_trinity = cf.Plan(repo=REPO, run_dir=tmp_path, kernel=None, backend="kmod",
                           target="qemu", trinity=30)
    s = cf.target_script(only_trinity, art(tmp_path))
    assert "--seed" not in s and "--trinity-in-guest 30 " in s
    assert only_trinity.fuzz_timeout == 30 + 60 + 10


def test_a_pass_of_many_calls_gets_a_longer_bound(tmp_path: Path) -> None:
    plan = cf.Plan(repo=REPO, run_dir=tmp_path, kernel=None, backend="kmod", target="qemu",
                   fuzz_calls=1_000_000, fuzz_seed=0)
    (p1, p2) = plan.fuzz_passes()
    assert (p1.seed, p1.threads, p1.seconds) == (0, 1, 3000)
    assert (p2.seed, p2.threads, p2.seconds) == (1, 4, 3000)


def test_fuzz_settings_default_on_the_debug_kernel_only() -> None:
    assert cf.fuzz_settings(None, None, True) == (40000, 60)
    assert cf.fuzz_settings(None, None, False) == (0, 0)
    assert cf.fuzz_settings(0, 0, True) == (0, 0)
    assert cf.fuzz_settings(500, None, False) == (500, 0)
    assert cf.fuzz_settings(None, 10, False) == (0, 10)


# --------------------------------------------------------------------------- command line


@pytest.fixture
def no_run(monkeypatch) -> None:
    """Arguments that pass the validation must not start a real certification here."""
    def refuse(*_a, **_k):
        raise AssertionError("the arguments were accepted: a certification would start")
    monkeypatch.setattr(cmd.hostdeps, "ensure", refuse)
    monkeypatch.setattr(cmd, "certify_one", refuse)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cmd.register(sub)
    return parser.parse_args(["certify", *argv])


@pytest.mark.parametrize("argv, message", [
    (["--fuzz-calls", "-1"], "'-1': give a non-negative integer"),
    (["--fuzz-calls", "lots"], "'lots': give a non-negative integer"),
    (["--fuzz-seed", "1.5"], "'1.5': give a non-negative integer"),
    (["--trinity", "1m"], "'1m': give a non-negative integer"),
    (["--backend", "user", "--fuzz-calls", "10"], "--fuzz-calls: only with --backend kmod"),
    (["--target", "ssh://root@lab1", "--trinity", "5"], "--trinity: not with an ssh target"),
    (["--fuzz-seed", "3"], "--fuzz-seed: only with --fuzz-calls N"),
    (["--fuzz-seed", "3", "--kernel", "debug", "--fuzz-calls", "0"],
     "--fuzz-seed: only with --fuzz-calls N"),
])
def test_bad_fuzz_arguments_are_usage_errors(run_cli, no_run, argv, message) -> None:
    r = run_cli("certify", *argv)
    assert r.code == 2, r.err
    assert message in r.err


def test_trinity_must_be_installed(run_cli, no_run, monkeypatch) -> None:
    monkeypatch.setattr(cmd.shutil, "which", lambda name: None)
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 1000)
    r = run_cli("certify", "--trinity", "30")
    assert r.code == 2
    assert "--trinity: needs trinity" in r.err and "sudo apt-get install trinity" in r.err
    r = run_cli("certify", "--kernel", "debug")
    assert r.code == 2 and "--kernel debug (trinity 60 s by default)" in r.err
    assert "--trinity 0" in r.err


def test_valid_fuzz_arguments(monkeypatch) -> None:
    monkeypatch.setattr(cmd.shutil, "which", lambda name: None)
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 1000)
    for argv in (["--kernel", "debug", "--trinity", "0", "--fuzz-seed", "5"],
                 ["--fuzz-calls", "100"], ["--backend", "user", "--fuzz-calls", "0"],
                 ["--kernel", "debug", "--backend", "user"]):
        cmd._validate(parse(*argv), REPO)
    # as root the host-packages step installs trinity
    monkeypatch.setattr(cmd.os, "geteuid", lambda: 0)
    args = parse("--kernel", "debug")
    cmd._validate(args, REPO)
    assert cmd.trinity_missing(args)
    assert "trinity" in cf.packages_needed("qemu", True, cmd.trinity_missing(args))
    assert "trinity" not in cf.packages_needed("qemu", True)
    monkeypatch.setattr(cmd.shutil, "which", lambda name: "/usr/bin/" + name)
    assert not cmd.trinity_missing(parse("--trinity", "5"))


# --------------------------------------------------------------------------- the report


def render(run: Path, results: dict) -> tuple[str, str]:
    from cglcert.report.html import render_html
    from cglcert.report.markdown import render_markdown
    from cglcert.report.model import load_report

    (run / "results.json").write_text(res.results_to_json(results))
    report = load_report([run])
    return render_html(report), render_markdown(report)


def test_the_report_shows_the_kernel_hardening(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_test", "KTAP version 1\n1..2\nok 1 a\nok 2 b # SKIP x\n", 0)
    write_ktap(tmp_path, "aem_ktests", GOOD, 0)
    write_scans(tmp_path, baseline=BOOT_LEAK, loaded=BOOT_LEAK, unloaded=BOOT_LEAK)
    write_pass(tmp_path, 1, clean_pass(1, 1), 0)
    write_pass(tmp_path, 2, HEADER.format(seed=2, threads=4) + FINDING.format(seed=2)
               + SUMMARY.format(seed=2, threads=4, findings=1, leak=0), 1)
    write_trinity(tmp_path, TRINITY_LOG, 0)
    env = {"kernel": "6.1.192-debug", "backend": "kmod",
           "kernel_debug_options": ["CONFIG_KASAN", "CONFIG_FAILSLAB"]}
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), env, backend="kmod",
                 stress_wanted=False, ktap=["aem_test", "aem_ktests"], kmemleak=True,
                 fuzz=PASSES, trinity=60)
    html, md = render(tmp_path, r)
    for text in (html, md):
        assert "Kernel hardening" in text
        assert "Kernel debug options (2, from its .config)" in text and "FAILSLAB" in text
        assert "KTAP totals: 14 ok, 0 not ok, 1 skipped in 2 program" in text
        assert "0 leak" in text
        assert "25112 syscalls" in text
        assert "EFAULT (14), ENOMEM (12)" in text
        assert "/sys/kernel/debug/aem/fail_reg_alloc (register_soft)" in text
        assert "fail-nth sweep: 4 operations" in text and "own fault sites: 4" in text
        assert "aem_fuzz --seed 2 --threads 1 --calls 40000 --actions 812 --uid 1000" in text
        assert "46892 (40002 + 6890)" in text and "2835" in text
    assert ("| `register_timer` | 15 | 2 | EFAULT (14), ENOMEM (12) | 0 |  |" in md), md
    assert "| **fail-nth sweep: 4 operations** | 140 | 6 | EFAULT (14), ENOMEM (12) | 0 | 0 |" in md
    assert ("| 1 | 1 | 1 | 40000 | 46892 (40002 + 6890) | 14.1 | 2835 | 0 | 0 | 0 | 0 | clean |"
            in md)
    assert ("| 2 | 2 | 4 | 40000 | 46892 (40002 + 6890) | 14.1 | 2835 | 1 | 0 | 0 | 1 | "
            "**1 finding") in md
    assert md.index("### Kernel hardening") < md.index("### Stress")
    assert 'id="run1-hardening"' in html and 'class="fault-sweep compact"' in html
    assert html.count('<tr class="fuzz-pass">') == 2
    summary = res.render_summary(r)
    assert "aem_fuzz pass 1 (seed 1, 1 thread(s)): 46892 calls, 2835 calls/s" in summary
    assert "trinity: 60 s, 25112 syscalls: ran" in summary
    assert "fault sweep: 140 fault points over 4 operations, 0 registrations leaked; pass" \
        in summary


def test_the_report_flags_a_missing_table(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_ktests", ktests("ok 12 fault_sweep_fail_nth\n",
                                              "ok 13 fault_sites_own\n"), 0)
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), {"kernel": "k", "backend": "kmod"},
                 backend="kmod", stress_wanted=False, ktap=["aem_ktests"])
    html, md = render(tmp_path, r)
    assert "**ERROR**" in md and "the fault-injection tests ran but no table was read" in md
    assert "fault_sweep_fail_nth passed but printed no table" in md
    assert '<span class="badge error">ERROR</span> the fault-injection tests ran' in html


def test_the_report_of_a_skipped_sweep_and_a_run_without_hardening(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_ktests", SKIPPED, 0)
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), {"kernel": "k", "backend": "kmod"},
                 backend="kmod", stress_wanted=False, ktap=["aem_ktests"])
    html, md = render(tmp_path, r)
    assert "- `fault_sweep_fail_nth`: skipped: no failslab or fail-nth" in md
    assert "own fault sites: 4" in md and "fail-nth sweep" not in md
    plain = tmp_path / "plain"
    plain.mkdir()
    all_pass(plain)
    r = cf.judge(CATALOG, EXPECTED, plain, cf.Execution(), {"kernel": "k", "backend": "kmod"},
                 backend="kmod", stress_wanted=False)
    assert "hardening" not in r
    html, md = render(plain, r)
    for text in (html, md):
        assert "Kernel hardening" in text
        assert "ABI fuzzer (aem_fuzz): not run" in text
        assert "kmemleak: not scanned" in text
    assert "- trinity: not run (`--trinity SECONDS`" in md
    assert "Fault injection (aem_ktests): not run" in md
