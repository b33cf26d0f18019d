"""Every behaviour README.md and docs/*.md promise maps to the test that proves it (docs/testing.md, "Claims").

    README.md, docs/*.md ──`<!-- claim: ID -->` markers──┐
                                                         ├─ problems() ── [] or one line per mismatch
    docs/testing.md ── `| `ID` | promise | doc | tests |` ┘        │
                                    tests/…py::name ── ast ───────┘

A marker with no row, a row with no marker (or marked in another doc than the row says), a row whose test file or
function does not exist or never runs (skip/xfail), and a row with neither a test nor `UNTESTED: <why>` are each
one problem. A doc with no
markers at all is fine. Markers inside code (fenced blocks, `inline`) are examples, not claims. No subprocesses.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TABLE_DOC = "docs/testing.md"
CLAIMS_HEADING = "## Claims"

MARKER = re.compile(r"<!--\s*claim:\s*(\S+?)\s*-->")
CLAIM_ID = re.compile(r"[a-z0-9][a-z0-9._-]*")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:.|\n)*?\1")
TEST_REF = re.compile(r"`?(tests/[\w/.-]+\.py)::([\w]+)(?:::([\w]+))?(?:\[[^\]]*\])?`?")


def doc_paths(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def _prose(text: str) -> str:
    """The text with fenced blocks and inline code blanked out (line numbers kept)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return INLINE_CODE.sub(lambda m: "\n" * m.group(0).count("\n"), "\n".join(lines))


def markers(root: Path) -> dict[str, list[tuple[str, int]]]:
    """claim id -> [(doc, line)] for every marker in README.md and docs/*.md."""
    found: dict[str, list[tuple[str, int]]] = {}
    for path in doc_paths(root):
        for number, line in enumerate(_prose(path.read_text(encoding="utf-8")).splitlines(), 1):
            for match in MARKER.finditer(line):
                found.setdefault(match.group(1), []).append((path.relative_to(root).as_posix(), number))
    return found


def _cells(line: str) -> list[str]:
    # A `|` inside backticks (e.g. `list|show`) is text, not a cell border.
    cells, current, in_code = [], "", False
    for char in line.strip().strip("|"):
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(current.strip())
            current = ""
        else:
            current += char
    return [*cells, current.strip()]


def table(root: Path) -> tuple[dict[str, dict], list[str]]:
    """The claims table of docs/testing.md: id -> {promise, docs, tests, untested, line}, and format problems."""
    rows: dict[str, dict] = {}
    problems: list[str] = []
    path = root / TABLE_DOC
    if not path.is_file():
        return rows, [f"{TABLE_DOC} is missing"]
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == CLAIMS_HEADING)
    except StopIteration:
        return rows, [f"{TABLE_DOC}: no `{CLAIMS_HEADING}` section"]
    for number in range(start + 1, len(lines)):
        line = lines[number]
        if line.startswith("## "):
            break
        if not line.startswith("|") or set(line.replace("|", "").strip()) <= set("-: "):
            continue
        cells = _cells(line)
        if cells[0].lower() == "claim id":
            continue
        where = f"{TABLE_DOC}:{number + 1}"
        if len(cells) != 4:
            problems.append(f"{where}: expected 4 cells (claim id | promise | doc | test(s)), got {len(cells)}")
            continue
        claim = cells[0].strip("`")
        if not CLAIM_ID.fullmatch(claim):
            problems.append(f"{where}: claim id {cells[0]!r} is not lower-case letters, digits, '.', '_' or '-'")
            continue
        if claim in rows:
            problems.append(f"{where}: claim {claim} has a second row (first at line {rows[claim]['line']})")
            continue
        docs = {d.strip().strip("`") for d in re.split(r"[,\s]+", cells[2]) if d.strip()}
        tests = [(m.group(1), m.group(2), m.group(3)) for m in TEST_REF.finditer(cells[3])]
        untested = re.search(r"UNTESTED:\s*\S", cells[3]) is not None
        rows[claim] = {"promise": cells[1], "docs": docs, "tests": tests, "untested": untested, "line": number + 1}
    return rows, problems


