"""Make sure the Debian packages the runner needs are installed on the host.

``ensure(["qemu-system-x86", "busybox-static"])`` asks dpkg-query which of the
packages are missing.  As root it installs them with ``apt-get install -y``
(running ``apt-get update`` once and retrying when the first attempt fails
because the package lists are missing or stale).  As a normal user it raises
:class:`MissingPackages`, whose message is the exact ``sudo apt-get install``
line to run.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

__all__ = ["MissingPackages", "missing", "ensure", "install_command"]


class MissingPackages(RuntimeError):
    """Raised when packages are missing and cannot be installed automatically.

    ``packages`` lists them.  When the caller is not root, ``str(exc)`` is
    exactly the ``sudo apt-get install -y ...`` line to run.
    """

    def __init__(self, packages: list[str], message: str) -> None:
        super().__init__(message)
        self.packages = packages


def install_command(packages: list[str], *, sudo: bool = True) -> str:
    """Return the shell line that installs *packages*."""
    prefix = "sudo " if sudo else ""
    return prefix + "apt-get install -y " + " ".join(shlex.quote(p) for p in packages)


def missing(packages: list[str]) -> list[str]:
    """Return the subset of *packages* that dpkg does not list as installed."""
    if not packages:
        return []
    if shutil.which("dpkg-query") is None:
        raise MissingPackages(
            list(packages),
            "dpkg-query not found: cglcert needs a Debian (or derived) host to manage "
            "kernels and QEMU. Install by hand: " + " ".join(packages),
        )
    absent = []
    for pkg in packages:
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Abbrev}", pkg],
            capture_output=True, text=True, check=False,
        )
        # "ii " means installed; anything else (rc, un, not found) counts as missing.
        if proc.returncode != 0 or not proc.stdout.startswith("ii"):
            absent.append(pkg)
    return absent


def _apt_install(packages: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
        capture_output=True, text=True, env=env, check=False,
    )


def ensure(packages: list[str], *, quiet: bool = False) -> list[str]:
    """Install the missing Debian *packages*; return the ones that were installed.

    Raises :class:`MissingPackages` when not root (the message is the command to
    run) or when apt-get fails (the message contains apt's error output).
    """
    todo = missing(packages)
    if not todo:
        return []
    if os.geteuid() != 0:
        # The message is exactly the line to run (callers may prefix their own context).
        raise MissingPackages(todo, install_command(todo))
    if not quiet:
        print("cglcert: installing " + " ".join(todo) + " with apt-get", file=sys.stderr)
    proc = _apt_install(todo)
    if proc.returncode != 0:
        # Typical cause on fresh containers: no package lists ("Unable to locate
        # package") or stale lists (404 on the pool file).  Update once and retry.
        upd = subprocess.run(["apt-get", "update"], capture_output=True, text=True, check=False)
        if upd.returncode == 0:
            proc = _apt_install(todo)
    if proc.returncode != 0:
        raise MissingPackages(
            todo,
            "apt-get install failed for " + " ".join(todo) + ":\n"
            + (proc.stderr or proc.stdout).strip()[-2000:]
            + "\nfix the error above, then run: " + install_command(todo, sudo=False),
        )
    still = missing(todo)
    if still:
        raise MissingPackages(still, "apt-get ran but these are still missing: " + " ".join(still))
    return todo
