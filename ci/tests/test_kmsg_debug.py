"""cglcert.kmsg on the reports of the debug kernel (KASAN, KFENCE, UBSAN, lockdep,
DEBUG_ATOMIC_SLEEP, DEBUG_OBJECTS, DEBUG_LIST, kmemleak, hung task, soft lockup), as 6.1
prints them; and certify's judgement of the debug run: KTAP programs and kmemleak scans."""

from __future__ import annotations

from pathlib import Path

import pytest

from cglcert import certify as cf
from cglcert import kmsg
from cglcert import results as res

from conftest import REPO
from test_certify import CATALOG, EXPECTED, all_pass

# The first lines of each report as the 6.1 debug kernel prints them (dmesg rendering; the
# KASAN, KFENCE, UBSAN, lockdep, ODEBUG, hung-task and soft-lockup ones as a test module
# made the kernel of reference/kmod/tests/debug-kernel.config print them, names changed).
REPORTS = {
    "kasan": """\
[   41.512031] ==================================================================
[   41.512842] BUG: KASAN: slab-out-of-bounds in aem_reg_alloc+0x1c4/0x2a0 [aem]
[   41.513520] Write of size 8 at addr ffff888006a3c2c0 by task aem_test/231
[   41.514660] CPU: 1 PID: 231 Comm: aem_test Tainted: G           O       6.1.192-debug #1
[   41.515630] Call Trace:
[   41.515849]  <TASK>
[   41.516044]  dump_stack_lvl+0x5b/0x77
[   41.516414]  print_report+0x17f/0x47b
[   41.517510]  kasan_report+0xae/0xe0
[   41.518250]  aem_reg_alloc+0x1c4/0x2a0 [aem]
[   41.523101] ==================================================================
""",
    "kasan_uaf": """\
[   12.100000] BUG: KASAN: use-after-free in aem_ctx_put+0x3c/0x60 [aem]
[   12.100001] Read of size 4 at addr ffff888004f1e0a8 by task kworker/1:2/88
""",
    "kfence": """\
[   77.001002] ==================================================================
[   77.001422] BUG: KFENCE: out-of-bounds read in aem_ring_push+0x6d/0x90 [aem]
[   77.001422]
[   77.001422] Out-of-bounds read at 0x(____ptrval____) (48B right of kfence-#147):
[   77.001422]  aem_ring_push+0x6d/0x90 [aem]
""",
    "kfence_uaf": "[ 7.0] BUG: KFENCE: use-after-free read in aem_ctx_put+0x3c/0x60 [aem]\n",
    "ubsan": """\
[   30.441200] ================================================================================
[   30.441901] UBSAN: array-index-out-of-bounds in /tmp/aem/aem_queue.c:88:17
[   30.442602] index 64 is out of range for type 'list_head [64]'
[   30.443120] CPU: 0 PID: 240 Comm: aem_test Tainted: G           O       6.1.192-debug #1
""",
    "ubsan_shift": "[ 8.0] UBSAN: shift-out-of-bounds in /tmp/aem/aem_timer.c:41:19\n",
    "lockdep": """\
[   55.000000] ======================================================
[   55.000001] WARNING: possible circular locking dependency detected
[   55.000002] 6.1.192-debug #1 Tainted: G           O
[   55.000003] ------------------------------------------------------
[   55.000004] aem_test/260 is trying to acquire lock:
""",
    "lockdep_inconsistent": """\
[   56.000000] ================================
[   56.000001] WARNING: inconsistent lock state
[   56.000002] 6.1.192-debug #1 Tainted: G           O
[   56.000003] --------------------------------
[   56.000004] inconsistent {HARDIRQ-ON-W} -> {IN-HARDIRQ-W} usage.
""",
    "lockdep_rcu": """\
[   57.000000] =============================
[   57.000001] WARNING: suspicious RCU usage
[   57.000002] 6.1.192-debug #1 Tainted: G           O
[   57.000003] -----------------------------
[   57.000004] /tmp/aem/aem_fd.c:120 suspicious rcu_dereference_check() usage!
""",
    "lockdep_recursive": "[ 58.0] WARNING: possible recursive locking detected\n",
    "lockdep_balance": "[ 59.0] WARNING: bad unlock balance detected!\n",
    "lockdep_held": "[ 60.0] WARNING: lock held when returning to user space!\n",
    "atomic_sleep": """\
[   61.000000] BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580
[   61.000001] in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: 231, name: aem_test
""",
    "debugobjects": """\
[   62.000000] ------------[ cut here ]------------
[   62.000001] ODEBUG: free active (active state 0) object type: timer_list hint: aem_timer_fire+0x0/0x10 [aem_timer]
[   62.000002] WARNING: CPU: 0 PID: 81 at lib/debugobjects.c:515 debug_print_object+0x183/0x260
[   62.000003] Modules linked in: aem_timer(O) aem(O)
[   62.000010] ---[ end trace 0000000000000000 ]---
""",
    "list_corruption": """\
[   63.000000] list_del corruption, ffff888005a1c0a0->next is LIST_POISON1 (dead000000000100)
[   63.000001] ------------[ cut here ]------------
[   63.000002] kernel BUG at lib/list_debug.c:56!
""",
    "list_double_add": "[ 64.0] list_add double add: new=ffff888005a1c0a0, prev=ffff888005a1c0a0, "
                       "next=ffff888005a1c0b0.\n",
    "kmemleak": """\
[  120.000000] kmemleak: unreferenced object 0xffff888006a3c2c0 (size 192):
[  120.000001] kmemleak:   comm "aem_test", pid 231, jiffies 4294911234 (age 21.340s)
""",
    "hung_task": """\
[  244.000000] INFO: task aem_test:231 blocked for more than 120 seconds.
[  244.000001]       Tainted: G           O       6.1.192-debug #1
[  244.000002] "echo 0 > /proc/sys/kernel/hung_task_timeout_secs" disables this message.
""",
    "soft_lockup": "[  52.3] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [aem_test:231]\n",
    "slub": """\
[  65.000000] =============================================================================
[  65.000001] BUG kmalloc-192 (Tainted: G    B      O      ): Poison overwritten
[  65.000002] -----------------------------------------------------------------------------
""",
    "workqueue_lockup": "[ 66.0] BUG: workqueue lockup - pool cpus=1 node=0 flags=0x0 nice=0 "
                        "stuck for 41s!\n",
}

