"""Static scan of requirement tags: which test verifies which requirement, before anything runs.

GoogleTest tests tag themselves with ``AEM_REQ("AEM-3.1.1", "PRF.5.0");`` inside the body of
``TEST`` / ``TEST_F`` / ``TEST_P`` (also ``TYPED_TEST`` / ``TYPED_TEST_P``); see
``conformance/include/aem_req.hpp``. :func:`scan_gtest_sources` walks the ``*.cc`` / ``*.cpp``
files under ``conformance/``, ``reference/`` and ``stress/`` and finds them with a small C++
lexer, so comments, string and character literals, raw strings and preprocessor lines never
count as code and never unbalance the brace matching.

Other tag sources (stress harness JSON, later) plug into :data:`TAG_SOURCES`; :func:`scan_repo`
runs them all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "SCAN_DIRS",
    "SOURCE_SUFFIXES",
    "TAG_SOURCES",
    "ScanResult",
    "TagError",
    "TestTag",
    "Token",
    "iter_source_files",
    "scan_gtest_sources",
    "scan_json_tags",
    "scan_repo",
    "scan_source",
    "tokenize",
]

SCAN_DIRS = ("conformance", "reference", "stress")
SOURCE_SUFFIXES = (".cc", ".cpp")
TEST_MACROS = frozenset({"TEST", "TEST_F", "TEST_P", "TYPED_TEST", "TYPED_TEST_P"})
TAG_MACRO = "AEM_REQ"

_SKIP_DIR_NAMES = frozenset({"CMakeFiles", "_deps", "__pycache__", "node_modules"})
_RAW_PREFIXES = frozenset({"R", "u8R", "uR", "UR", "LR"})
_LITERAL_PREFIXES = frozenset({"u8", "u", "U", "L"})
_IDENT_REST = re.compile(r"[A-Za-z0-9_]*")


@dataclass(frozen=True)
class TestTag:
    """One test and the requirement IDs its body tags, in the order written (no repeats)."""

    __test__ = False  # not a pytest test class

    file: str  # repository-relative, POSIX separators
    line: int  # line of the TEST macro
    suite: str
    name: str
    requirements: tuple[str, ...]
    macro: str = "TEST"

    @property
    def full_name(self) -> str:
        """``Suite.Name`` as written (a TEST_P's instantiation prefix is known only at run time)."""
        return f"{self.suite}.{self.name}"


@dataclass(frozen=True)
class TagError:
    """A tag the scan cannot read (computed argument, tag outside a test, broken body)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass
class ScanResult:
    """Tests found and tag errors, from one or more tag sources."""

    tests: list[TestTag] = field(default_factory=list)
    errors: list[TagError] = field(default_factory=list)

    def extend(self, other: ScanResult) -> None:
        """Append another source's findings."""
        self.tests.extend(other.tests)
        self.errors.extend(other.errors)


@dataclass(frozen=True)
class Token:
    """A C++ token: kind is ident, number, string, char or punct; strings hold their body."""

    kind: str
    value: str
    line: int


# --------------------------------------------------------------------------- lexer


def tokenize(text: str) -> list[Token]:
    """Split C++ source into tokens, dropping comments and preprocessor directives."""
    return list(_Lexer(text).tokens())


class _Lexer:
    """Just enough of C++ lexing to tell code from comments and literals."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1

    def _peek(self, offset: int = 0) -> str:
        j = self.i + offset
        return self.s[j] if j < len(self.s) else ""

    def tokens(self) -> Iterator[Token]:
        s = self.s
        at_line_start = True
        while self.i < len(s):
            c = s[self.i]
            if c == "\n":
                self.line += 1
                self.i += 1
                at_line_start = True
                continue
            if c == "\\" and self._peek(1) == "\n":  # line splice between tokens
                self.line += 1
                self.i += 2
                continue
            if c.isspace():
                self.i += 1
                continue
            if c == "#" and at_line_start:
                self._skip_directive()
                continue
            at_line_start = False
            if c == "/" and self._peek(1) == "/":
                self._skip_line_comment()
            elif c == "/" and self._peek(1) == "*":
                self._skip_block_comment()
            elif c.isalpha() or c == "_":
                yield from self._identifier_or_prefixed_literal()
            elif c.isdigit() or (c == "." and self._peek(1).isdigit()):
                yield self._number()
            elif c == '"':
                yield self._quoted('"', "string")
            elif c == "'":
                yield self._quoted("'", "char")
            else:
                yield Token("punct", c, self.line)
                self.i += 1

    def _skip_line_comment(self) -> None:
        s = self.s
        while self.i < len(s):
            if s[self.i] == "\\" and self._peek(1) == "\n":  # a spliced comment goes on
                self.line += 1
                self.i += 2
                continue
            if s[self.i] == "\n":
                return
            self.i += 1

    def _skip_block_comment(self) -> None:
        end = self.s.find("*/", self.i + 2)
        stop = len(self.s) if end < 0 else end + 2
        self.line += self.s.count("\n", self.i, stop)
        self.i = stop

    def _skip_directive(self) -> None:
        """Skip a preprocessor line (with continuations, comments and literals inside)."""
        s = self.s
        while self.i < len(s):
            c = s[self.i]
            if c == "\\" and self._peek(1) == "\n":
                self.line += 1
                self.i += 2
            elif c == "\n":
                return
            elif c == "/" and self._peek(1) == "*":
                self._skip_block_comment()
            elif c == "/" and self._peek(1) == "/":
                self._skip_line_comment()
                return
            elif c in "\"'":
                self._quoted(c, "string")
            else:
                self.i += 1

    def _identifier_or_prefixed_literal(self) -> Iterator[Token]:
        start, line = self.i, self.line
        self.i = _IDENT_REST.match(self.s, self.i).end()  # type: ignore[union-attr]
        word = self.s[start:self.i]
        nxt = self._peek()
        if nxt == '"' and word in _RAW_PREFIXES:
            yield self._raw_string(line)
        elif nxt == '"' and word in _LITERAL_PREFIXES:
            yield self._quoted('"', "string")
        elif nxt == "'" and word in _LITERAL_PREFIXES:
            yield self._quoted("'", "char")
        else:
            yield Token("ident", word, line)

    def _number(self) -> Token:
        """A pp-number, including digit separators (1'000) and exponents (1e-3, 0x1p+4)."""
        s, start = self.s, self.i
        self.i += 1
        while self.i < len(s):
            c = s[self.i]
            if c.isalnum() or c in "_.":
                self.i += 1
            elif c == "'" and self._peek(1).isalnum():
                self.i += 2
            elif c in "+-" and s[self.i - 1] in "eEpP":
                self.i += 1
            else:
                break
        return Token("number", s[start:self.i], self.line)

    def _quoted(self, quote: str, kind: str) -> Token:
        """A string or character literal; an unterminated one ends at the end of its line."""
        s, line = self.s, self.line
        self.i += 1
        start = self.i
        while self.i < len(s):
            c = s[self.i]
            if c == "\\":
                if self._peek(1) == "\n":
                    self.line += 1
                self.i += 2
            elif c == quote:
                token = Token(kind, s[start:self.i], line)
                self.i += 1
                return token
            elif c == "\n":
                break
            else:
                self.i += 1
        return Token(kind, s[start:self.i], line)

    def _raw_string(self, line: int) -> Token:
        """R"delim( ... )delim" (the prefix is already consumed)."""
        s = self.s
        open_paren = s.find("(", self.i + 1)
        if open_paren < 0:
            open_paren = len(s)
        delim = s[self.i + 1:open_paren]
        end_marker = ")" + delim + '"'
        end = s.find(end_marker, open_paren + 1)
        stop = len(s) if end < 0 else end + len(end_marker)
        body = s[open_paren + 1:end if end >= 0 else len(s)]
        self.line += s.count("\n", self.i, stop)
        self.i = stop
        return Token("string", body, line)


# --------------------------------------------------------------------------- parser


def scan_source(text: str, file: str) -> ScanResult:
    """Find the tests of one C++ source and the requirement IDs each one tags."""
    toks = tokenize(text)
    result = ScanResult()
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.kind == "ident" and tok.value in TEST_MACROS:
            header = _test_header(toks, i)
            if header is not None:
                suite, name, body_start = header
                body_end = _matching(toks, body_start, "{", "}")
                if body_end is None:
                    result.errors.append(TagError(
                        file, tok.line, f"{tok.value}({suite}, {name}): body has no closing '}}'"))
                    body_end = len(toks)
                reqs: list[str] = []
                for req in _tags_in(toks, body_start + 1, body_end, file, result.errors):
                    if req not in reqs:
                        reqs.append(req)
                result.tests.append(TestTag(file, tok.line, suite, name, tuple(reqs), tok.value))
                i = body_end + 1
                continue
        if tok.kind == "ident" and tok.value == TAG_MACRO and _is_call(toks, i):
            result.errors.append(TagError(
                file, tok.line, f"{TAG_MACRO} outside a TEST/TEST_F/TEST_P body is not counted; "
                                f"move it into the test body"))
        i += 1
    return result


def _is_call(toks: list[Token], i: int) -> bool:
    return i + 1 < len(toks) and toks[i + 1].kind == "punct" and toks[i + 1].value == "("


def _test_header(toks: list[Token], i: int) -> tuple[str, str, int] | None:
    """Match ``MACRO ( ident , ident ) {``; return (suite, name, index of '{')."""
    want = [("punct", "("), ("ident", None), ("punct", ","), ("ident", None), ("punct", ")"),
            ("punct", "{")]
    if i + len(want) >= len(toks):
        return None
    for offset, (kind, value) in enumerate(want, start=1):
        tok = toks[i + offset]
        if tok.kind != kind or (value is not None and tok.value != value):
            return None
    return toks[i + 2].value, toks[i + 4].value, i + 6


def _matching(toks: list[Token], start: int, open_: str, close: str) -> int | None:
    """Index of the punct closing the one at ``start``, or None when unbalanced."""
    depth = 0
    for j in range(start, len(toks)):
        tok = toks[j]
        if tok.kind != "punct":
            continue
        if tok.value == open_:
            depth += 1
        elif tok.value == close:
            depth -= 1
            if depth == 0:
                return j
    return None


def _tags_in(toks: list[Token], start: int, end: int, file: str,
             errors: list[TagError]) -> Iterator[str]:
    """Yield the IDs of every AEM_REQ(...) call between token indexes start and end."""
    j = start
    while j < end:
        tok = toks[j]
        if tok.kind == "ident" and tok.value == TAG_MACRO and _is_call(toks, j):
            close = _matching(toks, j + 1, "(", ")")
            if close is None or close > end:
                errors.append(TagError(file, tok.line, f"{TAG_MACRO}( has no closing ')'"))
                return
            args = _split_args(toks[j + 2:close])
            if not args:
                errors.append(TagError(file, tok.line, f"{TAG_MACRO}() names no requirement"))
            for n, arg in enumerate(args, start=1):
                if arg and all(t.kind == "string" for t in arg):
                    yield "".join(t.value for t in arg)  # adjacent literals concatenate
                else:
                    text = " ".join(t.value for t in arg) or "(empty)"
                    errors.append(TagError(
                        file, tok.line, f"{TAG_MACRO} argument {n} is not a string literal "
                                        f"({text}); write the ID out, e.g. \"AEM-3.1.1\""))
            j = close + 1
            continue
        j += 1


def _split_args(toks: list[Token]) -> list[list[Token]]:
    """Split macro arguments at top-level commas."""
    if not toks:
        return []
    args: list[list[Token]] = [[]]
    depth = 0
    for tok in toks:
        if tok.kind == "punct" and tok.value in "([{":
            depth += 1
        elif tok.kind == "punct" and tok.value in ")]}":
            depth -= 1
        if tok.kind == "punct" and tok.value == "," and depth == 0:
            args.append([])
        else:
            args[-1].append(tok)
    return args


# --------------------------------------------------------------------------- sources


def _skip_dir(name: str) -> bool:
    return (name.startswith((".", "build", "cmake-build")) or name in _SKIP_DIR_NAMES)


def iter_source_files(repo: Path, dirs: tuple[str, ...] = SCAN_DIRS) -> Iterator[Path]:
    """Yield test sources under ``dirs`` of ``repo``, sorted, skipping build and hidden dirs."""
    for top in dirs:
        base = repo / top
        if not base.is_dir():
            continue
        for root, subdirs, files in os.walk(base):
            subdirs[:] = sorted(d for d in subdirs if not _skip_dir(d))
            for name in sorted(files):
                if name.endswith(SOURCE_SUFFIXES):
                    yield Path(root) / name


def scan_gtest_sources(repo: Path) -> ScanResult:
    """Scan every GoogleTest source of the repository for tagged tests."""
    result = ScanResult()
    for path in iter_source_files(repo):
        rel = path.relative_to(repo).as_posix()
        text = path.read_text(encoding="utf-8", errors="replace")
        result.extend(scan_source(text, rel))
    return result


def scan_json_tags(repo: Path) -> ScanResult:
    """Tag source for stress harnesses, which will declare their requirement IDs in JSON.

    The JSON format is not defined yet; until it is, this source finds nothing. When it is,
    read the declarations here and return one :class:`TestTag` per harness (file and line
    of the declaration, suite = harness, name = scenario).
    """
    del repo  # unused until the format exists
    return ScanResult()


#: Every tag source :func:`scan_repo` runs; add new ones here.
TAG_SOURCES: tuple[Callable[[Path], ScanResult], ...] = (scan_gtest_sources, scan_json_tags)


def scan_repo(repo: Path) -> ScanResult:
    """Run every tag source over ``repo``."""
    result = ScanResult()
    for source in TAG_SOURCES:
        result.extend(source(repo))
    return result
