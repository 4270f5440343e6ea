"""LAVA output: a job definition, a Lava-Test Shell test definition, and the result lines.

A LAVA-managed fleet runs the same conformance suite as ``cglcert run`` nightly:

* :func:`job_definition` builds the job (``device_type``, ``timeouts``, ``context`` and the
  ``deploy`` / ``boot`` / ``test`` actions) as a plain dict; :func:`dump_yaml` writes it.
  ``qemu`` devices deploy ``to: tmpfs`` (kernel + ramdisk, LAVA appends its overlay to the
  ramdisk: ``format: cpio.newc``, ``overlays: {lava: true}``) and boot ``method: qemu``;
  x86 lab boards deploy ``to: tftp`` and boot with ``ipxe`` or ``grub``.
* :func:`test_definition` is the "Lava-Test Test Definition 1.0" that runs the suite
  (optionally also ``cglcert stress --quick`` and ``cglcert soak``) on the device and
  reports every result with ``lava-test-case``. Its steps call ``cglcert lava results``
  on the device, which prints the ``lava-test-case`` commands made by :func:`lava_cases`
  from ``results.json`` (and ``stress.json``, ``soak.json``), then runs them.
* :func:`lava_cases` is pure (results in, cases out) and needs only the standard library,
  so ``python3 -m cglcert lava results`` works on a device rootfs without the venv.

Result mapping (docs/design.md §6 -> LAVA): PASS -> pass, FAIL -> fail, SKIP -> skip, ERROR ->
unknown; a harness error (the suite crashed, timed out or did not build) becomes
``lava-test-raise`` after the cases, so LAVA marks the job incomplete (an infrastructure
failure) instead of counting a kernel failure.

The ramdisk :func:`build_ramdisk` makes is for ``qemu`` devices of a worker that holds the
project: busybox, the kernel's 9p modules and an /init that mounts the worker's root
read-only (9p tag ``hostroot``, docs/design.md §7) at ``/host`` and gives LAVA a shell prompt.
The test definition then runs the suite chrooted into ``/host`` (parameter ``CHROOT``).
"""

from __future__ import annotations

import gzip
import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BOOT_METHODS",
    "JobOptions",
    "LavaCase",
    "PROMPT",
    "TESTDEF_NAME",
    "build_ramdisk",
    "case_name",
    "dump_yaml",
    "job_definition",
    "lava_cases",
    "render_cases",
    "test_definition",
    "test_minutes",
    "testdef_params",
    "unit_of",
]

#: Boot methods and the deploy target each needs.
BOOT_METHODS = {"qemu": "tmpfs", "ipxe": "tftp", "grub": "tftp"}
#: The shell prompt of the ramdisk of :func:`build_ramdisk` (what LAVA waits for).
PROMPT = "cglcert-lava# "
TESTDEF_NAME = "cglcert-conformance"
#: Where the test definition's steps put results on the device (inside CHROOT if set).
DEVICE_OUT = "/tmp/cglcert-lava"
#: LAVA's result values (lava-test-case --result).
_RESULT = {"PASS": "pass", "FAIL": "fail", "SKIP": "skip", "ERROR": "unknown"}
_NAME_BAD = re.compile(r"[^A-Za-z0-9_.\-]+")
_UNITS = (("_ns", "ns"), ("_us", "us"), ("_ms", "ms"), ("_s", "s"), ("_bytes", "bytes"),
          ("bytes", "bytes"), ("_pct", "%"), ("_percent", "%"), ("_per_s", "1/s"))


# --------------------------------------------------------------------------- results -> cases

@dataclass(frozen=True)
class LavaCase:
    """One ``lava-test-case NAME --result R [--measurement V --units U]`` call."""

    name: str
    result: str  #: pass, fail, skip or unknown
    measurement: float | int | None = None
    units: str | None = None

    def command(self) -> str:
        """The shell command line (POSIX quoting), as the device runs it."""
        argv = ["lava-test-case", self.name, "--result", self.result]
        if self.measurement is not None:
            argv += ["--measurement", _num(self.measurement), "--units", self.units or "count"]
        return " ".join(shlex.quote(a) for a in argv)

    def line(self) -> str:
        """Linaro ``result.txt`` form: ``NAME RESULT [MEASUREMENT UNITS]``."""
        out = f"{self.name} {self.result}"
        if self.measurement is not None:
            out += f" {_num(self.measurement)} {self.units or 'count'}"
        return out


