"""The QEMU target over virtiofs: Debian's cloud flavor, which has no 9p.

The unit tests (command lines, share choice, the virtiofsd daemons' life
cycle with a stand-in daemon) need neither QEMU nor a kernel.  The tests
marked ``qemu`` boot ``6.1.0-57-cloud-amd64`` (fetched into the cache on the
first run) with the real virtiofsd, which needs root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cglcert import kernels, qemu

CLOUD = "6.1.0-57-cloud-amd64"
TIMEOUT = 120



def needs_qemu(test: Callable[..., None]) -> Callable[..., None]:
    """Mark a test that boots the cloud kernel with the real virtiofsd."""
    for mark in (pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd needs root"),
                 pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                    reason="qemu-system-x86_64 missing: apt-get install qemu-system-x86"),
                 pytest.mark.qemu):
        test = mark(test)
    return test


# --------------------------------------------------------------------------- helpers

def _fake_kernel(tmp_path: Path, modules: dict[str, str], config: str = "") -> kernels.Kernel:
    """A kernel tree with empty stand-in modules (``{"9p": "fs/9p"}``) and a .config."""
    root = tmp_path / "root"
    mdir = root / "lib/modules/6.1.0-0-test"
    for name, sub in modules.items():
        (mdir / "kernel" / sub).mkdir(parents=True, exist_ok=True)
        (mdir / "kernel" / sub / f"{name}.ko").write_bytes(b"\0depends=\0")
    mdir.mkdir(parents=True, exist_ok=True)
    cfg = root / "boot/config-6.1.0-0-test"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(config)
    return kernels.Kernel(release="6.1.0-0-test", abi="6.1.0-0", flavor="test", version="0",
                          root=root, vmlinuz=root / "boot/vmlinuz", modules_dir=mdir,
                          build_dir=None, config=cfg)


def _opt(argv: list[str], flag: str) -> list[str]:
    """Every value that follows *flag* in *argv*."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


def _daemons_left(results: Path) -> list[str]:
    """Live processes of the run's virtiofsd command lines (by their socket paths)."""
    argvs = (results / ".cglcert" / "virtiofsd.cmdline").read_text().split()
    socks = [a for a in argvs if a.startswith("--socket-path=")]
    assert len(socks) == 2
    return [p for s in socks for p in _processes_mentioning(s)]


def _processes_mentioning(needle: str) -> list[str]:
    """Command lines of live processes that contain *needle*."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd:
            found.append(f"{d.name}: {cmd}")
    return found


# --------------------------------------------------------------------------- command lines

def test_qemu_command_in_virtiofs_mode(tmp_path: Path) -> None:
    """vhost-user-fs devices on the daemons' sockets, a shared memfd as guest RAM, no 9p."""
    k = _fake_kernel(tmp_path, {})
    socks = {"hostroot": tmp_path / "h.sock", "results": tmp_path / "odd,dir" / "r.sock"}
    argv = qemu.qemu_command(k, tmp_path / "initrd", tmp_path / "res", tmp_path / "serial",
                             mem="2G", share="virtiofs", sockets=socks)
    assert "-virtfs" not in argv
    assert _opt(argv, "-m") == ["2G"]
    assert _opt(argv, "-object") == ["memory-backend-memfd,id=mem,size=2G,share=on"]
    assert _opt(argv, "-numa") == ["node,memdev=mem"]
    assert _opt(argv, "-chardev") == [
        f"socket,id=vfs-hostroot,path={tmp_path}/h.sock",
        f"socket,id=vfs-results,path={tmp_path}/odd,,dir/r.sock",  # QEMU escapes commas by doubling
    ]
    assert _opt(argv, "-device") == [
        "vhost-user-fs-pci,queue-size=1024,chardev=vfs-hostroot,tag=hostroot",
        "vhost-user-fs-pci,queue-size=1024,chardev=vfs-results,tag=results",
    ]
    assert "cglcert.share=virtiofs" in _opt(argv, "-append")[0].split()


def test_qemu_command_9p_mode_and_mistakes(tmp_path: Path) -> None:
    k = _fake_kernel(tmp_path, {})
    argv = qemu.qemu_command(k, tmp_path / "initrd", tmp_path / "res", tmp_path / "serial")
    assert len(_opt(argv, "-virtfs")) == 2 and "-object" not in argv and "-device" not in argv
    assert "cglcert.share=9p" in _opt(argv, "-append")[0].split()
    # a bare -m number is MiB; the memory backend's size= would read it as bytes
    argv = qemu.qemu_command(k, tmp_path / "i", tmp_path / "r", tmp_path / "s", mem="1536",
                             share="virtiofs", sockets={"hostroot": Path("/h"), "results": Path("/r")})
    assert _opt(argv, "-object") == ["memory-backend-memfd,id=mem,size=1536M,share=on"]
    with pytest.raises(ValueError, match="results"):
        qemu.qemu_command(k, tmp_path / "i", tmp_path / "r", tmp_path / "s", share="virtiofs",
                          sockets={"hostroot": Path("/h")})
    with pytest.raises(ValueError, match="share"):
        qemu.qemu_command(k, tmp_path / "i", tmp_path / "r", tmp_path / "s", share="nfs")


