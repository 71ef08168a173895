"""Documents and code cite only files inside the repository, and every cited section exists.

The method is described in docs/method.md and the conventions in CONTRIBUTING.md; code, tests and documents
cite their sections ("method §1.7", "docs/method.md §3.1", "CONTRIBUTING.md §9"). These tests fail on
references to specification files kept outside the repository, and on section numbers that no heading of the
cited document carries.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
CONTRIBUTING = ROOT / "CONTRIBUTING.md"

SCANNED = ("src", "tests", "docs", "recipes", "benchmarks", "scripts", "README.md", "CONTRIBUTING.md")
TEXT_SUFFIXES = {".py", ".md", ".sh", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".json", ".csv"}
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

# Built from pieces so that this file does not match its own patterns.
_SPEC = "PA" + "PER"
_STYLE = "STY" + "LE"
_SHARED = "sha" + "red/"
OUTSIDE = re.compile(
    "|".join(
        [
            rf"\b{_SPEC} ?(?:section )?[0-9]",  # a section of the old specification
            rf"\b{_SPEC}\.md\b",
            rf"\b{_STYLE} ?(?:item )?[0-9]",
            rf"\b{_STYLE}\.md\b",
            r"\.\./" + _SHARED[:-1],  # a folder next to the repository
            r"(?<![\w-])" + re.escape(_SHARED),
        ]
    )
)

# "§1.7", "§6.8-6.10", "§4.1–§4.5"; an optional "CONTRIBUTING.md " or "method " prefix names the document.
SECTION = "\u00a7"
NUMBER = r"\d+(?:\.\d+)*"
REFERENCE = re.compile(
    rf"(?P<doc>CONTRIBUTING(?:\.md)? |(?:docs/)?method(?:\.md)? )?{SECTION}(?P<first>{NUMBER})"
    rf"(?:[-\u2013]{SECTION}?(?P<last>{NUMBER}))?"
)
CHAINED = re.compile(r"\s*(?:,|;|/|and|or|,\s*and)\s*")  # between references of one list
HEADING = re.compile(rf"^#{{1,6}} +(?P<number>{NUMBER})\.?\s", re.MULTILINE)


def _scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
            continue
        if not path.is_dir():
            continue
        for file in sorted(path.rglob("*")):
            parts = set(file.relative_to(ROOT).parts)
            if parts & SKIPPED_DIRS or any(p.endswith(".egg-info") for p in parts):
                continue
            if file.is_file() and file.suffix in TEXT_SUFFIXES:
                files.append(file)
    return files


def _lines(file: Path) -> list[str]:
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def _sections(document: Path) -> set[str]:
    return {m.group("number") for m in HEADING.finditer(document.read_text(encoding="utf-8"))}


def test_the_scan_sees_the_documents_and_the_code() -> None:
    files = {f.relative_to(ROOT).as_posix() for f in _scanned_files()}
    for expected in ("README.md", "CONTRIBUTING.md", "docs/method.md", "src/ltpa/attention.py"):
        assert expected in files


def test_no_reference_points_outside_the_repository() -> None:
    found = [
        f"{file.relative_to(ROOT)}:{number}: {line.strip()}"
        for file in _scanned_files()
        for number, line in enumerate(_lines(file), start=1)
        if OUTSIDE.search(line)
    ]
    assert not found, (
        "references to documents outside the repository; cite docs/method.md or CONTRIBUTING.md instead:\n"
        + "\n".join(found)
    )


def test_method_and_contributing_have_numbered_sections() -> None:
    method = _sections(METHOD)
    assert {"0", "1", "1.2", "1.7", "2.6", "3.1", "3.3", "4.1", "5.1", "6.12", "7"} <= method
    assert {"1", "3", "9", "10", "11"} <= _sections(CONTRIBUTING)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("see method §1.7 item 1", [("method ", "1.7", None)]),
        ("(docs/method.md §6.8-6.10)", [("docs/method.md ", "6.8", "6.10")]),
        (
            "CONTRIBUTING.md §9 and §10, method §4.1\u2013\u00a74.5",
            [("CONTRIBUTING.md ", "9", None), (None, "10", None), ("method ", "4.1", "4.5")],
        ),
    ],
)
def test_the_reference_pattern(text: str, expected: list[tuple[str | None, str, str | None]]) -> None:
    assert [(m.group("doc"), m.group("first"), m.group("last")) for m in REFERENCE.finditer(text)] == expected


def test_every_cited_section_exists() -> None:
    method, contributing = _sections(METHOD), _sections(CONTRIBUTING)
    missing = []
    for file in _scanned_files():
        # A bare "§N" cites the method everywhere except inside CONTRIBUTING.md, where it cites its own sections.
        own = contributing if file == CONTRIBUTING else method
        for number, line in enumerate(_lines(file), start=1):
            previous, end = own, -1
            for match in REFERENCE.finditer(line):
                doc = match.group("doc") or ""
                if doc:
                    sections = contributing if doc.startswith("CONTRIBUTING") else method
                elif end >= 0 and CHAINED.fullmatch(line[end : match.start()]):
                    sections = previous  # "method §3.1, §3.2" or "method §2 and §3.6"
                else:
                    sections = own
                previous, end = sections, match.end()
                for cited in (match.group("first"), match.group("last")):
                    if cited is not None and cited not in sections:
                        missing.append(
                            f"{file.relative_to(ROOT)}:{number}: \u00a7{cited} in {line.strip()!r}"
                        )
    assert not missing, "sections cited but not found among the headings:\n" + "\n".join(missing)


def test_contributing_describes_files_and_names_that_exist():
    text = CONTRIBUTING.read_text()
    layout = text.split("## 1 Layout", 1)[1].split("```", 2)[1]
    paths = [line.split()[0] for line in layout.splitlines() if line.strip() and not line.startswith(" ")]
    assert len(paths) > 15
    missing = [p for p in paths if "<" not in p and not (ROOT / p.rstrip("/")).exists()]
    assert not missing, missing
    # private helpers and flag builders it names (`_fixed`, `add_map_args`) are defined in the package
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    named = set(re.findall(r"`((?:_[a-z]\w*|add_\w+))`", text)) - {"add_argument_group"}
    undefined = sorted(
        n for n in named if not re.search(rf"(?m)^\s*(?:def|class) {n}\b|^\s*{n}\s*[:=]", source)
    )
    assert not undefined, undefined
