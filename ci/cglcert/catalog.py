"""The requirement catalog: ``conformance/requirements/<ID>.yaml``, one file per requirement.

:func:`load_catalog` reads every file, validates it against ``schema.yaml`` (JSON Schema
draft 2020-12, through :mod:`jsonschema`) plus the rules a schema cannot express, and returns
the valid requirements and one :class:`Problem` per violation. A problem names the file and
the field, e.g. ``conformance/requirements/AEM-3.1.1.yaml: acceptance[2].text: required``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema
import yaml

from cglcert import InfraError, UsageError

__all__ = [
    "CATALOG_DIR",
    "SCHEMA_FILE",
    "Catalog",
    "Criterion",
    "Problem",
    "Requirement",
    "Threshold",
    "load_catalog",
    "load_schema",
    "requirement_sort_key",
]

CATALOG_DIR = Path("conformance/requirements")
SCHEMA_FILE = "schema.yaml"


@dataclass(frozen=True)
class Problem:
    """One violation in one catalog file; ``field`` is a path like ``acceptance[2].text``."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}" if self.field else \
            f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Criterion:
    """An acceptance criterion that a test, stress run or inspection decides."""

    id: str
    text: str


@dataclass(frozen=True)
class Threshold:
    """A measured criterion: ``metric op value`` (times ``relative_to`` when that is set)."""

    metric: str
    op: str
    value: float
    relative_to: str | None
    unit: str
    description: str
    criterion: str | None = None


@dataclass(frozen=True)
class Requirement:
    """One catalog entry, as read from a valid file."""

    id: str
    title: str
    document: str
    section: str
    cgl: str
    priority: int
    statement: str
    acceptance: tuple[Criterion, ...]
    verification: tuple[str, ...]
    thresholds: tuple[Threshold, ...] = ()
    related: tuple[str, ...] = ()
    verbatim: str | None = None
    file: str = ""

    @classmethod
    def from_mapping(cls, data: dict[str, Any], file: str) -> Requirement:
        """Build from a mapping that already passed schema validation."""
        return cls(
            id=data["id"],
            title=data["title"],
            document=data["source"]["document"],
            section=data["source"]["section"],
            verbatim=data["source"].get("verbatim"),
            cgl=data["cgl"],
            priority=data["priority"],
            statement=data["statement"],
            acceptance=tuple(Criterion(c["id"], c["text"]) for c in data["acceptance"]),
            verification=tuple(data["verification"]),
            thresholds=tuple(Threshold(**t) for t in data.get("thresholds", ())),
            related=tuple(data.get("related", ())),
            file=file,
        )


@dataclass
class Catalog:
    """The valid requirements (sorted by ID) and the problems of the invalid files."""

    requirements: list[Requirement] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    #: IDs a tag may name: valid requirements plus files that are invalid but present.
    known_ids: set[str] = field(default_factory=set)

    def by_id(self) -> dict[str, Requirement]:
        """Return the requirements keyed by ID."""
        return {r.id: r for r in self.requirements}

    def invalid_files(self) -> list[str]:
        """Return the files that have at least one problem, sorted."""
        return sorted({p.file for p in self.problems})


def requirement_sort_key(req_id: str) -> tuple[Any, ...]:
    """Order IDs naturally: AEM-3.1.2 < AEM-3.1.10, AEM-* before the CGL-numbered IDs."""
    match = re.match(r"[A-Za-z]*", req_id)
    prefix = match.group(0) if match else ""
    numbers = tuple(int(n) for n in re.findall(r"\d+", req_id))
    return (prefix != "AEM", prefix, numbers, req_id)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (plain YAML keeps the last one silently)."""


def _construct_unique_mapping(loader: _StrictLoader, node: yaml.MappingNode,
                              deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _construct_unique_mapping)


def load_schema(catalog_dir: Path) -> dict[str, Any]:
    """Read and check ``schema.yaml``; a missing or broken schema is an infrastructure error."""
    path = catalog_dir / SCHEMA_FILE
    try:
        schema = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UsageError(
            f"{path} not found: not a cglcert repository? Pass --repo DIR (the project root)"
        ) from exc
    except (OSError, yaml.YAMLError) as exc:
        raise InfraError(f"{path}: cannot read the schema: {exc}") from exc
    if not isinstance(schema, dict):
        raise InfraError(f"{path}: not a valid JSON Schema: expected a mapping")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InfraError(f"{path}: not a valid JSON Schema: {exc.message}") from exc
    return schema


def load_catalog(repo: Path, catalog_dir: Path | None = None) -> Catalog:
    """Load and validate every ``*.yaml`` requirement file of the catalog in ``repo``.

    Files are reported relative to ``repo``. Only files without problems become
    :class:`Requirement` objects.
    """
    directory = catalog_dir if catalog_dir is not None else repo / CATALOG_DIR
    validator = jsonschema.Draft202012Validator(load_schema(directory))
    catalog = Catalog()
    files = sorted(p for p in directory.glob("*.yaml") if p.name != SCHEMA_FILE)
    for path in files:
        rel = _display_path(path, repo)
        data, problems = validate_file(path, validator, rel)
        catalog.problems.extend(problems)
        if re.fullmatch(r"[A-Z]+[-.][0-9.]+", path.stem):
            catalog.known_ids.add(path.stem)
        if not problems and data is not None:
            catalog.requirements.append(Requirement.from_mapping(data, rel))
    catalog.requirements.sort(key=lambda r: requirement_sort_key(r.id))
    catalog.known_ids.update(r.id for r in catalog.requirements)
    return catalog


def validate_file(
    path: Path, validator: jsonschema.protocols.Validator, rel: str
) -> tuple[dict[str, Any] | None, list[Problem]]:
    """Parse and validate one file; return (data or None, problems)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [Problem(rel, "", f"cannot read: {exc}")]
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        loc = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        what = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(rel, "", f"invalid YAML{loc}: {what}")]
    if data is None:
        return None, [Problem(rel, "", "empty file: expected a mapping with id, title, ...")]
    problems = list(_schema_problems(validator, data, rel))
    if isinstance(data, dict):
        problems.extend(_semantic_problems(data, path, rel))
    # Stable order, no duplicates (one missing field can surface through several subschemas).
    unique = list(dict.fromkeys(problems))
    return (data if isinstance(data, dict) else None), unique


