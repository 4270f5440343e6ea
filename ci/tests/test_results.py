"""The results model (cglcert.results): gtest XML parsing, verdict rules, the JSON shape."""

from __future__ import annotations

import json
import textwrap

import pytest

from cglcert import results as res
from cglcert.catalog import Requirement


def req(req_id: str, priority: int = 1, cgl: str | None = None) -> Requirement:
    return Requirement(id=req_id, title=f"title of {req_id}", document="doc", section=req_id,
                       cgl=cgl or ("2.0" if priority == 1 else "3.0"), priority=priority,
                       statement="a statement long enough", acceptance=(),
                       verification=("test",))


def xml(*cases: str, attrs: str = 'aem_backend="user" aem_version="0.1"') -> str:
    """A gtest report with one testsuite holding the given <testcase> elements."""
    body = "\n".join(textwrap.dedent(c).strip() for c in cases)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<testsuites tests="{len(cases)}" {attrs} name="AllTests">\n'
            f'<testsuite name="S" tests="{len(cases)}">\n{body}\n</testsuite>\n</testsuites>\n')


def case(name: str, reqs: str, body: str = "", result: str = "completed",
         suite: str = "AEM_3_1_1", props: str = "") -> str:
    return (f'<testcase name="{name}" status="run" result="{result}" time="0.01" '
            f'classname="{suite}"><properties><property name="requirement" value="{reqs}"/>'
            f'{props}</properties>{body}</testcase>')


FAILURE = ('<failure message="api_test.cc:42&#x0A;Expected equality&#x0A;  1&#x0A;  2" type="">'
           '<![CDATA[api_test.cc:42\nExpected equality]]></failure>')
SKIPPED = '<skipped message="api_test.cc:7&#x0A;user backend: no such thing"/>'


def build(catalog, text, expected=None, **kw):
    run = res.parse_gtest_xml(text)
    return res.build_results(catalog, run.tests, {"kernel": "k"}, expected=expected, **kw)


def verdicts(results) -> dict[str, str]:
    return {r["id"]: r["verdict"] for r in results["requirements"]}


# ----------------------------------------------------------------------------- parsing


def test_parse_outcomes_reasons_and_measurements():
    run = res.parse_gtest_xml(xml(
        case("c1_Pass", "AEM-3.1.1", props='<property name="measure.p99_ns" value="1234"/>'
                                           '<property name="measure.ratio" value="1.5"/>'),
        case("c2_Fail", "AEM-3.1.1 PRF.5.0", FAILURE),
        case("c3_Skip", "AEM-3.1.1", SKIPPED, result="skipped"),
    ))
    assert run.attributes["aem_backend"] == "user"
    by = {t.name: t for t in run.tests}
    assert set(by) == {"AEM_3_1_1.c1_Pass", "AEM_3_1_1.c2_Fail", "AEM_3_1_1.c3_Skip"}
    assert by["AEM_3_1_1.c1_Pass"].outcome == res.PASS
    assert by["AEM_3_1_1.c1_Pass"].measurements == {"p99_ns": "1234", "ratio": "1.5"}
    assert by["AEM_3_1_1.c2_Fail"].outcome == res.FAIL
    assert by["AEM_3_1_1.c2_Fail"].requirements == ("AEM-3.1.1", "PRF.5.0")
    assert by["AEM_3_1_1.c2_Fail"].reason.startswith("Expected equality")
    assert by["AEM_3_1_1.c3_Skip"].outcome == res.SKIP
    assert by["AEM_3_1_1.c3_Skip"].reason == "user backend: no such thing"  # file:line dropped


def test_parse_properties_written_as_attributes_by_older_gtest():
    text = xml('<testcase name="c1" status="run" result="completed" classname="X" '
               'requirement="AEM-3.1.2" measure.n="3"/>')
    (t,) = res.parse_gtest_xml(text).tests
    assert t.requirements == ("AEM-3.1.2",)
    assert t.measurements == {"n": "3"}


def test_disabled_test_is_a_skip():
    text = xml('<testcase name="DISABLED_c1" status="notrun" result="suppressed" classname="X"/>')
    (t,) = res.parse_gtest_xml(text).tests
    assert t.outcome == res.SKIP


@pytest.mark.parametrize("text, what", [
    ("", "empty"),
    ("<testsuites><testsuite>", "not well-formed"),
    ("<html/>", "not a gtest report"),
])
def test_unusable_xml_is_an_error(text, what):
    with pytest.raises(res.GtestXmlError, match=what):
        res.parse_gtest_xml(text)


def test_missing_xml_file_is_an_error(tmp_path):
    with pytest.raises(res.GtestXmlError, match="was not written"):
        res.parse_gtest_xml_file(tmp_path / "gtest.xml")


# ----------------------------------------------------------------------------- verdict rules


def t(outcome: str, name: str = "S.t", reason: str = "") -> res.TestResult:
    return res.TestResult(name, outcome, reason, ("AEM-3.1.1",))


