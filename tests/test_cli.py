import json

import pytest
from typer.testing import CliRunner

from gaal_cli.cli import app

runner = CliRunner()


def sets(overrides):
    return [arg for o in overrides for arg in ("--set", o)]


def test_train_then_eval_end_to_end(tmp_path, tiny):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--out", str(out), "--quiet", "--seed", "5", *sets(tiny)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    for split in ("val", "test"):
        for head in ("multi", "image", "tabular"):
            assert 0.0 <= report["metrics"][split][head]["acc"] <= 1.0
            assert "f1" in report["metrics"][split][head]
    assert report["seed"] == 5 and report["provenance"]["libraries"]["torch"]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    epoch = json.loads(lines[0])
    assert {"grad_cos_image", "surgery_tabular", "loss"} <= set(epoch["train"])
    assert (out / "config.yaml").exists() and (out / "checkpoint.pt").exists() and (out / "DONE").exists()
    assert not (out / "last.pt").exists()

    result = runner.invoke(app, ["eval", str(out), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["multi"]["acc"] == pytest.approx(report["metrics"]["test"]["multi"]["acc"])

    result = runner.invoke(app, ["eval", str(out / "checkpoint.pt"), "--missing", "tabular", "--json"])
    assert result.exit_code == 0, result.output
    missing = json.loads(result.stdout)["metrics"]
    assert set(missing) == {"multi", "image"}
    assert missing["multi"]["acc"] == pytest.approx(report["metrics"]["test"]["image"]["acc"])


def test_same_seed_same_metrics_on_cpu(tmp_path, tiny):
    reports = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = runner.invoke(app, ["train", "-m", "concat", "--out", str(out), "-q", *sets(tiny)])
        assert result.exit_code == 0, result.output
        reports.append(json.loads((out / "report.json").read_text())["metrics"])
    assert reports[0] == reports[1]


def test_bad_config_exits_2_without_traceback_or_files(tmp_path):
    exp = tmp_path / "bad.yaml"
    exp.write_text("train:\n  epochs: 2\n  learning_rate: 0.1\n")
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", str(exp), "--out", str(out)])
    assert result.exit_code == 2
    assert "train.learning_rate" in result.output and str(exp) in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--dataset", "nosuch"], "nosuch"),
        (["train", "--set", "model.image_backbone=resnet_nope"], "resnet_nope"),
        (["train", "--set", "model.weights=/no/such/weights.pth"], "model.weights"),
        (["eval", "/no/such/run"], "/no/such/run"),
        (["eval", ".", "--missing", "audio"], "audio"),
    ],
)
def test_bad_input_is_one_paragraph_exit_2(tmp_path, args, needle):
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "run")] if args[0] == "train" else args)
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_interrupted_run_leaves_no_report_and_resumes(tmp_path, tiny, monkeypatch):
    from gaal_cli.training import engine

    out = tmp_path / "run"
    calls = {"n": 0}
    original = engine.evaluate

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # validation of epoch 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(engine, "evaluate", flaky)
    result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets(tiny)])
    assert result.exit_code == 130
    assert not (out / "report.json").exists() and (out / "last.pt").exists()
    monkeypatch.setattr(engine, "evaluate", original)
    result = runner.invoke(app, ["train", "--out", str(out), "-q", *sets(tiny)])
    assert result.exit_code == 0, result.output
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    resumed = json.loads((out / "report.json").read_text())["metrics"]

    fresh = tmp_path / "fresh"
    result = runner.invoke(app, ["train", "--out", str(fresh), "-q", *sets(tiny)])
    assert result.exit_code == 0, result.output
    assert json.loads((fresh / "report.json").read_text())["metrics"] == resumed


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "train" in result.output and "eval" in result.output
    result = runner.invoke(app, ["train", "--help"])
    assert "--set" in result.output
