"""Unit tests of cglcert.kmsg: splat detection, test attribution, taint decoding."""

from __future__ import annotations

import pytest

from cglcert import kmsg

# Real-looking 6.1 reports (trimmed call traces), as printed by dmesg.
WARN = """\
[   12.100000] ------------[ cut here ]------------
[   12.100010] aem: ring overflow not folded
[   12.100020] WARNING: CPU: 1 PID: 231 at /tmp/aem/aem_ring.c:88 aem_ring_push+0x7c/0x90 [aem]
[   12.100030] Modules linked in: aem(OE) 9p fscache netfs 9pnet_virtio 9pnet
[   12.100040] CPU: 1 PID: 231 Comm: aem_tests Tainted: G           OE      6.1.0-57-amd64 #1  Debian 6.1.192-3
[   12.100050] RIP: 0010:aem_ring_push+0x7c/0x90 [aem]
[   12.100060] Call Trace:
[   12.100070]  <TASK>
[   12.100080]  aem_ioctl+0x1a2/0x3f0 [aem]
[   12.100090]  __x64_sys_ioctl+0x8d/0xd0
[   12.100100]  </TASK>
[   12.100110] ---[ end trace 0000000000000000 ]---
"""

NULL_DEREF = """\
[   30.000001] BUG: kernel NULL pointer dereference, address: 0000000000000008
[   30.000002] #PF: supervisor read access in kernel mode
[   30.000003] #PF: error_code(0x0000) - not-present page
[   30.000004] PGD 0 P4D 0
[   30.000005] Oops: 0000 [#1] PREEMPT SMP NOPTI
[   30.000006] CPU: 0 PID: 250 Comm: aem_tests Tainted: G           OE      6.1.0-57-amd64 #1  Debian 6.1.192-3
[   30.000007] RIP: 0010:aem_watch_wake+0x21/0x80 [aem]
[   30.000008] Call Trace:
[   30.000009]  <IRQ>
[   30.000010]  __wake_up_common+0x7a/0x140
[   30.000011] ---[ end trace 0000000000000000 ]---
"""

LOCKDEP = """\
[   40.000000] ======================================================
[   40.000001] WARNING: possible circular locking dependency detected
[   40.000002] 6.1.0-57-amd64 #1 Tainted: G           OE
[   40.000003] ------------------------------------------------------
[   40.000004] aem_tests/260 is trying to acquire lock:
"""

SAMPLES = {
    "warning": WARN,
    "bug": NULL_DEREF,
    "lockdep": LOCKDEP,
    "gpf": "[ 5.1] general protection fault, probably for non-canonical address "
           "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI\n",
    "panic": "[   99.000000] Kernel panic - not syncing: Fatal exception in interrupt\n",
    "rcu_stall": "[  60.0] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n"
                 "[  60.0] rcu: \t1-...!: (0 ticks this GP) idle=9c4/1/0x4000000000000000\n",
    "soft_lockup": "[  52.3] watchdog: BUG: soft lockup - CPU#1 stuck for 26s! [aem_tests:231]\n",
    "hung_task": "[ 243.9] INFO: task aem_tests:231 blocked for more than 120 seconds.\n"
                 "[ 243.9]       Tainted: G           OE      6.1.0-57-amd64 #1\n",
    "kasan": "[  7.0] BUG: KASAN: slab-use-after-free in aem_ctx_put+0x3c/0x60 [aem]\n",
    "ubsan": "[  7.0] UBSAN: shift-out-of-bounds in /tmp/aem/aem_timer.c:41:19\n",
    "list_corruption": "[  8.0] list_add corruption. prev->next should be next "
                       "(ffff8880047d0e10), but was 0000000000000000. (prev=ffff8880047d0e10).\n"
                       "[  8.0] ------------[ cut here ]------------\n"
                       "[  8.0] kernel BUG at lib/list_debug.c:30!\n"
                       "[  8.0] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI\n",
    "oops": "[  9.0] Oops: 0002 [#1] PREEMPT SMP NOPTI\n",
}

