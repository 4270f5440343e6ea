"""The ssh target: certify the kernel a lab machine runs, over ssh (``ssh://[user@]host[:port]``).

Nothing but a POSIX shell, coreutils, tar and (for the kmod backend) make, gcc and the
headers of its running kernel are needed on the machine: the suite and the stress programs
are built here and copied there (so it must be ABI compatible with this machine: the same
Debian release, with the stress programs' shared libraries installed), with the module
sources, into a fresh work directory (``/var/tmp/cglcert-<id>/``, removed afterwards). The
wrapper of :mod:`cglcert.targets._host` builds and loads the modules there, runs the
script, and records the kernel log and the taint; the run directory is copied back.

ssh runs in batch mode (keys, no passwords); ``--ssh-option`` passes ``-o`` options
(``IdentityFile=...``, ``UserKnownHostsFile=...``).
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import subprocess
import time
import uuid
from pathlib import Path

from cglcert import InfraError
from cglcert.certify import Artifacts, Execution, Plan, module_names, module_sources, target_script
from cglcert.commands.run import kernel_flavor
from cglcert.targets import _host

_URL_RE = re.compile(r"^ssh://(?:(?P<user>[a-z_][a-z0-9_.-]*)@)?(?P<host>[A-Za-z0-9_.:-]+?|\[[0-9a-fA-F:]+\])"
                     r"(?::(?P<port>[0-9]{1,5}))?/?$")


def parse_url(url: str) -> tuple[str, str, int]:
    """``ssh://root@lab1:2222`` -> ``("root", "lab1", 2222)``; ValueError says what is wrong."""
    m = _URL_RE.match(url)
    if not m:
        raise ValueError(f"{url!r}: give ssh://[USER@]HOST[:PORT], e.g. ssh://root@lab1 or "
                         "ssh://root@127.0.0.1:2222")
    port = int(m["port"] or 22)
    if not 0 < port < 65536:
        raise ValueError(f"{url!r}: port {port} is out of range")
    return m["user"] or "root", m["host"].strip("[]"), port


