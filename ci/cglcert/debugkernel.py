"""The debug kernel: Debian's linux-source-6.1 built with the kernel's own bug detectors.

``--kernel debug`` (``cglcert certify``, ``cglcert boot``, ``ci/run-kmod-debug-tests``)
boots a kernel built here from the Debian package ``linux-source-6.1`` with KASAN, KFENCE,
lockdep, DEBUG_ATOMIC_SLEEP, DEBUG_OBJECTS, kmemleak, UBSAN, DEBUG_LIST, the soft-lockup
and hung-task detectors and fault injection: what Debian's kernel lacks to find the AEM
modules' memory, locking and lifetime bugs. The configuration is ``tinyconfig`` plus the
fragment ``reference/kmod/tests/debug-kernel.config`` (merged with
``scripts/kconfig/merge_config.sh``, then ``make olddefconfig``); every option the fragment
asks for is checked in the resulting ``.config``, so a fragment that Kconfig silently
overrides fails the build instead of producing a kernel without the detector.
Everything is built in: the kernel needs no module tree, only the AEM modules, which are
built against the tree (``make -C <tree> M=<copy of reference/kmod> modules``).

Cache (under the kernel cache root of :mod:`cglcert.kernels`, default
``~/.cache/cglcert/kernels``)::

    <cache>/debug/<key>/build.json                what was built, how long it took
    <cache>/debug/<key>/debug-kernel.config       the fragment as it was built
    <cache>/debug/<key>/build.log                 make's output
    <cache>/debug/<key>/tree/                     the build tree: headers for M= builds
    <cache>/debug/<key>/vmlinux                   the PVH-bootable ELF, or empty: no PVH entry
    <cache>/debug/<key>/root/boot/vmlinuz-<rel>   the bzImage
    <cache>/debug/<key>/root/lib/modules/<rel>/   modules.builtin, depmod's indexes, build ->

``<key>`` is :func:`cache_key` of the fragment's bytes, the source package version, the
compiler and :data:`RECIPE`: a second run reuses the build, an edited fragment (or a new
linux-source-6.1, or a new gcc) builds again. A build happens in ``<cache>/debug/.<key>.*``
and is renamed into place only when complete (under a lock file, so two runs never build
the same key twice); an interrupted build is never reused and its leftovers are removed by
the next build of that key. Builds of other keys unused for :data:`KEEP_DAYS` days are
deleted.

About 20 minutes on 2 cores (``make -j3``), 4-5 GB of disk. Under TCG the kernel runs 2-5
times slower than Debian's: runners multiply their timeouts by :data:`TIMEOUT_FACTOR`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cglcert import default_repo_root, hostdeps, kernels

__all__ = [
    "SPEC", "SOURCE_PACKAGE", "TARBALL", "FRAGMENT", "BUILD_PACKAGES", "RECIPE",
    "TIMEOUT_FACTOR", "DEBUG_OPTIONS", "MANIFEST", "is_debug", "is_debug_kernel",
    "parse_config", "read_config", "fragment_mismatches", "debug_options", "boot_args",
    "cache_key",
    "source_version", "compiler_version", "cached", "ensure", "load", "debug_dir",
]

#: What ``--kernel`` takes to mean this kernel.
SPEC = kernels.DEBUG_SPEC
#: The Debian package with the source, and the tarball it installs.
SOURCE_PACKAGE = "linux-source-6.1"
TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
#: The config fragment, relative to the repository root.
FRAGMENT = Path("reference/kmod/tests/debug-kernel.config")
#: Host packages the kernel build needs (besides the source package).
BUILD_PACKAGES = ["make", "gcc", "libc6-dev", "bc", "flex", "bison", "libelf-dev", "xz-utils",
                  "kmod"]
#: The build steps' version: bump it when :func:`_build` changes what it produces.
RECIPE = 2
#: How much longer everything takes on this kernel under TCG than on Debian's.
TIMEOUT_FACTOR = 4
#: Guest memory by default: KASAN's shadow takes an eighth, kmemleak tracks every object,
#: and the conformance suite registers 10^6 events.
MEM = "4G"
#: The flavor of the :class:`~cglcert.kernels.Kernel` this module returns.
FLAVOR = "debug"
MANIFEST = "build.json"
#: Builds of other fragments unused this long are deleted when a new one is made.
KEEP_DAYS = 7

#: The options a report lists when a kernel has them (``=y`` or a value other than 0), in
#: this order: the bug detectors first, then the fault injection, then the hardening.
DEBUG_OPTIONS = (
    "CONFIG_KASAN", "CONFIG_KASAN_GENERIC", "CONFIG_KASAN_SW_TAGS", "CONFIG_KASAN_HW_TAGS",
    "CONFIG_KASAN_INLINE", "CONFIG_KASAN_OUTLINE", "CONFIG_KASAN_STACK", "CONFIG_KASAN_VMALLOC",
    "CONFIG_KFENCE", "CONFIG_KMSAN", "CONFIG_KCSAN",
    "CONFIG_DEBUG_KMEMLEAK", "CONFIG_DEBUG_KMEMLEAK_DEFAULT_OFF",
    "CONFIG_UBSAN", "CONFIG_UBSAN_TRAP", "CONFIG_UBSAN_BOUNDS", "CONFIG_UBSAN_ARRAY_BOUNDS",
    "CONFIG_UBSAN_LOCAL_BOUNDS", "CONFIG_UBSAN_SHIFT", "CONFIG_UBSAN_DIV_ZERO",
    "CONFIG_UBSAN_UNREACHABLE", "CONFIG_UBSAN_BOOL", "CONFIG_UBSAN_ENUM",
    "CONFIG_UBSAN_ALIGNMENT", "CONFIG_UBSAN_SANITIZE_ALL",
    "CONFIG_LOCKDEP", "CONFIG_PROVE_LOCKING", "CONFIG_PROVE_RCU", "CONFIG_DEBUG_LOCK_ALLOC",
    "CONFIG_DEBUG_SPINLOCK", "CONFIG_DEBUG_MUTEXES", "CONFIG_DEBUG_RWSEMS",
    "CONFIG_DEBUG_ATOMIC_SLEEP", "CONFIG_DEBUG_PREEMPT",
    "CONFIG_DEBUG_OBJECTS", "CONFIG_DEBUG_OBJECTS_FREE", "CONFIG_DEBUG_OBJECTS_TIMERS",
    "CONFIG_DEBUG_OBJECTS_WORK", "CONFIG_DEBUG_OBJECTS_RCU_HEAD",
    "CONFIG_DEBUG_LIST", "CONFIG_BUG_ON_DATA_CORRUPTION", "CONFIG_DEBUG_VM",
    "CONFIG_DEBUG_PAGEALLOC", "CONFIG_SLUB_DEBUG", "CONFIG_SLUB_DEBUG_ON",
    "CONFIG_SCHED_STACK_END_CHECK",
    "CONFIG_SOFTLOCKUP_DETECTOR", "CONFIG_HARDLOCKUP_DETECTOR", "CONFIG_DETECT_HUNG_TASK",
    "CONFIG_WQ_WATCHDOG",
    "CONFIG_FAULT_INJECTION", "CONFIG_FAILSLAB", "CONFIG_FAIL_PAGE_ALLOC",
    "CONFIG_FAULT_INJECTION_USERCOPY", "CONFIG_FUNCTION_ERROR_INJECTION",
    "CONFIG_FAIL_FUNCTION", "CONFIG_FAULT_INJECTION_DEBUG_FS",
    "CONFIG_PANIC_ON_OOPS", "CONFIG_HARDENED_USERCOPY", "CONFIG_FORTIFY_SOURCE",
)

_CONFIG_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


# --------------------------------------------------------------------------- the spec

def is_debug(spec: str | None) -> bool:
    """True when a ``--kernel`` value asks for the debug kernel."""
    return spec == SPEC


def is_debug_kernel(kernel: kernels.Kernel | None) -> bool:
    """True for a kernel :func:`ensure` or :func:`load` returned."""
    return kernel is not None and kernel.flavor == FLAVOR and \
        (kernel.root.parent / MANIFEST).is_file()


# --------------------------------------------------------------------------- .config

def parse_config(text: str) -> dict[str, str]:
    """A ``.config`` (or a fragment) as ``{"CONFIG_X": value}``; ``# ... is not set`` is "n".

    Values are kept as written (``"-debug"`` with its quotes, ``0x10``, ``y``); a later line
    overrides an earlier one, as in Kconfig.
    """
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _CONFIG_RE.match(line)
        if m:
            out[m[1]] = m[2].strip()
            continue
        m = _UNSET_RE.match(line)
        if m:
            out[m[1]] = "n"
    return out


def read_config(path: Path | str | None) -> dict[str, str]:
    """:func:`parse_config` of a file; {} when there is none."""
    if path is None:
        return {}
    try:
        return parse_config(Path(path).read_text(errors="replace"))
    except OSError:
        return {}


def fragment_mismatches(fragment: Mapping[str, str], config: Mapping[str, str]) -> list[str]:
    """What Kconfig did not give: ``"CONFIG_X=y (got n)"`` per option of *fragment*.

    An option the fragment turns off (``=n``) may be absent from the ``.config`` (its
    dependencies are off): that counts as off.
    """
    out = []
    for name, want in fragment.items():
        got = config.get(name, "n")
        if want == "n" and got in ("n", ""):
            continue
        if got != want:
            out.append(f"{name}={want} (got {'not set' if got == 'n' else got})")
    return out


def debug_options(config: Mapping[str, str] | Path | str | None) -> list[str]:
    """The :data:`DEBUG_OPTIONS` a kernel's ``.config`` turns on, in that order."""
    if not isinstance(config, Mapping):
        config = read_config(config)
    return [o for o in DEBUG_OPTIONS if config.get(o, "n") not in ("n", "", "0")]