CLEAN_BOOT = """\
[    0.000000] Linux version 6.1.0-57-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)
[    0.378197] tsc: Marking TSC unstable due to TSCs unsynchronized
[    1.198011] mtrr: your CPUs had inconsistent variable MTRR settings
[    2.200375] Unstable clock detected, switching default tracing clock to "global"
[    3.099576] Loading compiled-in X.509 certificates
[    3.320488] AppArmor: AppArmor sha1 policy hashing enabled
[    4.610720] Run /init as init process
[    5.757713] FS-Cache: Loaded
[    5.939270] 9p: Installing v9fs 9p2000 file system support
[    6.304034] cglcert: command begin
[    6.400000] aem: loading out-of-tree module taints kernel.
[    6.400001] aem: module verification failed: signature and/or required key missing - tainting kernel
[    6.634033] cglcert: command end rc=0
"""


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_splat_kind_is_found(kind: str) -> None:
    findings = kmsg.scan(SAMPLES[kind])
    assert findings, f"no finding in the {kind} sample"
    assert findings[0].kind == kind
    assert len(findings) == 1, [str(f) for f in findings]


def test_clean_boot_log_has_no_findings() -> None:
    assert kmsg.scan(CLEAN_BOOT) == []
    assert kmsg.check(CLEAN_BOOT, 12288).ok  # O + E only


def test_warning_details() -> None:
    (f,) = kmsg.scan(WARN)
    assert f.kind == "warning"
    assert f.message.startswith("WARNING: CPU: 1 PID: 231 at /tmp/aem/aem_ring.c:88")
    assert f.lineno == 3
    assert any("aem_ioctl" in line for line in f.context)


def test_oops_header_joins_the_bug_report() -> None:
    (f,) = kmsg.scan(NULL_DEREF)
    assert f.kind == "bug"
    assert "oops" in f.related


def test_list_corruption_absorbs_the_kernel_bug_it_causes() -> None:
    (f,) = kmsg.scan(SAMPLES["list_corruption"])
    assert f.kind == "list_corruption"
    assert set(f.related) >= {"bug"}


def test_two_separate_warnings_are_two_findings() -> None:
    assert [f.kind for f in kmsg.scan(WARN + WARN)] == ["warning", "warning"]


def test_oops_then_panic_are_both_reported() -> None:
    text = NULL_DEREF + SAMPLES["panic"]
    assert [f.kind for f in kmsg.scan(text)] == ["bug", "panic"]


def test_recursive_locking_old_and_new_spelling() -> None:
    for line in ("[ 1.0] INFO: possible recursive locking detected",
                 "[ 1.0] WARNING: possible recursive locking detected",
                 "[ 1.0] WARNING: suspicious RCU usage",
                 "[ 1.0] WARNING: inconsistent lock state"):
        assert [f.kind for f in kmsg.scan(line)] == ["lockdep"], line


def test_rcu_sched_and_self_detected_stalls() -> None:
    for line in ("[ 1.0] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:",
                 "[ 1.0] rcu: INFO: rcu_sched self-detected stall on CPU",
                 "[ 1.0] INFO: rcu_preempt detected expedited stalls on CPUs/tasks: {"):
        assert [f.kind for f in kmsg.scan(line)] == ["rcu_stall"], line


def test_kmsg_and_raw_formats() -> None:
    kmsg_fmt = "4,1234,12100020,-;WARNING: CPU: 1 PID: 231 at kernel/foo.c:1 f+0x1/0x2\n"
    raw = "<4>[   12.100020] WARNING: CPU: 1 PID: 231 at kernel/foo.c:1 f+0x1/0x2\n"
    assert [f.kind for f in kmsg.scan(kmsg_fmt)] == ["warning"]
    assert [f.kind for f in kmsg.scan(raw)] == ["warning"]


def test_user_output_ignored_when_kernel_only() -> None:
    serial = ("WARNING: this is the test program talking\n"
              "BUG: also user space\n"
              "[    7.000000] BUG: scheduling while atomic: aem_tests/231/0x00000002\n")
    assert kmsg.scan(serial)[0].message.startswith("WARNING: this is the test program")
    only = kmsg.scan(serial, kernel_only=True)
    assert [f.kind for f in only] == ["bug"]
    assert "scheduling while atomic" in only[0].message


def test_interleaved_serial_line() -> None:
    line = "partial user output[   12.1] WARNING: CPU: 0 PID: 1 at kernel/x.c:2 x+0x0/0x1"
    assert [f.kind for f in kmsg.scan(line)] == ["warning"]