def ssh_argv(plan: Plan) -> list[str]:
    """``ssh ... user@host`` (batch mode, the user's -o options)."""
    user, host, port = parse_url(plan.target_url)
    argv = ["ssh", "-p", str(port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=20",
            "-o", "ServerAliveInterval=30"]
    for opt in plan.ssh_options:
        argv += ["-o", opt]
    return argv + [f"{user}@{host}"]


def _remote(plan: Plan, command: str, *, timeout: float = 120,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(ssh_argv(plan) + [command], input=stdin, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise InfraError(f"{plan.target_url}: '{command[:60]}' did not finish within "
                         f"{timeout:.0f} s") from exc
    except FileNotFoundError as exc:
        raise InfraError("ssh not found: apt-get install openssh-client") from exc


def prepare(plan: Plan) -> tuple[str, str | None, None]:
    """The machine's running kernel; check root and headers for the kmod backend."""
    probe = ('uname -r; id -u; test -f "/lib/modules/$(uname -r)/build/Makefile" && echo hdr '
             "|| echo nohdr; command -v make >/dev/null && echo make || echo nomake")
    r = _remote(plan, probe, timeout=60)
    if r.returncode != 0:
        raise InfraError(f"cannot run commands on {plan.target_url} (ssh exit {r.returncode}): "
                         f"{r.stderr.decode(errors='replace').strip()[-400:]}; check the host, "
                         "the port and that key authentication works (ssh -o BatchMode=yes)")
    words = r.stdout.decode(errors="replace").split()
    if len(words) < 4:
        raise InfraError(f"{plan.target_url}: unexpected answer to the probe: {words}")
    release, uid, hdr, make = words[:4]
    if plan.backend == "kmod":
        if uid != "0":
            raise InfraError(f"{plan.target_url}: the kmod backend loads modules: log in as "
                             "root (ssh://root@...)")
        if hdr != "hdr" or make != "make":
            raise InfraError(f"{plan.target_url}: the running kernel {release} has no headers "
                             "or no make there: install linux-headers-$(uname -r), make and "
                             "gcc on it, or use --backend user")
    return release, kernel_flavor(release), None


def stage_modules(plan: Plan, release: str) -> list[Path]:
    """Copy the module sources into a build directory here; the wrapper builds them there."""
    user, host, _port = parse_url(plan.target_url)
    out = plan.repo / "build" / "certify" / "kmod" / f"ssh-{host}-{release}"
    src_root = plan.repo / "reference" / "kmod"
    for f in module_sources(plan.repo):
        dest = out / f.relative_to(src_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(f.read_bytes())
    return [out / f"{n}.ko" for n in module_names(plan.repo)]


def _under(prefix: str, p: Path) -> Path:
    return Path(prefix + str(p))


def execute(plan: Plan, art: Artifacts, script: str) -> Execution:
    """Copy, run the wrapper there, copy the run directory back."""
    del script  # regenerated below with the paths of the work directory there
    work = f"/var/tmp/cglcert-{uuid.uuid4().hex[:12]}"
    rplan = dataclasses.replace(plan, repo=_under(work, plan.repo),
                                run_dir=_under(work, plan.run_dir))
    rart = dataclasses.replace(
        art, suite=_under(work, art.suite),
        stress_build=_under(work, art.stress_build) if art.stress_build else None,
        modules=[_under(work, m) for m in art.modules])
    marker = _host.new_marker()
    (plan.run_dir / "certify.sh").write_text(target_script(rplan, rart), encoding="utf-8")
    build_dir = _under(work, art.modules[0].parent) if art.modules else None
    (plan.run_dir / _host.WRAPPER).write_text(
        _host.wrapper(rplan, rart, marker, build_dir=build_dir), encoding="utf-8")

    ship = [art.suite, plan.run_dir]
    if art.stress_build is not None:
        ship.append(art.stress_build / "stress")
    if art.modules:
        ship.append(art.modules[0].parent)
    rel = [str(p.resolve().relative_to("/")) for p in ship]
    start = time.monotonic()
    tar = subprocess.run(["tar", "-C", "/", "--exclude=*.o", "--exclude=CMakeFiles", "-cf", "-",
                          *rel], capture_output=True, check=False)
    if tar.returncode != 0:
        raise InfraError(f"packing the files for {plan.target_url} failed: "
                         f"{tar.stderr.decode(errors='replace').strip()[-300:]}")
    r = _remote(plan, f"mkdir -p {work} && tar -C {work} -xf -", stdin=tar.stdout,
                timeout=600)
    if r.returncode != 0:
        raise InfraError(f"copying to {plan.target_url}:{work} failed: "
                         f"{r.stderr.decode(errors='replace').strip()[-300:]}")
    timeout = plan.target_timeout + 180
    error, detail = None, ""
    wrapper = shlex.quote(str(rplan.run_dir / _host.WRAPPER))
    if not _host.run_bounded(ssh_argv(plan) + [f"bash {wrapper}"], timeout):
        error, detail = "timeout", f"the run on {plan.target_url} did not finish within {timeout} s"
    back = _remote(plan, f"tar -C {shlex.quote(str(rplan.run_dir))} -cf - .", timeout=600)
    if back.returncode == 0:
        subprocess.run(["tar", "-C", str(plan.run_dir), "-xf", "-"], input=back.stdout,
                       check=False, capture_output=True)
    elif error is None:
        error, detail = "no-result", (f"copying the results back from {plan.target_url} "
                                      f"failed: {back.stderr.decode(errors='replace')[-300:]}")
    _remote(plan, f"rm -rf {work}", timeout=120)
    ex = _host.collect(plan.run_dir, marker, error=error, detail=detail)
    ex.environment.update(target_seconds=round(time.monotonic() - start, 1),
                          target_host=parse_url(plan.target_url)[1])
    return ex