def _num(v: float | int) -> str:
    return str(v) if isinstance(v, int) else f"{v:.6g}"


def case_name(*parts: str) -> str:
    """A LAVA test case name: the parts joined by ``.``, other characters than
    ``[A-Za-z0-9_.-]`` replaced by ``_`` (``Suite/Param.Name/0`` -> ``Suite_Param.Name_0``)."""
    name = ".".join(p for p in parts if p)
    return _NAME_BAD.sub("_", name).strip("._") or "unnamed"


def unit_of(metric: str) -> str:
    """Units of a measurement from its name's suffix (``clean_ns`` -> ``ns``), else ``count``."""
    for suffix, unit in _UNITS:
        if metric.endswith(suffix):
            return unit
    return "count"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def lava_cases(results: Mapping[str, Any] | None,
               stress: Mapping[str, Any] | None = None,
               soak: Mapping[str, Any] | None = None) -> tuple[list[LavaCase], str | None]:
    """LAVA cases from ``results.json`` (and ``stress.json``); and the harness error, if any.

    Per requirement ``<ID>`` (its verdict); per test ``<ID>.<Suite.Name>`` (outcome), and
    ``<ID>.<Suite.Name>.<measurement>`` for each numeric measurement; ``cgl-2.0`` and
    ``cgl-3.0`` (the verdicts). From stress.json: ``stress.<ID>`` per judged requirement,
    ``stress.<ID>.<metric>`` with the measured value, and ``stress.lost``,
    ``stress.duplicated``, ``stress.handler_overlaps`` (pass when 0). From soak.json:
    ``soak`` (pass when the soak passed), ``soak.rounds``, ``soak.delivered``,
    ``soak.lost``, ``soak.duplicated``, ``soak.overlaps`` and, when one failed,
    ``soak.failed_round``.
    """
    cases: list[LavaCase] = []
    errors: list[str] = []
    if results is not None:
        for req in results.get("requirements", []):
            rid = str(req["id"])
            cases.append(LavaCase(case_name(rid), _RESULT.get(req.get("verdict"), "unknown")))
            for t in req.get("tests", []):
                tname = case_name(rid, str(t["name"]))
                cases.append(LavaCase(tname, _RESULT.get(t.get("outcome"), "unknown")))
                for key, value in sorted((t.get("measurements") or {}).items()):
                    if _is_number(value):
                        cases.append(LavaCase(case_name(tname, key), "pass", value, unit_of(key)))
        for key, label in (("cgl_2_0", "cgl-2.0"), ("cgl_3_0", "cgl-3.0")):
            v = (results.get("verdict") or {}).get(key)
            if v is not None:
                cases.append(LavaCase(label, "pass" if v.get("conformant") else "fail"))
        harness_error = (results.get("harness") or {}).get("error")
        if harness_error:
            errors.append(f"conformance suite: {harness_error}")
    if stress is not None:
        for rid, v in sorted((stress.get("verdicts") or {}).items()):
            cases.append(LavaCase(case_name("stress", rid),
                                  "pass" if v.get("verdict") == "PASS" else "fail"))
            for th in v.get("thresholds", []):
                if _is_number(th.get("measured")):
                    cases.append(LavaCase(
                        case_name("stress", rid, str(th["metric"])),
                        "pass" if th.get("verdict") == "PASS" else "fail",
                        th["measured"], th.get("unit") or unit_of(str(th["metric"]))))
        summary = stress.get("summary") or {}
        for key in ("lost", "duplicated", "handler_overlaps"):
            if _is_number(summary.get(key)):
                cases.append(LavaCase(case_name("stress", key),
                                      "pass" if summary[key] == 0 else "fail",
                                      summary[key], "count"))
        crashed = summary.get("crashed_programs") or []
        if crashed:
            errors.append(f"stress: crashed programs: {', '.join(map(str, crashed))}")
    if soak is not None:
        status = soak.get("status")
        cases.append(LavaCase("soak", {"passed": "pass", "failed": "fail"}.get(
            str(status), "unknown")))
        t = soak.get("totals") or {}
        if _is_number(t.get("rounds")):
            cases.append(LavaCase("soak.rounds", "pass", t["rounds"], "rounds"))
        if _is_number(t.get("delivered")):
            cases.append(LavaCase("soak.delivered", "pass", t["delivered"], "events"))
        for key in ("lost", "duplicated", "overlaps"):
            if _is_number(t.get(key)):
                cases.append(LavaCase(f"soak.{key}", "pass" if t[key] == 0 else "fail",
                                      t[key], "count"))
        failure = soak.get("failure") or {}
        if _is_number(failure.get("round")):
            cases.append(LavaCase("soak.failed_round", "fail", failure["round"], "round"))
        if status in ("error", "interrupted", "running"):
            why = failure.get("reason") or f"the soak ended {status}"
            errors.append(f"soak: {why}")
    return _unique(cases), ("; ".join(errors) or None)