#: The kind each report is classified as (DEBUG_ATOMIC_SLEEP's is a plain ``bug``).
KIND = {name: name.split("_")[0] for name in REPORTS
        if name.startswith(("kasan", "kfence", "ubsan", "lockdep"))}
KIND.update(atomic_sleep="bug", list_double_add="list_corruption", kmemleak="kmemleak",
            workqueue_lockup="workqueue_lockup", soft_lockup="soft_lockup", slub="slub",
            hung_task="hung_task", debugobjects="debugobjects", list_corruption="list_corruption")


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_each_debug_report_is_one_finding_of_its_kind(name: str) -> None:
    found = kmsg.scan(REPORTS[name])
    assert [f.kind for f in found] == [KIND[name]], [str(f) for f in found]


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_a_debug_report_fails_the_test_it_happened_in(name: str) -> None:
    text = ("[1.0] aem-test: begin Suite.before\n[1.1] aem-test: end Suite.before\n"
            "[2.0] aem-test: begin Suite.during\n" + REPORTS[name]
            + "[3.0] aem-test: end Suite.during\n[4.0] aem-test: begin Suite.after\n"
            "[4.1] aem-test: end Suite.after\n")
    assert [(f.kind, f.test) for f in kmsg.scan(text)] == [(KIND[name], "Suite.during")]


def test_the_odebug_warning_joins_its_report() -> None:
    (f,) = kmsg.scan(REPORTS["debugobjects"])
    assert f.message.startswith("ODEBUG: free active") and f.related == ("warning",)


def test_reports_on_the_serial_console_with_caller_ids() -> None:
    serial = ("aem_test: 12 of 80\n"
              "[   41.512842][  T231] BUG: KASAN: slab-out-of-bounds in aem_reg_alloc+0x1c4/0x2a0\n"
              "UBSAN: this is the test program talking\n")
    assert [f.kind for f in kmsg.scan(serial, kernel_only=True)] == ["kasan"]


def test_fault_injection_and_debug_banners_are_not_findings() -> None:
    text = """\
[    0.000000] kmemleak: Kernel memory leak detector initialized (mem pool available: 63520)
[    0.100000] kfence: initialized - using 2097152 bytes for 255 objects at 0x(____ptrval____)
[    0.200000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar
[    0.300000] ODEBUG: selftest passed
[    0.400000] KASAN init done
[   50.000000] FAULT_INJECTION: forcing a failure.
[   50.000000] name failslab, interval 1, probability 100, space 0, times 1
[   50.000001] CPU: 0 PID: 231 Comm: aem_test Tainted: G           O       6.1.192-debug #1
[   50.000002] Call Trace:
[   50.000003]  <TASK>
[   50.000004]  should_fail_ex.cold+0x5/0xa
[   50.000005]  </TASK>
[   60.000000] kmemleak: 2 new suspected memory leaks (see /sys/kernel/debug/kmemleak)
"""
    assert kmsg.scan(text) == []


