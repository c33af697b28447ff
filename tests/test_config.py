import pytest

from gaal_cli.config import load_config, parse_override
from gaal_cli.foundation.errors import GaalError


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_and_yaml_and_override_precedence(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 5\n  lr: 0.01\nmethods:\n  gaal:\n    epsilon: 0.2\n")
    config = load_config(path, ["train.epochs=7"], {"seed": 3})
    assert config.name == "exp"
    assert config.train.epochs == 7 and config.train.lr == 0.01 and config.seed == 3
    assert config.method_settings().epsilon == 0.2
    assert config.train.weight_decay == 1e-4  # official GAAL default kept


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  epocs: 5\n")
    with pytest.raises(GaalError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and "train.epocs" in text and "epochs" in text


def test_wrong_type_names_key(tmp_path):
    path = write(tmp_path, "data:\n  batch_size: lots\n")
    with pytest.raises(GaalError, match="data.batch_size") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unknown_method_setting_names_method_key(tmp_path):
    path = write(tmp_path, "methods:\n  gaal:\n    lambda_img: 0.3\n")
    with pytest.raises(GaalError, match=r"methods\.gaal\.lambda_img.*lambda_image"):
        load_config(path)


def test_bad_override_is_attributed_to_the_option():
    with pytest.raises(GaalError, match=r"--set train.lr=-1.*train.lr"):
        load_config(overrides=["train.lr=-1"])
    with pytest.raises(GaalError, match="KEY=VALUE"):
        load_config(overrides=["train.lr"])


def test_unknown_method_lists_valid_names():
    with pytest.raises(GaalError, match="concat.*gaal"):
        load_config(flags={"method": "gaaal"})


def test_malformed_yaml_names_line(tmp_path):
    path = write(tmp_path, "train:\n  epochs: [1, 2\n")
    with pytest.raises(GaalError, match=r"malformed YAML at line"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(GaalError, match="no such experiment file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(GaalError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_override_values_are_parsed_as_yaml():
    assert parse_override("model.tabular_hidden=[8, 4]") == (["model", "tabular_hidden"], [8, 4])
    assert parse_override("methods.gaal.cgs=false") == (["methods", "gaal", "cgs"], False)


def test_resolved_config_spells_out_active_method_only():
    resolved = load_config(flags={"method": "concat"}).resolved()
    assert list(resolved["methods"]) == ["concat"]