def test_benign_lines_do_not_match() -> None:
    benign = [
        "[ 1.0] ACPI: _OSC: OS supports [ASPM ClockPM Segments MSI HPX-Type3]",
        "[ 1.0] Spectre V2 : Mitigation: Retpolines",
        "[ 1.0] x86/mm: Checked W+X mappings: passed, no W+X pages found.",
        "[ 1.0] printk: console [ttyS0] enabled",
        "[ 1.0] Kernel command line: console=ttyS0 panic=-1 loglevel=5",
        "[ 1.0] aem-test: a message mentioning BUG and WARNING in the middle",
    ]
    for line in benign:
        assert kmsg.scan(line) == [], line


# --------------------------------------------------------------------------- markers

def test_findings_are_attributed_to_the_test_between_markers() -> None:
    text = (
        "[ 1.0] aem-test: begin AEM-3.1.1/arm_timer\n"
        "[ 1.1] some line\n"
        "[ 1.2] aem-test: end AEM-3.1.1/arm_timer\n"
        "[ 2.0] aem-test: begin AEM-3.2.4/socket_close\n"
        + WARN +
        "[ 2.9] aem-test: end AEM-3.2.4/socket_close\n"
        + SAMPLES["hung_task"]
    )
    findings = kmsg.scan(text)
    assert [(f.kind, f.test) for f in findings] == [
        ("warning", "AEM-3.2.4/socket_close"),
        ("hung_task", None),
    ]
    grouped = kmsg.by_test(findings)
    assert set(grouped) == {"AEM-3.2.4/socket_close", None}


def test_markers_via_dev_kmsg_format() -> None:
    text = ("12,500,5000000,-;aem-test: begin t1\n"
            "4,501,5000100,-;WARNING: CPU: 0 PID: 9 at a.c:1 f+0x0/0x1\n"
            "12,502,5000200,-;aem-test: end t1\n")
    assert [(f.kind, f.test) for f in kmsg.scan(text)] == [("warning", "t1")]


def test_begin_without_end_keeps_attribution_until_next_begin() -> None:
    text = ("[1.0] aem-test: begin a\n[1.1] BUG: sleeping function called from invalid context\n"
            "[2.0] aem-test: begin b\n" + SAMPLES["ubsan"])
    assert [(f.kind, f.test) for f in kmsg.scan(text)] == [("bug", "a"), ("ubsan", "b")]


# --------------------------------------------------------------------------- taint

def test_taint_zero() -> None:
    t = kmsg.decode_taint(0)
    assert t.ok and t.letters == "" and t.kernel_string() == "G"


def test_taint_out_of_tree_unsigned_is_acceptable() -> None:
    t = kmsg.decode_taint("12288\n")  # as read from /proc/sys/kernel/tainted
    assert t.letters == "OE"
    assert t.ok
    assert t.kernel_string() == "G           OE"


def test_taint_warning_and_died_are_not_acceptable() -> None:
    t = kmsg.decode_taint((1 << 9) | (1 << 7) | (1 << 12) | (1 << 13))  # W D O E
    assert t.letters == "DWOE"
    assert not t.ok
    assert t.unacceptable == "DW"
    assert "kernel died recently (OOPS or BUG)" in t.reasons


def test_taint_proprietary_and_soft_lockup() -> None:
    t = kmsg.decode_taint(1 | (1 << 14))
    assert t.letters == "PL" and t.unacceptable == "PL"
    assert t.kernel_string().startswith("P")


def test_unknown_taint_bits_are_flagged() -> None:
    t = kmsg.decode_taint(1 << 30)
    assert not t.ok and "?" in t.letters


def test_check_with_baseline_judges_only_new_taint() -> None:
    # The kernel was already W-tainted at boot (e.g. a firmware quirk): only new bits count.
    before = 1 << 9
    after = before | (1 << 12) | (1 << 13)
    report = kmsg.check(CLEAN_BOOT, after, tainted_before=before)
    assert report.ok
    assert report.new_taint is not None and report.new_taint.letters == "OE"
    bad = kmsg.check(CLEAN_BOOT, after | (1 << 7), tainted_before=before)
    assert not bad.ok
    assert any("tainted" in p for p in bad.problems())


def test_report_to_dict_is_json_ready() -> None:
    import json

    report = kmsg.check(WARN, 512 | 12288)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is False
    assert data["findings"][0]["kind"] == "warning"
    assert data["taint"]["unacceptable"] == "W"