def _unique(cases: list[LavaCase]) -> list[LavaCase]:
    """Suffix repeated names ``.2``, ``.3`` (two thresholds may judge the same metric)."""
    seen: dict[str, int] = {}
    out = []
    for c in cases:
        n = seen.get(c.name, 0) + 1
        seen[c.name] = n
        out.append(c if n == 1 else LavaCase(f"{c.name}.{n}", c.result, c.measurement, c.units))
    return out


def render_cases(cases: Sequence[LavaCase], harness_error: str | None,
                 fmt: str = "commands") -> str:
    """``commands``: shell lines for the device (``lava-test-case ...``, then
    ``lava-test-raise`` on a harness error); ``txt``: Linaro ``result.txt`` lines."""
    if fmt == "txt":
        return "".join(c.line() + "\n" for c in cases)
    lines = [c.command() for c in cases]
    if harness_error:
        lines.append("lava-test-raise " + shlex.quote(" ".join(harness_error.split())[:400]))
    return "".join(line + "\n" for line in lines)


# --------------------------------------------------------------------------- definitions

@dataclass
class JobOptions:
    """Everything :func:`job_definition` needs (validated by the command)."""

    kernel_url: str
    ramdisk_url: str
    kernel_release: str = "unknown"
    device_type: str = "qemu"
    boot_method: str = "qemu"
    job_name: str | None = None
    priority: str | int = "medium"
    visibility: str = "public"
    tags: Sequence[str] = ()
    arch: str = "amd64"
    smp: int = 2
    memory_mb: int = 2048
    host_root: bool = True  #: qemu: share the worker's root into the guest (9p, read-only)
    project_dir: str = "/opt/aem-cgl"
    backend: str = "user"
    verdict: str = "cgl-2.0"
    stress: bool = False
    suite_binary: str = ""
    #: build directory holding built stress programs (``stress/aem_*``) on the device;
    #: empty: ``cglcert stress`` / ``soak`` build them there
    stress_build_dir: str = ""
    soak: str = ""  #: ``cglcert soak --duration`` value; empty: no soak
    soak_minutes: int = 0  #: the soak's duration, added to the test timeout
    soak_round: str = "60"
    kernel_args: str = ""
    #: LAVA's ``os`` of the rootfs: ``oe`` runs the test shell with /bin/sh (busybox
    #: ramdisks such as :func:`build_ramdisk`'s), ``debian`` with /bin/bash.
    os: str = "oe"
    timeouts: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    failure_retry: int = 1
    testdef_repo: str | None = None
    testdef_path: str | None = None
    testdef_revision: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


#: Minutes. ``test`` grows when the stress or soak steps run (:func:`test_minutes`).
DEFAULT_TIMEOUTS = {"job": 90, "deploy": 10, "boot": 10, "test": 60, "connection": 2}
STRESS_EXTRA_MINUTES = 30
#: Minutes beyond a soak's duration (its build, the last round's overrun).
SOAK_MARGIN_MINUTES = 15


