"""``cglcert certify``: the target script, the judgement with the kernel's health, the
command line, and (marked qemu) whole runs: a certification, a kernel that panics at boot,
a module that does not load."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from cglcert import certify as cf
from cglcert import kmsg
from cglcert import results as res
from cglcert.catalog import load_catalog
from cglcert.commands.run import expected_tests

from conftest import REPO

CATALOG = load_catalog(REPO).requirements
EXPECTED = expected_tests(REPO)


def plan(tmp_path: Path, **kw) -> cf.Plan:
    base = dict(repo=REPO, run_dir=tmp_path, kernel=None, backend="kmod", target="qemu")
    base.update(kw)
    return cf.Plan(**base)


def art(tmp_path: Path) -> cf.Artifacts:
    return cf.Artifacts(suite=tmp_path / "aem conformance", stress_build=tmp_path / "sb",
                        modules=[tmp_path / "aem.ko", tmp_path / "aem_timer.ko"])


def xml(*cases: tuple[str, str, str]) -> str:
    """gtest XML with (Suite.Name, requirement, failure message or "") cases."""
    body = []
    for name, req, failure in cases:
        suite, test = name.split(".")
        fail = f'<failure message="{failure}">{failure}</failure>' if failure else ""
        body.append(f'<testsuite name="{suite}"><testcase name="{test}" status="run" '
                    f'result="completed" classname="{suite}"><properties><property '
                    f'name="requirement" value="{req}"/></properties>{fail}</testcase>'
                    "</testsuite>")
    return ('<?xml version="1.0"?><testsuites aem_backend="kmod" aem_version="0.1" '
            f'name="AllTests">{"".join(body)}</testsuites>')


def first_tests(n: int) -> list[tuple[str, str]]:
    """n real test names of the suite with their first requirement."""
    return [(name, reqs[0]) for name, reqs in sorted(EXPECTED.items())[:n]]


def write_run(run: Path, cases: list[tuple[str, str, str]], *, suite_rc: int = 0,
              unload_rc: int | None = 0, stress: dict | None = None) -> None:
    (run / "gtest.xml").write_text(xml(*cases))
    (run / "suite.rc").write_text(f"{suite_rc}\n")
    if unload_rc is not None:
        (run / "unload.rc").write_text(f"{unload_rc}\n")
    if stress is not None:
        (run / "stress.json").write_text(json.dumps(stress))


def all_pass(run: Path) -> list[tuple[str, str]]:
    names = sorted(EXPECTED.items())
    write_run(run, [(n, r[0], "") for n, r in names])
    return [(n, r[0]) for n, r in names]


# --------------------------------------------------------------------------- modules, script


def test_module_names_put_the_core_first() -> None:
    names = cf.module_names(REPO)
    assert names[0] == "aem"
    assert {"aem_timer", "aem_soft", "aem_fd"} <= set(names)


def test_module_sources_leave_out_generated_files() -> None:
    files = [p.name for p in cf.module_sources(REPO)]
    assert "Kbuild" in files and "aem_core.c" in files and "aem.h" in files
    assert not [f for f in files if f.endswith(".mod.c") or f.endswith(".o")]


def test_parse_module_params() -> None:
    assert cf.parse_module_params(["aem.max_pending=64", "aem.boost_prio=10"], ["aem"]) == \
        {"aem": ["max_pending=64", "boost_prio=10"]}
    with pytest.raises(ValueError, match="MODULE.PARAM=VALUE"):
        cf.parse_module_params(["max_pending=64"], ["aem"])
    with pytest.raises(ValueError, match="not one of the AEM modules"):
        cf.parse_module_params(["nfs.x=1"], ["aem"])


def test_script_runs_every_phase_and_unloads_in_reverse(tmp_path: Path) -> None:
    s = cf.target_script(plan(tmp_path), art(tmp_path))
    assert "export AEM_BACKEND=kmod AEM_KMSG_MARKERS=1" in s
    assert f"'{tmp_path}/aem conformance'" in s          # quoted
    assert f"{tmp_path}/sb/stress/aem_prio_latency --samples 3000" in s   # stress --quick
    assert "command -v stress-ng" in s                   # the stress-ng run only if present
    assert "rmmod aem_timer aem " in s
    assert s.index("gtest.xml") < s.index(cf.PHASE_STRESS) < s.index(cf.PHASE_UNLOAD)


def test_script_of_the_user_backend_unloads_nothing(tmp_path: Path) -> None:
    s = cf.target_script(plan(tmp_path, backend="user", stress=False, profile="quick"),
                         art(tmp_path))
    assert "rmmod" not in s and "aem_stress_delivery" not in s


# --------------------------------------------------------------------------- judgement


def judge(run: Path, execution: cf.Execution | None = None, *, stress: bool = False,
          backend: str = "kmod") -> dict:
    return cf.judge(CATALOG, EXPECTED, run, execution or cf.Execution(), {"kernel": "k"},
                    backend=backend, stress_wanted=stress)


def test_a_clean_run_with_every_test_passing_certifies(tmp_path: Path) -> None:
    all_pass(tmp_path)
    r = judge(tmp_path)
    assert r["verdict"]["cgl_2_0"]["conformant"] and r["verdict"]["cgl_3_0"]["conformant"]
    assert r["health"]["blockers"] == []


def test_a_splat_during_a_test_fails_that_test_only(tmp_path: Path) -> None:
    names = all_pass(tmp_path)
    victim, req = names[3]
    f = kmsg.Finding("warning", "WARNING: CPU: 1 PID: 9 at aem_core.c:10", 5, test=victim)
    r = judge(tmp_path, cf.Execution(findings=(f,)))
    tests = {t["name"]: t for q in r["requirements"] for t in q["tests"]}
    assert tests[victim]["outcome"] == res.FAIL
    assert "kernel warning during this test" in tests[victim]["reason"]
    assert sum(t["outcome"] == res.FAIL for t in tests.values()) == 1
    assert next(q for q in r["requirements"] if q["id"] == req)["verdict"] == res.FAIL
    assert r["health"]["blockers"] == []


def test_a_splat_outside_tests_blocks_the_verdict(tmp_path: Path) -> None:
    all_pass(tmp_path)
    f = kmsg.Finding("bug", "BUG: unable to handle page fault", 9, test=cf.PHASE_UNLOAD)
    r = judge(tmp_path, cf.Execution(findings=(f,)))
    assert not r["verdict"]["cgl_2_0"]["conformant"]
    assert "while unloading the modules" in r["verdict"]["cgl_2_0"]["blockers"][0]


def test_bad_taint_and_a_failed_unload_block_the_verdict(tmp_path: Path) -> None:
    all_pass(tmp_path)
    (tmp_path / "unload.rc").write_text("1\n")
    (tmp_path / "unload.log").write_text("rmmod: ERROR: Module aem is in use\n")
    r = judge(tmp_path, cf.Execution(taint=kmsg.decode_taint(1 << 9)))
    blockers = r["health"]["blockers"]
    assert any("tainted W" in b for b in blockers)
    assert any("Module aem is in use" in b for b in blockers)
    assert not r["verdict"]["cgl_2_0"]["conformant"]


def test_a_boot_failure_is_error_never_fail(tmp_path: Path) -> None:
    r = judge(tmp_path, cf.Execution(error="boot", detail="the kernel panicked before the "
                                     "command started: Kernel panic - not syncing: VFS"))
    outcomes = {t["outcome"] for q in r["requirements"] for t in q["tests"]}
    assert outcomes == {res.ERROR}
    assert {q["verdict"] for q in r["requirements"]} == {res.ERROR}
    assert "boot: the kernel panicked" in r["harness"]["error"]


def test_a_panic_in_a_test_fails_it_and_the_rest_did_not_run(tmp_path: Path) -> None:
    (victim, _req), = first_tests(1)
    log = f"[1.0] aem-test: begin {victim}\n[1.1] Kernel panic - not syncing: Fatal exception\n"
    r = judge(tmp_path, cf.Execution(error="panic", detail="Kernel panic - not syncing: Fatal",
                                     kernel_log=log))
    tests = {t["name"]: t for q in r["requirements"] for t in q["tests"]}
    assert tests[victim]["outcome"] == res.FAIL and "panicked" in tests[victim]["reason"]
    others = {t["outcome"] for n, t in tests.items() if n != victim}
    assert others == {res.ERROR}
    assert f"panicked during {victim}" in r["harness"]["error"]


def test_a_suite_that_timed_out_is_error(tmp_path: Path) -> None:
    (tmp_path / "suite.rc").write_text("124\n")
    r = judge(tmp_path)
    assert "timed out" in r["harness"]["error"]
    assert {q["verdict"] for q in r["requirements"]} == {res.ERROR}


def stress_doc(**summary) -> dict:
    verdicts = {}
    for req in CATALOG:
        if req.thresholds:
            verdicts[req.id] = {"thresholds": [
                {"metric": th.metric, "verdict": "PASS", "measured": 1, "bound": 2}
                for th in req.thresholds]}
    verdicts["AEM-3.2.1"]["thresholds"][0].update(verdict="FAIL", measured=9, ratio=4.5)
    verdicts["AEM-3.3.1"]["thresholds"][0].update(verdict="MISSING", measured=None,
                                                  reason="metric x was not measured")
    return {"verdicts": verdicts, "runs": [],
            "summary": {"lost": 0, "duplicated": 0, "handler_overlaps": 0,
                        "failed_requirements": [], "failed_programs": [],
                        "crashed_programs": [], **summary}}


def test_stress_thresholds_become_tests_of_their_requirement(tmp_path: Path) -> None:
    names = sorted(EXPECTED.items())
    write_run(tmp_path, [(n, r[0], "") for n, r in names], stress=stress_doc(lost=3))
    r = judge(tmp_path, stress=True)
    by_req = {q["id"]: q for q in r["requirements"]}
    stress = {t["name"]: t for q in r["requirements"] for t in q["tests"]
              if t["name"].startswith(cf.STRESS_PREFIX)}
    assert by_req["AEM-3.2.1"]["verdict"] == res.FAIL
    t321 = next(t for n, t in stress.items() if n.startswith("stress.AEM-3.2.1."))
    assert t321["measurements"]["ratio"] == 4.5
    assert by_req["AEM-3.3.1"]["verdict"] == res.SKIP        # not measured: never a pass
    assert stress["stress.AEM-3.5.1.lost"]["outcome"] == res.FAIL
    assert by_req["AEM-3.5.1"]["verdict"] == res.FAIL
    assert by_req["AEM-3.6.2"]["verdict"] == res.PASS


def test_a_missing_stress_json_makes_the_thresholds_error(tmp_path: Path) -> None:
    all_pass(tmp_path)
    r = judge(tmp_path, stress=True)
    t = next(t for q in r["requirements"] for t in q["tests"]
             if t["name"].startswith("stress.AEM-3.5.1"))
    assert t["outcome"] == res.ERROR and "did not run" in t["reason"]


def test_hung_test_is_the_last_unended_begin() -> None:
    log = textwrap.dedent("""\
        aem-test: begin A.a
        aem-test: end A.a
        aem-test: begin B.b
        """)
    assert cf.hung_test(log) == "B.b"
    assert cf.hung_test(log + "aem-test: end B.b\n") is None


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, message", [
    (["--smp", "0"], "--smp 0"),
    (["--mem", "lots"], "--mem 'lots'"),
    (["--target", "local", "--kernel", "rt-amd64"], "only for --target qemu"),
    (["--backend", "user", "--module-param", "aem.max_pending=1"], "only with --backend kmod"),
    (["--module-param", "aem:max=1"], "MODULE.PARAM=VALUE"),
])
def test_bad_arguments_are_usage_errors(run_cli, argv, message) -> None:
    r = run_cli("certify", *argv)
    assert r.code == 2, r.err
    assert message in r.err


def test_local_kmod_without_headers_is_an_infrastructure_error(run_cli, tmp_path: Path) -> None:
    from cglcert.targets import local
    import platform
    if (local.headers_dir(platform.release()) / "Makefile").exists():
        pytest.skip("this machine has headers for its kernel: the error path is not reached")
    r = run_cli("certify", "--target", "local", "--out", str(tmp_path / "run"))
    assert r.code == 3
    assert "has no headers" in r.err and "--target qemu" in r.err


# --------------------------------------------------------------------------- whole runs


@pytest.mark.qemu
def test_a_kernel_that_panics_at_boot_gives_error_and_a_report(run_cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = run_cli("certify", "--quick", "--no-stress", "--append", "rdinit=/nonexistent",
                "--json", "--out", str(run))
    assert r.code == 3, r.err
    out = json.loads(r.out)
    assert out["outcome"] == "ERROR" and out["error"].startswith("boot:")
    results = json.loads((run / "results.json").read_text())
    assert {q["verdict"] for q in results["requirements"]} == {res.ERROR}
    html = (run / "report" / "report.html").read_text()
    assert "ERROR" in html


@pytest.mark.qemu
def test_a_module_that_does_not_load_gives_error(run_cli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = run_cli("certify", "--quick", "--no-stress", "--module-param", "aem.max_regs=lots",
                "--json", "--out", str(run))
    assert r.code == 3, r.err
    out = json.loads(r.out)
    assert out["error"].startswith("module:") and "aem" in out["error"]
    assert (run / "report" / "kcidb.json").is_file()


def test_a_crashed_stress_program_is_error_for_the_requirements_it_feeds(tmp_path: Path) -> None:
    names = sorted(EXPECTED.items())
    doc = stress_doc()
    doc["runs"] = [{"program": "aem_stress_delivery", "argv": ["--duration", "2"],
                    "exit_code": -6, "output": None,
                    "stderr_tail": ["sockasync_read: Operation not supported"]}]
    write_run(tmp_path, [(n, r[0], "") for n, r in names], stress=doc)
    r = judge(tmp_path, stress=True)
    q = next(q for q in r["requirements"] if q["id"] == "AEM-3.5.1")
    t = next(t for t in q["tests"] if t["name"] == "stress.AEM-3.5.1.aem_stress_delivery")
    assert t["outcome"] == res.ERROR and "Operation not supported" in t["reason"]
    assert q["verdict"] == res.ERROR


def test_stress_results_are_collected_from_the_programs_outputs(tmp_path: Path) -> None:
    p = plan(tmp_path, profile="default")      # stress --quick: with a stress-ng run
    sdir = tmp_path / "stress"
    sdir.mkdir()
    progs = cf.stress_programs("default")
    for i, (prog, _argv, _b, needs_sng) in enumerate(progs):
        if needs_sng:
            continue                       # stress-ng "not installed on the target"
        base = sdir / f"{i:02d}-{prog}"
        base.with_suffix(".start").write_text("100.0\n")
        base.with_suffix(".end").write_text("102.5\n")
        base.with_suffix(".rc").write_text("0\n")
        out = {"program": prog, "backend": "kmod"}
        if prog == "aem_stress_atomicity":
            out.update(occurrences_activated=10, occurrences_delivered=10, lost=0,
                       duplicated=0, handler_overlaps=2)
        base.with_suffix(".json").write_text(json.dumps(out))
        base.with_suffix(".err").write_text("")
    doc = cf.collect_stress(p, CATALOG, {"kernel": "6.1.0-57-amd64", "date": "d"})
    assert doc is not None and (tmp_path / "stress.json").is_file()
    assert doc["summary"]["handler_overlaps"] == 2
    assert doc["environment"]["backend"] == "kmod"
    skipped = [r for r in doc["runs"] if "skipped" in r]
    assert [r["skipped"] for r in skipped] == ["stress-ng is not installed on the target"]
    assert doc["verdicts"]["AEM-3.6.2"]["verdict"] == "FAIL"


# --------------------------------------------------------------------------- the ssh target


def test_ssh_urls() -> None:
    from cglcert.targets import ssh
    assert ssh.parse_url("ssh://lab1") == ("root", "lab1", 22)
    assert ssh.parse_url("ssh://ci@10.0.0.7:2222") == ("ci", "10.0.0.7", 2222)
    for bad in ("ssh://", "ssh://host:99999", "ssh://a b", "http://host"):
        with pytest.raises(ValueError, match="ssh://"):
            ssh.parse_url(bad)


def test_a_bad_target_is_a_usage_error(run_cli) -> None:
    r = run_cli("certify", "--target", "ssh//lab1")
    assert r.code == 2 and "ssh://[USER@]HOST[:PORT]" in r.err
    r = run_cli("certify", "--ssh-option", "IdentityFile=/k")
    assert r.code == 2 and "only with --target ssh://HOST" in r.err


def test_the_wrapper_loads_in_order_and_undoes_a_partial_load(tmp_path: Path) -> None:
    from cglcert.targets import _host
    p = plan(tmp_path, module_params={"aem_timer": ["x=1"]})
    w = _host.wrapper(p, art(tmp_path), "MARK", build_dir=tmp_path / "kb")
    assert w.index("make -s -C") < w.index("insmod") < w.index('bash "$R/certify.sh"')
    assert "aem_timer.ko x=1" in w
    assert "rmmod aem; exit 0" in w            # aem_timer failing unloads aem again


@pytest.fixture
def sshd(tmp_path: Path):
    """An sshd on 127.0.0.1 (a free port), root login with a fresh key; yields (url, opts)."""
    import shutil
    import socket
    import subprocess
    import time
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).exists():
        pytest.skip("openssh-server is not installed (ci/install-deps installs it)")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")],
                   check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (d / "sshd_config").write_text(textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {d}/host
        AuthorizedKeysFile {d}/authorized_keys
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        StrictModes no
        UsePAM no
        PidFile {d}/sshd.pid
        """))
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(d / "sshd_config")],
                            stderr=open(d / "sshd.log", "wb"))
    deadline = time.monotonic() + 30
    while True:                                  # bounded wait for the listening socket
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start: {(d / 'sshd.log').read_text()}")
            time.sleep(0.1)
    opts = [f"IdentityFile={d}/client", "UserKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=no", "LogLevel=ERROR"]
    yield f"ssh://root@127.0.0.1:{port}", opts
    proc.terminate()
    proc.wait()