def _never_runs(function: ast.AST) -> bool:
    """Marked skip (unconditionally) or xfail as a whole: such a test proves nothing (skipif is allowed)."""
    for decorator in getattr(function, "decorator_list", []):
        text = ast.unparse(decorator)
        if text in ("pytest.mark.skip", "pytest.mark.xfail") or text.startswith(("pytest.mark.skip(",
                                                                                  "pytest.mark.xfail(")):
            return True
    return False


@cache
def _defined(path: Path) -> dict[str, bool]:
    """Tests a file defines (`name`, or `Class::name` for methods) -> whether they ever run (not skip/xfail)."""
    names: dict[str, bool] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = not _never_runs(node)
        elif isinstance(node, ast.ClassDef):
            names.update({f"{node.name}::{item.name}": not (_never_runs(node) or _never_runs(item))
                          for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))})
    return names


def problems(root: Path) -> list[str]:
    marked = markers(root)
    rows, found = table(root)
    for claim, places in sorted(marked.items()):
        where = ", ".join(f"{doc}:{line}" for doc, line in places)
        if not CLAIM_ID.fullmatch(claim):
            found.append(f"{where}: claim id {claim!r} is not lower-case letters, digits, '.', '_' or '-'")
        elif claim not in rows:
            found.append(f"{where}: claim {claim} has no row in the {TABLE_DOC} claims table")
        elif {doc for doc, _ in places} != rows[claim]["docs"]:
            found.append(f"{TABLE_DOC}:{rows[claim]['line']}: claim {claim} is marked in "
                         f"{sorted({doc for doc, _ in places})} but the row says {sorted(rows[claim]['docs'])}")
    for claim, row in sorted(rows.items()):
        where = f"{TABLE_DOC}:{row['line']}: claim {claim}"
        if claim not in marked:
            found.append(f"{where} has no `<!-- claim: {claim} -->` marker in README.md or docs/*.md")
        if row["tests"] and row["untested"]:
            found.append(f"{where} names tests and says UNTESTED: one or the other")
        elif not row["tests"] and not row["untested"]:
            found.append(f"{where} names no test (`tests/path.py::test_name`) and no `UNTESTED: <why>`")
        for file, first, second in row["tests"]:
            path = root / file
            name = f"{first}::{second}" if second else first
            if not path.is_file():
                found.append(f"{where}: test file {file} does not exist")
            elif not name.split("::")[-1].startswith("test"):
                found.append(f"{where}: {file}::{name} is not a test (its name must start with `test`)")
            elif name not in _defined(path):
                found.append(f"{where}: {file} defines no test {name}")
            elif not _defined(path)[name]:
                found.append(f"{where}: {file}::{name} is marked skip or xfail: it proves nothing")
    return found


def test_every_documented_claim_maps_to_a_test_that_exists():
    found = problems(REPO)
    assert not found, "\n".join(found)


def test_the_claims_table_is_not_empty():
    """The check above passes trivially on no markers at all; the table must hold the docs' promises."""
    rows, _ = table(REPO)
    assert len(rows) >= 50, len(rows)
    assert sum(bool(row["tests"]) for row in rows.values()) > sum(row["untested"] for row in rows.values())


# The checker itself, on small made-up repositories: each kind of mismatch is reported, a clean one is not.

HEADER = "# Testing\n\n## Claims\n\n| claim id | promise (short) | doc | test(s) |\n|---|---|---|---|\n"


def _repo(tmp_path: Path, rows: str, docs: dict[str, str], tests: str = "def test_a():\n    pass\n") -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text(tests + "class TestK:\n    def test_m(self):\n        pass\n")
    (tmp_path / "README.md").write_text("# readme\n")
    for name, text in docs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / TABLE_DOC).write_text(HEADER + rows + "\n## After\n\n| `z.notarow` | x | y | z |\n")
    return tmp_path


GOOD_ROW = "| `a.b` | it works | docs/a.md | `tests/test_x.py::test_a`, `tests/test_x.py::TestK::test_m` |\n"


