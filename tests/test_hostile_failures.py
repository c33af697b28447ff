"""Hostile input, round four (issue 29), third group: hangs and tracebacks, and text that is not
what it seems.

- A crafted predictions header (nested 200,000 deep, a class count of '¹⁰' or of 5,000 digits) is
  one paragraph in `gaal compare` and a warning in `gaal report`, which still reports the rest.
- A plugin that registers nothing or exits at import is a warning; one whose `predict` returns
  nothing or whose loss is a string is one paragraph naming it.
- A `./tensorboard/` folder is not the TensorBoard package.
- Control characters never reach the terminal raw; `|` in a name never breaks a report's table.
- Column roles: German thousands, units, currencies after the number, empty columns, blank headers.
"""

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hostile import CHECKOUT, TINY_RUN, assert_refused, invoke, run_cli, sets, train_tiny
from safetensors.numpy import load, save
from test_report import fake_run

from gaal_cli.data.column_roles import derive, infer_roles
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.predictions_file import FILE_NAME


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train_tiny(root / "t" / "concat" / "seed1", "method=concat", "seed=1")
    train_tiny(root / "t" / "gaal" / "seed1", "method=gaal", "seed=1")
    return root


# ---------------------------------------------------------------- crafted predictions headers


def with_header(file: Path, **changes: str) -> None:
    """Rewrite a predictions file with some of its header's fields replaced (tensors unchanged)."""
    tensors = load(file.read_bytes())
    with open(file, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))["__metadata__"]
    file.write_bytes(save(tensors, metadata={**header, **changes}))


CRAFTED = {
    "meta nested 200,000 deep": ("meta", "[" * 200_000 + "]" * 200_000),
    "ids nested 200,000 deep": ("ids", "[" * 200_000 + "]" * 200_000),
    "n_classes '¹⁰'": ("n_classes", "¹⁰"),
    "n_classes of 5,000 digits": ("n_classes", "9" * 5_000),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_header_is_one_paragraph_in_compare_and_a_warning_in_report(runs, tmp_path, case):
    root = Path(shutil.copytree(runs, tmp_path / "results"))
    bad = root / "t" / "gaal" / "seed1" / FILE_NAME
    field, value = CRAFTED[case]
    with_header(bad, **{field: value})
    assert_refused(invoke("compare", root / "t" / "gaal", root / "t" / "concat"), str(bad), field)
    result = invoke("report", root, "--out", tmp_path / "rep")
    assert result.exit_code == 0 and "warning:" in result.output and str(bad) in result.output, result.output
    assert "ᵗ" in (tmp_path / "rep" / "table1.md").read_text()


# ---------------------------------------------------------------- plugins that fail


def declare(site: Path, distribution: str, name: str, module: str) -> None:
    info = site / f"{distribution.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[gaal.methods]\n{name} = {distribution.replace('-', '_')}\n")
    (site / f"{distribution.replace('-', '_')}.py").write_text(module)


CONCAT_AS = (
    "from gaal_cli.methods.concat import Concat, ConcatSettings\n"
    "from gaal_cli.methods.base import Predictions\n"
    "from gaal_cli.methods.registry import register_method\n"
    "class {cls}(ConcatSettings):\n    pass\n"
    "@register_method('{name}', {cls})\n"
    "class Method{cls}(Concat):\n{body}"
)
PLUGINS = {
    "nothing": "x = 1  # registers no method\n",
    "exits": "import argparse\nargparse.ArgumentParser(prog='their-tool').parse_args(['--nope'])\n",
    "shouts": "raise ImportError('needs \\x1b[2J\\x1b[31mfrobnicate')\n",
    "nopredict": CONCAT_AS.format(
        cls="NoPredict", name="nopredict", body="    def predict(self, image, tabular):\n        return None\n"
    ),
    "allnone": CONCAT_AS.format(
        cls="AllNone",
        name="allnone",
        body="    def predict(self, image, tabular):\n        return Predictions(None, None, None)\n",
    ),
    "strloss": CONCAT_AS.format(
        cls="StrLoss",
        name="strloss",
        body="    def train_step(self, batch, optimizer):\n"
        "        stats = super().train_step(batch, optimizer)\n"
        "        return {**stats, 'loss': 'a string'}\n",
    ),
}


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    for name, module in PLUGINS.items():
        declare(site, f"gaal-{name}", name, module)
    return {"PYTHONPATH": os.pathsep.join([str(site), CHECKOUT])}


def test_plugins_that_register_nothing_exit_or_shout_are_warnings_in_methods(plugin_env, tmp_path):
    code, output = run_cli(["methods"], cwd=tmp_path, env=plugin_env)
    assert code == 0 and "Traceback" not in output and "usage: their-tool" not in output, output[-3000:]
    assert "'nothing' from gaal-nothing 1.0" in output and "registered no method" in output
    assert "'exits' from gaal-exits 1.0" in output and "SystemExit" in output and "unrecognized arguments" in output
    assert "'shouts'" in output and "\x1b" not in output and "\\x1b[2J" in output
    assert "concat" in output and "nopredict" in output  # the others are listed


