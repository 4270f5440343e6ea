"""``cglcert run conformance``: harness handling with a stand-in suite binary, then the real
suite on the user backend (integration)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cglcert import results as res
from cglcert.catalog import load_catalog
from cglcert.commands import run as run_cmd

# A stand-in for aem_conformance: FAKE_MODE says what it does, FAKE_XML is the report it
# writes to --gtest_output (with @BACKEND@ replaced by $AEM_BACKEND).
FAKE = textwrap.dedent("""\
    #!{python}
    import os, signal, sys, time
    mode = os.environ.get("FAKE_MODE", "ok")
    out = next(a.split("xml:", 1)[1] for a in sys.argv if a.startswith("--gtest_output="))
    print("fake suite", mode, flush=True)
    if mode == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if mode == "hang":
        time.sleep(120)
    text = open(os.environ["FAKE_XML"]).read().replace("@BACKEND@", os.environ.get("AEM_BACKEND", "?"))
    open(out, "w").write(text)
    sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
    """)

SOURCES = """\
    #include "aem_req.hpp"
    TEST_F(AEM_3_1_1, c1_Registers) { AEM_REQ("AEM-3.1.1"); }
    TEST_F(AEM_3_1_5, c1_Priority) { AEM_REQ("AEM-3.1.5"); }
    """


def report(p1: str = "", p2: str = "") -> str:
    return textwrap.dedent(f"""\
        <?xml version="1.0" encoding="UTF-8"?>
        <testsuites tests="2" aem_backend="@BACKEND@" aem_version="0.1" name="AllTests">
          <testsuite name="AEM_3_1_1" tests="1">
            <testcase name="c1_Registers" status="run" result="completed" classname="AEM_3_1_1">
              <properties><property name="requirement" value="AEM-3.1.1"/>
              <property name="measure.ids" value="8"/></properties>{p1}
            </testcase>
          </testsuite>
          <testsuite name="AEM_3_1_5" tests="1">
            <testcase name="c1_Priority" status="run" result="completed" classname="AEM_3_1_5">
              <properties><property name="requirement" value="AEM-3.1.5"/></properties>{p2}
            </testcase>
          </testsuite>
        </testsuites>
        """)


FAILURE = '<failure message="a.cc:3&#x0A;boom" type=""/>'


@pytest.fixture
def fake(make_repo, tmp_path, monkeypatch):
    """A synthetic project (AEM-3.1.1 priority 1, AEM-3.1.5 priority 2) and a fake suite."""
    repo = make_repo("AEM-3.1.1", "AEM-3.1.5")
    repo.write("conformance/api_test.cc", SOURCES)
    binary = tmp_path / "aem_conformance"
    binary.write_text(FAKE.format(python=sys.executable))
    binary.chmod(0o755)
    xml_path = tmp_path / "report.xml"
    xml_path.write_text(report())
    monkeypatch.setenv("FAKE_XML", str(xml_path))
    monkeypatch.setenv("FAKE_MODE", "ok")

    class Fake:
        root = repo.root
        out = tmp_path / "out"

        def args(self, *extra: str) -> list[str]:
            return ["run", "conformance", "--repo", str(repo.root), "--binary", str(binary),
                    "--out", str(self.out), "-q", *extra]

        def set_report(self, text: str) -> None:
            xml_path.write_text(text)

        def results(self) -> dict:
            return json.loads((self.out / "results.json").read_text())

    return Fake()


def test_all_pass_is_certified(fake, run_cli):
    r = run_cli(*fake.args())
    assert r.code == 0, r.err
    doc = fake.results()
    assert {x["id"]: x["verdict"] for x in doc["requirements"]} == {"AEM-3.1.1": "PASS",
                                                                     "AEM-3.1.5": "PASS"}
    assert doc["verdict"]["cgl_2_0"]["conformant"] and doc["verdict"]["cgl_3_0"]["conformant"]
    assert doc["requirements"][0]["tests"][0]["measurements"] == {"ids": 8}
    env = doc["environment"]
    assert env["backend"] == "user" and env["accel"] == "none" and env["target"] == "host"
    assert env["kernel"] == os.uname().release and env["cpus"] == os.cpu_count()
    for key in ("flavor", "machine", "libaem_version", "date"):
        assert key in env
    assert doc["harness"]["exit_code"] == 0 and doc["harness"]["error"] is None
    assert (fake.out / "gtest.xml").is_file() and (fake.out / "suite.log").is_file()
    assert r.out.splitlines()[-1] == "2 passed, 0 failed, 0 skipped"


def test_priority_2_failure_certifies_cgl_2_0_not_3_0(fake, run_cli):
    fake.set_report(report(p2=FAILURE))
    assert run_cli(*fake.args()).code == 0
    assert fake.results()["requirements"][1]["verdict"] == "FAIL"
    r = run_cli(*fake.args("--verdict", "cgl-3.0"))
    assert r.code == 1
    assert "1 passed, 1 failed, 0 skipped" in r.out


def test_priority_1_failure_is_not_certified(fake, run_cli, monkeypatch):
    fake.set_report(report(p1=FAILURE))
    monkeypatch.setenv("FAKE_EXIT", "1")  # gtest's status when a test failed
    r = run_cli(*fake.args())
    assert r.code == 1
    doc = fake.results()
    assert doc["requirements"][0]["tests"][0]["reason"] == "boom"
    assert doc["verdict"]["cgl_2_0"]["not_passing"] == ["AEM-3.1.1"]


def test_backend_is_exported_and_recorded(fake, run_cli):
    assert run_cli(*fake.args("--backend", "kmod")).code == 0
    assert fake.results()["environment"]["backend"] == "kmod"


def test_crash_without_xml_is_an_infrastructure_error(fake, run_cli, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "crash")
    r = run_cli(*fake.args())
    assert r.code == 3
    doc = fake.results()
    assert "SIGSEGV" in doc["harness"]["error"]
    assert {x["verdict"] for x in doc["requirements"]} == {"ERROR"}
    assert all(t["outcome"] == "ERROR" for x in doc["requirements"] for t in x["tests"])
    assert r.out.splitlines()[-1] == "0 passed, 0 failed, 0 skipped, 2 errors"


def test_timeout_is_an_infrastructure_error(fake, run_cli, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "hang")
    r = run_cli(*fake.args("--timeout", "1"))
    assert r.code == 3
    assert fake.results()["harness"]["error"].startswith("timeout")


def test_backend_that_cannot_start_is_an_infrastructure_error(fake, run_cli):
    fake.set_report(report(p1=FAILURE, p2=FAILURE).replace("@BACKEND@", "none"))
    r = run_cli(*fake.args("--backend", "kmod"))
    assert r.code == 3
    doc = fake.results()
    assert "could not start the 'kmod' backend" in doc["harness"]["error"]
    assert {x["verdict"] for x in doc["requirements"]} == {"ERROR"}


def test_missing_binary_is_an_infrastructure_error(fake, run_cli, tmp_path):
    args = fake.args()
    args[args.index("--binary") + 1] = str(tmp_path / "nowhere")
    assert run_cli(*args).code == 3
    assert {x["verdict"] for x in fake.results()["requirements"]} == {"ERROR"}


def test_test_missing_from_the_xml_is_an_error(fake, run_cli):
    fake.set_report(report().replace("c1_Priority", "c9_Renamed"))
    r = run_cli(*fake.args())
    doc = fake.results()
    r15 = doc["requirements"][1]
    assert r15["verdict"] == "ERROR"
    assert {t["name"]: t["outcome"] for t in r15["tests"]} == {"AEM_3_1_5.c9_Renamed": "PASS",
                                                                "AEM_3_1_5.c1_Priority": "ERROR"}
    assert r.code == 0  # CGL 2.0 asks only AEM-3.1.1


@pytest.mark.parametrize("argv", [
    ["run"],
    ["run", "stress", "--out", "x"],
    ["run", "conformance"],
    ["run", "conformance", "--out", "x", "--backend", "bogus"],
    ["run", "conformance", "--out", "x", "--target", "qemu-nope"],
])
def test_usage_errors(run_cli, argv):
    assert run_cli(*argv).code == 2


@pytest.mark.parametrize("release, flavor", [
    ("6.1.0-18-amd64", "amd64"),
    ("6.1.0-57-rt-amd64", "rt-amd64"),
    ("6.1.0-57-cloud-amd64", "cloud-amd64"),
    ("6.18.44-fc-v657", None),
    ("5.15.0", None),
])
def test_kernel_flavor(release, flavor):
    assert run_cmd.kernel_flavor(release) == flavor


def test_expected_tests_cover_every_catalog_requirement(repo_root):
    expected = run_cmd.expected_tests(repo_root)
    assert expected, "no test found in conformance/"
    tagged = {r for reqs in expected.values() for r in reqs}
    ids = {r.id for r in load_catalog(repo_root).requirements}
    assert ids <= tagged, f"requirements without a conformance test: {sorted(ids - tagged)}"
    for name, reqs in expected.items():
        suite = name.split(".")[0]
        assert suite.replace("_", ".").replace("AEM.", "AEM-") in reqs, \
            f"{name} is not named after the requirement it tags ({reqs})"


# ----------------------------------------------------------------------------- integration


def _xml_outcomes(path: Path) -> dict[str, list[str]]:
    """requirement -> outcomes of its tests, read straight from the gtest XML."""
    by: dict[str, list[str]] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        reqs = [p.get("value", "") for p in case.iter("property") if p.get("name") == "requirement"]
        if case.find("failure") is not None:
            outcome = "FAIL"
        elif case.get("result") == "skipped":
            outcome = "SKIP"
        else:
            outcome = "PASS"
        for req in " ".join(reqs).split():
            by.setdefault(req, []).append(outcome)
    return by


def test_real_suite_on_the_user_backend(repo_root, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([str(repo_root / "cglcert"), "run", "conformance", "--out", str(out),
                           "--backend", "user", "-q"],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    doc = json.loads((out / "results.json").read_text())
    assert doc["harness"]["error"] is None
    assert doc["environment"]["backend"] == "user"
    ids = [r.id for r in load_catalog(repo_root).requirements]
    assert [r["id"] for r in doc["requirements"]] == ids
    from_xml = _xml_outcomes(out / "gtest.xml")
    for r in doc["requirements"]:
        assert r["verdict"] in res.OUTCOMES
        outcomes = from_xml.get(r["id"], [])
        assert sorted(t["outcome"] for t in r["tests"]) == sorted(outcomes), r["id"]
        if not outcomes:
            want = "ERROR"
        elif "FAIL" in outcomes:
            want = "FAIL"
        elif all(o == "PASS" for o in outcomes):
            want = "PASS"
        else:
            want = "SKIP"
        assert r["verdict"] == want, r["id"]
    certified = doc["verdict"]["cgl_2_0"]["conformant"]
    assert proc.returncode == (0 if certified else 1)
    c = doc["summary"]["tests"]
    assert f"{c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped" in proc.stdout