@pytest.mark.parametrize("outcomes, verdict", [
    ([res.PASS], res.PASS),
    ([res.PASS, res.PASS], res.PASS),
    ([res.PASS, res.FAIL], res.FAIL),
    ([res.FAIL, res.SKIP], res.FAIL),
    ([res.SKIP, res.SKIP], res.SKIP),
    ([res.PASS, res.SKIP], res.SKIP),  # not fully verified: a skip is never a pass
    ([res.PASS, res.ERROR], res.ERROR),
    ([res.FAIL, res.ERROR], res.ERROR),
    ([], res.ERROR),
])
def test_requirement_verdict_rules(outcomes, verdict):
    tests = [t(o, f"S.t{i}", "why") for i, o in enumerate(outcomes)]
    assert res.requirement_verdict(tests)[0] == verdict


def test_skip_verdict_carries_the_reasons():
    verdict, reason = res.requirement_verdict([t(res.PASS, "S.a"),
                                               t(res.SKIP, "S.b", "user backend: no per-user")])
    assert verdict == res.SKIP
    assert "not fully verified" in reason and "S.b: user backend: no per-user" in reason
    verdict, reason = res.requirement_verdict([t(res.SKIP, "S.b", "kmod only")])
    assert verdict == res.SKIP and "all 1 tests skipped" in reason and "kmod only" in reason


def test_build_results_pass_fail_skip_and_no_tests():
    catalog = [req("AEM-3.1.1"), req("AEM-3.1.2"), req("AEM-3.1.5", 2), req("AEM-3.5.4", 2),
               req("PRF.5.0", 1, "5.0")]
    text = xml(
        case("c1", "AEM-3.1.1", suite="AEM_3_1_1"),
        case("c2", "AEM-3.1.1", suite="AEM_3_1_1"),
        case("c1", "AEM-3.1.2", FAILURE, suite="AEM_3_1_2"),
        case("c1", "AEM-3.5.4", SKIPPED, result="skipped", suite="AEM_3_5_4"),
        case("c1", "PRF.5.0", suite="PRF_5_0"),
    )
    results = build(catalog, text)
    assert verdicts(results) == {"AEM-3.1.1": res.PASS, "AEM-3.1.2": res.FAIL,
                                 "AEM-3.1.5": res.ERROR, "AEM-3.5.4": res.SKIP,
                                 "PRF.5.0": res.PASS}
    by = {r["id"]: r for r in results["requirements"]}
    assert by["AEM-3.1.5"]["reason"] == "no test ran"
    assert by["AEM-3.1.5"]["tests"] == []
    assert "user backend: no such thing" in by["AEM-3.5.4"]["reason"]
    assert results["summary"]["tests"] == {"PASS": 3, "FAIL": 1, "SKIP": 1, "ERROR": 0}
    assert results["verdict"]["cgl_2_0"]["conformant"] is False
    assert results["verdict"]["cgl_2_0"]["not_passing"] == ["AEM-3.1.2"]
    assert results["verdict"]["cgl_3_0"]["not_passing"] == ["AEM-3.1.2", "AEM-3.1.5",
                                                            "AEM-3.5.4"]


def test_cgl_2_0_needs_every_priority_1_requirement_cgl_3_0_every_one():
    catalog = [req("AEM-3.1.1"), req("AEM-3.1.5", 2)]
    results = build(catalog, xml(case("c1", "AEM-3.1.1"),
                                 case("c1", "AEM-3.1.5", FAILURE, suite="AEM_3_1_5")))
    assert res.exit_verdict(results, "cgl-2.0") is True
    assert res.exit_verdict(results, "cgl-3.0") is False
    results = build(catalog, xml(case("c1", "AEM-3.1.1"), case("c1", "AEM-3.1.5", suite="B")))
    assert res.exit_verdict(results, "cgl-3.0") is True
    assert res.cgl_verdicts([])["cgl_2_0"]["conformant"] is False  # an empty catalog certifies nothing


def test_missing_xml_makes_every_expected_test_and_requirement_an_error():
    catalog = [req("AEM-3.1.1"), req("AEM-3.1.2")]
    expected = {"AEM_3_1_1.c1": ("AEM-3.1.1",), "AEM_3_1_1.c2": ("AEM-3.1.1",)}
    results = res.build_results(catalog, None, {}, expected=expected,
                                harness_error="the suite was killed by signal 11 (SIGSEGV)")
    assert verdicts(results) == {"AEM-3.1.1": res.ERROR, "AEM-3.1.2": res.ERROR}
    by = {r["id"]: r for r in results["requirements"]}
    assert [x["outcome"] for x in by["AEM-3.1.1"]["tests"]] == [res.ERROR, res.ERROR]
    assert "SIGSEGV" in by["AEM-3.1.1"]["tests"][0]["reason"]
    assert "no test ran" in by["AEM-3.1.2"]["reason"] and "SIGSEGV" in by["AEM-3.1.2"]["reason"]
    assert results["harness"]["error"].startswith("the suite was killed")
    assert results["summary"]["tests"]["ERROR"] == 2
    assert not res.exit_verdict(results)


