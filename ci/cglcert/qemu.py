"""QEMU target: boot a cached Debian kernel and run one command from the host root.

:func:`run_in_guest` boots ``qemu-system-x86_64`` (TCG by default: nested KVM
hangs on the development machines) with the kernel's vmlinuz and the initramfs
of :mod:`cglcert.initramfs`, shares the host root read-only plus a writable
results directory (over 9p, or over virtiofs for kernels without 9p such as
Debian's cloud flavor: see ``share``), runs the command chrooted into the host root,
and returns a :class:`GuestResult`: exit code, command output, kernel log
(``dmesg`` copied to the results share after the command; the serial console
as fallback), taint before/after, findings of :mod:`cglcert.kmsg`, timings.

Shares: ``share="9p"`` uses QEMU's built-in 9p server (``-virtfs``, the host
enforces read-only).  ``share="virtiofs"`` starts one C virtiofsd
(``/usr/lib/qemu/virtiofsd``, package qemu-system-common; needs root) per
shared directory with its vhost-user socket in the control directory, backs
the guest memory with a shared memfd (vhost-user needs it), and stops the
daemons when QEMU ends, whatever happens.  virtiofsd cannot export read-only,
so the host root's daemon sees the host through a read-only mount namespace
and the guest mounts it ``ro`` too.  ``share="auto"`` (the default) takes
virtiofs when it can run (root, virtiofsd installed): as fast to boot, and
2-4 times faster on file-heavy commands; else 9p (see :func:`choose_share`).

One boot per call: batch a whole suite into one command to keep the TCG boot
cost (about 5 s guest, 8-10 s wall on the development machines) paid once.

Failure handling (never hangs CI):

* the command runs under a watchdog inside the guest (``timeout`` seconds);
  when it fires the command's whole session is killed, dmesg is still
  collected and ``error="timeout"``;
* QEMU is killed by the host if the guest does not reach the command within
  ``boot_timeout`` (``error="boot"``), or does not finish within ``timeout``
  plus a grace period (``error="timeout"``, kernel log from the serial console);
* ``panic=-1`` plus ``-no-reboot`` make a kernel panic end QEMU at once
  (``error="panic"``).  Oopses are left non-fatal and reported as findings.

Inside the guest: the command runs as root with cwd = the caller's cwd (a cwd
under the host's /tmp stays visible, read-only), ``/tmp`` and ``/run`` are fresh
tmpfs, the host root is read-only except for the results directory (same
path as on the host), and ``/lib/modules/<release>`` is the fetched kernel's
module tree.  Environment: ``CGLCERT_GUEST=1``, ``CGLCERT_RESULTS``,
``CGLCERT_KERNEL``, ``CGLCERT_MODULES_DIR`` plus the caller's ``env``.
"""

from __future__ import annotations

import codecs
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import hostdeps, initramfs, kernels, kmsg

__all__ = ["GuestResult", "run_in_guest", "qemu_command", "virtiofsd_command", "choose_share",
           "DEFAULT_APPEND", "ERROR_KINDS", "SHARES", "VIRTIOFSD", "VIRTIOFSD_PACKAGE"]

#: Kernel command line.  loglevel=5 puts warnings (level 4) and worse on the
#: serial console (the fallback log when dmesg cannot be copied); devkmsg=on
#: stops rate-limiting of the runner's /dev/kmsg markers; a 4 MiB log buffer
#: keeps a whole suite's log.
DEFAULT_APPEND = "console=ttyS0 panic=-1 loglevel=5 printk.devkmsg=on log_buf_len=4M"

#: Values of GuestResult.error.  All but "panic" are infrastructure errors
#: (ERROR in the results vocabulary); a panic is a kernel FAIL.
ERROR_KINDS = ("boot", "init", "module", "timeout", "panic", "qemu", "no-result")

#: Values of the ``share`` argument: how the host directories reach the guest.
SHARES = ("auto", "9p", "virtiofs")

#: QEMU 7.2's C virtiofsd, as Debian 12 installs it, and its package.
VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
VIRTIOFSD_PACKAGE = "qemu-system-common"