def testdef_params(*, project_dir: str = "/opt/aem-cgl", chroot: str = "",
                   backend: str = "user", verdict: str = "cgl-2.0", stress: bool = False,
                   suite_binary: str = "", stress_build_dir: str = "", soak: str = "",
                   soak_round: str = "60") -> dict[str, str]:
    """The test definition's ``params`` (a job's ``parameters:`` override them):

    ``CGLCERT_DIR`` the built project on the device; ``CHROOT`` run it chrooted there
    (``/host``: the worker's root in the qemu ramdisk); ``BACKEND``, ``VERDICT``;
    ``STRESS`` true: also ``cglcert stress --quick``; ``SUITE_BINARY`` a built
    aem_conformance; ``STRESS_BUILD_DIR`` built stress programs (``--no-build``); ``SOAK``
    a ``cglcert soak --duration`` (empty: none) in rounds of ``SOAK_ROUND``.
    """
    return {
        "CGLCERT_DIR": project_dir, "CHROOT": chroot, "BACKEND": backend, "VERDICT": verdict,
        "STRESS": "true" if stress else "false", "SUITE_BINARY": suite_binary,
        "STRESS_BUILD_DIR": stress_build_dir, "SOAK": soak, "SOAK_ROUND": soak_round,
    }


def test_definition(params: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Lava-Test Shell definition (YAML-ready dict) with *params* as its defaults
    (:func:`testdef_params`)."""
    steps = [
        # Everything below runs in one script; keep it busybox-sh compatible.
        'echo "cglcert: project $CGLCERT_DIR, chroot ${CHROOT:-none}, backend $BACKEND"',
        'incg() { if [ -n "$CHROOT" ]; then chroot "$CHROOT" /bin/sh -c '
        '"cd \\"$CGLCERT_DIR\\" && $*"; else (cd "$CGLCERT_DIR" && /bin/sh -c "$*"); fi; }',
        'incg "test -x ./cglcert" || lava-test-raise "no ./cglcert in $CGLCERT_DIR'
        '${CHROOT:+ (in $CHROOT)}: install the project there or set CGLCERT_DIR"',
        f'OUT={DEVICE_OUT}; HOSTOUT="$CHROOT$OUT"; incg "rm -rf $OUT && mkdir -p $OUT"',
        'BINARG=; [ -n "$SUITE_BINARY" ] && BINARG="--binary $SUITE_BINARY"',
        'lava-test-set start conformance',
        'incg "./cglcert run conformance --out $OUT --backend $BACKEND --verdict $VERDICT '
        '$BINARG -q" || echo "cglcert run exited $?"',
        'incg "cat $OUT/suite.log" | tail -n 40 || true',
        'lava-test-set stop conformance',
        'SB=; [ -n "$STRESS_BUILD_DIR" ] && SB="--build-dir $STRESS_BUILD_DIR --no-build"',
        'STRESSARG=; if [ "$STRESS" = "true" ]; then lava-test-set start stress; '
        'incg "./cglcert stress --quick --backend $BACKEND --out $OUT $SB" '
        '|| echo "cglcert stress exited $?"; STRESSARG="--stress $OUT/stress.json"; '
        'lava-test-set stop stress; fi',
        'SOAKARG=; if [ -n "$SOAK" ]; then lava-test-set start soak; '
        'incg "./cglcert soak --duration $SOAK --round $SOAK_ROUND --backend $BACKEND '
        '--out $OUT/soak $SB" || echo "cglcert soak exited $?"; '
        'SOAKARG="--soak $OUT/soak/soak.json"; lava-test-set stop soak; fi',
        'incg "./cglcert lava results $OUT/results.json $STRESSARG $SOAKARG '
        '> $OUT/lava-cases.sh" || lava-test-raise "cglcert lava results failed: no usable '
        'results.json"',
        'cat "$HOSTOUT/lava-cases.sh" | grep -c lava-test-case || true',
        '. "$HOSTOUT/lava-cases.sh"',
    ]
    return {
        "metadata": {
            "format": "Lava-Test Test Definition 1.0",
            "name": TESTDEF_NAME,
            "description": "CGL asynchronous-event conformance suite (cglcert run conformance, "
                           "optionally cglcert stress --quick and cglcert soak); one LAVA "
                           "test case per requirement, test and measurement",
            "maintainer": ["aem-cgl project"],
            "os": ["debian"],
            "scope": ["functional", "performance"],
            "devices": ["qemu", "x86"],
        },
        "params": dict(params if params is not None else testdef_params()),
        "run": {"steps": steps},
    }


def test_minutes(base: int, stress: bool, soak_minutes: int) -> int:
    """The test action's timeout: *base* plus the stress run and the soak (with a margin)."""
    extra = STRESS_EXTRA_MINUTES if stress else 0
    if soak_minutes:
        extra += soak_minutes + SOAK_MARGIN_MINUTES
    return base + extra


def _minutes(n: int) -> dict[str, int]:
    return {"minutes": int(n)}


def job_definition(o: JobOptions) -> dict[str, Any]:
    """The LAVA job (YAML-ready dict) for the options."""
    t = dict(DEFAULT_TIMEOUTS, **o.timeouts)
    name = o.job_name or f"cglcert conformance {o.kernel_release} ({o.device_type})"
    chroot = "/host" if (o.boot_method == "qemu" and o.host_root) else ""
    params = testdef_params(
        project_dir=o.project_dir, chroot=chroot, backend=o.backend, verdict=o.verdict,
        stress=o.stress, suite_binary=o.suite_binary, stress_build_dir=o.stress_build_dir,
        soak=o.soak, soak_round=o.soak_round)
    if o.testdef_repo:
        definition: dict[str, Any] = {
            "repository": o.testdef_repo, "from": "git",
            "path": o.testdef_path or f"{TESTDEF_NAME}.yaml", "name": TESTDEF_NAME,
            "parameters": params,
        }
        if o.testdef_revision:
            definition["revision"] = o.testdef_revision
    else:
        definition = {
            "repository": test_definition(params),
            "from": "inline", "path": f"inline/{TESTDEF_NAME}.yaml", "name": TESTDEF_NAME,
        }

    job: dict[str, Any] = {
        "device_type": o.device_type,
        "job_name": name,
        "timeouts": {
            "job": _minutes(t["job"]),
            "action": _minutes(max(t["deploy"], t["boot"])),
            "connection": _minutes(t["connection"]),
        },
        "priority": o.priority,
        "visibility": o.visibility,
    }
    if o.tags:
        job["tags"] = list(o.tags)
    job["metadata"] = {"source": "cglcert lava", "kernel.release": o.kernel_release,
                       "cglcert.backend": o.backend, "cglcert.verdict": o.verdict,
                       **dict(o.metadata)}
    append = " ".join(a for a in ("console=ttyS0,115200 panic=-1", o.kernel_args) if a)
    if o.boot_method == "qemu":
        extra = [f"-smp {o.smp}"]
        if o.host_root:
            extra.append("-virtfs local,path=/,mount_tag=hostroot,security_model=none,"
                         "readonly=on,multidevs=remap")
        job["context"] = {"arch": o.arch, "memory": o.memory_mb, "extra_options": extra}
        deploy: dict[str, Any] = {
            "to": "tmpfs",
            "timeout": _minutes(t["deploy"]),
            "images": {
                "kernel": {"image_arg": f"-kernel {{kernel}} -append \"{append}\"",
                           "url": o.kernel_url},
                "ramdisk": {"image_arg": "-initrd {ramdisk}", "url": o.ramdisk_url,
                            "format": "cpio.newc", "compression": "gz",
                            "overlays": {"lava": True}},
            },
            "os": o.os,
        }
        boot: dict[str, Any] = {"method": "qemu", "media": "tmpfs"}
    else:
        deploy = {
            "to": "tftp",
            "timeout": _minutes(t["deploy"]),
            "kernel": {"url": o.kernel_url},
            "ramdisk": {"url": o.ramdisk_url, "compression": "gz"},
            "os": o.os,
        }
        boot = {"method": o.boot_method, "commands": "ramdisk"}
    boot.update({
        "timeout": _minutes(t["boot"]),
        "failure_retry": o.failure_retry,
        "prompts": [PROMPT, "root@.*:.*# ", "/ # "],
    })
    test = {
        "timeout": _minutes(test_minutes(t["test"], o.stress, o.soak_minutes)),
        "definitions": [definition],
    }
    job["actions"] = [{"deploy": deploy}, {"boot": boot}, {"test": test}]
    return job


class _Dumper:  # lazily built: PyYAML is imported only when YAML is written
    cls: Any = None


def dump_yaml(doc: Mapping[str, Any]) -> str:
    """YAML text: keys in insertion order, block style, multi-line strings as ``|``."""
    import yaml

    if _Dumper.cls is None:
        class Dumper(yaml.SafeDumper):
            pass

        def _str(d: yaml.SafeDumper, s: str) -> yaml.Node:
            style = "|" if "\n" in s else None
            return d.represent_scalar("tag:yaml.org,2002:str", s, style=style)

        Dumper.add_representer(str, _str)
        _Dumper.cls = Dumper
    return yaml.dump(dict(doc), Dumper=_Dumper.cls, sort_keys=False, default_flow_style=False,
                     width=100, allow_unicode=True)


# --------------------------------------------------------------------------- ramdisk

RAMDISK_INIT = r"""#!/bin/sh
# cglcert LAVA ramdisk /init (generated by ci/cglcert/lava.py).
PATH=/bin:/sbin:/usr/bin:/usr/sbin; export PATH
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/disk/by-uuid
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /tmp
ip link set lo up 2>/dev/null
while read -r m; do [ -n "$m" ] && insmod "/modules/$m"; done < /etc/cglcert-modules
H=/host
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot $H 2>/dev/null
then
    mount -t proc proc $H/proc
    mount -o rbind /sys $H/sys
    mount -o rbind /dev $H/dev
    mount -t tmpfs -o mode=1777 tmpfs $H/tmp
    [ -d $H/run ] && mount -t tmpfs -o mode=755 tmpfs $H/run
    echo "cglcert: worker root mounted read-only at $H"
else
    echo "cglcert: no 9p share 'hostroot'; running without the worker's root"
fi
echo "cglcert: ramdisk ready on $(uname -r)"
export PS1='cglcert-lava# '
while true; do setsid cttyhack /bin/sh; done
"""


def build_ramdisk(kernel: Any, out: Path, busybox: Path | None = None) -> Path:
    """Write the qemu ramdisk (gzip'd newc cpio) for a cached kernel to *out*."""
    from cglcert import initramfs, kernels

    busybox = busybox or initramfs.find_busybox()
    mods = kernels.module_load_order(kernel.modules_dir, initramfs.NINEP_MODULES)
    w = initramfs.CpioWriter()
    for d in ("bin", "sbin", "dev", "etc", "modules", "proc", "sys", "tmp", "run", "host",
              "root", "usr", "usr/bin", "usr/sbin"):
        w.dir(d)
    w.chardev("dev/console", 5, 1)
    w.chardev("dev/null", 1, 3, 0o666)
    w.file("bin/busybox", busybox.read_bytes(), 0o755)
    for applet in initramfs._applets(busybox):
        if applet != "busybox":
            w.symlink(f"bin/{applet}", "busybox")
    names = []
    for p in mods:
        name = kernels._module_name(p) + ".ko"
        w.file(f"modules/{name}", kernels._read_module(p))
        names.append(name)
    w.file("etc/cglcert-modules", ("\n".join(names) + "\n").encode())
    w.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    w.file("etc/group", b"root:x:0:\n")
    w.file("init", RAMDISK_INIT.encode(), 0o755)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(gzip.compress(w.finish(), compresslevel=6, mtime=0))
    tmp.replace(out)
    return out


def iter_case_lines(text: str) -> Iterable[str]:
    """The ``lava-test-case`` lines of rendered commands (for checks and tests)."""
    return (line for line in text.splitlines() if line.startswith("lava-test-case "))