def test_expected_test_absent_from_the_xml_is_an_error():
    catalog = [req("AEM-3.1.1")]
    expected = {"AEM_3_1_1.c1": ("AEM-3.1.1",), "AEM_3_1_1.c2": ("AEM-3.1.1",)}
    results = build(catalog, xml(case("c1", "AEM-3.1.1")), expected=expected)
    (r,) = results["requirements"]
    assert r["verdict"] == res.ERROR
    assert {x["name"]: x["outcome"] for x in r["tests"]} == {"AEM_3_1_1.c1": res.PASS,
                                                             "AEM_3_1_1.c2": res.ERROR}


def test_static_scan_stands_in_for_a_missing_requirement_property():
    # A test that failed in its fixture before AEM_REQ ran has no property.
    text = xml(f'<testcase name="c1" status="run" result="completed" classname="AEM_3_1_1">'
               f'{FAILURE}</testcase>')
    results = build([req("AEM-3.1.1")], text, expected={"AEM_3_1_1.c1": ("AEM-3.1.1",)})
    assert verdicts(results) == {"AEM-3.1.1": res.FAIL}


def test_unknown_tags_and_untagged_tests_are_listed_not_counted():
    text = xml(case("c1", "AEM-9.9.9"),
               '<testcase name="plain" status="run" result="completed" classname="X"/>')
    results = build([req("AEM-3.1.1")], text)
    assert results["unknown_tags"] == [{"test": "AEM_3_1_1.c1", "tag": "AEM-9.9.9"}]
    assert results["untagged_tests"] == ["X.plain"]
    assert verdicts(results) == {"AEM-3.1.1": res.ERROR}


# ----------------------------------------------------------------------------- JSON shape


def test_results_json_shape():
    catalog = [req("AEM-3.1.1"), req("AEM-3.2.1", 2)]
    env = {"kernel": "6.1.0-18-amd64", "flavor": "amd64", "backend": "user", "accel": "none",
           "cpus": 2, "machine": "x86_64", "libaem_version": "0.1", "date": "2024-01-01T00:00:00+00:00"}
    text = xml(case("c1", "AEM-3.1.1", props='<property name="measure.count" value="10"/>'),
               case("c3", "AEM-3.2.1", SKIPPED, result="skipped", suite="AEM_3_2_1"))
    run = res.parse_gtest_xml(text)
    results = res.build_results(catalog, run.tests, env, harness={"exit_code": 0})
    doc = json.loads(res.results_to_json(results))
    assert doc["schema"] == res.SCHEMA
    assert set(doc) >= {"environment", "requirements", "verdict", "summary", "harness"}
    assert doc["environment"] == env
    assert set(doc["verdict"]) == {"cgl_2_0", "cgl_3_0"}
    for key in ("conformant", "not_passing", "requirements", "scope"):
        assert key in doc["verdict"]["cgl_2_0"]
    assert doc["harness"] == {"exit_code": 0, "error": None}
    for r in doc["requirements"]:
        assert set(r) == {"id", "title", "priority", "cgl", "verdict", "reason", "tests"}
        assert r["verdict"] in res.OUTCOMES
        for x in r["tests"]:
            assert {"name", "outcome", "reason", "measurements"} <= set(x)
    first = doc["requirements"][0]
    assert first["id"] == "AEM-3.1.1"
    assert first["tests"][0]["measurements"] == {"count": 10}  # numbers stay numbers
    assert first["tests"][0]["name"] == "AEM_3_1_1.c1"


def test_requirements_are_in_catalog_order():
    catalog = [req("PRF.5.0"), req("AEM-3.1.10"), req("AEM-3.1.2")]
    results = build(catalog, xml())
    assert [r["id"] for r in results["requirements"]] == ["AEM-3.1.2", "AEM-3.1.10", "PRF.5.0"]


def test_summary_table_and_closing_line():
    catalog = [req("AEM-3.1.1"), req("AEM-3.1.2"), req("AEM-3.5.4", 2)]
    text = xml(case("c1", "AEM-3.1.1"), case("c2", "AEM-3.1.1"),
               case("c1", "AEM-3.1.2", FAILURE, suite="AEM_3_1_2"),
               case("c1", "AEM-3.5.4", SKIPPED, result="skipped", suite="AEM_3_5_4"))
    out = res.render_summary(build(catalog, text))
    lines = out.splitlines()
    assert lines[-1] == "2 passed, 1 failed, 1 skipped"
    assert any(line.startswith("AEM-3.1.2") and "FAIL" in line for line in lines)
    assert any("AEM_3_5_4.c1" in line and "user backend" in line for line in lines)
    assert "CGL 2.0: not conformant (not passing: AEM-3.1.2)" in out
    errors = res.render_summary(res.build_results(catalog, None, {}, harness_error="boom",
                                                  expected={"A.b": ("AEM-3.1.1",)}))
    assert errors.splitlines()[-1] == "0 passed, 0 failed, 0 skipped, 1 errors"
    assert "harness error: boom" in errors
