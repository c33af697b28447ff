"""The README and results/README quote results only from the committed reports' generated files
(gaal_cli/analysis/quotes.py), and the checker finds a number that is not there."""

from pathlib import Path

import pytest

from gaal_cli.analysis.quotes import refresh, unfound, unmarked

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "results/README.md"]


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_generated_table_is_its_files_table(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert "<!-- generated from" in text or name != "README.md"
    assert refresh(text, ROOT) == text, f"run: python -m gaal_cli.analysis.quotes {name} --write"


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_quoted_number_is_printed_by_its_report(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert "<!-- quotes " in text
    missing = [f"line {m.line}: {m.number} (not in {m.source})" for m in unfound(text, ROOT)]
    assert not missing, missing


@pytest.mark.parametrize("name", DOCUMENTS)
def test_no_result_is_quoted_outside_a_marked_passage(name):
    assert not unmarked((ROOT / name).read_text(encoding="utf-8"))


def test_the_checker_finds_a_number_from_memory_and_a_stale_table(tmp_path):
    report = tmp_path / "rep"
    report.mkdir()
    (report / "t.md").write_text("| m | acc |\n|---|---|\n| gaal | 0.9332 ± 0.0040 |\n\nnote\n")
    doc = (
        "<!-- generated from rep/t.md, table 1 -->\n| m | acc |\n|---|---|\n| gaal | 0.9290 ± 0.0070 |\n"
        "<!-- end generated -->\n<!-- quotes rep -->\nGAAL 0.9332 against 0.928.\n<!-- end quotes -->\n"
        "Before: 0.928 ± 0.007.\n"
    )
    assert "0.9332 ± 0.0040" in refresh(doc, tmp_path)
    assert [m.number for m in unfound(doc, tmp_path)] == ["0.928"]
    assert unmarked(doc) == ["0.928 ± 0.007"]
