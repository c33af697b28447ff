"""Tables and comparisons name the code states and hosts their runs come from, and mark every
cell and pair that spans two of them (issue 31)."""

import json

from test_report import fake_run

from gaal_cli.analysis.provenance_groups import UNRECORDED, sides_note
from gaal_cli.analysis.report import write_report
from gaal_cli.runs.provenance import code_key, host_key

HOST = {"processor": "Intel Xeon", "torch_cpu_capability": "AVX512", "onednn_isa": "AVX512_CORE_AMX", "threads": 1}


def provenance(commit: str, processor: str = "Intel Xeon") -> dict:
    return {
        "code": {"version": "0.2.0", "commit": commit, "dirty": False},
        "host": {**HOST, "processor": processor},
        "determinism": {"pins": {}},
    }


def stamp(folder, found: dict) -> None:
    report = json.loads((folder / "report.json").read_text())
    (folder / "report.json").write_text(json.dumps({**report, "provenance": found}))


def table1(tmp_path, made_by):
    """CF and GAAL over seeds 1 and 2, each run stamped with `made_by(method, seed)`."""
    root = tmp_path / "results"
    for seed in (1, 2):
        for method, acc in (("gaal", 0.8 + seed / 100), ("concat", 0.7 + seed / 50)):
            fake_run(root, "t1", method, seed, [f"method={method}"], (acc, acc - 0.1, acc - 0.2))
            found = made_by(method, seed)
            if found:
                stamp(root / "t1" / method / f"seed{seed}", found)
    return root


def test_a_table_of_one_code_state_and_host_names_them(tmp_path):
    root = table1(tmp_path, lambda method, seed: provenance("a" * 40))
    write_report(root, tmp_path / "out")
    text = (tmp_path / "out" / "table1.md").read_text()
    assert "Provenance: all 4 runs of one code state and host kind: code `0.2.0 aaaaaaaaaa`" in text
    assert "⟨" not in text


def test_runs_from_before_provenance_are_said_to_be_unrecorded(tmp_path):
    root = table1(tmp_path, lambda method, seed: None)
    write_report(root, tmp_path / "out")
    assert "Provenance: not recorded for these 4 runs" in (tmp_path / "out" / "table1.md").read_text()


def test_a_row_of_another_code_state_is_marked_on_its_cells_its_pairs_and_under_the_table(tmp_path):
    root = table1(tmp_path, lambda method, seed: provenance("b" * 40 if method == "gaal" else "a" * 40))
    write_report(root, tmp_path / "out")
    text = (tmp_path / "out" / "table1.md").read_text()
    assert "Provenance groups: ⟨A⟩ code `0.2.0 aaaaaaaaaa`" in text and "⟨B⟩ code `0.2.0 bbbbbbbbbb`" in text
    concat_row = next(line for line in text.splitlines() if line.startswith("| concat |"))
    gaal_rows = [line for line in text.splitlines() if line.startswith("| gaal |")]
    assert concat_row.endswith("2 ⟨A⟩ |") and gaal_rows[0].endswith("2 ⟨B⟩ |")
    assert "⟨B≠A⟩" in gaal_rows[1]  # the paired difference against CF spans two code states
    runs = (tmp_path / "out" / "runs.csv").read_text()
    assert "0.2.0 aaaaaaaaaa" in runs and "Intel Xeon" in runs


def test_a_cell_mixing_hosts_is_marked_with_both_groups(tmp_path):
    root = table1(tmp_path, lambda method, seed: provenance("a" * 40, "AMD EPYC" if seed == 2 else "Intel Xeon"))
    write_report(root, tmp_path / "out")
    text = (tmp_path / "out" / "table1.md").read_text()
    assert "2 ⟨A+B⟩ |" in text and "⟨A+B≠A+B⟩" in text


def test_keys_group_what_picks_the_kernels_and_name_a_dirty_tree():
    dirty = provenance("c" * 40)
    dirty["code"].update(dirty=True, dirty_sha256="1234abcd")
    assert code_key(dirty) == "0.2.0 cccccccccc+1234abcd"
    assert host_key(provenance("c" * 40)) == "Intel Xeon, AVX512/AVX512_CORE_AMX, 1 threads"
    assert code_key(None) == host_key({"host": "not a mapping"}) == UNRECORDED


def test_compare_warns_when_its_sides_differ_in_code_or_host():
    same = {
        ("0.2.0 aa", "h"),
    }
    assert sides_note({"A": same, "B": same}) is None
    note = sides_note({"A": same, "B": {("0.2.0 bb", "h")}})
    assert "code 0.2.0 aa on host h" in note and "code 0.2.0 bb on host h" in note
    assert "may differ" in sides_note({"A": {(UNRECORDED, UNRECORDED)}, "B": {(UNRECORDED, UNRECORDED)}})