def boot_args(config: Mapping[str, str] | Path | str | None) -> str:
    """Kernel command line a kernel of this *config* needs under cglcert's QEMU target:
    ``kmemleak=on`` when kmemleak is built but off by default; with KASAN
    ``kasan_multi_shot`` (every report, not only the first of the boot) and ``acpi=noirq``
    (its ACPI interpreter is so slow under TCG that QEMU's PCI routing method _PRT hits the
    30 s AML loop timeout once per virtio device; virtio uses MSI-X, no routing needed)."""
    if not isinstance(config, Mapping):
        config = read_config(config)
    args = []
    if config.get("CONFIG_KASAN") == "y":
        args.append("kasan_multi_shot")
        if config.get("CONFIG_ACPI") == "y":
            args.append("acpi=noirq")
    if config.get("CONFIG_DEBUG_KMEMLEAK") == "y" and \
            config.get("CONFIG_DEBUG_KMEMLEAK_DEFAULT_OFF") == "y":
        args.append("kmemleak=on")
    return " ".join(args)


# --------------------------------------------------------------------------- the key

def cache_key(fragment: bytes, version: str, compiler: str = "", recipe: int = RECIPE) -> str:
    """16 hex digits naming one build: the fragment, the source version, the compiler."""
    h = hashlib.sha256()
    for part in (f"recipe {recipe}".encode(), version.encode(), compiler.encode(), fragment):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def _run(cmd: list[str], *, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise kernels.KernelError(f"{cmd[0]} not found") from exc
    if proc.returncode != 0:
        raise kernels.KernelError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n"
                                  f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def source_version(install: bool = True) -> str:
    """Version of the installed linux-source-6.1 (with *install*, installed with apt as
    root when missing)."""
    try:
        if install:
            hostdeps.ensure([SOURCE_PACKAGE])
        elif hostdeps.missing([SOURCE_PACKAGE]):
            raise hostdeps.MissingPackages([SOURCE_PACKAGE],
                                           hostdeps.install_command([SOURCE_PACKAGE]))
    except hostdeps.MissingPackages as exc:
        raise kernels.KernelError(f"the debug kernel is built from {SOURCE_PACKAGE}; "
                                  f"install it: {exc}") from exc
    version = _run(["dpkg-query", "-W", "-f=${Version}", SOURCE_PACKAGE]).strip()
    if not version or not TARBALL.is_file():
        raise kernels.KernelError(f"{SOURCE_PACKAGE} {version or '?'} is installed but {TARBALL} "
                                  f"is missing: apt-get install --reinstall {SOURCE_PACKAGE}")
    return version


def compiler_version() -> str:
    """First line of ``gcc --version`` (the compiler the kernel Makefile calls)."""
    try:
        return _run(["gcc", "--version"]).splitlines()[0].strip()
    except (kernels.KernelError, IndexError):
        return ""


# --------------------------------------------------------------------------- the cache

def debug_dir(cache_dir: Path | str | None = None) -> Path:
    """``<kernel cache>/debug``."""
    return kernels.cache_root(cache_dir) / "debug"


def load(build: Path) -> kernels.Kernel:
    """The kernel of a finished build directory (``<cache>/debug/<key>``)."""
    data = json.loads((build / MANIFEST).read_text())
    rel = data["release"]
    root = build / "root"
    tree = build / "tree"
    return kernels.Kernel(
        release=rel, abi=data.get("kernel_version", rel), flavor=FLAVOR,
        version=data["source_version"], root=root, vmlinuz=root / "boot" / f"vmlinuz-{rel}",
        modules_dir=root / "lib/modules" / rel, build_dir=tree if tree.is_dir() else None,
        config=tree / ".config" if (tree / ".config").is_file() else None)


def manifest(kernel: kernels.Kernel) -> dict:
    """build.json of a debug kernel ({} for another kernel)."""
    try:
        return json.loads((kernel.root.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def _fragment_path(repo: Path | None, fragment: Path | str | None) -> Path:
    if fragment is not None:
        path = Path(fragment)
    else:
        path = (repo or default_repo_root()) / FRAGMENT
    if not path.is_file():
        raise kernels.KernelError(f"the debug kernel's config fragment {path} does not exist")
    return path.resolve()


def _key_for(fragment: bytes, install: bool = True) -> tuple[str, str, str]:
    version = source_version(install)
    compiler = compiler_version()
    return cache_key(fragment, version, compiler), version, compiler


def cached(repo: Path | None = None, *, fragment: Path | str | None = None,
           cache_dir: Path | str | None = None) -> kernels.Kernel | None:
    """The debug kernel of the current fragment if it is built, else None (never builds)."""
    key, _version, _compiler = _key_for(_fragment_path(repo, fragment).read_bytes(),
                                        install=False)
    build = debug_dir(cache_dir) / key
    return load(build) if (build / MANIFEST).is_file() else None


def ensure(repo: Path | None = None, *, fragment: Path | str | None = None,
           cache_dir: Path | str | None = None, jobs: int | None = None,
           log: Log | None = None, force: bool = False) -> kernels.Kernel:
    """The debug kernel of *fragment* (default the repository's), built if not cached.

    *log* gets a line per phase of a build (a build takes about 20 minutes on 2 cores).
    Raises :class:`~cglcert.kernels.KernelError` saying what failed (with the build log's
    tail and its path).
    """
    log = log or _quiet
    frag = _fragment_path(repo, fragment)
    # One read: the key, the build and the manifest all see these bytes, even if the file
    # is edited while the build runs.
    data = frag.read_bytes()
    key, version, compiler = _key_for(data)
    top = debug_dir(cache_dir)
    build = top / key
    if not force and (build / MANIFEST).is_file():
        _touch(build)
        return load(build)
    try:
        hostdeps.ensure(BUILD_PACKAGES, quiet=True)
    except hostdeps.MissingPackages as exc:
        raise kernels.KernelError(f"building the debug kernel needs {' '.join(exc.packages)}: "
                                  f"{exc}") from exc
    top.mkdir(parents=True, exist_ok=True)
    with kernels._locked(top / f".{key}.lock"):
        if not force and (build / MANIFEST).is_file():  # another process built it meanwhile
            _touch(build)
            return load(build)
        for stale in top.glob(f".{key}.*"):  # an interrupted build of this key (we hold the lock)
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=top))
        tmp.chmod(0o755)
        try:
            snapshot = tmp / "debug-kernel.config"
            snapshot.write_bytes(data)
            info = _build(tmp, snapshot, jobs or (os.cpu_count() or 1) + 1, log)
            info.update(key=key, source_package=SOURCE_PACKAGE, source_version=version,
                        compiler=compiler, recipe=RECIPE, fragment=str(frag),
                        fragment_sha256=hashlib.sha256(data).hexdigest())
            (tmp / MANIFEST).write_text(json.dumps(info, indent=2) + "\n")
            if build.exists():
                shutil.rmtree(build)
            tmp.rename(build)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    _prune(top, keep=key)
    return load(build)


def _touch(build: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(build / MANIFEST)  # in use: not pruned


def _prune(top: Path, keep: str, now: float | None = None) -> list[Path]:
    """Delete finished builds other than *keep* unused for KEEP_DAYS days; return them."""
    now = time.time() if now is None else now
    gone = []
    for d in top.iterdir():
        if d.name == keep or d.name.startswith(".") or not d.is_dir():
            continue
        m = d / MANIFEST
        try:
            age = now - (m.stat().st_mtime if m.exists() else d.stat().st_mtime)
        except OSError:
            continue
        if age > KEEP_DAYS * 86400:
            shutil.rmtree(d, ignore_errors=True)
            (top / f".{d.name}.lock").unlink(missing_ok=True)
            gone.append(d)
    return gone


# --------------------------------------------------------------------------- the build

#: Reproducible build identity (no host name or user in ``uname -v``).
_MAKE_ENV = {"KBUILD_BUILD_USER": "cglcert", "KBUILD_BUILD_HOST": "cglcert", "LC_ALL": "C"}


def make_targets() -> list[str]:
    """What the build makes: the image, and ``modules`` (no module is configured: it runs
    modpost, which writes Module.symvers, modules.order and modules.builtin for M= builds)."""
    return ["bzImage", "modules"]


def _logged(cmd: list[str], cwd: Path, logfile: Path, what: str) -> None:
    env = dict(os.environ, **_MAKE_ENV)
    with open(logfile, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                              check=False)
    if proc.returncode != 0:
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-30:])
        keep = logfile.parent.parent / f"{logfile.parent.name.lstrip('.')}-failed.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(logfile, keep)
        raise kernels.KernelError(f"{what} failed ({' '.join(cmd)}, exit {proc.returncode}); "
                                  f"log: {keep}\n{tail}")