#: The share tags the guest's /init mounts: the host root and the results directory.
_TAGS = ("hostroot", "results")
#: AF_UNIX socket paths longer than this do not fit in sun_path (108 bytes).
_SOCK_MAX = 100
#: Where virtiofsd writes its pid files (it must stay writable for the read-only host root's).
_VIRTIOFSD_PIDDIR = "/run/virtiofsd"
#: Seconds a virtiofsd may take to create its socket.
_VIRTIOFSD_START = 15.0

_MARK_RE = re.compile(r"<<<cglcert:(?P<what>[a-z-]+)(?: (?P<arg>[^>]*))?>>>")
_PANIC_RE = re.compile(r"Kernel panic - not syncing")
_KLINE_RE = re.compile(r"^\[\s*\d+\.\d+\] ")
_CTRL = "/.cglcert"


@dataclass
class GuestResult:
    """What came back from one guest run."""

    release: str
    command: list[str] | str
    boot: str                      #: "pvh" or "bzimage": how the kernel was loaded
    exit_code: int | None          #: the command's exit status; None if it did not finish
    error: str | None              #: None or one of ERROR_KINDS
    detail: str                    #: what went wrong, for humans ("" when error is None)
    results_dir: Path              #: the writable share (guest control files in .cglcert/)
    serial_log: Path
    kernel_log: str = field(repr=False)  #: dmesg after the command, else the serial console
    kernel_log_source: str         #: "dmesg" or "serial"
    output: str                    #: the command's console output (kernel lines removed)
    tainted_before: int | None
    tainted: int | None
    duration: float                #: wall seconds, QEMU start to exit
    boot_seconds: float | None     #: wall seconds, QEMU start to command start
    guest_uptime: float | None     #: guest uptime when the command ended
    report: kmsg.Report = field(repr=False, default_factory=lambda: kmsg.Report((), None))
    qemu_cmdline: list[str] = field(repr=False, default_factory=list)
    share: str = "9p"              #: "9p" or "virtiofs": how the host directories were shared

    @property
    def findings(self) -> tuple[kmsg.Finding, ...]:
        return self.report.findings

    @property
    def infra_error(self) -> bool:
        """True when the run broke for a reason other than the kernel (ERROR, not FAIL)."""
        return self.error is not None and self.error != "panic"

    @property
    def ok(self) -> bool:
        """Command exited 0, no splat, no unacceptable taint, no error."""
        return self.error is None and self.exit_code == 0 and self.report.ok

    def to_dict(self) -> dict:
        return {
            "release": self.release, "boot": self.boot, "share": self.share, "command": self.command,
            "exit_code": self.exit_code,
            "error": self.error, "detail": self.detail, "results_dir": str(self.results_dir),
            "serial_log": str(self.serial_log), "kernel_log_source": self.kernel_log_source,
            "tainted_before": self.tainted_before, "tainted": self.tainted,
            "duration": round(self.duration, 3),
            "boot_seconds": None if self.boot_seconds is None else round(self.boot_seconds, 3),
            "guest_uptime": self.guest_uptime, "health": self.report.to_dict(),
        }


# --------------------------------------------------------------------------- command line

def _qemu_opt(value: str | Path) -> str:
    """*value* as a QEMU option value (commas doubled)."""
    return str(value).replace(",", ",,")


def _mem_size(mem: str) -> str:
    """``-m`` reads a bare number as MiB, ``size=`` as bytes: give the backend the unit."""
    return f"{mem}M" if str(mem).isdigit() else str(mem)