# --------------------------------------------------------------------------- KTAP


KTAP = """\
KTAP version 1
1..5
ok 1 open_close
not ok 2 register_timer
    # register_timer: expected 1 delivery, got 0
ok 3 fault_reg_alloc # SKIP no debugfs
ok 4 - raise_soft
    ok 1 nested
not ok 5 flaky # TODO known
"""


def test_parse_ktap_reads_the_top_level_only() -> None:
    doc = cf.parse_ktap(KTAP)
    assert doc["planned"] == 5
    assert [(c["name"], c["outcome"]) for c in doc["cases"]] == [
        ("open_close", res.PASS), ("register_timer", res.FAIL), ("fault_reg_alloc", res.SKIP),
        ("raise_soft", res.PASS), ("flaky", res.PASS)]
    assert doc["cases"][2]["reason"] == "no debugfs"


def write_ktap(run: Path, prog: str, text: str | None, rc: int | None) -> None:
    (run / "ktap").mkdir(exist_ok=True)
    if text is not None:
        (run / "ktap" / f"{prog}.tap").write_text(text)
    if rc is not None:
        (run / "ktap" / f"{prog}.rc").write_text(f"{rc}\n")


def test_ktap_results_one_test_per_program(tmp_path: Path) -> None:
    write_ktap(tmp_path, "aem_test", KTAP, 1)
    write_ktap(tmp_path, "good", "KTAP version 1\n1..2\nok 1 a\nok 2 b # SKIP x\n", 0)
    write_ktap(tmp_path, "short", "KTAP version 1\n1..3\nok 1 a\n", 139)
    write_ktap(tmp_path, "slow", "KTAP version 1\n1..3\nok 1 a\n", 124)
    tests, summary = cf.ktap_results(tmp_path, ["aem_test", "good", "short", "slow", "absent"])
    got = {t.name: (t.outcome, t.reason) for t in tests}
    assert got["ktap.aem_test"] == (res.FAIL, "1 not ok: register_timer")
    assert got["ktap.good"] == (res.PASS, "")
    assert got["ktap.short"][0] == res.ERROR and "status 139 after 1 of 3" in got["ktap.short"][1]
    assert got["ktap.slow"][0] == res.ERROR and "timed out" in got["ktap.slow"][1]
    assert got["ktap.absent"][0] == res.ERROR and "not built" in got["ktap.absent"][1]
    assert summary[0]["ok"] == 3 and summary[0]["not_ok"] == 1 and summary[0]["skip"] == 1
    assert all(t.requirements == () for t in tests)


# --------------------------------------------------------------------------- kmemleak


def leak(addr: str, comm: str, frames: list[str], size: int = 192) -> str:
    """A /sys/kernel/debug/kmemleak entry as 6.1.192 writes it (with or without hashing)."""
    bt = "".join(f"    [<{'(____ptrval____)' if i % 2 else f'ffffffff81{i:06x}'}>] {f}\n"
                 for i, f in enumerate(frames))
    return (f"unreferenced object {addr} (size {size}):\n"
            f'  comm "{comm}", pid 231, jiffies 4294911234\n'
            "  hex dump (first 32 bytes):\n"
            "    00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................\n"
            f"  backtrace:\n{bt}")


BOOT_LEAK = leak("0xffff888003c01000", "swapper/0", ["__kmalloc+0x4a/0x90",
                                                     "acpi_ds_build_internal_package+0x1c/0x3a"])
AEM_LEAK = leak("0xffff888006a3c2c0", "aem_test", ["kmalloc_trace+0x25/0x90",
                                                   "aem_reg_alloc+0x5c/0x120 [aem]",
                                                   "aem_ioctl+0x1a2/0x3f0 [aem]"])
LOAD_LEAK = leak("0xffff888006a3d000", "insmod", ["kmalloc_trace+0x25/0x90",
                                                  "aem_init+0x30/0x200 [aem]"], 64)
EXIT_LEAK = leak("0xffff888006a3e000", "rmmod", ["__kmalloc+0x4a/0x90",
                                                 "0xffffffffc0123456", "do_one_initcall+0x9/0x1"])


def test_parse_kmemleak() -> None:
    objs = cf.parse_kmemleak(BOOT_LEAK + AEM_LEAK)
    assert [(o["address"], o["size"], o["comm"], o["aem"]) for o in objs] == [
        ("0xffff888003c01000", 192, "swapper/0", False),
        ("0xffff888006a3c2c0", 192, "aem_test", True)]
    assert objs[1]["backtrace"][1] == "aem_reg_alloc+0x5c/0x120 [aem]"