@pytest.mark.ssh
def test_certify_over_ssh_on_loopback(run_cli, sshd, tmp_path: Path) -> None:
    url, opts = sshd
    run = tmp_path / "run"
    argv = ["certify", "--target", url, "--backend", "user", "--quick", "--no-stress",
            "--json", "--out", str(run)]
    for o in opts:
        argv += ["--ssh-option", o]
    r = run_cli(*argv)
    assert r.code in (0, 1), r.err + r.out
    out = json.loads(r.out)
    assert out["error"] is None
    results = json.loads((run / "results.json").read_text())
    assert results["environment"]["target"] == "ssh"
    assert results["environment"]["target_host"] == "127.0.0.1"
    assert results["summary"]["tests"]["PASS"] > 80      # the suite ran there
    assert results["health"]["log_source"] == "dmesg"
    assert (run / "report" / "report.html").is_file()


@pytest.mark.ssh
def test_an_unreachable_ssh_target_is_an_infrastructure_error(run_cli, sshd,
                                                              tmp_path: Path) -> None:
    url, _opts = sshd
    r = run_cli("certify", "--target", url, "--backend", "user", "--quick", "--no-stress",
                "--ssh-option", "IdentityFile=/nonexistent", "--ssh-option",
                "StrictHostKeyChecking=no", "--out", str(tmp_path / "run"))
    assert r.code == 3
    assert "key authentication" in r.err


