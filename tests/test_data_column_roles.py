"""A practitioner's own table: column roles inferred and overridden, the round trip through
predict, inspect and train agreeing, classes too small for the split, messages that name what
they mean, each run's sizes in `gaal report`, and the in-epoch progress bar."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY
from raw_datasets import make_clinic, write_jpeg
from test_report import fake_run
from typer.testing import CliRunner

from gaal_cli.analysis.collect import load_runs
from gaal_cli.cli import app
from gaal_cli.config import DataConfig
from gaal_cli.data import build_data
from gaal_cli.data.column_roles import derive, fit_origins, infer_roles
from gaal_cli.data.preprocessing import TableState, apply_state
from gaal_cli.data.problems import Problems
from gaal_cli.data.table_file import read_table
from gaal_cli.foundation.display import EpochProgress
from gaal_cli.foundation.errors import GaalError

runner = CliRunner()
N = 30
SMALL = (16, 12, 12, 2)  # rows per class of a small clinic table (nv, mel, bkl, df)
TRAIN = ["--target", "diagnosis", "--image-column", "photo"]


def hand_made() -> pd.DataFrame:
    """30 rows, one column per role (and the variants of each)."""
    rng = np.random.default_rng(0)
    days = pd.date_range("2022-01-13", periods=N, freq="3D")
    return pd.DataFrame(
        {
            "code": [f"P{1000 + 7 * i}" for i in range(N)],
            "counter": np.arange(1, N + 1),
            "iso": days.strftime("%Y-%m-%d"),
            "dayfirst": days.strftime("%d/%m/%Y"),
            "income": [f"{v:,}" for v in rng.integers(1_000, 900_000, N)],
            "share": [f"{v}%" for v in rng.integers(0, 100, N)],
            "price": [f"${v / 10:.1f}" for v in rng.integers(10, 999, N)],
            "german": [f"{v:,.1f}".translate(str.maketrans(",.", ".,")) for v in rng.uniform(1e3, 1e5, N)],
            "smoker": rng.choice(["Yes", "no"], N),
            "note": [f"seen on visit {i}, itchy" for i in range(N)],
            "site": rng.choice(["back", "face", "arm"], N),
            "weight": rng.normal(70, 10, N),
            "flag": rng.integers(0, 2, N),
        }
    )


def test_each_role_is_inferred_on_a_hand_made_table():
    frame = hand_made()
    roles = infer_roles(frame, list(frame.columns))
    got = {name: r.role for name, r in roles.columns.items()}
    assert got == {
        "code": "id",
        "counter": "id",
        "iso": "datetime",
        "dayfirst": "datetime",
        "income": "number",
        "share": "number",
        "price": "number",
        "german": "number",
        "smoker": "boolean",
        "note": "text",
        "site": "categorical",
        "weight": "continuous",
        "flag": "categorical",
    }
    assert roles.columns["dayfirst"].date_format == "%d/%m/%Y" and roles.columns["german"].marks == (",", ".")
    fit_origins(frame, roles)
    derived = derive(frame, roles)
    assert "code" not in derived and "note" not in derived  # ids and free text are left out
    assert derived["dayfirst days"].tolist() == [3.0 * i for i in range(N)] == derived["iso days"].tolist()
    assert derived["iso month"][0] == 1 and derived["iso day of year"][0] == 13 and derived["iso year"][0] == 2022
    assert derived["iso day of week"][0] == pd.Timestamp("2022-01-13").day_of_week
    assert derived["income"][0] == float(frame["income"][0].replace(",", ""))
    assert derived["share"][0] == float(frame["share"][0].rstrip("%"))
    assert derived["price"][0] == float(frame["price"][0].lstrip("$"))
    assert derived["german"][0] == pytest.approx(float(frame["german"][0].replace(".", "").replace(",", ".")))
    assert set(derived["smoker"]) == {"true", "false"}


def test_each_override_wins_and_a_misspelt_column_gets_a_did_you_mean():
    frame = hand_made()
    roles = infer_roles(
        frame,
        list(frame.columns),
        exclude=["site"],
        categorical=["weight"],
        continuous=["income"],
        datetime=["iso"],
    )
    assert [roles.columns[c].role for c in ("site", "weight", "income", "iso")] == [
        "excluded",
        "categorical",
        "number",
        "datetime",
    ]
    assert "data.exclude" in roles.columns["site"].reason
    with pytest.raises(GaalError, match="reads as a date"):
        infer_roles(frame, list(frame.columns), datetime=["site"])


@pytest.fixture(scope="module")
def clinic(tmp_path_factory):
    return make_clinic(tmp_path_factory.mktemp("clinic"), rows=SMALL)


@pytest.mark.parametrize("key", ["exclude", "categorical", "continuous", "datetime"])
def test_a_list_naming_no_column_is_refused_with_a_did_you_mean(clinic, key):
    result = runner.invoke(app, ["data", "inspect", str(clinic), *TRAIN, "--set", f"data.{key}=[income_usd]"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"field 'data.{key}'" in text and "no such column 'income_usd' (did you mean 'income'?)" in text


def test_id_column_override_names_the_rows(clinic):
    cfg = DataConfig(name=str(clinic), target="diagnosis", image_column="photo", image_size=16, id_column="photo")
    with pytest.raises(GaalError, match="did you mean 'record_id'"):
        build_data(cfg.model_copy(update={"id_column": "record"}), 0)
    cfg = cfg.model_copy(update={"id_column": "record_id", "rare_classes": "drop"})
    state = TableState.from_json(build_data(cfg, 0).preprocessing, "test")
    assert state.id_column == "record_id" and "record_id" not in state.features


def test_inspect_and_train_agree_on_a_class_missing_from_val(clinic, tmp_path):
    inspected = runner.invoke(app, ["data", "inspect", str(clinic), *TRAIN])
    trained = runner.invoke(app, ["train", "--dataset", str(clinic), *TRAIN, "-q", "--out", str(tmp_path / "run")])
    assert inspected.exit_code == trained.exit_code == 2
    error = inspected.stderr.strip()
    assert error == trained.stderr.strip() and not (tmp_path / "run" / "report.json").exists()
    text = " ".join(error.split())
    assert "class 'df' has 2 rows (train " in text and str(clinic) in text
    assert "field 'diagnosis'" in text and "line " in text


def test_rare_classes_dropped_by_name_or_kept_in_train(clinic):
    cfg = DataConfig(name=str(clinic), target="diagnosis", image_column="photo", image_size=16, skip_bad=True)
    dropped = build_data(cfg, 0)
    assert dropped.class_names == ["bkl", "mel", "nv"]
    [(reason, count)] = dropped.info["dropped"].items()
    assert reason.startswith("class 'df' has no row in the ") and reason.endswith("(column 'diagnosis')") and count == 2
    kept = build_data(cfg.model_copy(update={"skip_bad": False, "rare_classes": "train"}), 0)
    assert kept.class_names == ["bkl", "df", "mel", "nv"] and kept.info["train_only_classes"] == {"df": 2}
    assert (kept.train.labels == 1).sum() == 2 and (kept.val.labels == 1).sum() == (kept.test.labels == 1).sum() == 0


def test_skip_bad_that_empties_a_split_names_the_reasons(clinic):
    cfg = DataConfig(
        name=str(clinic),
        target="diagnosis",
        image_column="photo",
        image_size=16,
        skip_bad=True,
        continuous=["notes"],
    )
    with pytest.raises(GaalError) as err:
        build_data(cfg, 0)
    message = err.value.render()
    assert "would leave the train split empty" in message and "not a number (column 'notes')" in message
    assert "X" not in message.replace("SPLIT", "")


def test_round_trip_through_predict_with_a_new_id_date_and_category(clinic, tmp_path):
    run = tmp_path / "run"
    sets = [a for o in [*TINY, "train.epochs=1", "data.rare_classes=drop"] for a in ("--set", o)]
    result = runner.invoke(app, ["train", "--dataset", str(clinic), *TRAIN, "-q", "--out", str(run), *sets])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "preprocessing.json").read_text())
    state = TableState.from_json(saved, "test")
    assert state.id_column == "record_id" and state.features == ["visit_date", "income", "smoker", "site", "age"]
    new = tmp_path / "new"
    write_jpeg(new / "a.jpg", (150, 90, 60), np.random.default_rng(0), 12)
    rows = [
        "record_id,photo,visit_date,notes,income,smoker,site,age",
        'R-9,a.jpg,2030-06-01,a note never seen,"1,500,000",YES,scalp,',
        "R-10,a.jpg,not a date,,250000,no,back,44",
    ]
    (new / "t.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "p.csv"
    result = runner.invoke(app, ["predict", str(run), "--data", str(new / "t.csv"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    predicted = pd.read_csv(out)
    assert predicted.columns[0] == "record_id" and predicted["record_id"].tolist() == ["R-9", "R-10"]
    assert np.allclose(predicted.filter(like="prob_").sum(1), 1)
    assert "coded unknown: site 1" in result.output  # the new category
    encoded = apply_state(state, read_table(new / "t.csv"), new / "t.csv")
    names = list(state.encoding.names)
    days = names.index("visit_date days")
    origin = pd.Timestamp(state.roles.origins["visit_date"])
    mean, std = state.encoding.mean[days], state.encoding.std[days]
    expected = ((pd.Timestamp("2030-06-01") - origin).days - mean) / std
    assert encoded.tabular[0, days] == pytest.approx(expected, rel=1e-5)  # a date after every training date
    assert encoded.tabular[1, days] == pytest.approx((state.encoding.fill[days] - mean) / std, rel=1e-5)  # imputed
    income = names.index("income")
    expected = (1_500_000 - state.encoding.mean[income]) / state.encoding.std[income]
    assert encoded.tabular[0, income] == pytest.approx(expected)  # "1,500,000" read as a number


def test_problem_counts_keep_the_names():
    problems = Problems("t.csv", ["line 2", "line 3", "line 4"])
    problems.add(0, "'abc' is not a number", column="income", kind="not a number")
    problems.add(1, "'x' is not a number", column="income", kind="not a number")
    problems.add(2, "class 'df' has no row in the val split", column="diagnosis")
    assert problems.counts() == {
        "not a number (column 'income')": 2,
        "class 'df' has no row in the val split (column 'diagnosis')": 1,
    }


def test_report_takes_each_runs_sizes_from_its_own_record(tmp_path):
    root = tmp_path / "results"
    fake_run(root, "t1", "concat", 1, ["method=concat", "data.name=ham10000"], (0.7, 0.6, 0.5))
    fake_run(root, "t1", "gaal", 1, [], (0.8, 0.6, 0.5))
    report = root / "t1" / "concat" / "seed1" / "report.json"
    data = json.loads(report.read_text())
    data["data"] = {"classes": 7, "counts": {"train": 6410, "val": 1603, "test": 2002}}
    report.write_text(json.dumps(data))
    runs = load_runs(root).set_index("method")
    assert runs.loc["concat", ["n_train", "n_val", "n_test"]].tolist() == [6410, 1603, 2002]
    assert runs.loc["gaal", ["n_train", "n_val", "n_test"]].tolist() == [3000, 1000, 2000]  # its config's
    assert np.isnan(runs.loc["concat", "data.synthetic.n_train"])


def test_progress_bar_advances_every_step_and_reads_the_loss_on_a_timer():
    now = [0.0]
    reads = []
    bar = EpochProgress(enabled=True, clock=lambda: now[0])
    bar.progress.disable = True  # count, draw nothing
    bar.start_epoch(1, 1, steps=10)

    def stats():
        reads.append(now[0])
        return {"loss": 1.0}

    for step in range(1, 11):
        now[0] += 0.5
        bar.step(stats, force=step == 10)
        assert bar.progress.tasks[0].completed == step
    # one read per 2 s of steps (at 2.0, 4.0) and the forced one at the end of the epoch
    assert reads == [2.0, 4.0, 5.0]
