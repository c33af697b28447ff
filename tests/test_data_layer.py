"""The data layer imports only downward, imports inside functions included (read from the sources)."""

import ast
from pathlib import Path

import pytest

import gaal_cli

PACKAGE = Path(gaal_cli.__file__).resolve().parent
DATA = sorted((PACKAGE / "data").glob("*.py"))
# the modules below the data layer: what it may import from gaal_cli besides itself
BELOW = {"gaal_cli.config", "gaal_cli.errors", "gaal_cli.files", "gaal_cli.untrusted"}
# inside the data layer, the table's preprocessing runs one way: these never import those
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


def imported(path: Path) -> set[str]:
    """Every gaal_cli module `path` imports, at the top or inside a function (`from gaal_cli import
    display` counts as gaal_cli.display)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to gaal_cli.data, the package of every module read here
                base = ".".join(["gaal_cli", "data"][: 3 - node.level] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{alias.name}" for alias in node.names}
    return {name for name in out if name == "gaal_cli" or name.startswith("gaal_cli.")}


def is_module(name: str) -> bool:
    """Whether a dotted name from `imported` is a module of the package (not a name inside one)."""
    relative = name.split(".")[1:]
    return (PACKAGE.joinpath(*relative).with_suffix(".py")).is_file() or PACKAGE.joinpath(*relative).is_dir()


@pytest.mark.parametrize("path", DATA, ids=[p.stem for p in DATA])
def test_a_data_module_imports_nothing_above_the_data_layer(path):
    above = sorted(
        name
        for name in imported(path)
        if is_module(name) and name != "gaal_cli" and name not in BELOW and not name.startswith("gaal_cli.data")
    )
    assert not above, f"gaal_cli/data/{path.name} imports {above}: the data layer knows only {sorted(BELOW)}"


@pytest.mark.parametrize("stem", sorted(NEVER))
def test_the_table_preprocessing_runs_one_way(stem):
    names = imported(PACKAGE / "data" / f"{stem}.py")
    wrong = sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in NEVER[stem]))
    assert not wrong, f"gaal_cli/data/{stem}.py imports {wrong}"


def test_the_check_reads_imports_inside_functions(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def show():\n    from gaal_cli.display import console\n    from gaal_cli import results\n")
    assert {"gaal_cli.display", "gaal_cli.results"} <= imported(module)