def qemu_command(kernel: kernels.Kernel, initrd: Path, results_dir: Path, serial_log: Path, *,
                 smp: int = 2, mem: str = "2G", accel: str = "tcg", append: str = "",
                 qemu: str = "qemu-system-x86_64", image: Path | None = None,
                 share: str = "9p", sockets: Mapping[str, Path] | None = None) -> list[str]:
    """The QEMU argv for one run (*image*: what -kernel loads, default the bzImage).

    *share* ``"9p"`` exports / (read-only) and *results_dir* with ``-virtfs``;
    ``"virtiofs"`` attaches one vhost-user-fs device per tag of *sockets*
    (``{"hostroot": sock, "results": sock}``, the virtiofsd sockets) and backs
    the guest memory with a shared memfd, as vhost-user requires.
    """
    cpu = "host" if accel == "kvm" else "max"
    cmdline = DEFAULT_APPEND + f" cglcert.share={share}" + (" " + append if append else "")
    argv = [
        qemu, "-accel", accel, "-cpu", cpu, "-m", str(mem), "-smp", str(smp),
        "-nographic", "-nodefaults", "-no-user-config", "-no-reboot",
        "-serial", f"file:{serial_log}", "-monitor", "none",
        "-kernel", str(image or kernel.vmlinuz), "-initrd", str(initrd), "-append", cmdline,
    ]
    if share == "9p":
        argv += [
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={_qemu_opt(results_dir)},mount_tag=results,security_model=none,"
                       "multidevs=remap",
        ]
    elif share == "virtiofs":
        missing = [t for t in _TAGS if t not in (sockets or {})]
        if missing:
            raise ValueError(f"virtiofs needs a virtiofsd socket for {', '.join(missing)}")
        assert sockets is not None
        argv += ["-object", f"memory-backend-memfd,id=mem,size={_mem_size(mem)},share=on",
                 "-numa", "node,memdev=mem"]
        for tag in _TAGS:
            argv += ["-chardev", f"socket,id=vfs-{tag},path={_qemu_opt(sockets[tag])}",
                     "-device", f"vhost-user-fs-pci,queue-size=1024,chardev=vfs-{tag},tag={tag}"]
    else:
        raise ValueError(f"share must be '9p' or 'virtiofs', not {share!r}")
    return argv


def virtiofsd_command(source: Path | str, socket: Path, *, virtiofsd: str = VIRTIOFSD,
                      cache: str = "auto") -> list[str]:
    """The argv of one virtiofsd exporting *source* on the vhost-user *socket*.

    ``sandbox=chroot``: the namespace sandbox cannot take / as its source
    (pivot_root into the current root fails with EBUSY) and needs
    CAP_SYS_ADMIN, which containers often lack; chroot needs only
    CAP_SYS_CHROOT.  ``announce_submounts`` gives each host mount its own
    st_dev in the guest (as 9p's multidevs=remap does), so inode numbers of
    different host file systems never collide.
    """
    src = str(source).replace("\\", "\\\\").replace(",", "\\,")
    return [virtiofsd, f"--socket-path={socket}",
            "-o", f"source={src},cache={cache},sandbox=chroot,announce_submounts",
            "-o", "log_level=warn"]


def choose_share(kernel: kernels.Kernel, share: str = "auto", *, virtiofsd: str = VIRTIOFSD) -> str:
    """Resolve *share* (one of :data:`SHARES`) for *kernel*: "9p" or "virtiofs".

    "auto" prefers virtiofs when it can run here (as root, with *virtiofsd*
    installed): it boots as fast as 9p and runs file-heavy commands 2-4 times
    faster under TCG (directory walks most).  Otherwise 9p, which needs no
    daemon and no root; virtiofs again when the kernel has no 9p (the cloud
    flavor).  Raises :class:`~cglcert.kernels.KernelError` when the kernel
    cannot mount the requested kind.
    """
    if share not in SHARES:
        raise ValueError(f"share must be one of {', '.join(SHARES)}, not {share!r}")
    avail = initramfs.shares(kernel)
    if share == "auto":
        can_virtiofs = os.geteuid() == 0 and os.access(virtiofsd, os.X_OK)
        for kind in (("virtiofs", "9p") if can_virtiofs else ("9p", "virtiofs")):
            if kind in avail:
                return kind
        share = "9p"
    if share not in avail:
        hint = ""
        if share == "9p" and kernel.config and \
                "CONFIG_NET_9P is not set" in kernel.config.read_text(errors="replace"):
            hint = " (CONFIG_NET_9P is not set: Debian's cloud flavor has no 9p; use share virtiofs)"
        have = " or ".join(avail) or "neither 9p nor virtiofs"
        raise kernels.KernelError(
            f"{kernel.release} cannot mount the host root over {share}: it has {have}{hint}")
    return share


