"""Inside the data layer, the table's preprocessing runs one way, imports inside functions
included (read from the sources by tools/module_map.py, as tests/test_architecture.py reads the
layers: that the data package imports only the config and the foundation is checked there)."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("module_map", REPO / "tools" / "module_map.py")
module_map = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(module_map)

# these never import those
NEVER = {
    "problems": {"gaal_cli.data"},  # the shared small types import no table module at all
    "splits": {"gaal_cli.data.preprocessing", "gaal_cli.data.user_table", "gaal_cli.data.prediction_rows"},
    "column_roles": {"gaal_cli.data.preprocessing", "gaal_cli.data.user_table", "gaal_cli.data.prediction_rows"},
    "preprocessing": {
        "gaal_cli.data.user_table",
        "gaal_cli.data.prediction_rows",
        "gaal_cli.data.prepared",
        "gaal_cli.data.images",
    },
    "images": {"gaal_cli.data.preprocessing", "gaal_cli.data.user_table", "gaal_cli.data.prediction_rows"},
    "user_table": {"gaal_cli.data.prediction_rows"},
}


@pytest.mark.parametrize("stem", sorted(NEVER))
def test_the_table_preprocessing_runs_one_way(stem):
    names = module_map.import_graph(REPO)[f"gaal_cli.data.{stem}"]
    wrong = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in NEVER[stem]))
    assert not wrong, f"gaal_cli/data/{stem}.py imports {wrong}"
