"""Numbers a document quotes from generated report files, kept in step with them.

Two kinds of marked passage in a Markdown document (README.md, results/README.md):

    <!-- generated from results/synthetic/report/table1.md, table 1 -->
    | method | ... |            (the file's first Markdown table, line for line)
    <!-- end generated -->

    <!-- quotes results/synthetic/report -->
    Prose whose every decimal number (two or more decimals) is printed, as written here, in one of
    the Markdown files of that report folder.
    <!-- end quotes -->

`refresh` rewrites the generated tables from their files; `unfound` lists the quoted numbers no
file prints; `unmarked` lists mean ± std figures written outside any passage (a result quoted
from memory). `python -m gaal_cli.analysis.quotes README.md results/README.md [--write]` checks
(or refreshes) documents; tests/test_quoted_numbers.py runs the check on the committed ones.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from gaal_cli.foundation.files import write_file

GENERATED = re.compile(
    r"<!-- generated from (?P<source>\S+), table (?P<index>\d+) -->\n(?P<body>.*?)<!-- end generated -->", re.S
)
QUOTES = re.compile(r"<!-- quotes (?P<source>\S+) -->\n(?P<body>.*?)<!-- end quotes -->", re.S)
#: a decimal number as prose or a table prints it (a sign, two or more decimals, maybe a mark such as ᵗ)
NUMBER = re.compile(r"(?<![\w.])[−+-]?\d+\.\d{2,}(?!\.?\d)")
#: what a quoted result looks like: mean ± std
RESULT = re.compile(r"\d\.\d{2,} ± \d\.\d{2,}")


@dataclass(frozen=True)
class Unfound:
    """A number a `quotes` passage holds that no Markdown file of its folder prints."""

    number: str
    source: str
    line: int


def tables(markdown: str) -> list[str]:
    """The Markdown tables of a text, each its consecutive `|` lines (with the final newline)."""
    found, current = [], []
    for line in markdown.splitlines(keepends=True):
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append("".join(current))
            current = []
    return found + (["".join(current)] if current else [])


def refresh(text: str, root: Path) -> str:
    """`text` with every generated table replaced by its file's table (paths relative to `root`).

    Raises:
        FileNotFoundError, IndexError: a passage names a file, or a table, that is not there.
    """

    def table(match: re.Match) -> str:
        body = tables((root / match["source"]).read_text(encoding="utf-8"))[int(match["index"]) - 1]
        return f"<!-- generated from {match['source']}, table {match['index']} -->\n{body}<!-- end generated -->"

    return GENERATED.sub(table, text)


def printed_numbers(folder: Path) -> set[str]:
    """Every decimal number the Markdown files of a report folder print, without its sign."""
    return {_bare(n) for file in sorted(folder.glob("*.md")) for n in NUMBER.findall(file.read_text("utf-8"))}


def unfound(text: str, root: Path) -> list[Unfound]:
    """The numbers of the `quotes` passages that their folder's files do not print."""
    missing, printed_by = [], {}
    for match in QUOTES.finditer(text):
        if match["source"] not in printed_by:  # each report folder read once, however often quoted
            printed_by[match["source"]] = printed_numbers(root / match["source"])
        printed = printed_by[match["source"]]
        first_line = text.count("\n", 0, match.start("body")) + 1
        for number in NUMBER.finditer(match["body"]):
            if _bare(number.group()) not in printed:
                line = first_line + match["body"].count("\n", 0, number.start())
                missing.append(Unfound(number.group(), match["source"], line))
    return missing


def unmarked(text: str) -> list[str]:
    """The mean ± std figures written outside every marked passage."""
    outside = QUOTES.sub("", GENERATED.sub("", text))
    return RESULT.findall(outside)


def _bare(number: str) -> str:
    return number.lstrip("+-−")


def main(argv: list[str]) -> int:
    write = "--write" in argv
    problems = 0
    for name in (a for a in argv if a != "--write"):
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        root = Path.cwd()
        if write:
            write_file(path, refresh(text, root))
            text = path.read_text(encoding="utf-8")
        elif refresh(text, root) != text:
            print(f"{path}: a generated table differs from its file (rerun with --write)")
            problems += 1
        for miss in unfound(text, root):
            print(f"{path}:{miss.line}: {miss.number} is printed by no file of {miss.source}")
            problems += 1
        for figure in unmarked(text):
            print(f"{path}: '{figure}' is quoted outside a generated or quotes passage")
            problems += 1
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