def test_virtiofsd_command() -> None:
    argv = qemu.virtiofsd_command(Path("/tmp/a,b"), Path("/run/x.sock"))
    assert argv[0] == qemu.VIRTIOFSD
    assert "--socket-path=/run/x.sock" in argv
    opts = ",".join(_opt(argv, "-o")).replace("\\,", "<comma>").split(",")
    assert "source=/tmp/a<comma>b" in opts       # a comma in the path is escaped for fuse_opt
    assert "sandbox=chroot" in opts              # the namespace sandbox cannot export /
    assert "announce_submounts" in opts


def test_share_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: virtiofs where virtiofsd can run, else 9p, else virtiofs; an impossible request says why."""
    both = _fake_kernel(tmp_path / "both", {"9p": "fs/9p", "virtiofs": "fs/fuse", "fuse": "fs/fuse"})
    daemon = tmp_path / "virtiofsd"
    daemon.write_text("#!/bin/sh\n")
    daemon.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert qemu.choose_share(both, virtiofsd=str(daemon)) == "virtiofs"
    assert qemu.choose_share(both, virtiofsd=str(tmp_path / "none")) == "9p"  # not installed
    assert qemu.choose_share(both, "9p", virtiofsd=str(daemon)) == "9p"
    cloud = _fake_kernel(tmp_path / "cloud", {"virtiofs": "fs/fuse", "fuse": "fs/fuse"},
                         config="# CONFIG_NET_9P is not set\nCONFIG_VIRTIO_FS=m\n")
    assert qemu.choose_share(cloud, virtiofsd=str(tmp_path / "none")) == "virtiofs"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # virtiofsd needs root: 9p for users
    assert qemu.choose_share(both, virtiofsd=str(daemon)) == "9p"
    assert qemu.choose_share(cloud, virtiofsd=str(daemon)) == "virtiofs"
    with pytest.raises(kernels.KernelError, match="CONFIG_NET_9P is not set"):
        qemu.choose_share(cloud, "9p")
    none = _fake_kernel(tmp_path / "none", {})
    with pytest.raises(kernels.KernelError, match="neither 9p nor virtiofs"):
        qemu.choose_share(none)


# --------------------------------------------------------------------------- daemon life cycle

_FAKE_DAEMON = textwrap.dedent("""\
    import os, socket, sys, time
    path = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--socket-path="))
    if os.environ.get("FAKE_VIRTIOFSD_FAIL"):
        sys.exit("fake virtiofsd: cannot export")
    if os.fork() == 0:           # a child, as virtiofsd's sandbox has: it must go too
        time.sleep(600)
        os._exit(0)
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(1)
    time.sleep(600)
    """)


@pytest.fixture
def fake_virtiofsd(tmp_path: Path) -> str:
    exe = tmp_path / "fake-virtiofsd"
    exe.write_text(f"#!{sys.executable}\n" + _FAKE_DAEMON)
    exe.chmod(0o755)
    return str(exe)


def test_daemons_start_and_are_all_stopped(fake_virtiofsd: str, tmp_path: Path) -> None:
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    d = qemu._Virtiofsd(fake_virtiofsd, {"hostroot": Path("/"), "results": tmp_path}, ctrl)
    try:
        assert d.start(timeout=20) is None
        assert all(qemu._is_socket(s) for s in d.sockets.values())
        assert len(_processes_mentioning(str(ctrl))) >= 4  # two daemons, two children
    finally:
        d.stop(grace=2)
    assert _processes_mentioning(str(ctrl)) == []
    assert not any(s.exists() for s in d.sockets.values())


def test_daemon_failure_is_reported_with_its_log(fake_virtiofsd: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_VIRTIOFSD_FAIL", "1")
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    d = qemu._Virtiofsd(fake_virtiofsd, {"hostroot": Path("/"), "results": tmp_path}, ctrl)
    try:
        why = d.start(timeout=20)
    finally:
        d.stop(grace=2)
    assert why is not None
    assert re.search(r"virtiofsd for the (hostroot|results) share exited with status 1", why)
    assert "fake virtiofsd: cannot export" in why
    assert _processes_mentioning(str(ctrl)) == []


def test_long_control_dir_gets_short_sockets(fake_virtiofsd: str, tmp_path: Path) -> None:
    """sun_path holds 108 bytes: a deep results dir must not break the daemons."""
    ctrl = tmp_path / ("d" * 60) / ("e" * 60)
    ctrl.mkdir(parents=True)
    d = qemu._Virtiofsd(fake_virtiofsd, {"hostroot": Path("/"), "results": tmp_path}, ctrl)
    try:
        assert all(len(str(s)) <= qemu._SOCK_MAX for s in d.sockets.values())
        assert d.start(timeout=20) is None
    finally:
        d.stop(grace=2)
    assert not d.sockdir.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root")
def test_read_only_wrapper_keeps_the_host_read_only(tmp_path: Path) -> None:
    """virtiofsd has no read-only export: the host root's daemon runs in a read-only mount view."""
    keep = tmp_path / "sockets"
    keep.mkdir()
    script = f"touch {tmp_path}/outside; touch {keep}/inside; touch /var/tmp/cglcert-ro-{tmp_path.name}"
    proc = subprocess.run([sys.executable, "-c", qemu._RO_WRAPPER, str(keep), "--", "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    assert "Read-only file system" in proc.stderr, proc.stderr
    assert "no read-only view" not in proc.stderr
    assert (keep / "inside").exists()
    assert not (tmp_path / "outside").exists()
    assert not Path(f"/var/tmp/cglcert-ro-{tmp_path.name}").exists()


# --------------------------------------------------------------------------- the cloud kernel

@pytest.fixture(scope="module")
def cloud() -> kernels.Kernel:
    """Debian's cloud kernel (fetched into the cache once; no headers needed)."""
    return kernels.fetch(CLOUD, headers=False)


@needs_qemu
def test_cloud_kernel_runs_commands_like_the_others(cloud: kernels.Kernel, tmp_path: Path,
                                                    repo_root: Path) -> None:
    """Host file read, result written, ro root, /lib/modules, a module of the tree, dmesg, taint."""
    host_file = repo_root / "ci" / "pytest.ini"
    probe = Path("/var/tmp") / f"cglcert-ro-probe-{os.getpid()}"
    script = textwrap.dedent(f"""\
        uname -r
        grep -q ' / virtiofs ro' /proc/mounts && echo root-virtiofs-ro
        sha256sum {host_file} | cut -d' ' -f1
        cp {host_file} "$CGLCERT_RESULTS/copied.ini" && echo copied
        test -d /lib/modules/$(uname -r)/kernel && echo modules-ok
        grep -q '^crc7 ' /proc/modules && echo crc7-loaded
        touch /etc/cglcert-must-fail 2>/dev/null || echo root-read-only
        touch /tmp/x && echo tmp-writable
        echo "cglcert-selftest: hello from the cloud guest" > /dev/kmsg
        # even a guest that remounts its root rw must not write to the host
        mount -o remount,rw / 2>/dev/null
        touch {probe} 2>/dev/null || echo host-read-only
        """)
    r = qemu.run_in_guest(cloud, script, results_dir=tmp_path, timeout=TIMEOUT, extra_modules=["crc7"])
    assert r.error is None, r.detail
    assert r.share == "virtiofs" and r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0] == CLOUD
    assert hashlib.sha256(host_file.read_bytes()).hexdigest() in lines
    assert {"root-virtiofs-ro", "copied", "modules-ok", "crc7-loaded", "root-read-only",
            "tmp-writable", "host-read-only"} <= set(lines), r.output
    assert not probe.exists()
    assert (tmp_path / "copied.ini").read_bytes() == host_file.read_bytes()
    assert not Path("/etc/cglcert-must-fail").exists()
    assert r.kernel_log_source == "dmesg"
    assert "cglcert-selftest: hello from the cloud guest" in r.kernel_log
    assert r.tainted == 0 and r.report.ok and r.ok
    assert _daemons_left(tmp_path) == []


@needs_qemu
def test_cloud_exit_code_through_the_cli(cloud: kernels.Kernel, run_cli, tmp_path: Path) -> None:
    res = run_cli("boot", "--kernel", CLOUD, "--results", str(tmp_path), "--json",
                  "--timeout", str(TIMEOUT), "--", "sh", "-c", "echo bye; exit 3")
    data = json.loads(res.out)
    assert res.code == 3, res.err
    assert data["exit_code"] == 3 and data["error"] is None and data["share"] == "virtiofs"
    assert _daemons_left(tmp_path) == []


@needs_qemu
def test_daemons_go_when_qemu_is_killed(cloud: kernels.Kernel, tmp_path: Path) -> None:
    """The host kills QEMU (boot timeout): the daemons must not outlive it."""
    t0 = time.monotonic()
    r = qemu.run_in_guest(cloud, ["true"], results_dir=tmp_path, timeout=TIMEOUT, boot_timeout=1)
    assert r.error == "boot" and r.share == "virtiofs"
    assert time.monotonic() - t0 < 60
    assert _daemons_left(tmp_path) == []