# --------------------------------------------------------------------------- virtiofsd

def _find_virtiofsd(virtiofsd: str) -> str:
    """Path of virtiofsd, installing its package if needed (as root)."""
    if os.path.isfile(virtiofsd) and os.access(virtiofsd, os.X_OK):
        return virtiofsd
    if virtiofsd == VIRTIOFSD:
        hostdeps.ensure([VIRTIOFSD_PACKAGE])
        if os.access(VIRTIOFSD, os.X_OK):
            return VIRTIOFSD
    raise kernels.KernelError(
        f"virtiofsd not found at {virtiofsd}: install the Debian package {VIRTIOFSD_PACKAGE} "
        f"(apt-get install {VIRTIOFSD_PACKAGE}), or boot a kernel with 9p")


class _Virtiofsd:
    """The virtiofsd daemons of one run: one per tag, started before QEMU, always stopped.

    Each daemon runs in its own session (process group), so :meth:`stop`
    ends it together with anything it forked.  The daemons of the *readonly*
    tags see the host read-only (see :data:`_RO_WRAPPER`).
    """

    def __init__(self, virtiofsd: str, sources: Mapping[str, Path], ctrl: Path, *,
                 readonly: Iterable[str] = ()) -> None:
        self.ctrl = ctrl
        # sun_path holds 108 bytes: a deep results dir gets its sockets in a short temp dir.
        if len(str(ctrl / "hostroot.sock")) <= _SOCK_MAX:
            self.sockdir, self._own_dir = ctrl, False
        else:
            self.sockdir, self._own_dir = Path(tempfile.mkdtemp(prefix="cglcert-vfs-")), True
        self.sockets = {tag: self.sockdir / f"{tag}.sock" for tag in sources}
        self.argvs = {tag: virtiofsd_command(src, self.sockets[tag], virtiofsd=virtiofsd)
                      for tag, src in sources.items()}
        self.readonly = set(readonly)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _log(self, tag: str) -> Path:
        return self.ctrl / f"virtiofsd-{tag}.log"

    def start(self, timeout: float = _VIRTIOFSD_START) -> str | None:
        """Start the daemons and wait for their sockets; return None, or what went wrong."""
        for tag, argv in self.argvs.items():
            self.sockets[tag].unlink(missing_ok=True)
            if tag in self.readonly:
                piddir = Path(os.path.realpath(_VIRTIOFSD_PIDDIR))
                try:
                    piddir.mkdir(parents=True, exist_ok=True)
                except OSError:
                    pass  # virtiofsd will say what is wrong
                argv = [sys.executable, "-c", _RO_WRAPPER, str(self.sockdir), str(piddir), "--", *argv]
            with open(self._log(tag), "wb") as log:
                self.procs[tag] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                   stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        waiting = dict(self.procs)
        while waiting:
            for tag, proc in list(waiting.items()):
                if _is_socket(self.sockets[tag]):
                    del waiting[tag]
                elif proc.poll() is not None:
                    return self._failure(tag, f"exited with status {proc.returncode}")
            if waiting and time.monotonic() > deadline:
                return self._failure(next(iter(waiting)), f"created no socket within {timeout:.0f} s")
            time.sleep(0.02)
        return None

    def _failure(self, tag: str, what: str) -> str:
        log = self._log(tag).read_text(errors="replace").strip()
        hint = ("virtiofsd needs root (it chroots into the shared directory): run as root, "
                "or boot a kernel with 9p" if os.geteuid() != 0 else
                f"see {self._log(tag)}; check that {self.argvs[tag][0]} works: "
                f"{shlex.join(self.argvs[tag])}")
        return (f"virtiofsd for the {tag} share {what}"
                + (f": {log[-1500:]}" if log else "") + f"; {hint}")

    def stop(self, grace: float = 5.0) -> None:
        """End every daemon (SIGTERM to its process group, SIGKILL after *grace* s)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = [p for p in self.procs.values() if p.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            for p in alive:
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for p in self.procs.values():
            if p.poll() is None:
                p.wait()
        for sock in self.sockets.values():
            sock.unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.sockdir, ignore_errors=True)


#: Run by the host root's virtiofsd wrapper (``python3 -c``; argv: WRITABLE-DIR... -- CMD...):
#: in a private mount namespace, remount every mount read-only except binds of
#: the WRITABLE-DIRs (the vhost-user socket's, virtiofsd's pid file's), then exec CMD.  virtiofsd has
#: no read-only export, and a guest root can remount its view read-write; with
#: this the host stays read-only as with 9p's readonly=on.  Without
#: CAP_SYS_ADMIN it warns and runs CMD as is (the guest still mounts ro).
_RO_WRAPPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
NEWNS, REC, PRIVATE, BIND, REMOUNT, RDONLY = 0x20000, 0x4000, 0x40000, 0x1000, 0x20, 0x1
FLAGS = {"nosuid": 0x2, "nodev": 0x4, "noexec": 0x8, "noatime": 0x400, "nodiratime": 0x800,
         "relatime": 0x200000}
def mount(src, dst, flags):
    if libc.mount(src, dst.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), dst)
def unescape(p):
    return p.encode().decode("unicode_escape").encode("latin-1").decode()
sep = sys.argv.index("--")
keep, cmd = sys.argv[1:sep], sys.argv[sep + 1:]
try:
    if libc.unshare(NEWNS) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), "unshare(CLONE_NEWNS)")
    mount(None, "/", REC | PRIVATE)
    failed = []
    for line in open("/proc/self/mountinfo"):
        f = line.split()
        flags = sum(FLAGS.get(o, 0) for o in f[5].split(","))
        try:
            mount(None, unescape(f[4]), REMOUNT | BIND | RDONLY | flags)
        except OSError as e:
            failed.append(f"{unescape(f[4])}: {e.strerror}")
    if failed:
        print("cglcert: could not make read-only: " + "; ".join(failed), file=sys.stderr)
    for k in keep:
        mount(k.encode(), k, BIND)
        mount(None, k, REMOUNT | BIND)
except OSError as e:
    print(f"cglcert: no read-only view of the host root ({e}); the guest mounts it ro", file=sys.stderr)
os.execv(cmd[0], cmd)
"""


