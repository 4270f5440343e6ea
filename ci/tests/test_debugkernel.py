"""The debug kernel (``--kernel debug``): its config fragment, the .config parsing, the cache
key, the atomic cached build (with a fake build step: no kernel is compiled here), and the
command line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cglcert import debugkernel as dk
from cglcert import kernels

from conftest import REPO

FRAGMENT = REPO / dk.FRAGMENT

# --------------------------------------------------------------------------- .config


def test_parse_config_reads_values_unset_options_and_overrides() -> None:
    text = """\
# comment
CONFIG_A=y
# CONFIG_B is not set
CONFIG_C="-debug"
CONFIG_D=0x10
CONFIG_A=n
   CONFIG_E=m
not a line
"""
    assert dk.parse_config(text) == {"CONFIG_A": "n", "CONFIG_B": "n", "CONFIG_C": '"-debug"',
                                     "CONFIG_D": "0x10", "CONFIG_E": "m"}


def test_read_config_of_nothing_is_empty(tmp_path: Path) -> None:
    assert dk.read_config(None) == {}
    assert dk.read_config(tmp_path / "missing") == {}


def test_fragment_mismatches_name_what_kconfig_did_not_give() -> None:
    frag = dk.parse_config('CONFIG_A=y\nCONFIG_B=n\nCONFIG_C="-debug"\nCONFIG_D=16\n'
                           "CONFIG_E=n\n")
    config = dk.parse_config('# CONFIG_A is not set\nCONFIG_C="-debug"\nCONFIG_D=15\n'
                             "CONFIG_E=y\n")
    assert dk.fragment_mismatches(frag, config) == [
        "CONFIG_A=y (got not set)", "CONFIG_D=16 (got 15)", "CONFIG_E=n (got y)"]
    assert dk.fragment_mismatches(frag, {**config, "CONFIG_A": "y", "CONFIG_D": "16",
                                         "CONFIG_E": "n"}) == []


def test_debug_options_keep_the_report_order_and_skip_what_is_off() -> None:
    config = dk.parse_config("CONFIG_FAILSLAB=y\nCONFIG_KASAN=y\n# CONFIG_KFENCE is not set\n"
                             "CONFIG_DEBUG_LIST=y\nCONFIG_NOT_A_DEBUG_OPTION=y\n")
    assert dk.debug_options(config) == ["CONFIG_KASAN", "CONFIG_DEBUG_LIST", "CONFIG_FAILSLAB"]


def test_debug_options_of_debians_kernel_are_few() -> None:
    config = Path("/usr/src/linux-headers-6.1.0-57-amd64/.config")
    if not config.is_file():
        pytest.skip("Debian's 6.1 headers are not installed")
    opts = dk.debug_options(config)
    assert "CONFIG_DEBUG_LIST" in opts
    assert not {"CONFIG_KASAN", "CONFIG_PROVE_LOCKING", "CONFIG_DEBUG_KMEMLEAK"} & set(opts)


def test_boot_args() -> None:
    assert dk.boot_args({}) == ""
    assert dk.boot_args({"CONFIG_DEBUG_KMEMLEAK": "y"}) == ""
    assert dk.boot_args({"CONFIG_DEBUG_KMEMLEAK": "y",
                         "CONFIG_DEBUG_KMEMLEAK_DEFAULT_OFF": "y"}) == "kmemleak=on"
    assert dk.boot_args({"CONFIG_KASAN": "y"}) == "kasan_multi_shot"
    assert dk.boot_args({"CONFIG_KASAN": "y", "CONFIG_ACPI": "y"}) == \
        "kasan_multi_shot acpi=noirq"


# --------------------------------------------------------------------------- the fragment

#: What the debug kernel must have: the detectors, and what the QEMU target, the AEM
#: modules, the conformance suite and the stress programs use.
REQUIRED = [
    "KASAN", "KASAN_GENERIC", "KASAN_INLINE", "KFENCE", "PROVE_LOCKING", "DEBUG_ATOMIC_SLEEP",
    "DEBUG_OBJECTS", "DEBUG_OBJECTS_TIMERS", "DEBUG_OBJECTS_WORK", "DEBUG_OBJECTS_FREE",
    "DEBUG_KMEMLEAK", "UBSAN", "UBSAN_BOUNDS", "DEBUG_LIST", "SOFTLOCKUP_DETECTOR",
    "DETECT_HUNG_TASK", "FAULT_INJECTION", "FAILSLAB", "FAIL_PAGE_ALLOC",
    "FUNCTION_ERROR_INJECTION", "FAIL_FUNCTION", "FAULT_INJECTION_DEBUG_FS",
    "VIRTIO_PCI", "NET_9P_VIRTIO", "9P_FS", "FUSE_FS", "VIRTIO_FS", "DEVTMPFS", "TMPFS",
    "DEBUG_FS", "FTRACE", "FTRACE_SYSCALLS", "UNIX98_PTYS", "PROC_SYSCTL", "BLK_DEV_INITRD",
    "SERIAL_8250_CONSOLE", "ACPI", "UNIX", "INET", "IPV6", "IP_SCTP", "MPTCP", "TIPC", "NET_NS",
    "USER_NS", "USERFAULTFD",
    "EPOLL", "EVENTFD", "TIMERFD", "SIGNALFD", "IO_URING", "FUTEX", "SYSVIPC", "POSIX_MQUEUE",
    "CGROUPS", "MEMCG", "MODULES", "MODULE_UNLOAD", "KALLSYMS_ALL", "DEBUG_INFO_NONE",
]


def test_the_fragment_asks_for_every_detector_and_what_the_runner_needs() -> None:
    frag = dk.parse_config(FRAGMENT.read_text())
    missing = [o for o in REQUIRED if frag.get(f"CONFIG_{o}") != "y"]
    assert not missing, f"{FRAGMENT} lacks {missing}"
    assert frag.get("CONFIG_UBSAN_TRAP") == "n", "UBSAN must report, not trap"
    assert frag.get("CONFIG_DEBUG_KMEMLEAK_DEFAULT_OFF") == "n"
    assert frag.get("CONFIG_MODULE_SIG") == "n"
    assert not [k for k, v in frag.items() if v == "m"], "everything is built in"


def test_the_fragment_is_well_formed() -> None:
    for n, line in enumerate(FRAGMENT.read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            assert dk._CONFIG_RE.match(line), f"{FRAGMENT}:{n}: {line!r}"


def test_a_built_debug_kernel_has_what_its_fragment_asks() -> None:
    """Checked on the cached build when there is one (ci/run-kmod-debug-tests makes it)."""
    try:
        k = dk.cached()
    except kernels.KernelError as exc:  # linux-source-6.1 not installed
        pytest.skip(str(exc))
    if k is None:
        pytest.skip("the debug kernel of this fragment is not built here")
    assert k.config is not None and k.build_dir is not None
    assert dk.fragment_mismatches(dk.parse_config(FRAGMENT.read_text()),
                                  dk.read_config(k.config)) == []
    assert k.release.endswith("-debug") and k.vmlinuz.is_file()
    assert (k.modules_dir / "modules.builtin").read_text().count("virtiofs.ko") == 1
    assert (k.modules_dir / "modules.dep").is_file()  # modprobe of a built-in module works
    assert dk.is_debug_kernel(k)


# --------------------------------------------------------------------------- the cache key


def test_cache_key_is_stable_and_changes_with_each_input() -> None:
    key = dk.cache_key(b"CONFIG_KASAN=y\n", "6.1.192-3", "gcc 12.2.0")
    assert len(key) == 16 and int(key, 16) >= 0
    assert key == dk.cache_key(b"CONFIG_KASAN=y\n", "6.1.192-3", "gcc 12.2.0")
    others = {dk.cache_key(b"CONFIG_KASAN=n\n", "6.1.192-3", "gcc 12.2.0"),
              dk.cache_key(b"CONFIG_KASAN=y\n", "6.1.193-1", "gcc 12.2.0"),
              dk.cache_key(b"CONFIG_KASAN=y\n", "6.1.192-3", "gcc 12.3.0"),
              dk.cache_key(b"CONFIG_KASAN=y\n", "6.1.192-3", "gcc 12.2.0", recipe=dk.RECIPE + 1)}
    assert key not in others and len(others) == 4
    # the parts are length-prefixed: moving bytes from one part to the next is another key
    assert dk.cache_key(b"y", "6.1.192-3", "gcc") != dk.cache_key(b"", "6.1.192-3", "gccy")


# --------------------------------------------------------------------------- ensure()


class FakeBuild:
    """Stands for _build: writes the files _install would, or fails."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.during = lambda: None  # what happens while it "compiles"

    def __call__(self, work: Path, frag: Path, jobs: int, log) -> dict:
        self.calls += 1
        log("compiling")
        self.during()
        rel = "6.1.192-debug"
        (work / "tree").mkdir()
        (work / "tree" / ".config").write_text(frag.read_text())
        (work / "tree" / "Makefile").write_text("")
        if self.fail:
            raise kernels.KernelError("building the debug kernel failed")
        (work / "root" / "boot").mkdir(parents=True)
        (work / "root" / "boot" / f"vmlinuz-{rel}").write_bytes(b"MZ")
        (work / "root" / "lib" / "modules" / rel).mkdir(parents=True)
        (work / "vmlinux").write_bytes(b"")
        return {"release": rel, "kernel_version": "6.1.192", "jobs": jobs, "build_seconds": 1.0,
                "debug_options": dk.debug_options(dk.parse_config(frag.read_text()))}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBuild:
    build = FakeBuild()
    monkeypatch.setattr(dk, "_build", build)
    monkeypatch.setattr(dk, "source_version", lambda install=True: "6.1.192-3")
    monkeypatch.setattr(dk, "compiler_version", lambda: "gcc 12")
    monkeypatch.setattr(dk.hostdeps, "ensure", lambda packages, quiet=False: [])
    monkeypatch.setenv("CGLCERT_KERNEL_CACHE", str(tmp_path / "cache"))
    return build


