"""Shared fixtures: the real repository, synthetic repositories, and a CLI runner."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cglcert import default_repo_root
from cglcert.catalog import CATALOG_DIR, SCHEMA_FILE
from cglcert.cli import main

REPO = default_repo_root()
REAL_CATALOG = REPO / CATALOG_DIR


@pytest.fixture
def repo_root() -> Path:
    """The project this cglcert belongs to."""
    return REPO


@dataclass
class SyntheticRepo:
    """A throw-away project tree: a catalog (copied from the real one) and test sources."""

    root: Path

    @property
    def catalog(self) -> Path:
        return self.root / CATALOG_DIR

    def copy_requirement(self, req_id: str, as_name: str | None = None) -> Path:
        """Copy a real catalog file in; return its path in the synthetic tree."""
        dest = self.catalog / (as_name or f"{req_id}.yaml")
        shutil.copy(REAL_CATALOG / f"{req_id}.yaml", dest)
        return dest

    def write(self, rel: str, text: str) -> Path:
        """Write a file (dedented) under the root, creating folders."""
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[..., SyntheticRepo]:
    """Factory: ``make_repo("AEM-3.1.1", "PRF.5.0")`` copies the schema and those files."""

    def factory(*req_ids: str) -> SyntheticRepo:
        repo = SyntheticRepo(tmp_path / "repo")
        repo.catalog.mkdir(parents=True)
        shutil.copy(REAL_CATALOG / SCHEMA_FILE, repo.catalog / SCHEMA_FILE)
        for req_id in req_ids:
            repo.copy_requirement(req_id)
        return repo

    return factory


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``cglcert ARGS`` in-process; usage errors (SystemExit) become exit codes."""

    def runner(*argv: str) -> CliResult:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = exc.code if isinstance(exc.code, int) else 0
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return runner