def _is_socket(path: Path) -> bool:
    try:
        return stat.S_ISSOCK(path.stat().st_mode)
    except OSError:
        return False


# --------------------------------------------------------------------------- guest control files

def _q(s: str | Path) -> str:
    return shlex.quote(str(s))


def _write_control(ctrl: Path, *, kernel: kernels.Kernel, results_dir: Path,
                   command: Sequence[str] | str, env: Mapping[str, str] | None,
                   cwd: str, timeout: float, modules: list[tuple[str, list[str]]]) -> None:
    libmod = os.path.realpath("/lib/modules")
    has_libmod = os.path.isdir(libmod)
    guest_moddir = f"/lib/modules/{kernel.release}" if has_libmod else str(kernel.modules_dir)
    run_env = {
        "CGL_RESULTS": str(results_dir),
        "CGL_MODDIR": str(kernel.modules_dir.resolve()),
        "CGL_LIBMODULES": libmod if has_libmod else "",
        "CGL_TIMEOUT": str(max(0, int(round(timeout)))),
        # The guest's /tmp is a fresh tmpfs; a working directory under the
        # host's /tmp (a CI clone, say) is bound back over it, read-only.
        "CGL_KEEP": cwd if cwd.startswith("/tmp/") else "",
    }
    (ctrl / "run.env").write_text("".join(f"{k}={_q(v)}\n" for k, v in run_env.items()))
    (ctrl / "modules.sh").write_text(
        "".join("load_module " + " ".join(_q(x) for x in [path, *params]) + "\n"
                for path, params in modules))
    host_path = os.environ.get("PATH", "/usr/bin:/bin")
    full_env = {
        "PATH": ":".join(dict.fromkeys(host_path.split(":") + ["/usr/local/sbin", "/usr/sbin", "/sbin",
                                                                "/usr/local/bin", "/usr/bin", "/bin"])),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "CGLCERT_GUEST": "1",
        "CGLCERT_RESULTS": str(results_dir),
        "CGLCERT_KERNEL": kernel.release,
        "CGLCERT_MODULES_DIR": guest_moddir,
    }
    full_env.update(env or {})
    lines = ["# cglcert guest command (generated by ci/cglcert/qemu.py)"]
    lines += [f"export {k}={_q(v)}" for k, v in full_env.items() if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    lines.append(f"cd {_q(cwd)} 2>/dev/null || cd /")
    if isinstance(command, str):
        lines.append(command)
    else:
        lines.append("exec " + " ".join(_q(a) for a in command))
    (ctrl / "cmd.sh").write_text("\n".join(lines) + "\n")


def _resolve_modules(kernel: kernels.Kernel, extra: Iterable[str | Path], ctrl: Path) -> list[tuple[str, list[str]]]:
    """Copy the ``extra_modules`` into ``<results>/.cglcert/modules/``; return (file, params) in load order.

    An item is a path to a ``.ko`` (absolute or relative to cwd) or the name of a
    module of the kernel's tree (its dependencies are loaded first), optionally
    followed by parameters: ``"aem.ko fault_inject=1"``, ``"configfs"``.  The
    files are copied (decompressed if needed: busybox insmod reads plain .ko
    only) because the guest cannot see the host's /tmp.
    """
    out: list[tuple[str, list[str]]] = []
    names: set[str] = set()
    dest = ctrl / "modules"
    for item in extra:
        parts = shlex.split(str(item)) if isinstance(item, str) else [str(item)]
        if not parts:
            continue
        target, params = parts[0], parts[1:]
        if "/" in target or target.endswith(kernels._KO_SUFFIXES):
            paths = [Path(target).resolve()]
            if not paths[0].is_file():
                raise kernels.KernelError(f"extra module {target}: no such file")
        else:
            paths = kernels.module_load_order(kernel.modules_dir, [target])
            if not paths:
                raise kernels.KernelError(
                    f"extra module {target}: not a module of {kernel.release} (built in, or misspelt?)")
        for i, p in enumerate(paths):
            name = kernels._module_name(p)
            if name in names:
                continue
            names.add(name)
            dest.mkdir(exist_ok=True)
            fname = f"{len(out):02d}-{name}.ko"
            (dest / fname).write_bytes(kernels._read_module(p))
            out.append((fname, params if i == len(paths) - 1 else []))
    return out


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- run

def run_in_guest(kernel: kernels.Kernel | str | None, command: Sequence[str] | str, *,
                 smp: int = 2, mem: str = "2G", accel: str = "tcg", timeout: float = 600,
                 boot_timeout: float = 120, results_dir: Path | str | None = None,
                 env: Mapping[str, str] | None = None, extra_modules: Iterable[str | Path] = (),
                 cwd: str | Path | None = None, append: str = "", console: TextIO | None = None,
                 qemu: str = "qemu-system-x86_64", boot: str = "pvh", share: str = "auto",
                 virtiofsd: str = VIRTIOFSD) -> GuestResult:
    """Boot *kernel* under QEMU, run *command* in the host root, return what happened.

    *kernel*: a cached :class:`~cglcert.kernels.Kernel`, or a release/spec string
    (``"6.1.0-57-rt-amd64"``, ``"default"``, None), fetched if needed.
    *command*: argv list (exec'd) or a shell script string (run by /bin/sh).
    *timeout*: seconds the command may run in the guest (0 = no guest watchdog,
    the host still kills QEMU after *boot_timeout* + 24 h).
    *results_dir*: writable share, visible in the guest at the same path;
    default a new temporary directory.  *console*: stream the serial console
    there while running (e.g. ``sys.stderr``).
    *boot*: ``"pvh"`` (default) boots the uncompressed vmlinux through its PVH
    entry (about 4 s faster under TCG, no KASLR); ``"bzimage"`` boots Debian's
    vmlinuz exactly as a bootloader would.  PVH falls back to bzimage when the
    vmlinux cannot be extracted.
    *share*: how the host root and the results directory reach the guest,
    one of :data:`SHARES` (see :func:`choose_share`); *virtiofsd*: the daemon
    used for ``"virtiofs"``.
    """
    if boot not in ("pvh", "bzimage"):
        raise ValueError(f"boot must be 'pvh' or 'bzimage', not {boot!r}")
    if not isinstance(kernel, kernels.Kernel):
        kernel = kernels.fetch(kernels.resolve(kernel), headers=False)
    if shutil.which(qemu) is None:
        hostdeps.ensure(["qemu-system-x86"])
    share = choose_share(kernel, share, virtiofsd=virtiofsd)
    if share == "virtiofs":
        virtiofsd = _find_virtiofsd(virtiofsd)
    initrd = initramfs.build(kernel)
    if results_dir is None:
        results_dir = Path(tempfile.mkdtemp(prefix="cglcert-guest-"))
    results_dir = Path(results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    ctrl = results_dir / _CTRL.lstrip("/")
    if ctrl.exists():
        shutil.rmtree(ctrl)
    ctrl.mkdir()
    modules = _resolve_modules(kernel, extra_modules, ctrl)
    _write_control(ctrl, kernel=kernel, results_dir=results_dir, command=command, env=env,
                   cwd=str(cwd or os.getcwd()), timeout=timeout, modules=modules)
    serial = ctrl / "serial.log"
    serial.touch()
    image = kernels.vmlinux(kernel) if boot == "pvh" else None
    daemons = (_Virtiofsd(virtiofsd, {"hostroot": Path("/"), "results": results_dir}, ctrl,
                          readonly=["hostroot"])
               if share == "virtiofs" else None)
    argv = qemu_command(kernel, initrd, results_dir, serial, smp=smp, mem=mem, accel=accel,
                        append=append, qemu=qemu, image=image, share=share,
                        sockets=daemons.sockets if daemons else None)
    (ctrl / "qemu.cmdline").write_text(shlex.join(argv) + "\n")
    if daemons:
        (ctrl / "virtiofsd.cmdline").write_text(
            "".join(shlex.join(a) + "\n" for a in daemons.argvs.values()))

    cmd_limit = timeout if timeout > 0 else 24 * 3600
    grace = max(30.0, 0.25 * cmd_limit)
    start = time.monotonic()
    begin_at: float | None = None
    error: str | None = None
    detail = ""
    seen = ""
    pos = 0
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    proc: subprocess.Popen[bytes] | None = None
    try:
        if daemons is not None and (why := daemons.start()) is not None:
            error, detail = "qemu", why
        else:
            with open(ctrl / "qemu.stderr", "wb") as errf:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                        start_new_session=True)
                try:
                    panic_at: float | None = None
                    while True:
                        exited = proc.poll() is not None
                        with open(serial, "rb") as fh:
                            fh.seek(pos)
                            raw = fh.read()
                        pos += len(raw)
                        chunk = decoder.decode(raw)
                        # only look at what is new (plus an overlap for split markers)
                        window = seen[-64:] + chunk
                        if chunk:
                            seen += chunk
                            if console is not None:
                                console.write(chunk.replace("\r", ""))
                                console.flush()
                        now = time.monotonic()
                        if begin_at is None and "<<<cglcert:begin>>>" in window:
                            begin_at = now
                        if exited:
                            break
                        if panic_at is None and _PANIC_RE.search(window):
                            panic_at = now
                        if panic_at is not None and now - panic_at > 10:
                            error = "panic" if begin_at is not None else "boot"
                            detail = "the kernel panicked and QEMU did not exit: killed"
                            break
                        if begin_at is None and now - start > boot_timeout:
                            error = "boot"
                            detail = (f"the guest did not start the command within {boot_timeout:.0f} s "
                                      f"(see {serial})")
                            break
                        if begin_at is not None and now - begin_at > cmd_limit + grace:
                            error = "timeout"
                            detail = (f"the guest did not finish within {cmd_limit:.0f} s + "
                                      f"{grace:.0f} s grace; QEMU killed (kernel log from the serial console)")
                            break
                        time.sleep(0.05)
                finally:
                    if proc.poll() is None:
                        proc.kill()
                    proc.wait()
                    with open(serial, "rb") as fh:
                        fh.seek(pos)
                        rest = decoder.decode(fh.read(), final=True)
                    if rest:
                        seen += rest
                        if console is not None:
                            console.write(rest.replace("\r", ""))
                            console.flush()
    finally:
        if daemons is not None:
            daemons.stop()
    duration = time.monotonic() - start
    seen = seen.replace("\r", "")

    # ---- interpret
    marks = [(m["what"], m["arg"] or "") for m in _MARK_RE.finditer(seen)]
    rc = _read_int(ctrl / "rc")
    timed_out = (ctrl / "timeout").exists() or any(w == "timeout" for w, _ in marks)
    init_err = next((a for w, a in marks if w == "init-error"), None)
    if error is None:
        if init_err is not None:
            kind, _, msg = init_err.partition(" ")
            error = "module" if kind == "module" else "init"
            detail = msg or init_err
        elif (pm := _PANIC_RE.search(seen)) and rc is None:
            line = seen[pm.start():].splitlines()[0]
            if begin_at is None:
                error, detail = "boot", f"the kernel panicked before the command started: {line}"
            else:
                error, detail = "panic", f"the kernel panicked during the command: {line}"
        elif timed_out:
            error = "timeout"
            detail = f"the command did not finish within {timeout:g} s and was killed in the guest"
        elif begin_at is None:
            error = "boot"
            err_txt = (ctrl / "qemu.stderr").read_text(errors="replace").strip()
            if proc is not None and proc.returncode not in (0, None) and err_txt:
                error, detail = "qemu", f"QEMU failed ({proc.returncode}): {err_txt[-1500:]}"
            else:
                tail = "\n".join(seen.strip().splitlines()[-15:])
                detail = f"the guest stopped before running the command; last console lines:\n{tail}"
        elif rc is None:
            error = "no-result"
            detail = "the guest ended without recording the command's exit code"
    exit_code = None if (timed_out or error in ("boot", "init", "module", "qemu")) else rc

    dmesg = ctrl / "dmesg.txt"
    if dmesg.is_file() and dmesg.stat().st_size > 0:
        klog, source = dmesg.read_text(errors="replace"), "dmesg"
        report = kmsg.check(klog, _read_int(ctrl / "tainted"),
                            tainted_before=_read_int(ctrl / "tainted_before"))
    else:
        klog, source = "\n".join(l for l in seen.splitlines() if _KLINE_RE.match(l)), "serial"
        report = kmsg.check(klog, _read_int(ctrl / "tainted"), kernel_only=True)

    output = ""
    b = seen.find("<<<cglcert:begin>>>")
    if b >= 0:
        e = seen.find("<<<cglcert:", b + 1)
        body = seen[b + len("<<<cglcert:begin>>>"): e if e >= 0 else len(seen)]
        output = "\n".join(l for l in body.splitlines() if not _KLINE_RE.match(l)).strip("\n")
        if output:
            output += "\n"

    up = None
    try:
        up = float((ctrl / "uptime").read_text().strip())
    except (OSError, ValueError):
        pass
    return GuestResult(
        release=kernel.release, command=command if isinstance(command, str) else list(command),
        boot="pvh" if image is not None else "bzimage",
        exit_code=exit_code, error=error, detail=detail, results_dir=results_dir,
        serial_log=serial, kernel_log=klog, kernel_log_source=source, output=output,
        tainted_before=_read_int(ctrl / "tainted_before"), tainted=_read_int(ctrl / "tainted"),
        duration=duration, boot_seconds=None if begin_at is None else begin_at - start,
        guest_uptime=up, report=report, qemu_cmdline=argv, share=share,
    )


if __name__ == "__main__":  # pragma: no cover - manual smoke test
    r = run_in_guest(None, sys.argv[1:] or ["uname", "-r"], console=sys.stderr)
    print(r)
