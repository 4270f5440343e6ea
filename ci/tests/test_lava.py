"""``cglcert lava``: argument validation, the job and test definition, lava-test-case lines."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cglcert import lava
from cglcert import kernels as kc

DATA = Path(__file__).parent / "data"
DEVICE = DATA / "lava-qemu-device.yaml"
LAVA_RUN = Path("/usr/bin/lava-run")
DEBIAN_PYTHON = Path("/usr/bin/python3")

needs_lava = pytest.mark.skipif(
    not LAVA_RUN.is_file(),
    reason="lava-run not installed: apt-get install --no-install-recommends lava-dispatcher "
           "(Debian) to validate the generated job with the real LAVA dispatcher")


def sample_results() -> dict[str, Any]:
    """A results.json (schema cglcert-results/1) with every outcome and a measurement."""
    return {
        "schema": "cglcert-results/1",
        "suite": "conformance",
        "environment": {"kernel": "6.1.0-57-amd64", "backend": "user"},
        "harness": {"error": None},
        "requirements": [
            {"id": "AEM-3.1.1", "title": "t", "priority": 1, "cgl": "2.0", "verdict": "PASS",
             "reason": "", "tests": [
                 {"name": "Registration.UniqueIds", "outcome": "PASS", "reason": "",
                  "measurements": {"clean_ns": 1234, "live_ids": 10, "label": "text",
                                   "ratio": 0.5}}]},
            {"id": "AEM-3.2.1", "title": "t", "priority": 1, "cgl": "2.0", "verdict": "FAIL",
             "reason": "1 of 2 tests failed", "tests": [
                 {"name": "Prio/Latency.Loaded/0", "outcome": "FAIL", "reason": "too slow",
                  "measurements": {}},
                 {"name": "Prio.Order", "outcome": "PASS", "reason": "", "measurements": {}}]},
            {"id": "AEM-3.6.5", "title": "t", "priority": 2, "cgl": "3.0", "verdict": "SKIP",
             "reason": "all skipped", "tests": [
                 {"name": "Inherit.Fork", "outcome": "SKIP", "reason": "n/a",
                  "measurements": {}}]},
            {"id": "PRF.5.0", "title": "t", "priority": 2, "cgl": "3.0", "verdict": "ERROR",
             "reason": "no test ran", "tests": []},
        ],
        "verdict": {"cgl_2_0": {"conformant": False}, "cgl_3_0": {"conformant": False}},
        "summary": {},
    }


def sample_stress() -> dict[str, Any]:
    return {
        "verdicts": {
            "AEM-3.5.1": {"verdict": "PASS", "thresholds": [
                {"metric": "occurrences_delivered", "measured": 1000, "unit": "events",
                 "verdict": "PASS"},
                {"metric": "occurrences_delivered", "measured": 1000, "unit": "events",
                 "verdict": "PASS"}]},
            "AEM-3.2.1": {"verdict": "MISSING", "thresholds": [
                {"metric": "high_prio_latency_p99_loaded", "measured": None, "unit": "ns",
                 "verdict": "MISSING"}]},
        },
        "summary": {"lost": 0, "duplicated": 2, "handler_overlaps": 0, "crashed_programs": []},
    }


# --- results -> lava-test-case --------------------------------------------------------------

def _by_name(cases: list[lava.LavaCase]) -> dict[str, lava.LavaCase]:
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return {c.name: c for c in cases}


def test_cases_from_results_map_every_outcome() -> None:
    cases, error = lava.lava_cases(sample_results())
    assert error is None
    c = _by_name(cases)
    assert c["AEM-3.1.1"].result == "pass"
    assert c["AEM-3.2.1"].result == "fail"
    assert c["AEM-3.6.5"].result == "skip"
    assert c["PRF.5.0"].result == "unknown", "ERROR is not a kernel failure"
    assert c["AEM-3.1.1.Registration.UniqueIds"].result == "pass"
    assert c["AEM-3.2.1.Prio_Latency.Loaded_0"].result == "fail", "/ is not allowed in names"
    assert c["AEM-3.6.5.Inherit.Fork"].result == "skip"
    m = c["AEM-3.1.1.Registration.UniqueIds.clean_ns"]
    assert (m.measurement, m.units) == (1234, "ns")
    assert c["AEM-3.1.1.Registration.UniqueIds.live_ids"].units == "count"
    assert "AEM-3.1.1.Registration.UniqueIds.label" not in c, "text is not a measurement"
    assert c["cgl-2.0"].result == "fail" and c["cgl-3.0"].result == "fail"
    for case in cases:
        assert case.result in ("pass", "fail", "skip", "unknown")
        assert lava._NAME_BAD.search(case.name) is None


def test_rendered_commands_are_valid_shell() -> None:
    results = sample_results()
    results["harness"]["error"] = "timeout: the suite did not finish within 600 s (killed)"
    cases, error = lava.lava_cases(results)
    text = lava.render_cases(cases, error)
    lines = text.splitlines()
    assert lines[-1].startswith("lava-test-raise "), "a harness error ends the run as infra"
    assert shlex.split(lines[-1])[1].startswith("conformance suite: timeout")
    argvs = [shlex.split(line) for line in lava.iter_case_lines(text)]
    assert len(argvs) == len(cases)
    for argv, case in zip(argvs, cases):
        assert argv[:4] == ["lava-test-case", case.name, "--result", case.result]
        if case.measurement is None:
            assert len(argv) == 4
        else:
            assert argv[4] == "--measurement" and float(argv[5]) == case.measurement
            assert argv[6] == "--units" and argv[7] == case.units
    txt = lava.render_cases(cases, error, "txt").splitlines()
    assert "AEM-3.1.1.Registration.UniqueIds.clean_ns pass 1234 ns" in txt
    assert all(not t.startswith("lava-test-raise") for t in txt)


def test_stress_cases() -> None:
    cases, error = lava.lava_cases(None, sample_stress())
    c = _by_name(cases)
    assert c["stress.AEM-3.5.1"].result == "pass"
    assert c["stress.AEM-3.5.1.occurrences_delivered"].measurement == 1000
    assert c["stress.AEM-3.5.1.occurrences_delivered"].units == "events"
    assert c["stress.AEM-3.5.1.occurrences_delivered.2"].measurement == 1000, "unique names"
    assert c["stress.AEM-3.2.1"].result == "fail", "an unmeasured threshold does not pass"
    assert "stress.AEM-3.2.1.high_prio_latency_p99_loaded" not in c
    assert c["stress.duplicated"].result == "fail" and c["stress.lost"].result == "pass"
    assert error is None
    crashed = sample_stress()
    crashed["summary"]["crashed_programs"] = ["aem_stress_delivery"]
    assert "aem_stress_delivery" in (lava.lava_cases(None, crashed)[1] or "")


def sample_soak(status: str = "passed") -> dict[str, Any]:
    failed = status == "failed"
    return {"schema": "cglcert-soak/1", "status": status,
            "totals": {"rounds": 3, "activated": 30, "delivered": 29 if failed else 30,
                       "lost": 1 if failed else 0, "duplicated": 0, "overlaps": 0},
            "failure": {"round": 3, "verdict": "FAIL", "reason": "lost=1"} if failed else None}


def test_soak_cases() -> None:
    c = _by_name(lava.lava_cases(None, None, sample_soak())[0])
    assert c["soak"].result == "pass" and c["soak.rounds"].measurement == 3
    assert c["soak.delivered"].units == "events" and c["soak.lost"].result == "pass"
    assert "soak.failed_round" not in c
    cases, error = lava.lava_cases(None, None, sample_soak("failed"))
    c = _by_name(cases)
    assert error is None, "a loss is a kernel/library failure, not an infrastructure error"
    assert c["soak"].result == "fail" and c["soak.lost"].result == "fail"
    assert c["soak.failed_round"].measurement == 3
    for status in ("error", "interrupted", "running"):
        cases, error = lava.lava_cases(None, None, sample_soak(status))
        assert _by_name(cases)["soak"].result == "unknown" and error and "soak" in error


def test_helpers() -> None:
    assert lava.case_name("A", "b c", "d/e") == "A.b_c.d_e"
    assert lava.case_name("", "") == "unnamed"
    assert lava.unit_of("interrupt_ns") == "ns" and lava.unit_of("bytes") == "bytes"
    assert lava.unit_of("wait_us") == "us" and lava.unit_of("calls") == "count"


def test_cli_results(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    res = tmp_path / "results.json"
    res.write_text(json.dumps(sample_results()))
    st = tmp_path / "stress.json"
    st.write_text(json.dumps(sample_stress()))
    r = run_cli("lava", "results", str(res), "--stress", str(st))
    assert r.code == 0, r.err
    lines = list(lava.iter_case_lines(r.out))
    assert any(shlex.split(x)[1] == "AEM-3.1.1" for x in lines)
    assert any(shlex.split(x)[1] == "stress.AEM-3.5.1" for x in lines)
    sk = tmp_path / "soak.json"
    sk.write_text(json.dumps(sample_soak()))
    r = run_cli("lava", "results", str(res), "--soak", str(sk), "--format", "txt")
    assert r.code == 0 and "soak pass\n" in r.out and "soak.rounds pass 3 rounds" in r.out
    r = run_cli("lava", "results", str(res), "--soak", str(st))
    assert r.code == 2 and "not a cglcert soak.json" in r.err
    r = run_cli("lava", "results", str(res), "--format", "txt")
    assert r.code == 0 and "AEM-3.1.1 pass\n" in r.out

    assert run_cli("lava", "results", str(tmp_path / "nope.json")).code == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "cglcert-res')
    r = run_cli("lava", "results", str(bad))
    assert r.code == 3 and "not JSON" in r.err
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    r = run_cli("lava", "results", str(other))
    assert r.code == 2 and "not a cglcert results.json" in r.err
    r = run_cli("lava", "results", str(res), "--stress", str(other))
    assert r.code == 2 and "stress.json" in r.err
    r = run_cli("lava")
    assert r.code == 2 and "job or results" in r.err


# --- lava job: validation ----------------------------------------------------------------------

@pytest.fixture
def artifacts(tmp_path: Path) -> tuple[Path, Path]:
    """A fake kernel and ramdisk (lava job only checks that they exist)."""
    k = tmp_path / "vmlinuz-6.1.0-57-amd64"
    k.write_bytes(b"kernel")
    r = tmp_path / "rootfs.cpio.gz"
    r.write_bytes(b"ramdisk")
    return k, r


@pytest.mark.parametrize("extra, message", [
    (["--device-type", "bad type"], "device type name"),
    (["--device-type", "x86", "--boot-method", "qemu"], "does not fit"),
    (["--device-type", "qemu", "--boot-method", "ipxe"], "does not fit"),
    (["--priority", "urgent"], "high, medium, low"),
    (["--priority", "101"], "0..100"),
    (["--smp", "0"], "--smp"),
    (["--memory", "64"], "--memory"),
    (["--failure-retry", "0"], "--failure-retry"),
    (["--tag", "a b"], "device tag"),
    (["--job-name", " "], "--job-name"),
    (["--append", 'a="b"'], "double quotes"),
    (["--test-timeout", "0"], "--test-timeout"),
    (["--job-timeout", "30"], "give --job-timeout 80 or more"),
    (["--job-timeout", "80", "--stress"], "with --stress"),
    (["--testdef-path", "x.yaml"], "need --testdef-repo"),
    (["--testdef-repo", "https://example.org/x.git", "--testdef-path", "/abs.yaml"],
     "relative path"),
    (["--soak", "forever"], "30m, 8h"),
    (["--soak", "10m", "--soak-round", "1h"], "--soak-round"),
    (["--soak", "8h", "--job-timeout", "100"], "with --soak"),
    (["--stress-build-dir", "rel"], "absolute path"),
    (["--project-dir", "relative/dir"], "absolute path"),
    (["--suite-binary", "a b"], "absolute path"),
])
def test_job_rejects_bad_arguments(tmp_path: Path, run_cli: Callable[..., Any],
                                   artifacts: tuple[Path, Path], extra: list[str],
                                   message: str) -> None:
    k, r = artifacts
    res = run_cli("lava", "job", "--out", str(tmp_path / "o"), "--kernel", str(k),
                  "--ramdisk", str(r), *extra)
    assert res.code == 2, res.err
    assert message in res.err
    assert not (tmp_path / "o" / "job.yaml").exists()


@pytest.mark.parametrize("args, message", [
    (["--device-type", "x86", "--kernel", "K"], "needs --ramdisk"),
    (["--kernel", "ftp://host/vmlinuz", "--ramdisk", "R"], "not a usable URL"),
    (["--kernel", "/no/such/vmlinuz", "--ramdisk", "R"], "no such file"),
    (["--kernel", "K", "--ramdisk", "relative/missing.cpio.gz"], "no such file"),
    (["--kernel", "K"], "give --ramdisk too"),
    (["--kernel", "K", "--no-host-root"], "--no-host-root needs --ramdisk"),
    (["--kernel", "not a release!"], "--kernel"),
])
def test_job_rejects_bad_artifacts(tmp_path: Path, run_cli: Callable[..., Any],
                                   artifacts: tuple[Path, Path], args: list[str],
                                   message: str) -> None:
    k, r = artifacts
    argv = [str(k) if a == "K" else str(r) if a == "R" else a for a in args]
    res = run_cli("lava", "job", "--out", str(tmp_path / "o"), *argv)
    assert res.code == 2, res.err
    assert message in res.err


def test_file_url_missing_here_is_a_warning(tmp_path: Path, run_cli: Callable[..., Any],
                                            artifacts: tuple[Path, Path]) -> None:
    """A file:// URL may name a file of another LAVA worker: warn, do not refuse."""
    _, r = artifacts
    res = run_cli("lava", "job", "--out", str(tmp_path / "o"), "--kernel",
                  "file:///srv/lava/vmlinuz-6.1.0-57-amd64", "--ramdisk", str(r))
    assert res.code == 0, res.err
    assert "warning" in res.err and "/srv/lava/vmlinuz-6.1.0-57-amd64" in res.err
    job = yaml.safe_load((tmp_path / "o" / "job.yaml").read_text())
    assert job["job_name"] == "cglcert conformance 6.1.0-57-amd64 (qemu)"