def _build(work: Path, frag: Path, jobs: int, log: Log) -> dict:
    """Unpack, configure, check and build in *work*; install the boot files. Returns the
    manifest's build facts."""
    started = time.monotonic()
    logfile = work / "build.log"
    log(f"unpacking {TARBALL}")
    _logged(["tar", "-xJf", str(TARBALL)], work, logfile, "unpacking the source")
    unpacked = [p for p in work.iterdir() if p.is_dir() and p.name.startswith("linux")]
    if len(unpacked) != 1:
        raise kernels.KernelError(f"{TARBALL} did not unpack into one linux-* folder")
    tree = work / "tree"
    unpacked[0].rename(tree)
    log("configuring: tinyconfig + the fragment")
    _logged(["make", "tinyconfig"], tree, logfile, "make tinyconfig")
    _logged(["scripts/kconfig/merge_config.sh", "-m", ".config", str(frag)], tree, logfile,
            "merging the fragment")
    _logged(["make", "olddefconfig"], tree, logfile, "make olddefconfig")
    config = read_config(tree / ".config")
    bad = fragment_mismatches(parse_config(frag.read_text()), config)
    if bad:
        raise kernels.KernelError(
            f"Kconfig did not give what {frag} asks for (a dependency is missing or the "
            f"option does not exist in {SOURCE_PACKAGE}): " + "; ".join(bad))
    log(f"compiling (make -j{jobs} {' '.join(make_targets())}; about 20 minutes on 2 cores); "
        f"log: {logfile}")
    _logged(["make", f"-j{jobs}", "LOCALVERSION=", *make_targets()], tree, logfile,
            "building the debug kernel")
    release = _run(["make", "-s", "LOCALVERSION=", "kernelrelease"], cwd=tree).strip()
    kversion = _run(["make", "-s", "kernelversion"], cwd=tree).strip()
    _install(work, tree, release)
    took = time.monotonic() - started
    log(f"built {release} in {took / 60:.1f} min")
    return {"release": release, "kernel_version": kversion, "jobs": jobs,
            "build_seconds": round(took, 1),
            "built": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
            "debug_options": debug_options(config)}