def test_a_kernel_of_ones_own_from_its_files(tmp_path: Path) -> None:
    from cglcert import kernels as kc
    img = tmp_path / "bzImage"
    img.write_bytes(b"\0" * 64)
    mods = tmp_path / "inst" / "lib" / "modules" / "6.1.99-acme-rt"
    (mods / "kernel").mkdir(parents=True)
    hdrs = tmp_path / "obj"
    hdrs.mkdir()
    (hdrs / "Makefile").write_text("all:\n")
    (hdrs / ".config").write_text("CONFIG_PREEMPT_RT=y\n")
    k = kc.from_files(img, tmp_path / "inst", hdrs, cache_dir=tmp_path / "cache")
    assert (k.release, k.flavor, k.version) == ("6.1.99-acme-rt", "custom", "custom")
    assert k.modules_dir == mods.resolve() and k.build_dir == hdrs.resolve()
    assert k.config == hdrs.resolve() / ".config"
    assert k.root.parent.is_dir()                 # where the runner derives its files
    with pytest.raises(kc.KernelError, match="make modules_install"):
        kc.from_files(img, tmp_path, hdrs)
    with pytest.raises(kc.KernelError, match="no Makefile"):
        kc.from_files(img, mods, tmp_path / "inst")


def test_own_kernel_arguments_are_checked(run_cli, tmp_path: Path) -> None:
    r = run_cli("certify", "--kernel-headers", str(tmp_path))
    assert r.code == 2 and "only with --kernel IMAGE --kernel-modules DIR" in r.err
    r = run_cli("certify", "--kernel-modules", str(tmp_path), "--kernel", "rt-amd64")
    assert r.code == 2 and "needs exactly one --kernel IMAGE" in r.err


