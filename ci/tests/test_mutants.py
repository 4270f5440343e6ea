"""``cglcert mutants``: the mutant table against mutant.hpp and the sources, the kill matrix
and the verdict on synthetic results, then one real mutant (integration)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cglcert import InfraError
from cglcert import mutants as mut
from cglcert.catalog import load_catalog
from cglcert.commands import mutants as mut_cmd

SOURCES = ("reference/lib/src/user/engine.cpp", "reference/lib/src/c_api.cpp")
IDS = ["AEM-3.1.2", "AEM-3.1.5", "AEM-3.2.1", "AEM-3.5.1", "PRF.1.4"]


def results(fail: tuple[str, ...] = (), error: str | None = None,
            skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A results.json document where ``fail`` FAIL, ``skip`` SKIP and the others PASS."""
    reqs = []
    for rid in IDS:
        verdict = "FAIL" if rid in fail else "SKIP" if rid in skip else "PASS"
        reqs.append({"id": rid, "verdict": verdict, "tests": [
            {"name": f"{rid.replace('-', '_').replace('.', '_')}.c1_X", "outcome": verdict}]})
    if error:
        reqs = [{**r, "verdict": "ERROR", "tests": []} for r in reqs]
    return {"requirements": reqs, "harness": {"error": error}}


FIFO = mut.Mutant("fifo", "priorities ignored", ("AEM-3.1.5", "AEM-3.2.1"))
DROP = mut.Mutant("drop", "an occurrence lost", ("AEM-3.5.1",))


# ----------------------------------------------------------------------------- the table


def test_table_matches_mutant_hpp(repo_root):
    declared = mut.header_mutants((repo_root / mut.HEADER).read_text())
    assert declared == [m.name for m in mut.MUTANTS]
    assert len(set(declared)) == len(declared)


def test_every_mutant_is_injected_and_every_used_name_declared(repo_root):
    used: set[str] = set()
    for rel in SOURCES:
        used.update(re.findall(r"AEM_MUTANT\((\w+)\)", (repo_root / rel).read_text()))
    names = {m.name for m in mut.MUTANTS}
    assert used == names, f"used but not declared: {used - names}; never used: {names - used}"


def test_at_least_the_ten_mutants_of_the_issue_with_known_requirements(repo_root):
    catalog = {r.id for r in load_catalog(repo_root).requirements}
    assert len(mut.MUTANTS) >= 10
    for m in mut.MUTANTS:
        assert m.expected, m.name
        assert set(m.expected) <= catalog, m.name
        assert re.fullmatch(r"[a-z0-9_]+", m.name)


def test_short_labels():
    assert mut.short_label("AEM-3.1.5") == "3.1.5"
    assert mut.short_label("PRF.1.4") == "PRF1.4"
    assert mut.short_label("PRF.5.0") == "PRF5.0"


# ----------------------------------------------------------------------------- judging


def test_killed_when_every_expected_requirement_fails():
    j = mut.judge(FIFO, results(fail=("AEM-3.1.5", "AEM-3.2.1", "AEM-3.5.1")))
    assert j["status"] == mut.KILLED
    assert j["killed_by"] == ["AEM-3.1.5", "AEM-3.2.1", "AEM-3.5.1"]
    assert j["expected_missed"] == []
    assert j["failing_tests"]["AEM-3.1.5"] == ["AEM_3_1_5.c1_X"]


def test_killed_elsewhere_when_an_expected_requirement_passes():
    j = mut.judge(FIFO, results(fail=("AEM-3.1.5", "AEM-3.5.1")))
    assert j["status"] == mut.KILLED_ELSEWHERE
    assert j["expected_missed"] == ["AEM-3.2.1"]


def test_survived_when_nothing_fails_and_a_skip_is_no_kill():
    j = mut.judge(DROP, results(skip=("AEM-3.5.1",)))
    assert j["status"] == mut.SURVIVED
    assert j["killed_by"] == []


def test_a_failure_of_the_control_kills_nothing():
    control = results(fail=("AEM-3.5.1",))
    j = mut.judge(DROP, results(fail=("AEM-3.5.1", "PRF.1.4")), control=control)
    assert j["status"] == mut.KILLED_ELSEWHERE
    assert j["killed_by"] == ["PRF.1.4"]
    assert j["failing_in_control_too"] == ["AEM-3.5.1"]


def test_harness_error_is_an_error_not_a_kill():
    j = mut.judge(DROP, results(error="the suite was killed by signal 11 (SIGSEGV)"))
    assert j["status"] == mut.ERRORED
    assert "SIGSEGV" in j["error"]
    j = mut.judge(DROP, None, error="build failed")
    assert j["status"] == mut.ERRORED and j["error"] == "build failed"


def doc(*judgements: dict[str, Any], control: dict[str, Any] | None = None) -> dict[str, Any]:
    ctl = None if control is None else {"verdicts": mut.verdicts_of(control),
                                        "error": control["harness"]["error"]}
    return mut.build_document(list(judgements), requirements=IDS, control=ctl)