def _install(work: Path, tree: Path, release: str) -> None:
    """The layout :mod:`cglcert.qemu` boots: boot/, lib/modules/<release>/, vmlinux."""
    boot = work / "root" / "boot"
    boot.mkdir(parents=True)
    shutil.copyfile(tree / "arch/x86/boot/bzImage", boot / f"vmlinuz-{release}")
    shutil.copyfile(tree / ".config", boot / f"config-{release}")
    # kernels.vmlinux() boots this through the PVH entry; an empty file says there is none
    # (the fragment's PVH=n: its early C code cannot run under KASAN), so QEMU loads the
    # bzImage as a boot loader would.
    if read_config(tree / ".config").get("CONFIG_PVH") == "y":
        try:
            os.link(tree / "vmlinux", work / "vmlinux")
        except OSError:
            shutil.copyfile(tree / "vmlinux", work / "vmlinux")
    else:
        (work / "vmlinux").write_bytes(b"")
    mods = work / "root" / "lib" / "modules" / release
    mods.mkdir(parents=True)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        src = tree / name
        if src.is_file():
            shutil.copyfile(src, mods / name)
        else:
            (mods / name).write_bytes(b"")
    (mods / "build").symlink_to(os.path.relpath(tree, mods))
    # depmod's indexes: `modprobe sctp` in the guest then succeeds for what is built in
    # (tests load protocol modules that way) instead of failing for want of modules.dep.
    depmod = shutil.which("depmod") or next(
        (p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.access(p, os.X_OK)), None)
    if depmod is not None:
        _run([depmod, "-b", str(work / "root"), release])
    else:
        (mods / "modules.dep").write_bytes(b"")