def test_plugins_that_fail_never_take_a_report_down(plugin_env, tmp_path):
    root = tmp_path / "results"
    for seed in (1, 2):
        fake_run(root, "t1", "gaal", seed, [], (0.8, 0.7, 0.6))
        fake_run(root, "t1", "concat", seed, ["method=concat"], (0.6, 0.5, 0.5))
    code, output = run_cli(["report", root, "--out", tmp_path / "rep"], cwd=tmp_path, env=plugin_env)
    assert code == 0 and "Traceback" not in output and "usage: their-tool" not in output, output[-3000:]
    assert (tmp_path / "rep" / "table1.md").is_file()


@pytest.mark.parametrize(
    "name, cls, needle",
    [
        ("nopredict", "MethodNoPredict", "predict returned NoneType"),
        ("allnone", "MethodAllNone", "no head at all"),
        ("strloss", "MethodStrLoss", "returned str"),
    ],
)
def test_a_plugin_returning_the_wrong_thing_is_one_paragraph(plugin_env, tmp_path, name, cls, needle):
    code, output = run_cli(["train", "-m", name, "--out", tmp_path / "run", "-q", *sets(TINY_RUN)], env=plugin_env)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert needle in output and cls in output


# ---------------------------------------------------------------- a ./tensorboard/ folder


def test_a_tensorboard_folder_in_the_working_directory_is_not_the_package(tmp_path):
    if "tensorboard" in sys.modules or any((Path(p) / "tensorboard" / "__init__.py").is_file() for p in sys.path):
        pytest.skip("the tensorboard package is installed: the folder does not shadow it")
    (tmp_path / "tensorboard").mkdir()
    out = tmp_path / "run"
    code, output = run_cli(["train", "--out", out, "-q", *sets([*TINY_RUN, "train.tensorboard=true"])], cwd=tmp_path)
    assert code == 2 and "Traceback" not in output and "pip install" in output, output[-2000:]
    assert not (out / "config.yaml").exists()


# ---------------------------------------------------------------- text for terminals and Markdown


def test_control_characters_in_an_error_reach_the_terminal_escaped(tmp_path):
    run = tmp_path / "run\x1b]0;pwned\x07\x1b[2J"
    result = invoke("eval", run)
    assert result.exit_code == 2, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "\\x1b]0;pwned" in result.output


def test_a_pipe_in_a_dataset_name_never_breaks_a_report_table(tmp_path):
    root = tmp_path / "results"
    data = ["data.name=a|b <img src=x>.csv", "data.target=y", "data.image_column=p"]
    for seed in (1, 2):
        fake_run(root, "t1", "gaal", seed, data, (0.8, 0.7, 0.6))
        fake_run(root, "t1", "concat", seed, ["method=concat", *data], (0.6, 0.5, 0.5))
    result = invoke("report", root, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    for block in (tmp_path / "rep" / "table1.md").read_text().split("\n\n"):
        table = [line for line in block.splitlines() if line.startswith("|")]
        columns = {len(line.replace("\\|", "").split("|")) for line in table}
        assert len(columns) <= 1, table  # every row of a table has its header's cells
    assert not re.search(r"(?<!\\)<img", (tmp_path / "rep" / "report.md").read_text())  # no raw HTML


# ---------------------------------------------------------------- column roles


def test_german_thousands_read_as_thousands_in_a_table_of_decimal_commas():
    frame = pd.DataFrame({"km": ["25.347", "1.204", "13.998", "105.330"], "price": ["3,5", "12,25", "7,0", "1,5"]})
    roles = infer_roles(frame, list(frame.columns))
    assert derive(frame, roles)["km"].tolist() == [25347.0, 1204.0, 13998.0, 105330.0]


def test_units_and_currencies_after_the_number_are_numbers():
    frame = pd.DataFrame(
        {
            "weight": [f"{w} kg" for w in (13, 2.5, 7, 12, 40, 8)],
            "price": [f"{p:.2f} €" for p in (253.47, 12.0, 3.1, 9.99, 100.5, 1.25)],
        }
    )
    roles = infer_roles(frame, list(frame.columns))
    assert {r.role for r in roles.columns.values()} == {"number"} and roles.columns["weight"].unit == "kg"
    derived = derive(frame, roles)
    assert derived["weight"].tolist() == [13, 2.5, 7, 12, 40, 8]
    assert derived["price"].tolist() == [253.47, 12.0, 3.1, 9.99, 100.5, 1.25]
    other = derive(pd.DataFrame({"weight": ["3 lb"], "price": ["1 €"]}), roles)
    assert other["weight"].tolist() == ["3 lb"]  # another unit does not read: a bad row, not 3 kg


def test_an_all_missing_column_is_left_out_not_a_flag():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "gone": [np.nan] * 4, "blank": [" "] * 4})
    roles = infer_roles(frame, list(frame.columns))
    assert roles.columns["gone"].role == roles.columns["blank"].role == "empty"
    assert roles.sources == ["x"]


def test_a_header_of_blanks_is_refused(tmp_path):
    from gaal_cli.data.table_file import read_table

    table = tmp_path / "t.csv"
    table.write_text("photo,species,   ,x\na.jpg,cat,1,2\n")
    with pytest.raises(GaalError, match="column 3 is named by blanks only"):
        read_table(table)
