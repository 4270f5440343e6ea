"""Integration tests of the QEMU target: boot Debian's default kernel under TCG.

Each test boots once (about 4-5 s with the PVH entry, 8-10 s as bzImage).
They use the default share (virtiofs as root, else 9p); the host-root test
runs over both.
Deselect them with ``-m "not qemu"``.  They are skipped only when
qemu-system-x86_64 is not installed; a kernel that cannot be fetched or booted
fails them.  The first run downloads the default kernel into the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from cglcert import kernels, kmsg, qemu

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                       reason="qemu-system-x86_64 missing: apt-get install qemu-system-x86"),
]

TIMEOUT = 120  # per guest command; a healthy run needs a few seconds


@pytest.fixture(scope="module")
def kernel() -> kernels.Kernel:
    """Debian's default kernel, with headers (fetched into the cache once)."""
    return kernels.fetch(kernels.default_kernel())


def _markers(serial: Path) -> list[str]:
    return [line for line in serial.read_text(errors="replace").splitlines()
            if line.startswith("<<<cglcert:")]


@pytest.mark.parametrize("share", [
    "9p",
    pytest.param("virtiofs", marks=pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd needs root")),
])
def test_command_runs_in_host_root(kernel: kernels.Kernel, tmp_path: Path, share: str) -> None:
    """uname -r, a WARN-free /dev/kmsg line, the results share, a read-only host root (both shares)."""
    script = textwrap.dedent(f"""\
        uname -r
        echo "cglcert-selftest: hello from the guest" > /dev/kmsg
        echo written-in-guest > "$CGLCERT_RESULTS/from-guest.txt"
        test -d /lib/modules/$(uname -r)/kernel && echo modules-ok
        touch /tmp/x && echo tmp-writable
        touch /etc/cglcert-must-fail 2>/dev/null || echo root-read-only
        test -x {Path(qemu.__file__).resolve().parents[2] / 'cglcert'} && echo repo-visible
        """)
    r = qemu.run_in_guest(kernel, script, results_dir=tmp_path, timeout=TIMEOUT, share=share)
    assert r.error is None, r.detail
    assert r.share == share
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0] == kernel.release
    assert {"modules-ok", "tmp-writable", "root-read-only", "repo-visible"} <= set(lines), r.output
    assert (tmp_path / "from-guest.txt").read_text() == "written-in-guest\n"
    assert not Path("/etc/cglcert-must-fail").exists()
    # markers on the serial console, in order
    assert _markers(r.serial_log) == [
        f"<<<cglcert:init {kernel.release}>>>", "<<<cglcert:begin>>>",
        "<<<cglcert:exit 0>>>", "<<<cglcert:end>>>"]
    # the kernel log came back through the share, with our line, and is healthy
    assert r.kernel_log_source == "dmesg"
    assert "cglcert-selftest: hello from the guest" in r.kernel_log
    assert f"Linux version {kernel.release}" in r.kernel_log
    assert r.findings == ()
    assert r.tainted == 0 and r.tainted_before == 0
    assert r.report.ok and r.ok
    assert r.boot_seconds is not None and r.boot_seconds < r.duration


def test_exit_code_through_the_cli(kernel: kernels.Kernel, run_cli, tmp_path: Path) -> None:
    """`cglcert boot -- CMD` exits with CMD's code (3 here, told apart from an infra error by --json)."""
    res = run_cli("boot", "--kernel", kernel.release, "--results", str(tmp_path), "--json",
                  "--timeout", str(TIMEOUT), "--", "sh", "-c", "echo bye; exit 3")
    data = json.loads(res.out)
    assert res.code == 3
    assert data["exit_code"] == 3 and data["error"] is None
    assert data["health"]["ok"] is True
    assert "exit code: 3" in res.err
    assert "<<<cglcert:exit 3>>>" in _markers(tmp_path / ".cglcert" / "serial.log")


def test_hanging_command_is_killed_by_the_timeout(kernel: kernels.Kernel, tmp_path: Path) -> None:
    r = qemu.run_in_guest(kernel, "echo started; sleep 600 & sleep 600", results_dir=tmp_path, timeout=3)
    assert r.error == "timeout" and r.infra_error
    assert r.exit_code is None
    assert "started" in r.output
    assert "<<<cglcert:timeout>>>" in _markers(r.serial_log)
    assert r.duration < 60
    assert r.kernel_log_source == "dmesg"  # the guest still collected its log


def test_boot_failure_is_reported(kernel: kernels.Kernel, tmp_path: Path) -> None:
    """An initramfs without the init we ask for: the kernel panics before the command."""
    r = qemu.run_in_guest(kernel, ["true"], results_dir=tmp_path, timeout=TIMEOUT,
                          boot_timeout=60, append="rdinit=/no-such-init")
    assert r.error == "boot", (r.error, r.detail)
    assert r.exit_code is None and r.infra_error
    assert r.kernel_log_source == "serial"
    assert any(f.kind == "panic" for f in r.findings)


def test_bzimage_boot_path(kernel: kernels.Kernel, tmp_path: Path) -> None:
    """Debian's vmlinuz booted as a boot loader would (decompressor, KASLR)."""
    r = qemu.run_in_guest(kernel, ["cat", "/proc/cmdline"], results_dir=tmp_path,
                          timeout=TIMEOUT, boot="bzimage")
    assert r.boot == "bzimage"
    assert r.ok, (r.error, r.detail, [str(f) for f in r.findings])
    assert "console=ttyS0" in r.output


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("gcc-12") is None,
                    reason="building a module needs make and gcc-12")
def test_module_warning_is_found_and_taints(kernel: kernels.Kernel, tmp_path: Path) -> None:
    """Build a module against the cached headers, load it in the guest, catch its WARN."""
    assert kernel.build_dir is not None
    src = tmp_path / "mod"
    src.mkdir()
    (src / "Kbuild").write_text("obj-m := cglcert_selftest.o\n")
    (src / "cglcert_selftest.c").write_text(textwrap.dedent("""\
        #include <linux/module.h>
        #include <linux/bug.h>
        static int do_warn;
        module_param(do_warn, int, 0444);
        static int __init selftest_init(void)
        {
                WARN(do_warn, "cglcert_selftest: requested warning\\n");
                return 0;
        }
        static void __exit selftest_exit(void) { }
        module_init(selftest_init);
        module_exit(selftest_exit);
        MODULE_LICENSE("GPL");
        """))
    build = subprocess.run(["make", "-C", str(kernel.build_dir), f"M={src}"],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    ko = src / "cglcert_selftest.ko"
    r = qemu.run_in_guest(kernel, "grep cglcert_selftest /proc/modules", results_dir=tmp_path / "res",
                          timeout=TIMEOUT, extra_modules=[f"{ko} do_warn=1"])
    assert r.error is None, r.detail
    assert r.exit_code == 0 and "(OE)" in r.output
    assert [f.kind for f in r.findings] == ["warning"]
    assert "cglcert_selftest" in r.findings[0].message
    taint = kmsg.decode_taint(r.tainted)
    assert taint.letters == "WOE" and taint.unacceptable == "W"
    assert not r.ok