def _display_path(path: Path, repo: Path) -> str:
    try:
        return path.resolve().relative_to(repo.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def field_path(parts: Iterable[str | int]) -> str:
    """Render a JSON path as ``acceptance[2].text`` (empty for the document root)."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problems(
    validator: jsonschema.protocols.Validator, data: Any, rel: str
) -> Iterator[Problem]:
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)),
                                                                 str(e.validator)))
    # A value of the wrong type also fails its enum/const/pattern: report the type alone.
    mistyped = {tuple(e.absolute_path) for e in errors if e.validator == "type"}
    for error in errors:
        if tuple(error.absolute_path) in mistyped and error.validator != "type":
            continue
        yield from _describe(error, rel)


def _describe(error: jsonschema.ValidationError, rel: str) -> Iterator[Problem]:
    """Turn one jsonschema error into problems with short, field-level messages."""
    path = list(error.absolute_path)
    kind = error.validator
    instance = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    if kind == "required" and isinstance(instance, dict):
        for name in cast(list[str], error.validator_value):
            if name not in instance:
                yield Problem(rel, field_path([*path, name]), "required")
        return
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(schema.get("properties", {}))
        for name in instance:
            if name not in allowed:
                yield Problem(rel, field_path([*path, name]),
                              f"unknown field (allowed: {', '.join(allowed)})")
        return
    where = field_path(path) or "(root)"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        message = f"must be of type {expected}, got {_json_type(instance)}"
        if instance is None:
            message += " (the field is empty)"
        elif expected == "string" and isinstance(instance, (int, float)):
            message += f" (quote it: \"{instance}\")"
    elif kind == "enum":
        choices = ", ".join(json.dumps(v) for v in cast(list[Any], error.validator_value))
        message = f"must be one of {choices}; got {json.dumps(instance)}"
    elif kind == "const":
        message = f"must be {json.dumps(error.validator_value)}, got {json.dumps(instance)}"
        if schema.get("description"):
            message += f" ({schema['description']})"
    elif kind == "pattern":
        message = f"{json.dumps(instance)} does not match the pattern {error.validator_value}"
    elif kind in ("minLength", "minItems"):
        message = "must not be empty" if error.validator_value == 1 else \
            f"too short (at least {error.validator_value} " \
            f"{'characters' if kind == 'minLength' else 'items'})"
    elif kind == "uniqueItems":
        message = "items must be unique"
    elif kind == "minimum":
        message = f"must be >= {error.validator_value}, got {instance}"
    else:
        message = error.message
    yield Problem(rel, where, message)


def _json_type(value: Any) -> str:
    for name, types in (("null", type(None)), ("boolean", bool), ("integer", int),
                        ("number", float), ("string", str), ("array", list),
                        ("object", dict)):
        if isinstance(value, types):
            return name
    return type(value).__name__


def _semantic_problems(data: dict[str, Any], path: Path, rel: str) -> Iterator[Problem]:
    """Rules JSON Schema cannot express: file name, unique ids, cross references."""
    req_id = data.get("id")
    if isinstance(req_id, str) and path.name != f"{req_id}.yaml":
        yield Problem(rel, "id", f"{json.dumps(req_id)} does not match the file name: "
                                 f"rename the file to {req_id}.yaml or fix the id")
    criteria = data.get("acceptance")
    ids: set[str] = set()
    if isinstance(criteria, list):
        for i, criterion in enumerate(criteria):
            cid = criterion.get("id") if isinstance(criterion, dict) else None
            if isinstance(cid, str):
                if cid in ids:
                    yield Problem(rel, f"acceptance[{i}].id", f"duplicate criterion id {cid!r}")
                ids.add(cid)
    thresholds = data.get("thresholds")
    if isinstance(thresholds, list):
        seen: set[tuple[Any, Any]] = set()
        for i, threshold in enumerate(thresholds):
            if not isinstance(threshold, dict):
                continue
            key = (threshold.get("metric"), threshold.get("op"))
            if key in seen:
                yield Problem(rel, f"thresholds[{i}]",
                              f"duplicate threshold {key[0]} {key[1]}")
            seen.add(key)
            ref = threshold.get("criterion")
            if isinstance(ref, str) and isinstance(criteria, list) and ref not in ids:
                yield Problem(rel, f"thresholds[{i}].criterion",
                              f"no acceptance criterion {ref!r} in this file")
            if threshold.get("relative_to") is not None and \
                    threshold.get("relative_to") == threshold.get("metric"):
                yield Problem(rel, f"thresholds[{i}].relative_to",
                              "must name a calibration metric other than the metric itself")
    related = data.get("related")
    if isinstance(related, list) and isinstance(req_id, str) and req_id in related:
        yield Problem(rel, "related", f"must not list the requirement itself ({req_id})")