def test_module_build_dirs_differ_by_headers(tmp_path: Path) -> None:
    a = cf.module_build_dir(REPO, "6.1.0-57-amd64", tmp_path / "a")
    b = cf.module_build_dir(REPO, "6.1.0-57-amd64", tmp_path / "b")
    assert a != b and a.name.startswith("6.1.0-57-amd64-")


def test_cyclictest_summary_from_its_json(tmp_path: Path) -> None:
    doc = {"thread": {"0": {"histogram": {"5": 90, "9": 9, "40": 1}, "cycles": 100, "max": 41},
                      "1": {"histogram": {"6": 100}, "cycles": 100, "max": 6}}}
    f = tmp_path / "ct.json"
    f.write_text(json.dumps(doc))
    c = cf.cyclictest_summary(f)
    assert c is not None
    assert (c["threads"], c["cycles"], c["p50_us"], c["p99_us"], c["max_us"]) == \
        (2, 200, 6, 9, 41)
    assert cf.cyclictest_summary(tmp_path / "absent.json") is None


def test_stress_ng_proof_needs_status_0_and_work_from_every_stressor(tmp_path: Path) -> None:
    y = tmp_path / "m.yaml"
    y.write_text("---\nmetrics:\n    - stressor: cpu\n      bogo-ops: 1895\n"
                 "      wall-clock-time: 1.0\n\n    - stressor: vm\n      bogo-ops: 84929\n...\n")
    ok = cf.stress_ng_proof(y, 0)
    assert ok["ran"] and ok["bogo_ops"] == {"cpu": 1895, "vm": 84929}
    assert not cf.stress_ng_proof(y, 1)["ran"]
    assert cf.stress_ng_proof(tmp_path / "absent.yaml", 0)["why"] == "stress-ng wrote no metrics"
    assert cf.stress_ng_proof(y, None)["why"] == "stress-ng left no exit status"
    y.write_text("metrics:\n    - stressor: cpu\n      bogo-ops: 0\n")
    assert cf.stress_ng_proof(y, 0)["why"] == "a stressor did no work"