# --- lava job: the generated YAML --------------------------------------------------------------

def _job(tmp_path: Path, run_cli: Callable[..., Any], *argv: str) -> tuple[dict, dict, Path]:
    out = tmp_path / "out"
    res = run_cli("lava", "job", "--out", str(out), *argv)
    assert res.code == 0, res.err
    job = yaml.safe_load((out / "job.yaml").read_text())
    testdef = yaml.safe_load((out / f"{lava.TESTDEF_NAME}.yaml").read_text())
    return job, testdef, out


def test_qemu_job(tmp_path: Path, run_cli: Callable[..., Any],
                  artifacts: tuple[Path, Path]) -> None:
    k, r = artifacts
    job, testdef, _ = _job(tmp_path, run_cli, "--kernel", str(k), "--ramdisk", str(r),
                           "--tag", "tcg", "--priority", "40", "--smp", "4", "--stress",
                           "--test-timeout", "20", "--project-dir", "/srv/aem-cgl",
                           "--suite-binary", "/srv/aem-cgl/build/aem_conformance")
    assert job["device_type"] == "qemu"
    assert job["job_name"] == "cglcert conformance 6.1.0-57-amd64 (qemu)"
    assert job["priority"] == 40 and job["visibility"] == "public" and job["tags"] == ["tcg"]
    assert job["context"]["arch"] == "amd64"
    assert "-smp 4" in job["context"]["extra_options"]
    assert any("mount_tag=hostroot" in o and "readonly=on" in o
               for o in job["context"]["extra_options"])
    assert [next(iter(a)) for a in job["actions"]] == ["deploy", "boot", "test"]
    deploy, boot, test = (next(iter(a.values())) for a in job["actions"])
    assert deploy["to"] == "tmpfs" and deploy["os"] == "debian"
    assert deploy["images"]["kernel"]["url"] == k.resolve().as_uri()
    assert "{kernel}" in deploy["images"]["kernel"]["image_arg"]
    rd = deploy["images"]["ramdisk"]
    assert rd["url"] == r.resolve().as_uri() and rd["overlays"] == {"lava": True}
    assert rd["format"] == "cpio.newc" and rd["compression"] == "gz"
    assert boot["method"] == "qemu" and boot["media"] == "tmpfs"
    assert lava.PROMPT in boot["prompts"]
    assert test["timeout"] == {"minutes": 20 + lava.STRESS_EXTRA_MINUTES}
    # The job timeout covers its actions: deploy 10 + boot 10 + test 50 + margin.
    assert job["timeouts"]["job"]["minutes"] >= 10 + 10 + 50
    (definition,) = test["definitions"]
    assert definition["from"] == "inline" and definition["name"] == lava.TESTDEF_NAME
    inline = definition["repository"]
    assert inline == testdef, "the inline definition is the one written to DIR"
    assert inline["metadata"]["format"] == "Lava-Test Test Definition 1.0"
    p = inline["params"]
    assert p == {"CGLCERT_DIR": "/srv/aem-cgl", "CHROOT": "/host", "BACKEND": "user",
                 "VERDICT": "cgl-2.0", "STRESS": "true",
                 "SUITE_BINARY": "/srv/aem-cgl/build/aem_conformance",
                 "STRESS_BUILD_DIR": "", "SOAK": "", "SOAK_ROUND": "60"}
    steps = inline["run"]["steps"]
    assert all(isinstance(s, str) for s in steps)
    script = "\n".join(steps)
    assert "./cglcert run conformance" in script and "./cglcert stress --quick" in script
    assert "./cglcert lava results" in script and "lava-test-raise" in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)  # valid shell