def test_ok_only_when_every_mutant_is_killed():
    killed = mut.judge(FIFO, results(fail=("AEM-3.1.5", "AEM-3.2.1")))
    dropped = mut.judge(DROP, results(fail=("AEM-3.5.1",)))
    survived = mut.judge(DROP, results())
    assert doc(killed, dropped)["ok"]
    d = doc(killed, survived)
    assert not d["ok"]
    assert d["summary"] == {"mutants": 2, "killed": 1, "killed-elsewhere": 0, "survived": 1,
                            "error": 0, "control_ok": True}
    assert not doc()["ok"]  # nothing proven
    assert not doc(killed, control=results(error="timeout"))["ok"]
    assert doc(killed, control=results())["ok"]


def test_matrix_marks_kills_expected_cells_and_the_control():
    control = results(fail=("AEM-3.1.2",))
    d = doc(mut.judge(FIFO, results(fail=("AEM-3.1.5", "AEM-3.2.1", "AEM-3.1.2")),
                      control=control),
            mut.judge(DROP, results(), control=control),
            control=control)
    text = mut.render_matrix(d)
    lines = text.splitlines()
    head = lines[0].split()
    assert head[:5] == ["mutant", "3.1.2", "3.1.5", "3.2.1", "3.5.1"]
    assert "PRF1.4" not in head  # passes everywhere, expected by no mutant
    fifo = next(ln for ln in lines if ln.startswith("fifo "))
    assert fifo.split()[1:5] == ["x", "[X]", "[X]", "."]
    assert fifo.rstrip().endswith("killed")
    drop = next(ln for ln in lines if ln.startswith("drop "))
    assert "[.]" in drop and "survived (not by AEM-3.5.1)" in drop
    assert next(ln for ln in lines if ln.startswith("control ")).split()[1] == "X"
    assert "1 of 2 mutants killed by their requirements (1 survived)" in text
    assert "fifo: priorities ignored; expected AEM-3.1.5, AEM-3.2.1; killed by AEM-3.1.5, " \
           "AEM-3.2.1" in text


def test_matrix_without_control_says_so_and_shows_errors():
    d = doc(mut.judge(DROP, None, error="the suite did not finish within 600 s"))
    text = mut.render_matrix(d)
    assert "error: the suite did not finish within 600 s" in text
    assert "no control run" in text
    json.loads(mut.document_to_json(d))


# ----------------------------------------------------------------------------- command line


def test_unknown_mutant_is_a_usage_error(run_cli):
    r = run_cli("mutants", "--only", "no_such_mutant")
    assert r.code == 2
    assert "no such user mutant" in r.err and "fifo_dispatch" in r.err
    r = run_cli("mutants", "--backend", "kmod", "--only", "fifo_dispatch")
    assert r.code == 2
    assert "no such kmod mutant" in r.err and "merge_drops_count" in r.err


def test_kmod_table_matches_kbuild_and_every_mutant_is_injected(repo_root):
    text = (repo_root / mut.KBUILD).read_text(encoding="utf-8")
    assert mut.kbuild_mutants(text) == [m.name for m in mut.KMOD_MUTANTS]
    assert len(mut.KMOD_MUTANTS) >= 10
    used = set()
    for f in (repo_root / "reference" / "kmod").glob("*.c"):
        used.update(re.findall(r"AEM_MUTANT\((\w+)\)", f.read_text(encoding="utf-8")))
    assert used == {m.name for m in mut.KMOD_MUTANTS}


def test_bad_timeout_is_a_usage_error(run_cli, tmp_path):
    r = run_cli("mutants", "--timeout", "0", "--out", str(tmp_path))
    assert r.code == 2


# ----------------------------------------------------------------------------- integration


def test_real_fifo_dispatch_mutant_is_killed(repo_root, tmp_path):
    """Configure a fresh tree (an unknown AEM_MUTANT is refused), build the fifo_dispatch
    mutant, run the suite: killed by AEM-3.1.5 and AEM-3.2.1."""
    tree, out = tmp_path / "tree", tmp_path / "out"
    with pytest.raises(InfraError, match="not a mutant"):
        mut_cmd.configure(repo_root, tree, "no_such_mutant")
    proc = subprocess.run([str(repo_root / "cglcert"), "mutants", "--only", "fifo_dispatch",
                           "--no-control", "--build-dir", str(tree), "--out", str(out), "-q"],
                          capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    d = json.loads((out / "mutants.json").read_text())
    assert d["ok"] and d["control"] is None
    [j] = d["mutants"]
    assert j["name"] == "fifo_dispatch" and j["status"] == "killed"
    assert {"AEM-3.1.5", "AEM-3.2.1"} <= set(j["killed_by"])
    assert (out / "fifo_dispatch" / "results.json").is_file()
    assert "fifo_dispatch" in proc.stdout and "1 of 1 mutants killed" in proc.stdout
    # The tree is left configured without a defect.
    assert "AEM_MUTANT:STRING=\n" in (tree / "CMakeCache.txt").read_text()
    assert Path(j["results"]).is_file()