def test_checker_accepts_a_consistent_repo_and_docs_without_markers(tmp_path):
    root = _repo(tmp_path, GOOD_ROW + "| `c-d` | later | README.md | UNTESTED: needs a GPU |\n",
                 {"docs/a.md": "It works. <!-- claim: a.b -->\n", "docs/plain.md": "No markers here.\n",
                  "README.md": "- later <!--claim:c-d-->\n\n```\n<!-- claim: in.a.fence -->\n```\n"
                               "`<!-- claim: inline.code -->`\n"})
    assert problems(root) == []


@pytest.mark.parametrize("rows, docs, expected", [
    ("", {"docs/a.md": "x <!-- claim: a.b -->\n"}, "docs/a.md:1: claim a.b has no row"),
    (GOOD_ROW, {"docs/a.md": "no marker\n"}, "claim a.b has no `<!-- claim: a.b -->` marker"),
    (GOOD_ROW, {"docs/b.md": "x <!-- claim: a.b -->\n"}, "claim a.b is marked in ['docs/b.md'] but the row says"),
    (GOOD_ROW, {"docs/a.md": "```\nx <!-- claim: a.b -->\n```\n"}, "claim a.b has no `<!-- claim: a.b -->` marker"),
    ("| `a.b` | x | docs/a.md | |\n", {"docs/a.md": "<!-- claim: a.b -->"}, "names no test"),
    ("| `a.b` | x | docs/a.md | `tests/test_x.py` |\n", {"docs/a.md": "<!-- claim: a.b -->"}, "names no test"),
    ("| `a.b` | x | docs/a.md | UNTESTED: |\n", {"docs/a.md": "<!-- claim: a.b -->"}, "names no test"),
    ("| `a.b` | x | docs/a.md | `tests/test_x.py::test_a` UNTESTED: no |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "names tests and says UNTESTED"),
    ("| `a.b` | x | docs/a.md | `tests/test_y.py::test_a` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "test file tests/test_y.py does not exist"),
    ("| `a.b` | x | docs/a.md | `tests/test_x.py::test_gone` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "tests/test_x.py defines no test test_gone"),
    ("| `a.b` | x | docs/a.md | `tests/test_x.py::test_m` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "defines no test test_m"),  # a method is named with its class
    ("| `a.b` | x | docs/a.md | `tests/test_x.py::helper` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "is not a test"),
    ("| `a.b` | x | docs/a.md | `tests/test_x.py::test_skipped` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "test_skipped is marked skip or xfail"),
    ("| `a.b` | x | docs/a.md | `tests/test_x.py::test_xfailed` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "test_xfailed is marked skip or xfail"),
    (GOOD_ROW + GOOD_ROW, {"docs/a.md": "<!-- claim: a.b -->"}, "claim a.b has a second row"),
    ("| `A b` | x | docs/a.md | `tests/test_x.py::test_a` |\n", {"docs/a.md": "<!-- claim: a.b -->"},
     "claim id '`A b`' is not lower-case"),
    ("| `a.b` | x | `tests/test_x.py::test_a` |\n", {"docs/a.md": "<!-- claim: a.b -->"}, "expected 4 cells"),
])
def test_checker_reports_each_kind_of_mismatch(tmp_path, rows, docs, expected):
    found = problems(_repo(tmp_path, rows, docs, tests=(
        "import pytest\ndef test_a():\n    pass\ndef helper():\n    pass\n@pytest.mark.skip(reason='x')\n"
        "def test_skipped():\n    pass\n@pytest.mark.xfail\ndef test_xfailed():\n    pass\n"
        "@pytest.mark.skipif(True, reason='y')\ndef test_sometimes():\n    pass\n")))
    assert any(expected in line for line in found), found


def test_checker_counts_a_parametrized_test_by_its_function_name(tmp_path):
    root = _repo(tmp_path, "| `a.b` | x | docs/a.md | `tests/test_x.py::test_a[2-3]` |\n",
                 {"docs/a.md": "<!-- claim: a.b -->"})
    assert problems(root) == []


def test_checker_allows_a_conditional_skip(tmp_path):
    root = _repo(tmp_path, "| `a.b` | x | docs/a.md | `tests/test_x.py::test_sometimes` |\n",
                 {"docs/a.md": "<!-- claim: a.b -->"},
                 tests="import pytest\n@pytest.mark.skipif(True, reason='y')\ndef test_sometimes():\n    pass\n")
    assert problems(root) == []