def test_soak_in_the_job(tmp_path: Path, run_cli: Callable[..., Any],
                         artifacts: tuple[Path, Path]) -> None:
    k, r = artifacts
    job, testdef, _ = _job(tmp_path, run_cli, "--kernel", str(k), "--ramdisk", str(r),
                           "--soak", "2h", "--soak-round", "5m",
                           "--stress-build-dir", "/srv/build/stress-programs")
    test = job["actions"][2]["test"]
    assert test["timeout"]["minutes"] == 60 + 120 + lava.SOAK_MARGIN_MINUTES
    assert job["timeouts"]["job"]["minutes"] >= 10 + 10 + test["timeout"]["minutes"]
    p = testdef["params"]
    assert p["SOAK"] == "2h" and p["SOAK_ROUND"] == "5m"
    assert p["STRESS_BUILD_DIR"] == "/srv/build/stress-programs"
    script = "\n".join(testdef["run"]["steps"])
    assert "./cglcert soak --duration $SOAK --round $SOAK_ROUND" in script
    assert "--soak $OUT/soak/soak.json" in script and "--no-build" in script
    subprocess.run(["sh", "-n"], input=script, text=True, check=True)


def test_lab_job_and_git_testdef(tmp_path: Path, run_cli: Callable[..., Any],
                                 artifacts: tuple[Path, Path]) -> None:
    k, r = artifacts
    job, _, _ = _job(tmp_path, run_cli, "--device-type", "x86", "--kernel",
                     "https://example.org/vmlinuz", "--ramdisk", "https://example.org/r.cpio.gz",
                     "--testdef-repo", "https://example.org/aem-cgl.git",
                     "--testdef-path", "lava/cglcert.yaml", "--testdef-revision", "v1.0",
                     "--backend", "kmod", "--job-name", "nightly")
    assert job["device_type"] == "x86" and job["job_name"] == "nightly"
    assert "context" not in job
    deploy, boot, test = (next(iter(a.values())) for a in job["actions"])
    assert deploy["to"] == "tftp" and deploy["kernel"]["url"] == "https://example.org/vmlinuz"
    assert deploy["ramdisk"]["compression"] == "gz"
    assert boot["method"] == "ipxe" and boot["commands"] == "ramdisk"
    (d,) = test["definitions"]
    assert d["from"] == "git" and d["repository"] == "https://example.org/aem-cgl.git"
    assert d["path"] == "lava/cglcert.yaml" and d["revision"] == "v1.0"
    assert d["parameters"]["BACKEND"] == "kmod" and d["parameters"]["CHROOT"] == ""
    assert d["parameters"]["CGLCERT_DIR"] == "/opt/aem-cgl"


