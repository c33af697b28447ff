"""The conventions users expect of a CLI: --version, shell completion, the right command for a
file, a suggestion for a mistyped name, and the way to the data when it is not prepared yet."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gaal_cli import __version__
from gaal_cli.cli import app

runner = CliRunner()
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def fails_cleanly(result, run: Path) -> str:
    """A user error: exit 2, one paragraph, no traceback, no run folder."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.strip().count("\n") == 0, result.output
    assert not run.exists()
    return result.output


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gaal {__version__}"


def test_shell_completion_is_offered_and_prints_a_script():
    result = runner.invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output
    result = runner.invoke(app, ["--show-completion", "bash"])
    assert result.exit_code == 0 and "COMPREPLY" in result.output and "complete " in result.output


def test_train_on_a_sweep_file_says_to_use_gaal_sweep(tmp_path):
    path = EXPERIMENTS / "synthetic" / "table1.yaml"
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    output = fails_cleanly(result, tmp_path / "run")
    assert f"gaal sweep {path}" in output and "sweep" in output


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (["train", "--method", "gaaal"], "gaal"),
        (["train", "--dataset", "dvmm"], "dvm"),
        (["train", "--set", "methods.gaaal.cgs=false"], "gaal"),
        (["train", "--set", "methods.gaal.cgss=false"], "cgs"),
        (["train", "--set", "train.epocs=2"], "epochs"),
        (["train", "--set", "trian.epochs=2"], "train"),
        (["train", "--set", "train.optimizer=adamm"], "adam"),
        (["data", "prepare", "hamm10000", "--raw", "."], "ham10000"),
        (["sweep", "synthetic/tabel1", "--dry-run"], "synthetic/table1"),
    ],
)
def test_a_mistyped_name_suggests_the_nearest(args, suggestion, tmp_path):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")] if args[0] != "sweep" else args)
    assert f"did you mean '{suggestion}'?" in fails_cleanly(result, tmp_path / "run")


def test_a_mistyped_key_in_an_experiment_file_suggests_the_nearest(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("train:\n  epochs: 2\n  pateince: 3\n")
    result = runner.invoke(app, ["train", str(path), "--out", str(tmp_path / "run")])
    output = fails_cleanly(result, tmp_path / "run")
    assert str(path) in output and "train.pateince" in output and "did you mean 'patience'?" in output


def test_nothing_close_gets_no_suggestion(tmp_path):
    result = runner.invoke(app, ["train", "--method", "zzzz", "--out", str(tmp_path / "run")])
    assert "did you mean" not in fails_cleanly(result, tmp_path / "run")


PUBLISHED = {
    "dvm": "https://deepvisualmarketing.github.io/",
    "celeba": "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    "sun": "https://cs.brown.edu/~gmpatter/sunattributes.html",
    "ham10000": "https://doi.org/10.7910/DVN/DBW86T",
}


@pytest.mark.parametrize("dataset", sorted(PUBLISHED))
def test_a_dataset_without_prepared_data_names_the_prepare_command_and_the_raw_data(dataset, tmp_path):
    result = runner.invoke(app, ["train", "--dataset", dataset, "--out", str(tmp_path / "run")])
    output = fails_cleanly(result, tmp_path / "run")
    assert f"gaal data prepare {dataset} --raw RAW --out PREP" in output and PUBLISHED[dataset] in output
    empty = tmp_path / "prep"
    empty.mkdir()
    result = runner.invoke(app, ["train", "-d", dataset, "--data-dir", str(empty), "--out", str(tmp_path / "run")])
    output = fails_cleanly(result, tmp_path / "run")
    assert f"gaal data prepare {dataset} --raw RAW --out {empty}" in output and PUBLISHED[dataset] in output


def test_the_version_is_written_once_and_the_changelog_has_its_entry():
    import re
    from importlib.metadata import version
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert 'version = {attr = "gaal_cli.foundation.version.__version__"}' in (root / "pyproject.toml").read_text()
    assert re.search(rf"^## {re.escape(__version__)} \(", (root / "CHANGELOG.md").read_text(), re.M)
    assert version("gaal") == __version__  # the installed package's metadata, built from the same attribute
