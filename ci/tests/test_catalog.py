"""The requirement catalog: the real one validates; each kind of malformed file is reported
with the file and the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from cglcert import InfraError, UsageError
from cglcert.catalog import load_catalog, requirement_sort_key

AEM_IDS = (
    [f"AEM-3.1.{n}" for n in range(1, 8)]
    + [f"AEM-3.2.{n}" for n in range(1, 4)]
    + ["AEM-3.3.1", "AEM-3.4.1", "AEM-3.4.2"]
    + [f"AEM-3.5.{n}" for n in range(1, 5)]
    + [f"AEM-3.6.{n}" for n in range(1, 6)]
)
ALL_IDS = [*AEM_IDS, "PRF.1.4", "PRF.5.0"]
# Priorities of the seed document's sections (Priority 1 = CGL 2.0, Priority 2 = CGL 3.0).
PRIORITY_2 = {"AEM-3.1.5", "AEM-3.2.1", "AEM-3.2.2", "AEM-3.5.3", "AEM-3.5.4", "AEM-3.6.4",
              "AEM-3.6.5"}
FILE = "conformance/requirements/AEM-3.1.1.yaml"


# ----------------------------------------------------------------------------- real catalog


def test_real_catalog_is_valid_and_complete(repo_root):
    catalog = load_catalog(repo_root)
    assert [str(p) for p in catalog.problems] == []
    assert len(catalog.requirements) == 24
    assert sorted(r.id for r in catalog.requirements) == sorted(ALL_IDS)
    files = sorted(p.name for p in (repo_root / "conformance/requirements").glob("*.yaml"))
    assert len(files) == 25  # 24 requirements + schema.yaml


def test_real_catalog_priorities_and_cgl_versions(repo_root):
    reqs = load_catalog(repo_root).by_id()
    for req_id in AEM_IDS:
        expected = 2 if req_id in PRIORITY_2 else 1
        assert reqs[req_id].priority == expected, req_id
        assert reqs[req_id].cgl == ("3.0" if expected == 2 else "2.0"), req_id
        assert reqs[req_id].section == req_id.removeprefix("AEM-")
    for req_id in ("PRF.5.0", "PRF.1.4"):
        assert (reqs[req_id].priority, reqs[req_id].cgl) == (1, "5.0")
        assert reqs[req_id].verbatim


def _thresholds(reqs, req_id) -> set[tuple[Any, ...]]:
    return {(t.metric, t.op, t.value, t.relative_to) for t in reqs[req_id].thresholds}


def test_real_catalog_thresholds(repo_root):
    reqs = load_catalog(repo_root).by_id()
    assert _thresholds(reqs, "AEM-3.3.1") == {
        ("cost_per_event_1e6_registrations", "<=", 1.3, "cost_per_event_10_registrations")}
    for req_id in ("AEM-3.2.1", "AEM-3.2.2"):
        (metric, op, value, rel), = _thresholds(reqs, req_id)
        assert (op, value) == ("<=", 2.0) and metric.endswith("_loaded")
        assert rel == metric.removesuffix("_loaded") + "_unloaded"
    assert _thresholds(reqs, "AEM-3.5.1") == {
        ("occurrences_delivered", ">=", 1.0, "occurrences_activated"),
        ("occurrences_delivered", "<=", 1.0, "occurrences_activated")}
    assert _thresholds(reqs, "AEM-3.6.2") == {("handler_overlaps", "<=", 0, None)}
    for req in reqs.values():
        ids = {c.id for c in req.acceptance}
        assert all(t.criterion in ids for t in req.thresholds)


def test_sort_key_is_natural():
    ids = ["PRF.5.0", "AEM-3.1.10", "AEM-3.1.2", "PRF.1.4", "AEM-3.2.1"]
    assert sorted(ids, key=requirement_sort_key) == [
        "AEM-3.1.2", "AEM-3.1.10", "AEM-3.2.1", "PRF.1.4", "PRF.5.0"]


# ----------------------------------------------------------------------------- malformed files


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return mutate


def _add_threshold(**fields: Any) -> Callable[[dict[str, Any]], None]:
    base = {"metric": "lat_p99", "op": "<=", "value": 2, "relative_to": "lat_p99_idle",
            "unit": "ns", "description": "a measured criterion"}

    def mutate(data: dict[str, Any]) -> None:
        data["thresholds"] = [{**base, **fields}]
    return mutate


MUTATIONS = {
    "missing criterion text": (_delete(["acceptance", 2, "text"]), "acceptance[2].text",
                               "required"),
    "missing top-level field": (_delete(["statement"]), "statement", "required"),
    "missing source section": (_delete(["source", "section"]), "source.section", "required"),
    "unknown field": (_set(["owner"], "me"), "owner", "unknown field"),
    "unknown nested field": (_set(["acceptance", 0, "weight"], 3), "acceptance[0].weight",
                             "unknown field"),
    "wrong type": (_set(["priority"], "1"), "priority", "must be of type integer"),
    "priority out of range": (_set(["priority"], 3), "priority", "must be one of 1, 2"),
    "bad verification": (_set(["verification"], ["test", "review"]), "verification[1]",
                         "must be one of"),
    "duplicate verification": (_set(["verification"], ["test", "test"]), "verification",
                               "items must be unique"),
    "empty acceptance": (_set(["acceptance"], []), "acceptance", "must not be empty"),
    "bad criterion id": (_set(["acceptance", 1, "id"], "C-2"), "acceptance[1].id",
                         "does not match the pattern"),
    "duplicate criterion id": (_set(["acceptance", 1, "id"], "c1"), "acceptance[1].id",
                               "duplicate criterion id 'c1'"),
    "cgl does not match priority": (_set(["cgl"], "3.0"), "cgl",
                                    'must be "2.0", got "3.0" (AEM priority 1 is CGL 2.0)'),
    "id does not match file name": (_set(["id"], "AEM-3.1.2"), "id",
                                    "does not match the file name"),
    "bad id pattern": (_set(["id"], "aem-3.1.1"), "id", "does not match the pattern"),
    "bad related id": (_set(["related"], ["SEC-7.1"]), "related[0]",
                       "does not match the pattern"),
    "threshold op": (_add_threshold(op="<"), "thresholds[0].op", 'must be one of "<=", ">="'),
    "threshold missing relative_to": (_add_threshold(relative_to=None), "", ""),  # valid
    "threshold relative_to pattern": (_add_threshold(relative_to="Idle P99"),
                                      "thresholds[0].relative_to", "does not match"),
    "threshold value type": (_add_threshold(value="2x"), "thresholds[0].value",
                             "must be of type number"),
    "threshold criterion unknown": (_add_threshold(criterion="c9"), "thresholds[0].criterion",
                                    "no acceptance criterion 'c9'"),
    "threshold relative to itself": (_add_threshold(relative_to="lat_p99"),
                                     "thresholds[0].relative_to", "other than the metric"),
}


@pytest.mark.parametrize("case", MUTATIONS, ids=list(MUTATIONS))
def test_malformed_file_names_file_and_field(make_repo, case):
    mutate, field, message = MUTATIONS[case]
    repo = make_repo("AEM-3.1.1", "PRF.5.0")
    path = repo.catalog / "AEM-3.1.1.yaml"
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    catalog = load_catalog(repo.root)
    problems = [str(p) for p in catalog.problems]
    if not field:  # the mutation is valid
        assert problems == []
        return
    assert any(p.startswith(f"{FILE}: {field}: ") and message in p for p in problems), problems
    assert all(p.startswith(f"{FILE}: ") for p in problems)
    assert catalog.invalid_files() == [FILE]
    assert [r.id for r in catalog.requirements] == ["PRF.5.0"]  # the valid file still loads
    assert "AEM-3.1.1" in catalog.known_ids  # a tag naming it is not "unknown"


def test_exact_message_for_missing_criterion_text(make_repo):
    repo = make_repo("AEM-3.1.1")
    path = repo.catalog / "AEM-3.1.1.yaml"
    data = yaml.safe_load(path.read_text())
    del data["acceptance"][2]["text"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert [str(p) for p in load_catalog(repo.root).problems] == [
        "conformance/requirements/AEM-3.1.1.yaml: acceptance[2].text: required"]


@pytest.mark.parametrize("text, message", [
    ("id: AEM-3.1.1\ntitle: [unclosed\n", "invalid YAML at line 3"),
    ("", "empty file"),
    ("id: AEM-3.1.1\ntitle: a\ntitle: b\n",
     "invalid YAML at line 3, column 1: duplicate key 'title'"),
    ("- just\n- a list\n", "(root): must be of type object, got array"),
])
def test_unparsable_files(make_repo, text, message):
    repo = make_repo()
    (repo.catalog / "AEM-3.1.1.yaml").write_text(text)
    problems = [str(p) for p in load_catalog(repo.root).problems]
    assert len(problems) == 1 and problems[0].startswith(f"{FILE}: ") and message in problems[0]


def test_file_name_checked_for_copied_file(make_repo):
    repo = make_repo()
    repo.copy_requirement("AEM-3.1.1", as_name="AEM-3.1.9.yaml")
    problems = [str(p) for p in load_catalog(repo.root).problems]
    assert problems == [
        "conformance/requirements/AEM-3.1.9.yaml: id: \"AEM-3.1.1\" does not match the file "
        "name: rename the file to AEM-3.1.1.yaml or fix the id"]


def test_missing_schema_is_a_usage_error(make_repo):
    repo = make_repo("AEM-3.1.1")
    (repo.catalog / "schema.yaml").unlink()
    with pytest.raises(UsageError, match="--repo"):
        load_catalog(repo.root)


def test_broken_schema_is_an_infrastructure_error(make_repo):
    repo = make_repo("AEM-3.1.1")
    (repo.catalog / "schema.yaml").write_text("type: 12\n")
    with pytest.raises(InfraError, match="not a valid JSON Schema"):
        load_catalog(repo.root)