def test_no_host_root(tmp_path: Path, run_cli: Callable[..., Any],
                      artifacts: tuple[Path, Path]) -> None:
    k, r = artifacts
    job, testdef, _ = _job(tmp_path, run_cli, "--kernel", str(k), "--ramdisk", str(r),
                           "--no-host-root", "--os", "oe")
    assert not any("virtfs" in o for o in job["context"]["extra_options"])
    assert testdef["params"]["CHROOT"] == "" and testdef["params"]["CGLCERT_DIR"] == "/opt/aem-cgl"
    assert job["actions"][0]["deploy"]["os"] == "oe"


def _cached_kernel() -> kc.Kernel | None:
    cached = [k for k in kc.list_cached() if k.flavor == "amd64"]
    return cached[-1] if cached else None


@pytest.mark.skipif(_cached_kernel() is None,
                    reason="no amd64 kernel in the cache: ./cglcert kernels fetch")
def test_default_ramdisk_from_cached_kernel(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    k = _cached_kernel()
    assert k is not None
    job, testdef, out = _job(tmp_path, run_cli, "--kernel", k.release)
    rd = out / "ramdisk.cpio.gz"
    assert rd.is_file()
    deploy = job["actions"][0]["deploy"]
    assert deploy["images"]["ramdisk"]["url"] == rd.resolve().as_uri()
    assert deploy["images"]["kernel"]["url"] == k.vmlinuz.resolve().as_uri()
    assert deploy["os"] == "oe", "the busybox ramdisk has no bash"
    listing = subprocess.run(f"zcat {shlex.quote(str(rd))} | cpio -t", shell=True,
                             capture_output=True, text=True, check=True).stdout.split()
    assert "init" in listing and "bin/sh" in listing
    assert any(n.startswith("modules/9p") for n in listing)


# --- the real LAVA dispatcher ------------------------------------------------------------------

def _lava_job(tmp_path: Path, run_cli: Callable[..., Any], artifacts: tuple[Path, Path],
              *extra: str) -> Path:
    k, r = artifacts
    _, _, out = _job(tmp_path, run_cli, "--kernel", str(k), "--ramdisk", str(r), *extra)
    return out


@needs_lava
def test_lava_run_validate(tmp_path: Path, run_cli: Callable[..., Any],
                           artifacts: tuple[Path, Path]) -> None:
    out = _lava_job(tmp_path, run_cli, artifacts, "--stress")
    ok, text = lava_validate(out / "job.yaml", tmp_path / "lava")
    assert ok, text
    assert '"result": "pass"' in text


@needs_lava
def test_lava_run_validate_via_cli(tmp_path: Path, run_cli: Callable[..., Any],
                                   artifacts: tuple[Path, Path]) -> None:
    k, r = artifacts
    res = run_cli("lava", "job", "--out", str(tmp_path / "o"), "--kernel", str(k),
                  "--ramdisk", str(r), "--validate-device", str(DEVICE))
    assert res.code == 0, res.err
    assert "lava-run --validate: ok" in res.out
    # The dispatcher checks that file:// artifacts exist: a vanished ramdisk fails.
    r.unlink()
    ok, text = lava_validate(tmp_path / "o" / "job.yaml", tmp_path / "lava2")
    assert not ok and "rootfs.cpio.gz" in text


@pytest.mark.skipif(not LAVA_RUN.is_file() or not DEBIAN_PYTHON.is_file(),
                    reason="lava-dispatcher (lava_common, Debian python3) not installed")
def test_server_schema(tmp_path: Path, run_cli: Callable[..., Any],
                       artifacts: tuple[Path, Path]) -> None:
    """lava-server's submission schema (lava_common.schemas, strict), which lava-run skips."""
    jobs = [_lava_job(tmp_path / "a", run_cli, artifacts, "--stress"),
            _lava_job(tmp_path / "b", run_cli, artifacts, "--device-type", "x86",
                      "--testdef-repo", "https://example.org/x.git")]
    code = ("import sys, yaml\n"
            "from lava_common.schemas import validate\n"
            "from lava_common.schemas.test.testdef import validate as testdef\n"
            "for d in sys.argv[1:]:\n"
            "    validate(yaml.safe_load(open(d + '/job.yaml')), strict=True)\n"
            "    testdef(yaml.safe_load(open(d + '/cglcert-conformance.yaml')))\n")
    proc = subprocess.run([str(DEBIAN_PYTHON), "-c", code, *map(str, jobs)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def lava_validate(job: Path, workdir: Path) -> tuple[bool, str]:
    from cglcert.commands.lava import validate_with_lava_run
    return validate_with_lava_run(job, DEVICE, workdir)


def test_validate_without_lava_run(tmp_path: Path) -> None:
    from cglcert import InfraError
    from cglcert.commands.lava import validate_with_lava_run
    with pytest.raises(InfraError, match="apt-get install lava-dispatcher"):
        validate_with_lava_run(tmp_path / "job.yaml", DEVICE, tmp_path,
                               lava_run=str(tmp_path / "no-lava-run"))


def test_shell_available() -> None:
    assert shutil.which("sh"), "the step script check needs a POSIX sh"


# --- end to end under lava-run (opt-in: about 6 minutes of TCG) --------------------------------

def _device_for(job: dict[str, Any]) -> dict[str, Any]:
    """The device configuration as lava-server renders it for this job: the qemu template
    puts the job's ``context: extra_options`` into the boot method's ``extra``."""
    device = yaml.safe_load(DEVICE.read_text())
    extra = job.get("context", {}).get("extra_options")
    if extra:
        device["actions"]["boot"]["methods"]["qemu"]["parameters"]["extra"] = extra
    return device


@pytest.mark.qemu
@pytest.mark.skipif(os.environ.get("CGLCERT_LAVA_E2E") != "1",
                    reason="opt-in (about 6 minutes of TCG): CGLCERT_LAVA_E2E=1 runs the job "
                           "under the real lava-run")
@needs_lava
def test_lava_run_end_to_end(tmp_path: Path, run_cli: Callable[..., Any],
                             repo_root: Path) -> None:
    k = _cached_kernel()
    binary = repo_root / "build/conformance/conformance/aem_conformance"
    if k is None or not binary.is_file():
        pytest.skip("needs a cached amd64 kernel (./cglcert kernels fetch) and a built suite "
                    "(./cglcert run conformance --out DIR builds it)")
    job, _, out = _job(tmp_path, run_cli, "--kernel", k.release, "--test-timeout", "30")
    device = tmp_path / "device.yaml"
    device.write_text(yaml.safe_dump(_device_for(job)))
    proc = subprocess.run([str(LAVA_RUN), "--job-id", "1", "--output-dir", str(tmp_path / "lava"),
                           "--device", str(device), str(out / "job.yaml")],
                          capture_output=True, text=True, timeout=45 * 60, check=False)
    log = proc.stdout + proc.stderr  # lava-run logs to stderr, one YAML mapping a line
    results = []
    for line in log.splitlines():
        try:
            entry = yaml.safe_load(line)
        except yaml.YAMLError:
            continue
        if isinstance(entry, dict) and entry.get("lvl") == "results":
            results.append(entry["msg"])
    job_result = [r for r in results if r.get("case") == "job"]
    assert job_result and job_result[-1]["result"] == "pass", log[-3000:]
    cases = {r["case"]: r["result"] for r in results
             if r.get("definition") == f"0_{lava.TESTDEF_NAME}"}
    assert "AEM-3.1.1" in cases and "cgl-2.0" in cases
    assert len(cases) > 50
    assert set(cases.values()) <= {"pass", "fail", "skip", "unknown"}