def write_scans(run: Path, **scans: str) -> None:
    for phase, text in scans.items():
        (run / f"kmemleak-{phase}.txt").write_text(text)
        (run / f"kmemleak-{phase}.rc").write_text("0\n")


def test_kmemleak_counts_what_the_baseline_did_not_have(tmp_path: Path) -> None:
    write_scans(tmp_path, baseline=BOOT_LEAK + LOAD_LEAK,
                loaded=BOOT_LEAK + LOAD_LEAK + AEM_LEAK,
                unloaded=BOOT_LEAK + LOAD_LEAK + AEM_LEAK + EXIT_LEAK)
    findings, summary = cf.kmemleak_check(tmp_path, True)
    assert [f.kind for f in findings] == ["kmemleak"] * 3
    assert all(f.test == cf.PHASE_KMEMLEAK for f in findings)
    msgs = [f.message for f in findings]
    assert "0xffff888006a3d000" in msgs[0] and "aem_init+0x30/0x200 [aem]" in msgs[0]
    assert "aem_reg_alloc+0x5c/0x120 [aem]" in msgs[1] and "comm aem_test" in msgs[1]
    # after the unload the module's frames are bare addresses: the first one names the leak
    assert "(scan unloaded)" in msgs[2] and "from 0xffffffffc0123456" in msgs[2]
    assert summary["leaks"] == 3 and summary["aem_leaks"] == 2
    assert summary["baseline_objects"] == 2 and summary["problems"] == []
    assert summary["scans"] == ["baseline", "loaded", "unloaded"]


