"""Tag scanning (cglcert.tags) and ``cglcert coverage`` on synthetic trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cglcert import commands as commands_pkg
from cglcert.tags import iter_source_files, scan_repo, scan_source, tokenize


def scan(text: str):
    return scan_source(textwrap.dedent(text), "t.cc")


def tags_of(text: str) -> dict[str, tuple[str, ...]]:
    result = scan(text)
    return {t.full_name: t.requirements for t in result.tests}


# ----------------------------------------------------------------------------- tag scan


def test_tags_of_test_test_f_and_test_p():
    result = scan("""\
        #include "aem_req.hpp"
        TEST(Registration, ReturnsPositiveId) {
          AEM_REQ("AEM-3.1.1", "AEM-3.1.4");
          EXPECT_GT(1, 0);
        }

        TEST_F(Fixture, Named) { AEM_REQ("PRF.5.0"); }
        TEST_P(Param, Case) { AEM_REQ("AEM-3.6.3"); }
        """)
    assert [(t.macro, t.line, t.suite, t.name, t.requirements) for t in result.tests] == [
        ("TEST", 2, "Registration", "ReturnsPositiveId", ("AEM-3.1.1", "AEM-3.1.4")),
        ("TEST_F", 7, "Fixture", "Named", ("PRF.5.0",)),
        ("TEST_P", 8, "Param", "Case", ("AEM-3.6.3",)),
    ]
    assert result.tests[2].full_name == "Param.Case"
    assert result.errors == []


def test_multi_line_test_macro_and_several_tags():
    result = scan("""\
        TEST_F(
            LongSuiteName,
            LongTestName)
        {
          AEM_REQ(
              "AEM-3.5.1",
              "AEM-3.6.1");
          AEM_REQ("AEM-3.5.1", "AEM-3.6.2");  // a repeat is kept once
        }
        """)
    (test,) = result.tests
    assert (test.line, test.full_name) == (1, "LongSuiteName.LongTestName")
    assert test.requirements == ("AEM-3.5.1", "AEM-3.6.1", "AEM-3.6.2")


def test_comments_and_literals_do_not_count():
    text = """\
        // TEST(Commented, Out) { AEM_REQ("AEM-9.9.1"); }
        /* TEST(Block, Comment) {
             AEM_REQ("AEM-9.9.2"); } */
        const char *s = "TEST(In, String) { AEM_REQ(\\"AEM-9.9.3\\"); }";
        TEST(Real, One) {
          // AEM_REQ("AEM-9.9.4");   and a brace } in a comment
          /* } } AEM_REQ("AEM-9.9.5") */
          std::string a = "} AEM_REQ(\\"AEM-9.9.6\\") {";
          char c = '}';
          char d = '\\'';
          auto raw = R"x( } "quoted" AEM_REQ("AEM-9.9.7") { )x";
          auto raw2 = u8R"(})";
          long n = 1'000'000;
          AEM_REQ("AEM-3.1.1");
          if (n) { AEM_REQ("AEM-3.1.2"); }
        }
        TEST(Real, Two) { AEM_REQ("AEM-3.1.3"); }
        """
    assert tags_of(text) == {"Real.One": ("AEM-3.1.1", "AEM-3.1.2"),
                             "Real.Two": ("AEM-3.1.3",)}
    assert scan(text).errors == []


def test_preprocessor_lines_are_ignored():
    text = """\
        #define MY_TEST(x) TEST(Macro, x) { AEM_REQ("AEM-9.9.9"); }
        #define LONG_ONE \\
            TEST(Cont, Line) { AEM_REQ("AEM-9.9.8"); }
        #if 0 /* comment
        spanning lines */
        #endif
        TEST(Real, AfterDirectives) { AEM_REQ("AEM-3.3.1"); }
        """
    result = scan(text)
    assert [(t.full_name, t.line, t.requirements) for t in result.tests] == [
        ("Real.AfterDirectives", 7, ("AEM-3.3.1",))]


def test_line_numbers_survive_comments_and_raw_strings():
    text = 'auto r = R"(\n\n)";\n/*\n\n*/\n// x \\\n continued\nTEST(A, B) {\n}\n'
    assert [t.line for t in scan_source(text, "t.cc").tests] == [9]


def test_adjacent_literals_concatenate_and_prefixes_work():
    assert tags_of('TEST(A, B) { AEM_REQ("AEM-" "3.1.1", u8"PRF.5.0"); }') == {
        "A.B": ("AEM-3.1.1", "PRF.5.0")}


def test_untagged_test_and_declaration_like_uses():
    text = """\
        FRIEND_TEST(A, NotATest);
        TEST(A, NoTags) { EXPECT_TRUE(true); }
        """
    assert tags_of(text) == {"A.NoTags": ()}


@pytest.mark.parametrize("body, message", [
    ("AEM_REQ(kId);", "argument 1 is not a string literal (kId)"),
    ('AEM_REQ("AEM-3.1.1", std::string("x") + "y");', "argument 2 is not a string literal"),
    ("AEM_REQ();", "names no requirement"),
])
def test_unreadable_tags_are_errors(body, message):
    result = scan(f"TEST(A, B) {{\n  {body}\n}}\n")
    assert len(result.errors) == 1
    assert result.errors[0].line == 2 and message in result.errors[0].message


def test_tag_outside_a_test_body_is_an_error():
    result = scan('void helper() { AEM_REQ("AEM-3.1.1"); }\nTEST(A, B) {}\n')
    assert [str(e) for e in result.errors] == [
        "t.cc:1: AEM_REQ outside a TEST/TEST_F/TEST_P body is not counted; "
        "move it into the test body"]


def test_unterminated_body_is_an_error():
    result = scan('TEST(A, B) {\n  AEM_REQ("AEM-3.1.1");\n')
    assert result.tests[0].requirements == ("AEM-3.1.1",)
    assert "no closing '}'" in result.errors[0].message


def test_tokenizer_kinds():
    toks = tokenize('x = L"s" /* c */ + \'c\' + 0x1p-3; // end')
    assert [(t.kind, t.value) for t in toks] == [
        ("ident", "x"), ("punct", "="), ("string", "s"), ("punct", "+"), ("char", "c"),
        ("punct", "+"), ("number", "0x1p-3"), ("punct", ";")]


def test_source_walk_skips_build_venv_hidden_and_other_dirs(tmp_path):
    tagged = 'TEST(S, N) { AEM_REQ("AEM-3.1.1"); }\n'
    for rel in ["conformance/a.cc", "reference/lib/tests/b.cpp", "stress/c.cc",
                "conformance/build/x.cc", "conformance/build-asan/y.cc", "stress/.venv/z.cc",
                "reference/.git/w.cc", "examples/e.cc", "conformance/h.hpp",
                "conformance/sub/build_rel/deeper/q.cc"]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(tagged)
    found = [p.relative_to(tmp_path).as_posix() for p in iter_source_files(tmp_path)]
    assert found == ["conformance/a.cc", "reference/lib/tests/b.cpp", "stress/c.cc"]
    assert [t.file for t in scan_repo(tmp_path).tests] == found


# ----------------------------------------------------------------------------- coverage command


@pytest.fixture
def covered_repo(make_repo):
    """Two requirements, each tagged by a test."""
    repo = make_repo("AEM-3.1.1", "PRF.5.0")
    repo.write("conformance/registration_test.cc", """\
        #include "aem_req.hpp"
        TEST(Registration, Ids) { AEM_REQ("AEM-3.1.1"); }
        TEST_F(Trigger, EdgeAndLevel) {
          AEM_REQ("PRF.5.0", "AEM-3.1.1");
        }
        TEST(Plain, NoTag) {}
        """)
    return repo


def test_check_passes_when_complete(covered_repo, run_cli):
    result = run_cli("coverage", "--check", "--repo", str(covered_repo.root))
    assert result.code == 0, result.err
    assert "2/2 requirements have tests" in result.out
    assert "Coverage: complete" in result.out


def test_check_fails_and_names_untested_requirements(covered_repo, run_cli):
    covered_repo.copy_requirement("AEM-3.6.2")
    result = run_cli("coverage", "--check", "--repo", str(covered_repo.root))
    assert result.code == 1
    assert "requirements without tests: AEM-3.6.2" in result.err
    assert "AEM-3.6.2" in result.out and "no tests" in result.out


def test_check_fails_on_unknown_tags(covered_repo, run_cli):
    covered_repo.write("stress/x.cc", 'TEST(S, N) { AEM_REQ("AEM-3.1.1", "AEM-9.9.9"); }\n')
    result = run_cli("coverage", "--check", "--repo", str(covered_repo.root))
    assert result.code == 1
    assert "unknown tags: AEM-9.9.9" in result.err
    assert "AEM-9.9.9  in S.N (stress/x.cc:1)" in result.out


def test_check_fails_on_invalid_catalog_files(covered_repo, run_cli):
    (covered_repo.catalog / "PRF.5.0.yaml").write_text("id: PRF.5.0\n")
    result = run_cli("coverage", "--check", "--repo", str(covered_repo.root))
    assert result.code == 1
    assert "invalid catalog files: conformance/requirements/PRF.5.0.yaml" in result.err
    assert "conformance/requirements/PRF.5.0.yaml: title: required" in result.out
    assert "unknown tags" not in result.err  # its ID is still known


def test_check_fails_on_unreadable_tags(covered_repo, run_cli):
    covered_repo.write("reference/t.cpp", "TEST(S, N) { AEM_REQ(kId); }\n")
    result = run_cli("coverage", "--check", "--repo", str(covered_repo.root))
    assert result.code == 1
    assert "unreadable tags: reference/t.cpp:1" in result.err


def test_check_fails_on_empty_catalog(make_repo, run_cli):
    repo = make_repo()
    result = run_cli("coverage", "--check", "--repo", str(repo.root))
    assert result.code == 1 and "no valid requirement" in result.err


def test_without_check_incomplete_coverage_exits_0(covered_repo, run_cli):
    covered_repo.copy_requirement("AEM-3.6.2")
    assert run_cli("coverage", "--repo", str(covered_repo.root)).code == 0


def test_verbose_lists_tests(covered_repo, run_cli):
    out = run_cli("coverage", "-v", "--repo", str(covered_repo.root)).out
    assert "Registration.Ids  (conformance/registration_test.cc:2)" in out
    assert "Trigger.EdgeAndLevel  (conformance/registration_test.cc:3)" in out
    assert "Plain.NoTag" in out  # listed as untagged


def test_json_shape(covered_repo, run_cli):
    covered_repo.copy_requirement("AEM-3.6.2")
    covered_repo.write("stress/x.cc", 'TEST(S, N) { AEM_REQ("XYZ.1.0"); }\n')
    result = run_cli("coverage", "--json", "--repo", str(covered_repo.root))
    assert result.code == 0
    report = json.loads(result.out)
    assert set(report) == {"requirements", "unknown_tags", "invalid_files", "tag_errors",
                           "untagged_tests", "complete"}
    assert report["complete"] is False
    assert [r["id"] for r in report["requirements"]] == ["AEM-3.1.1", "AEM-3.6.2", "PRF.5.0"]
    first = report["requirements"][0]
    assert set(first) == {"id", "title", "priority", "cgl", "tests"}
    assert (first["title"], first["priority"], first["cgl"]) == ("Event registration", 1, "2.0")
    assert first["tests"] == [
        {"file": "conformance/registration_test.cc", "line": 2, "name": "Registration.Ids"},
        {"file": "conformance/registration_test.cc", "line": 3, "name": "Trigger.EdgeAndLevel"}]
    assert report["requirements"][1]["tests"] == []
    assert report["unknown_tags"] == [
        {"tag": "XYZ.1.0", "file": "stress/x.cc", "line": 1, "name": "S.N"}]
    assert report["untagged_tests"] == [
        {"file": "conformance/registration_test.cc", "line": 6, "name": "Plain.NoTag"}]


def test_json_invalid_files_shape(covered_repo, run_cli):
    (covered_repo.catalog / "PRF.5.0.yaml").write_text("id: PRF.5.0\nbogus: 1\n")
    result = run_cli("coverage", "--json", "--check", "--repo", str(covered_repo.root))
    assert result.code == 1
    (entry,) = json.loads(result.out)["invalid_files"]
    assert entry["file"] == "conformance/requirements/PRF.5.0.yaml"
    assert {"field": "bogus", "message": entry["errors"][0]["message"]} in entry["errors"]
    assert {"field": "title", "message": "required"} in entry["errors"]


def test_real_tree_report_lists_the_whole_catalog(run_cli):
    report = json.loads(run_cli("coverage", "--json").out)
    assert len(report["requirements"]) == 24 and report["invalid_files"] == []


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv, text", [
    ((), "a command is required (one of: "),
    (("nosuchcommand",), "invalid choice"),
    (("coverage", "--bogus"), "unrecognized arguments"),
])
def test_usage_errors_exit_2_and_say_what_to_do(run_cli, argv, text):
    result = run_cli(*argv)
    assert result.code == 2
    assert text in result.err and "--help" in result.err


def test_bad_repo_is_a_usage_error(tmp_path, run_cli):
    result = run_cli("coverage", "--repo", str(tmp_path / "missing"))
    assert result.code == 2 and "not a directory" in result.err
    result = run_cli("coverage", "--repo", str(tmp_path))
    assert result.code == 2 and "pass the project root" in result.err


def test_help_exits_0_and_documents_exit_codes(run_cli):
    result = run_cli("--help")
    assert result.code == 0 and "coverage" in result.out and "Exit codes" in result.out


def test_commands_are_plugins(tmp_path, monkeypatch, run_cli):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "hello.py").write_text(textwrap.dedent("""\
        def register(subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.set_defaults(func=lambda args: print("hello") or 0)
        """))
    (plugins / "broken.py").write_text("raise ImportError('half written')\n")
    (plugins / "_private.py").write_text("raise AssertionError('never imported')\n")
    monkeypatch.setattr(commands_pkg, "__path__", [*commands_pkg.__path__, str(plugins)])
    for name in ("hello", "broken", "_private"):
        monkeypatch.delitem(sys.modules, f"cglcert.commands.{name}", raising=False)

    result = run_cli("hello")
    assert (result.code, result.out) == (0, "hello\n")
    assert "command module 'broken' skipped: ImportError: half written" in result.err
    result = run_cli("broken")
    assert result.code == 3 and "half written" in result.err
    for name in ("hello", "broken"):
        sys.modules.pop(f"cglcert.commands.{name}", None)


# ----------------------------------------------------------------------------- launcher


def test_launcher_works_from_any_cwd(repo_root, covered_repo, tmp_path):
    venv = repo_root / ".venv"
    stamp = venv / ".cglcert-requirements.stamp"
    if not stamp.exists() or (repo_root / "requirements.txt").stat().st_mtime > \
            stamp.stat().st_mtime:
        pytest.skip("the .venv is not current; the launcher would install packages")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [str(repo_root / "cglcert"), "coverage", "--json", "--check", "--repo",
         str(covered_repo.root)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["complete"] is True
