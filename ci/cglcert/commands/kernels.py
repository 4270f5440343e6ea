"""``cglcert kernels``: list and fetch Debian kernels for the QEMU target.

``kernels list`` shows the kernel releases the configured apt mirrors offer
(``--cached``: the ones already unpacked in the cache, with their paths);
``kernels fetch [RELEASE]`` downloads and unpacks one (image, modules, headers)
with ``apt-get download`` + ``dpkg-deb -x``, without installing anything;
``kernels debug`` builds (or finds) the debug kernel of :mod:`cglcert.debugkernel`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cglcert import ExitCode, InfraError, UsageError, debugkernel, hostdeps
from cglcert import kernels as kc

DESCRIPTION = """\
Manage the cache of Debian kernels booted by the QEMU target
(default ${XDG_CACHE_HOME:-~/.cache}/cglcert/kernels, or $CGLCERT_KERNEL_CACHE).

  cglcert kernels list             releases apt can download (* = cached)
  cglcert kernels list --cached    cached releases with their paths
  cglcert kernels fetch            the default kernel (linux-image-amd64's dependency)
  cglcert kernels fetch 6.1.0-57-rt-amd64
  cglcert kernels fetch rt-amd64   the default kernel of that flavor
  cglcert kernels debug            build (or find) the debug kernel: linux-source-6.1 with
                                   KASAN, KFENCE, lockdep, kmemleak, UBSAN, ... (--kernel debug)

Build an out-of-tree module against a cached kernel with
  make -C <build dir printed by fetch> M=$PWD
(needs the host compiler of the kernel: gcc-12 on Debian 12).
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``kernels`` subcommand with ``list`` and ``fetch``."""
    parser = subparsers.add_parser(
        "kernels", help="list and fetch Debian kernels for the QEMU target",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=None, metavar="DIR",
                        help="kernel cache (default: $CGLCERT_KERNEL_CACHE or "
                             "${XDG_CACHE_HOME:-~/.cache}/cglcert/kernels)")
    sub = parser.add_subparsers(dest="kernels_command", metavar="ACTION")
    p_list = sub.add_parser("list", help="releases apt offers, or the cached ones")
    p_list.add_argument("--cached", action="store_true", help="only the cached kernels, with paths")
    p_list.add_argument("--json", action="store_true", help="print JSON on stdout")
    p_list.set_defaults(func=run_list)
    p_fetch = sub.add_parser("fetch", help="download and unpack a kernel into the cache")
    p_fetch.add_argument("release", nargs="?", default=None, metavar="ABI-FLAVOR",
                         help="e.g. 6.1.0-57-amd64, 6.1.0-57-rt-amd64, 6.1.0-57-cloud-amd64, "
                              "or a flavor (rt-amd64) for its default; default: Debian's default kernel")
    p_fetch.add_argument("--no-headers", action="store_true",
                         help="only the image and modules (enough to boot, not to build modules)")
    p_fetch.add_argument("--force", action="store_true", help="download again even if cached")
    p_fetch.add_argument("--json", action="store_true", help="print the paths as JSON on stdout")
    p_fetch.set_defaults(func=run_fetch)
    p_debug = sub.add_parser(
        "debug", help="build (or find in the cache) the debug kernel (--kernel debug)",
        description="Build Debian's linux-source-6.1 as the debug kernel (tinyconfig + "
                    f"{debugkernel.FRAGMENT}; about 20 minutes on 2 cores), or find it in the "
                    "cache, and print where it is. The cache key is a hash of the fragment, "
                    "the source package version and the compiler: an edited fragment builds "
                    "again. Build the AEM modules against it with make -C <build> M=<a copy "
                    "of reference/kmod> modules.")
    p_debug.add_argument("--cached", action="store_true",
                         help="never build: exit 1 when the current fragment is not built")
    p_debug.add_argument("--force", action="store_true", help="build again even if cached")
    p_debug.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                         help="make -jN (default: CPUs + 1)")
    p_debug.add_argument("--fragment", type=Path, default=None, metavar="FILE",
                         help=f"config fragment (default {debugkernel.FRAGMENT})")
    p_debug.add_argument("--json", action="store_true", help="print the paths as JSON on stdout")
    p_debug.set_defaults(func=run_debug)
    parser.set_defaults(func=lambda args: _no_action(parser))


def _no_action(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    raise UsageError("an action is required: list or fetch")


def run_list(args: argparse.Namespace) -> int:
    """Print available or cached kernels."""
    try:
        cached = {k.release: k for k in kc.list_cached(args.cache_dir)}
        if args.cached:
            if args.json:
                json.dump([k.to_dict() for k in cached.values()], sys.stdout, indent=2)
                sys.stdout.write("\n")
            elif not cached:
                print(f"no kernel cached in {kc.cache_root(args.cache_dir)}; "
                      "fetch one with: cglcert kernels fetch", file=sys.stderr)
            for k in cached.values():
                if not args.json:
                    print(f"{k.release}  {k.version}\n  vmlinuz  {k.vmlinuz}\n"
                          f"  modules  {k.modules_dir}\n  build    {k.build_dir or '(no headers)'}")
            return ExitCode.OK
        available = kc.list_available()
        try:
            default = kc.default_kernel()
        except kc.KernelError:
            default = None
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    if args.json:
        json.dump([{"release": r, "cached": r in cached, "default": r == default} for r in available],
                  sys.stdout, indent=2)
        sys.stdout.write("\n")
        return ExitCode.OK
    for r in available:
        flags = ("*" if r in cached else " ") + (" (default)" if r == default else "")
        print(f"{flags[0]} {r}{flags[1:]}")
    print(f"{len(available)} releases; * = cached in {kc.cache_root(args.cache_dir)}", file=sys.stderr)
    return ExitCode.OK


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch one kernel and print where it is."""
    try:
        release = kc.resolve(args.release)
        kc.parse_release(release)
    except kc.KernelError as exc:
        raise UsageError(str(exc)) from exc
    if kc.cached(release, args.cache_dir) is None or args.force:
        print(f"fetching {release} (apt-get download + dpkg-deb -x)...", file=sys.stderr)
    try:
        k = kc.fetch(release, headers=not args.no_headers, cache_dir=args.cache_dir, force=args.force)
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    if args.json:
        json.dump(k.to_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{k.release} ({k.version})\n  vmlinuz  {k.vmlinuz}\n  modules  {k.modules_dir}\n"
              f"  build    {k.build_dir or '(no headers: fetch without --no-headers)'}")
    return ExitCode.OK


def run_debug(args: argparse.Namespace) -> int:
    """Build or find the debug kernel and print where it is."""
    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: give 1 or more")
    if args.fragment is not None and not args.fragment.is_file():
        raise UsageError(f"--fragment {args.fragment}: no such file")
    if args.cached and args.force:
        raise UsageError("--cached and --force contradict each other")
    try:
        if args.cached:
            k = debugkernel.cached(fragment=args.fragment, cache_dir=args.cache_dir)
            if k is None:
                print("the debug kernel of this fragment is not built; run: cglcert kernels debug",
                      file=sys.stderr)
                return ExitCode.FAILED
        else:
            k = debugkernel.ensure(fragment=args.fragment, cache_dir=args.cache_dir,
                                   jobs=args.jobs, force=args.force,
                                   log=lambda m: print(f"debug kernel: {m}", file=sys.stderr,
                                                       flush=True))
    except kc.KernelError as exc:
        raise InfraError(str(exc)) from exc
    except hostdeps.MissingPackages as exc:
        raise InfraError(f"missing Debian packages {' '.join(exc.packages)}; run: {exc}") from exc
    built = debugkernel.manifest(k)
    if args.json:
        json.dump({**k.to_dict(), "key": built.get("key"),
                   "vmlinux": str(k.root.parent / "vmlinux"),
                   "build_seconds": built.get("build_seconds"),
                   "debug_options": built.get("debug_options", [])}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(f"{k.release} (linux-source-6.1 {k.version}, build {built.get('key')}, "
              f"{(built.get('build_seconds') or 0) / 60:.1f} min)\n"
              f"  vmlinuz  {k.vmlinuz}\n  vmlinux  {k.root.parent / 'vmlinux'}\n"
              f"  build    {k.build_dir}\n"
              f"  debug    {' '.join(o.removeprefix('CONFIG_') for o in built.get('debug_options', []))}")
    return ExitCode.OK