def test_ensure_builds_once_then_reuses(fake: FakeBuild, tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KASAN=y\n")
    lines: list[str] = []
    k = dk.ensure(fragment=frag, log=lines.append)
    assert fake.calls == 1 and lines == ["compiling"]
    key = dk.cache_key(frag.read_bytes(), "6.1.192-3", "gcc 12")
    assert k.root.parent == tmp_path / "cache" / "debug" / key
    assert k.flavor == "debug" and k.release == "6.1.192-debug" and k.version == "6.1.192-3"
    assert k.build_dir == k.root.parent / "tree" and k.config == k.build_dir / ".config"
    assert dk.is_debug_kernel(k)
    built = dk.manifest(k)
    assert built["key"] == key and built["debug_options"] == ["CONFIG_KASAN"]
    assert built["fragment"] == str(frag.resolve())
    assert kernels.vmlinux(k) is None  # the empty marker: boot the bzImage
    again = dk.ensure(fragment=frag)
    assert fake.calls == 1 and again == k
    assert dk.cached(fragment=frag) == k
    assert kernels.list_cached() == []  # not mistaken for a Debian kernel


def test_a_changed_fragment_builds_again(fake: FakeBuild, tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KASAN=y\n")
    first = dk.ensure(fragment=frag)
    frag.write_text("CONFIG_KASAN=y\nCONFIG_KFENCE=y\n")
    assert dk.cached(fragment=frag) is None
    second = dk.ensure(fragment=frag)
    assert fake.calls == 2 and second.root != first.root
    assert first.root.is_dir()  # recent builds of other fragments stay


def test_an_interrupted_build_is_never_reused(fake: FakeBuild, tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KASAN=y\n")
    fake.fail = True
    with pytest.raises(kernels.KernelError):
        dk.ensure(fragment=frag)
    top = tmp_path / "cache" / "debug"
    assert [p.name for p in top.iterdir() if not p.name.endswith(".lock")] == []
    # a build killed hard leaves its temporary folder: the next build of the key removes it
    key = dk.cache_key(frag.read_bytes(), "6.1.192-3", "gcc 12")
    (top / f".{key}.killed").mkdir()
    fake.fail = False
    dk.ensure(fragment=frag)
    assert sorted(p.name for p in top.iterdir() if not p.name.endswith(".lock")) == [key]
    assert fake.calls == 2


def test_an_edit_while_building_is_not_mixed_into_the_build(fake: FakeBuild,
                                                              tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KASAN=y\n")
    key = dk.cache_key(frag.read_bytes(), "6.1.192-3", "gcc 12")
    fake.during = lambda: frag.write_text("CONFIG_KFENCE=y\n")
    k = dk.ensure(fragment=frag)
    built = dk.manifest(k)
    assert built["key"] == key and k.root.parent.name == key
    assert built["debug_options"] == ["CONFIG_KASAN"]
    assert (k.root.parent / "debug-kernel.config").read_text() == "CONFIG_KASAN=y\n"
    assert built["fragment_sha256"] == __import__("hashlib").sha256(b"CONFIG_KASAN=y\n").hexdigest()
    assert dk.cached(fragment=frag) is None  # the edited fragment is another build


def test_force_builds_again(fake: FakeBuild, tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KASAN=y\n")
    dk.ensure(fragment=frag)
    dk.ensure(fragment=frag, force=True)
    assert fake.calls == 2


def test_old_builds_of_other_fragments_are_pruned(tmp_path: Path) -> None:
    for name in ("old", "recent", "current", ".tmpbuild"):
        (tmp_path / name).mkdir()
        (tmp_path / name / dk.MANIFEST).write_text("{}")
    old = time.time() - (dk.KEEP_DAYS + 1) * 86400
    for name in ("old", "current", ".tmpbuild"):
        os.utime(tmp_path / name / dk.MANIFEST, (old, old))
    (tmp_path / ".old.lock").write_text("")
    gone = dk._prune(tmp_path, keep="current")
    assert [p.name for p in gone] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmpbuild", "current", "recent"]


def test_a_missing_fragment_says_so(tmp_path: Path) -> None:
    with pytest.raises(kernels.KernelError, match="does not exist"):
        dk.ensure(fragment=tmp_path / "nope.config")


def test_make_builds_the_image_and_runs_modpost() -> None:
    assert dk.make_targets() == ["bzImage", "modules"]


# --------------------------------------------------------------------------- command line


def test_the_archive_resolver_points_at_the_debug_kernel() -> None:
    with pytest.raises(kernels.KernelError, match="cglcert kernels debug"):
        kernels.resolve("debug")


def test_is_debug() -> None:
    assert dk.is_debug("debug")
    assert not dk.is_debug(None) and not dk.is_debug("amd64") and not dk.is_debug("Debug")
    assert not dk.is_debug_kernel(None)


@pytest.mark.parametrize("argv, message", [
    (["certify", "--kernel", "debug", "--kernel-modules", "."], "not with --kernel debug"),
    (["kernels", "debug", "--jobs", "0"], "--jobs 0"),
    (["kernels", "debug", "--cached", "--force"], "contradict"),
    (["kernels", "debug", "--fragment", "/nonexistent.config"], "no such file"),
])
def test_bad_debug_arguments_are_usage_errors(run_cli, argv, message) -> None:
    r = run_cli(*argv)
    assert r.code == 2, r.err
    assert message in r.err


def test_help_mentions_the_debug_kernel(run_cli) -> None:
    for cmd in (["boot", "--help"], ["certify", "--help"], ["kernels", "debug", "--help"]):
        r = run_cli(*cmd)
        assert r.code == 0 and "debug" in r.out, cmd
    r = run_cli("boot", "--help")
    assert str(dk.TIMEOUT_FACTOR * 600) in r.out.replace("\n", " ").replace("  ", " ")


def test_kernels_debug_cached_reports_a_missing_build(run_cli, fake: FakeBuild,
                                                       tmp_path: Path) -> None:
    frag = tmp_path / "frag.config"
    frag.write_text("CONFIG_KASAN=y\n")
    r = run_cli("kernels", "debug", "--cached", "--fragment", str(frag))
    assert r.code == 1 and "not built" in r.err
    r = run_cli("kernels", "debug", "--fragment", str(frag), "--json")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["flavor"] == "debug" and info["debug_options"] == ["CONFIG_KASAN"]
    assert info["build_dir"].endswith("/tree")
    r = run_cli("kernels", "debug", "--cached", "--fragment", str(frag))
    assert r.code == 0 and "6.1.192-debug" in r.out and "KASAN" in r.out