def test_kmemleak_clean_run_and_failed_scans(tmp_path: Path) -> None:
    assert cf.kmemleak_check(tmp_path, False) == ([], None)
    write_scans(tmp_path, baseline=BOOT_LEAK, loaded=BOOT_LEAK, unloaded=BOOT_LEAK)
    assert cf.kmemleak_check(tmp_path, True)[0] == []
    (tmp_path / "kmemleak-unloaded.rc").write_text("1\n")
    (tmp_path / "kmemleak-unloaded.err").write_text("sh: write error: Device or resource busy\n")
    findings, summary = cf.kmemleak_check(tmp_path, True)
    assert findings == [] and "the unloaded scan failed (status 1)" in summary["problems"][0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cf.kmemleak_check(empty, True)[1]["problems"] == ["no leak scan ran after the suite"]
    assert cf.kmemleak_check(empty, True, ran=False)[1]["problems"] == []


# --------------------------------------------------------------------------- the judgement



def test_a_debug_run_with_clean_ktap_and_no_leak_certifies(tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_test", "KTAP version 1\n1..1\nok 1 a\n", 0)
    write_scans(tmp_path, baseline=BOOT_LEAK, loaded=BOOT_LEAK, unloaded=BOOT_LEAK)
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(),
                 {"kernel": "6.1.192-debug"}, backend="kmod", stress_wanted=False,
                 ktap=["aem_test"], kmemleak=True)
    assert r["health"]["blockers"] == []
    assert r["verdict"]["cgl_2_0"]["conformant"]
    assert r["health"]["ktap"][0]["ok"] == 1 and r["health"]["kmemleak"]["leaks"] == 0
    assert "ktap.aem_test" in r["untagged_tests"]


def test_a_leak_a_ktap_failure_and_a_splat_in_a_ktap_case_block_the_verdict(
        tmp_path: Path) -> None:
    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_test", KTAP, 1)
    write_ktap(tmp_path, "aem_ktests", "KTAP version 1\n1..2\nok 1 reg_basic\nok 2 fd_hup\n", 0)
    write_scans(tmp_path, baseline=BOOT_LEAK, loaded=BOOT_LEAK + AEM_LEAK,
                unloaded=BOOT_LEAK + AEM_LEAK)
    kasan = kmsg.Finding("kasan", "BUG: KASAN: use-after-free in aem_fd_wake+0x3c/0x60 [aem_fd]",
                         10, "fd_hup")  # aem_ktests' own marker names the case
    r = cf.judge(CATALOG, EXPECTED, tmp_path,
                 cf.Execution(findings=(kasan,)), {"kernel": "6.1.192-debug"}, backend="kmod",
                 stress_wanted=False, ktap=["aem_test", "aem_ktests"], kmemleak=True)
    blockers = r["health"]["blockers"]
    assert any(b.startswith("kernel kmemleak found by the leak scan: unreferenced object "
                            "0xffff888006a3c2c0") for b in blockers), blockers
    assert any(b.startswith("KTAP aem_test: FAIL: 1 not ok: register_timer") for b in blockers)
    assert any(b.startswith("KTAP aem_ktests: FAIL: kernel kasan during this test")
               for b in blockers), blockers
    assert not r["verdict"]["cgl_2_0"]["conformant"]
    kinds = [(f["kind"], f["test"]) for f in r["health"]["findings"]]
    assert ("kasan", "fd_hup") in kinds and ("kmemleak", cf.PHASE_KMEMLEAK) in kinds


# --------------------------------------------------------------------------- the script


def test_the_debug_script_runs_ktap_and_the_leak_scans_in_order(tmp_path: Path) -> None:
    plan = cf.Plan(repo=REPO, run_dir=tmp_path, kernel="debug", backend="kmod", target="qemu",
                   timeout_factor=4, kmemleak=True,
                   ktap=[REPO / "reference/kmod/tests/aem_test",
                         REPO / "reference/kmod/tests/aem_ktests"])
    art = cf.Artifacts(suite=tmp_path / "suite", stress_build=tmp_path / "sb",
                       modules=[tmp_path / "aem.ko", tmp_path / "aem_timer.ko"])
    script = cf.target_script(plan, art)
    order = ["leakcheck baseline", str(art.suite),
             "mark begin cglcert.stress", "mark begin ktap.aem_test",
             "mark begin ktap.aem_ktests", "leakcheck loaded", "rmmod aem_timer aem",
             "leakcheck unloaded"]
    at = [script.index(s) for s in order]
    assert at == sorted(at), script
    assert f"timeout -k 10 {cf.SUITE_TIMEOUT['default'] * 4} " in script
    assert f"timeout -k 10 {cf.KTAP_TIMEOUT * 4} " in script
    assert "cat /sys/kernel/debug/kmemleak" in script
    assert plan.target_timeout == (cf.SUITE_TIMEOUT["default"] + cf.STRESS_TIMEOUT["default"]
                                   + 2 * cf.KTAP_TIMEOUT + 300 + 120) * 4


def test_a_debian_script_has_no_ktap_and_no_leak_scan(tmp_path: Path) -> None:
    plan = cf.Plan(repo=REPO, run_dir=tmp_path, kernel=None, backend="kmod", target="qemu")
    art = cf.Artifacts(suite=tmp_path / "suite", stress_build=None,
                       modules=[tmp_path / "aem.ko"])
    script = cf.target_script(plan, art)
    assert "kmemleak" not in script and "ktap" not in script
    assert plan.target_timeout == cf.SUITE_TIMEOUT["default"] + cf.STRESS_TIMEOUT["default"] + 120


# --------------------------------------------------------------------------- the report


def test_the_report_shows_the_debug_options_ktap_and_kmemleak(tmp_path: Path) -> None:
    from cglcert.report.html import render_html
    from cglcert.report.markdown import render_markdown
    from cglcert.report.model import load_report

    all_pass(tmp_path)
    write_ktap(tmp_path, "aem_test", KTAP, 1)
    write_scans(tmp_path, baseline=BOOT_LEAK, loaded=BOOT_LEAK + AEM_LEAK,
                unloaded=BOOT_LEAK + AEM_LEAK)
    env = {"kernel": "6.1.192-debug", "backend": "kmod",
           "kernel_debug_options": ["CONFIG_KASAN", "CONFIG_PROVE_LOCKING",
                                    "CONFIG_DEBUG_KMEMLEAK"]}
    r = cf.judge(CATALOG, EXPECTED, tmp_path, cf.Execution(), env,
                 backend="kmod", stress_wanted=False, ktap=["aem_test"], kmemleak=True)
    (tmp_path / "results.json").write_text(res.results_to_json(r))
    report = load_report([tmp_path])
    html, md = render_html(report), render_markdown(report)
    for text in (html, md):
        assert "Kernel debug options (3, from its .config)" in text
        assert "KASAN" in text and "PROVE_LOCKING" in text and "DEBUG_KMEMLEAK" in text
        assert "register_timer" in text  # the KTAP case that failed
        assert "unreferenced object 0xffff888006a3c2c0" in text  # the leak's blocker
    assert "1 leak (1 with an AEM module frame)" in html
    assert "1 leak(s), 1 with an AEM module frame" in md
    assert "- KTAP `aem_test`: 3 ok, 1 not ok, 1 skipped (not ok: register_timer)" in md
    assert "CONFIG_KASAN, CONFIG_PROVE_LOCKING" in md  # the environment line, a list
