"""A cache of Debian kernels (image + modules + headers), unpacked without installing.

Layout (default ``${XDG_CACHE_HOME:-~/.cache}/cglcert/kernels/``, override with the
``CGLCERT_KERNEL_CACHE`` environment variable or the ``cache_dir`` arguments)::

    <cache>/<release>/manifest.json        what was fetched (versions, paths)
    <cache>/<release>/root/boot/vmlinuz-<release>
    <cache>/<release>/root/lib/modules/<release>/      modules (+ generated modules.dep)
    <cache>/<release>/root/usr/src/linux-headers-<release>/   -> Kernel.build_dir
    <cache>/<release>/root/usr/src/linux-headers-<abi>-common[-rt]/
    <cache>/<release>/root/usr/lib/linux-kbuild-<major.minor>/

``<release>`` is ``<abi>-<flavor>``, e.g. ``6.1.0-57-amd64``, ``6.1.0-57-rt-amd64``,
``6.1.0-57-cloud-amd64``.  The packages are fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x``; nothing is installed on the host.

The unpacked tree is made self-consistent so that an out-of-tree module builds
against the cache with ``make -C <Kernel.build_dir> M=$PWD``:

* the flavour Makefile's ``include /usr/src/linux-headers-<abi>-common/Makefile``
  is rewritten to the cached common tree;
* absolute symlinks (``lib/modules/<release>/build`` -> ``/usr/src/...``) are
  rewritten to relative links inside the cache;
* ``scripts`` and ``tools`` already are relative links to the unpacked
  ``linux-kbuild-<major.minor>`` package.  Debian keeps only a few versions of
  linux-kbuild in the archive: the exact version is used when available, the
  newest otherwise (recorded as ``kbuild_version`` in the manifest; kbuild's
  host tools are compatible within a stable series).

The build still needs the host compiler the kernel was built with (``gcc-12``
for Debian 12, see :data:`BUILD_PACKAGES`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "Kernel", "KernelError", "BUILD_PACKAGES", "cache_root", "parse_release",
    "default_kernel", "resolve", "list_available", "list_cached", "fetch", "cached",
    "module_deps", "module_load_order", "find_module", "vmlinux", "DEBUG_SPEC",
]

#: Host packages needed to build out-of-tree modules against a cached kernel.
BUILD_PACKAGES = ["make", "gcc-12", "libc6-dev", "libelf-dev"]

_RELEASE_RE = re.compile(r"^(?P<abi>\d+\.\d+\.\d+-\d+)-(?P<flavor>[a-z0-9][a-z0-9-]*)$")
_IMAGE_RE = re.compile(r"^linux-image-(\d+\.\d+\.\d+-\d+-[a-z0-9-]+)$")
_NOT_FLAVORS = ("-dbg", "-unsigned")
MANIFEST = "manifest.json"
#: The ``--kernel`` value of the debug kernel: built from source by :mod:`cglcert.debugkernel`
#: (``boot``, ``certify``), never fetched from the archive.
DEBUG_SPEC = "debug"


class KernelError(RuntimeError):
    """A kernel could not be found, fetched or unpacked; the message says what to do."""


@dataclass(frozen=True)
class Kernel:
    """A kernel unpacked in the cache."""

    release: str          #: ``uname -r`` of the kernel, e.g. ``6.1.0-57-amd64``
    abi: str              #: e.g. ``6.1.0-57``
    flavor: str           #: e.g. ``amd64``, ``rt-amd64``, ``cloud-amd64``
    version: str          #: Debian package version, e.g. ``6.1.192-3``
    root: Path            #: unpacked tree
    vmlinuz: Path
    modules_dir: Path     #: ``root/lib/modules/<release>``
    build_dir: Path | None  #: ``root/usr/src/linux-headers-<release>`` (None if no headers)
    config: Path | None   #: the kernel's ``.config`` (``root/boot/config-<release>``)

    def to_dict(self) -> dict[str, str | None]:
        return {k: (str(v) if v is not None else None) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- paths

def cache_root(cache_dir: Path | str | None = None) -> Path:
    """Return the kernel cache directory (not created)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve()
    env = os.environ.get("CGLCERT_KERNEL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(xdg) / "cglcert" / "kernels").resolve()


def parse_release(release: str) -> tuple[str, str]:
    """Split ``6.1.0-57-rt-amd64`` into ``("6.1.0-57", "rt-amd64")``."""
    m = _RELEASE_RE.match(release)
    if not m:
        raise KernelError(
            f"not a Debian kernel release: {release!r} (expected ABI-FLAVOR such as "
            "6.1.0-57-amd64, 6.1.0-57-rt-amd64 or 6.1.0-57-cloud-amd64; "
            "see `./cglcert kernels list`)"
        )
    return m["abi"], m["flavor"]


def _version_key(release: str) -> tuple:
    return tuple(int(x) if x.isdigit() else x for x in re.split(r"[.-]", release))


# --------------------------------------------------------------------------- apt queries

def _run(cmd: list[str], *, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise KernelError(f"{cmd[0]} not found: the kernel cache needs a Debian host with apt") from exc
    if proc.returncode != 0:
        raise KernelError(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr.strip()}")
    return proc.stdout


def _candidate(package: str) -> str | None:
    """The version apt would install for *package*, or None if apt does not know it."""
    out = _run(["apt-cache", "policy", package])
    m = re.search(r"^\s*Candidate:\s*(\S+)", out, re.M)
    if not m or m[1] == "(none)":
        return None
    return m[1]


def _versions(package: str) -> list[str]:
    """All versions of *package* the configured mirrors offer (apt-cache madison)."""
    out = _run(["apt-cache", "madison", package])
    return [line.split("|")[1].strip() for line in out.splitlines() if line.count("|") >= 2]


def default_kernel(flavor: str = "amd64") -> str:
    """Release that Debian's ``linux-image-<flavor>`` metapackage currently depends on."""
    meta = f"linux-image-{flavor}"
    try:
        out = _run(["apt-cache", "depends", meta])
    except KernelError:
        out = ""
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*linux-image-(\S+)", line)
        if m and _RELEASE_RE.match(m[1]) and not m[1].endswith(_NOT_FLAVORS):
            return m[1]
    raise KernelError(
        f"unknown kernel or flavor {flavor!r}: apt knows no metapackage {meta}. "
        "Give ABI-FLAVOR (e.g. 6.1.0-57-amd64) or a flavor (amd64, rt-amd64, cloud-amd64); "
        "`./cglcert kernels list` shows what the mirror offers (run `apt-get update` if empty)"
    )


def resolve(spec: str | None = None, cache_dir: Path | str | None = None) -> str:
    """Turn a user's kernel spec into a release.

    ``None``/``"default"`` -> :func:`default_kernel`; a bare flavor (``rt-amd64``)
    -> that flavor's default; ``ABI-FLAVOR`` is returned as is. ``"debug"`` is not a
    Debian kernel (:data:`DEBUG_SPEC`): the error says where it is taken.
    """
    if spec in (None, "", "default"):
        return default_kernel()
    if spec == DEBUG_SPEC:
        raise KernelError(
            "'debug' is the debug kernel built from linux-source-6.1, not a kernel of the "
            "archive: `cglcert kernels debug` builds it, `cglcert boot --kernel debug` and "
            "`cglcert certify --kernel debug` take it")
    if _RELEASE_RE.match(spec):
        return spec
    if re.fullmatch(r"[a-z][a-z0-9-]*", spec):
        return default_kernel(spec)
    parse_release(spec)  # raises with a helpful message
    return spec


def list_available() -> list[str]:
    """Releases whose ``linux-image-<release>`` apt can download, oldest first."""
    out = _run(["apt-cache", "search", "--names-only", r"^linux-image-[0-9]+\.[0-9]+\.[0-9]+-[0-9]+-"])
    found = set()
    for line in out.splitlines():
        name = line.split(" - ", 1)[0].strip()
        m = _IMAGE_RE.match(name)
        if m and not name.endswith(_NOT_FLAVORS):
            found.add(m[1])
    return sorted(found, key=_version_key)


def list_cached(cache_dir: Path | str | None = None) -> list[Kernel]:
    """Kernels already unpacked in the cache."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    kernels = []
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        with contextlib.suppress(KernelError, OSError, ValueError, KeyError):
            kernels.append(_load(manifest.parent))
    return sorted(kernels, key=lambda k: _version_key(k.release))


def cached(release: str, cache_dir: Path | str | None = None) -> Kernel | None:
    """The cached kernel for *release*, or None."""
    d = cache_root(cache_dir) / release
    if (d / MANIFEST).is_file():
        return _load(d)
    return None


def _load(kdir: Path) -> Kernel:
    data = json.loads((kdir / MANIFEST).read_text())
    rel = data["release"]
    root = kdir / "root"
    build = root / "usr/src" / f"linux-headers-{rel}"
    config = root / "boot" / f"config-{rel}"
    return Kernel(
        release=rel, abi=data["abi"], flavor=data["flavor"], version=data["version"],
        root=root, vmlinuz=root / "boot" / f"vmlinuz-{rel}",
        modules_dir=root / "lib/modules" / rel,
        build_dir=build if build.is_dir() else None,
        config=config if config.is_file() else None,
    )


# --------------------------------------------------------------------------- fetch

@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _packages(abi: str, flavor: str, version: str, headers: bool) -> list[str]:
    """``name=version`` specs to download for one kernel."""
    rel = f"{abi}-{flavor}"
    specs = [f"linux-image-{rel}={version}"]
    if not headers:
        return specs
    common = f"linux-headers-{abi}-common" + ("-rt" if flavor.startswith("rt-") else "")
    kbuild = "linux-kbuild-" + ".".join(abi.split(".")[:2])
    specs += [f"linux-headers-{rel}={version}", f"{common}={version}"]
    kb_versions = _versions(kbuild)
    if not kb_versions:
        raise KernelError(f"apt does not know {kbuild}; run `apt-get update`")
    kb_version = version if version in kb_versions else _candidate(kbuild) or kb_versions[0]
    specs.append(f"{kbuild}={kb_version}")
    return specs


def fetch(release: str | None = None, *, headers: bool = True,
          cache_dir: Path | str | None = None, force: bool = False) -> Kernel:
    """Download and unpack *release* (default: :func:`default_kernel`) into the cache.

    Returns the cached :class:`Kernel` at once when it is already there.  Safe to
    call from several processes at the same time (a lock file serialises them).
    """
    release = resolve(release)
    abi, flavor = parse_release(release)
    root = cache_root(cache_dir)
    kdir = root / release
    if not force and (kdir / MANIFEST).is_file():
        k = _load(kdir)
        if k.build_dir is not None or not headers:
            return k
    version = _candidate(f"linux-image-{release}")
    if version is None:
        raise KernelError(
            f"apt cannot download linux-image-{release}; run `./cglcert kernels list` "
            "for the releases the mirror offers (or `apt-get update`)"
        )
    with _locked(root / f".{release}.lock"):
        if not force and (kdir / MANIFEST).is_file():  # another process fetched it meanwhile
            k = _load(kdir)
            if k.build_dir is not None or not headers:
                return k
        specs = _packages(abi, flavor, version, headers)
        tmp = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=root))
        tmp.chmod(0o755)
        try:
            debs = tmp / "debs"
            debs.mkdir()
            cmd = ["apt-get", "download", "-q"]
            if os.geteuid() == 0:  # avoid the "unsandboxed as root" warning (_apt can't write here)
                cmd += ["-o", "APT::Sandbox::User=root"]
            _run(cmd + specs, cwd=debs)
            unpacked = tmp / "root"
            for deb in sorted(debs.glob("*.deb")):
                _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
            _fix_tree(unpacked, release, abi)
            if not (unpacked / "boot" / f"vmlinuz-{release}").is_file():
                raise KernelError(f"linux-image-{release} has no boot/vmlinuz-{release}")
            modules = unpacked / "lib/modules" / release
            _write_modules_dep(modules)
            manifest = {
                "release": release, "abi": abi, "flavor": flavor, "version": version,
                "packages": specs,
                "kbuild_version": specs[-1].split("=", 1)[1] if headers else None,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            shutil.rmtree(debs)
            if kdir.exists():
                shutil.rmtree(kdir)
            tmp.rename(kdir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return _load(kdir)


def _fix_tree(root: Path, release: str, abi: str) -> None:
    """Make the unpacked tree usable where it is (see module docstring)."""
    # Merged-/usr hosts: packages may ship under usr/lib; give both a lib/modules view.
    if not (root / "lib/modules").is_dir() and (root / "usr/lib/modules").is_dir():
        (root / "lib").mkdir(exist_ok=True)
        (root / "lib/modules").symlink_to("../usr/lib/modules")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                target = os.readlink(p)
                if target.startswith("/"):
                    inside = root / target.lstrip("/")
                    p.unlink()
                    p.symlink_to(os.path.relpath(inside, p.parent))
    makefile = root / "usr/src" / f"linux-headers-{release}" / "Makefile"
    if makefile.is_file():
        text = makefile.read_text()
        # kbuild runs `make -C <build_dir>`, so a relative include resolves against
        # build_dir and the cache stays relocatable.
        fixed = re.sub(r"^include\s+/usr/src/(\S+)/Makefile", r"include ../\1/Makefile",
                       text, flags=re.M)
        makefile.write_text(fixed)


# --------------------------------------------------------------------------- vmlinux

# XEN_ELFNOTE_PHYS32_ENTRY (18): the PVH entry point QEMU uses to boot an ELF vmlinux.
_PVH_NOTES = (struct.pack("<III", 4, 8, 18) + b"Xen\0", struct.pack("<III", 4, 4, 18) + b"Xen\0")


def vmlinux(kernel: Kernel) -> Path | None:
    """Uncompressed ELF ``vmlinux`` of *kernel* with a PVH entry note, or None.

    Extracted once from the bzImage (xz or gzip payload) into
    ``<cache>/<release>/vmlinux``.  QEMU boots it directly through the PVH
    entry point, skipping the bzImage decompressor: about 4 s less per boot
    under TCG.  The decompressor is also where KASLR is applied, so a PVH-booted
    kernel runs at its link address (``nokaslr`` in effect).
    """
    out = kernel.root.parent / "vmlinux"
    if out.is_file():
        return out if out.stat().st_size > 0 else None
    data = kernel.vmlinuz.read_bytes()
    elf = None
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gz"), (_LZ4_LEGACY, "lz4")):
        start = data.find(magic)
        if kind == "lz4" and start >= 0 and shutil.which("lz4") is None:
            return None  # cloud flavor (CONFIG_KERNEL_LZ4): retry once `lz4` is installed
        while start >= 0 and elf is None:
            try:
                if kind == "xz":
                    import lzma
                    cand = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
                elif kind == "gz":
                    import zlib
                    cand = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[start:])
                else:
                    cand = _lz4_legacy(data[start:])
            except Exception:  # noqa: BLE001 - a false magic match: keep looking
                cand = b""
            if cand[:4] == b"\x7fELF":
                elf = cand
            start = data.find(magic, start + 1)
        if elf is not None:
            break
    tmp = out.with_name(f"vmlinux.tmp{os.getpid()}")
    if elf is None or not any(n in elf for n in _PVH_NOTES):
        tmp.write_bytes(b"")  # remember "not possible" (empty file)
    else:
        tmp.write_bytes(elf)
    tmp.replace(out)
    return out if out.stat().st_size > 0 else None


#: Magic of the LZ4 "legacy" frame the kernel's CONFIG_KERNEL_LZ4 payload uses.
_LZ4_LEGACY = b"\x02\x21\x4c\x18"


def _lz4_legacy(payload: bytes) -> bytes:
    """Decompress a kernel's LZ4 legacy payload with the ``lz4`` tool (Debian package lz4).

    The kernel build appends the uncompressed size after the last block, which
    lz4 reads as a broken block and exits 1 after writing everything: accept
    the output when it is a whole ELF image (every segment within it).
    """
    out = subprocess.run(["lz4", "-dc"], input=payload, capture_output=True, check=False).stdout
    if out[:4] != b"\x7fELF" or len(out) < 64:
        return b""
    phoff = int.from_bytes(out[32:40], "little")
    phentsize, phnum = int.from_bytes(out[54:56], "little"), int.from_bytes(out[56:58], "little")
    for i in range(phnum):
        ph = out[phoff + i * phentsize: phoff + (i + 1) * phentsize]
        offset, filesz = int.from_bytes(ph[8:16], "little"), int.from_bytes(ph[32:40], "little")
        if len(ph) < 40 or offset + filesz > len(out):
            return b""
    return out


# --------------------------------------------------------------------------- modules

_MODINFO_DEPENDS = re.compile(rb"(?:^|\x00)depends=([^\x00]*)\x00")
_KO_SUFFIXES = (".ko", ".ko.xz", ".ko.gz", ".ko.zst")


def _module_name(path: str | Path) -> str:
    name = Path(path).name
    for suf in _KO_SUFFIXES:
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return name.replace("-", "_")


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        import lzma
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        import gzip
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        proc = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        return proc.stdout
    return data


def _index(modules_dir: Path) -> dict[str, Path]:
    idx: dict[str, Path] = {}
    for p in (modules_dir / "kernel").rglob("*"):
        if p.name.endswith(_KO_SUFFIXES):
            idx[_module_name(p)] = p
    for extra in ("updates", "extra"):
        for p in (modules_dir / extra).rglob("*"):
            if p.name.endswith(_KO_SUFFIXES):
                idx[_module_name(p)] = p
    return idx


def module_deps(path: Path) -> list[str]:
    """Module names listed in the ``depends=`` field of a module's ``.modinfo``."""
    m = _MODINFO_DEPENDS.search(_read_module(path))
    if not m or not m[1]:
        return []
    return [d.decode().replace("-", "_") for d in m[1].split(b",") if d]


def find_module(modules_dir: Path, name: str) -> Path | None:
    """Path of module *name* (``9pnet_virtio``) in a modules tree, or None if built in/absent."""
    return _index(modules_dir).get(name.replace("-", "_"))


def module_load_order(modules_dir: Path, names: list[str]) -> list[Path]:
    """Paths of *names* and their dependencies, dependencies first.

    Names that are not modules in this tree (built in, or absent) are skipped:
    check ``modules.builtin`` if that matters.
    """
    idx = _index(modules_dir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen or name not in idx:
            return
        if name in stack:
            raise KernelError(f"module dependency cycle: {' -> '.join(stack + (name,))}")
        for dep in module_deps(idx[name]):
            visit(dep, stack + (name,))
        seen.add(name)
        order.append(idx[name])

    for n in names:
        visit(n.replace("-", "_"), ())
    return order


def _write_modules_dep(modules_dir: Path) -> None:
    """Write ``modules.dep`` (depmod's text format) so busybox modprobe works in the guest.

    Debian ships no modules.dep in the package (its postinst runs depmod), and
    the host may have no kmod.  Only the text file is written, no ``.bin`` indexes.
    """
    if (modules_dir / "modules.dep").exists() or not modules_dir.is_dir():
        return
    idx = _index(modules_dir)
    deps = {name: module_deps(path) for name, path in idx.items()}
    memo: dict[str, list[str]] = {}

    def load_order(name: str, stack: tuple[str, ...] = ()) -> list[str]:
        """Dependencies of *name* in a valid load order (deps of deps first)."""
        if name not in memo:
            out: list[str] = []
            for d in deps.get(name, []):
                if d in idx and d not in stack:
                    for x in load_order(d, stack + (name,)) + [d]:
                        if x not in out:
                            out.append(x)
            memo[name] = out
        return memo[name]

    lines = []
    for name, path in sorted(idx.items(), key=lambda kv: str(kv[1])):
        # depmod's convention: modprobe loads the list from the end.
        closure = list(reversed(load_order(name)))
        rel = path.relative_to(modules_dir)
        lines.append(f"{rel}: " + " ".join(str(idx[d].relative_to(modules_dir)) for d in closure))
    (modules_dir / "modules.dep").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------- a vendor's own build

def from_files(image: Path | str, modules: Path | str, headers: Path | str | None = None,
               cache_dir: Path | str | None = None) -> Kernel:
    """A kernel that is not Debian's: its image, its modules folder and its headers.

    *image*: the bzImage/vmlinuz the boot loader would load. *modules*: the folder
    ``lib/modules/<release>`` of the build (``make modules_install INSTALL_MOD_PATH=...``), or
    a root holding exactly one such folder; its name is the release. *headers*: a tree to
    build external modules against (``make -C <headers> M=...``: the build folder itself, or
    an installed ``linux-headers`` folder); default ``<modules>/build`` when it exists.
    Files the runner derives (initramfs, uncompressed vmlinux) go into
    ``<cache>/custom/<release>-<hash>/``. Raises :class:`KernelError` saying what is wrong.
    """
    img = Path(image).expanduser().resolve()
    if not img.is_file():
        raise KernelError(f"kernel image {image}: no such file (give the bzImage or vmlinuz)")
    mods = Path(modules).expanduser().resolve()
    if (mods / "lib" / "modules").is_dir():
        found = sorted(p for p in (mods / "lib" / "modules").iterdir() if p.is_dir())
        if len(found) != 1:
            raise KernelError(f"{modules}: holds {len(found)} releases under lib/modules; "
                              "give the folder lib/modules/<release> itself")
        mods = found[0]
    if not (mods / "modules.order").exists() and not (mods / "kernel").is_dir():
        raise KernelError(f"kernel modules {modules}: not a lib/modules/<release> folder (no "
                          "modules.order or kernel/ in it); run 'make modules_install "
                          "INSTALL_MOD_PATH=DIR' and give DIR")
    release = mods.name
    build: Path | None = None
    if headers is not None:
        build = Path(headers).expanduser().resolve()
        if not (build / "Makefile").is_file():
            raise KernelError(f"kernel headers {headers}: no Makefile in it (give the kernel "
                              "build folder or an installed linux-headers folder)")
    elif (mods / "build" / "Makefile").is_file():
        build = (mods / "build").resolve()
    config = next((c for c in ((build / ".config") if build else None,
                               mods / "config", img.parent / f"config-{release}")
                   if c is not None and c.is_file()), None)
    digest = hashlib.sha256(f"{img}:{img.stat().st_mtime_ns}:{mods}".encode()).hexdigest()[:10]
    work = cache_root(cache_dir) / "custom" / f"{release}-{digest}"
    work.mkdir(parents=True, exist_ok=True)
    m = _RELEASE_RE.match(release)
    abi, flavor = (m["abi"], m["flavor"]) if m else (release, "custom")
    return Kernel(release=release, abi=abi, flavor=flavor, version="custom", root=work / "root",
                  vmlinuz=img, modules_dir=mods, build_dir=build, config=config)
