"""Property: any experiment mapping and any `--set` string gives a valid config or a GaalError
(exit code 2, one paragraph) - never another exception, never a traceback.

The mappings are drawn near the real schema (real section and key names, values of every YAML
type including non-finite floats and huge integers) so that most reach the field validators
instead of stopping at the first unknown key. Bounded examples and no training: seconds."""

import math

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import Config, config_from_mapping, load_config
from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods import METHODS

runner = CliRunner()
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CLI = settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def text(max_size: int) -> st.SearchStrategy:
    """Any text a file or a command line can hold (no lone surrogates: they are not UTF-8)."""
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    text(12),
    st.sampled_from(["gaal", "concat", "synthetic", "dvm", "x.csv", "cpu", "auto", "adam", "step", "multi"]),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text(6), inner, max_size=3), max_leaves=8
)


def typed(annotation) -> st.SearchStrategy:
    """Values of a field's own type, edge cases included (non-finite floats, huge integers)."""
    if annotation is float:
        return st.floats(allow_nan=True, allow_infinity=True)
    if annotation is int or annotation == int | None:
        return st.integers(min_value=-(2**70), max_value=2**70)
    return values


def section(model: type[BaseModel], depth: int = 0) -> st.SearchStrategy:
    """Mappings over `model`'s own keys (and now and then an unknown one), nested sections alike."""
    fields = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and depth < 2:
            fields[name] = section(annotation, depth + 1) | values
        else:
            fields[name] = typed(annotation) | values
    known = st.sampled_from(sorted(fields)).flatmap(lambda key: st.tuples(st.just(key), fields[key]))
    unknown = st.tuples(text(8), values)
    return st.lists(st.one_of(known, known, known, known, unknown), max_size=4).map(dict)


method_blocks = st.dictionaries(
    st.sampled_from(sorted(METHODS)) | text(6),
    st.sampled_from(sorted(METHODS)).flatmap(lambda name: section(METHODS[name].settings)) | values,
    max_size=2,
)
experiments = section(Config).flatmap(
    lambda tree: st.one_of(st.just(tree), method_blocks.map(lambda methods: {**tree, "methods": methods}))
)
dotted_keys = st.sampled_from(
    ["seed", "method", "name", "train.lr", "train.epochs", "data.name", "data.synthetic.shape_flip", "model.dropout"]
    + [f"methods.{name}.{key}" for name in ("gaal", "concat") for key in METHODS[name].settings.model_fields]
) | text(12)
sweep_blocks = st.fixed_dictionaries(
    {},
    optional={
        "seeds": st.lists(st.integers(min_value=-(2**70), max_value=2**70), max_size=2) | values,
        "grid": st.dictionaries(dotted_keys, st.lists(values, max_size=3), max_size=2) | values,
        "variant": st.sampled_from(["{method}", "{seed}", "{nope}", "a/b", ""]) | values,
    },
)
edge_values = st.sampled_from([".inf", "-.inf", ".nan", "1e400", str(2**64), str(2**32), "-1", "0", "0.5", "7"])
set_strings = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", dotted_keys, edge_values),  # mostly valid, save the edge cases
    st.builds(lambda k, v: f"{k}={v}", dotted_keys, edge_values),
    st.builds(lambda k, v: f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}", dotted_keys, values),
    st.builds(lambda k, v: f"{k}={v}", dotted_keys, text(30)),
    text(30),
)


def floats(tree):
    if isinstance(tree, dict):
        return [f for value in tree.values() for f in floats(value)]
    if isinstance(tree, list):
        return [f for value in tree for f in floats(value)]
    return [tree] if isinstance(tree, float) else []


def valid_or_gaal_error(build) -> None:
    """A config that validates is one a run can use: finite numbers, a seed every generator
    takes, and it reads back as itself from the config.yaml a run folder would hold."""
    try:
        config = build()
    except GaalError as err:
        assert err.render().strip()
        return
    resolved = config.resolved()
    assert all(math.isfinite(f) for f in floats(resolved)), resolved
    assert 0 <= config.seed < 2**32
    again = config_from_mapping(yaml.safe_load(yaml.safe_dump(resolved)), "config.yaml")
    assert again.resolved() == resolved


@FAST
@given(experiments)
def test_any_experiment_mapping_is_a_config_or_a_gaal_error(tree):
    valid_or_gaal_error(lambda: config_from_mapping(tree, "hypothesis"))


@FAST
@given(st.lists(set_strings, max_size=3))
def test_any_set_strings_are_a_config_or_a_gaal_error(overrides):
    valid_or_gaal_error(lambda: load_config(overrides=overrides))


def no_traceback(result) -> None:
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


@CLI
@given(experiments, st.none() | sweep_blocks, st.lists(set_strings, max_size=2))
def test_any_experiment_file_and_set_strings_exit_0_or_2_in_a_dry_run(tmp_path_factory, tree, sweep, overrides):
    folder = tmp_path_factory.mktemp("exp")
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(tree if sweep is None else {**tree, "sweep": sweep}))
    args = ["sweep", str(path), "--dry-run", "--results", str(folder / "r")]
    result = runner.invoke(app, [*args, *(arg for o in overrides for arg in ("--set", o))])
    no_traceback(result)
    assert not (folder / "r").exists()
