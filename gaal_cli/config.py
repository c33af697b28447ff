"""Typed, strictly validated experiment configuration.

Precedence: code defaults < experiment YAML < command-line flags < `--set key.sub=value`.
Every section refuses unknown keys and wrong types, and an error names the key and the file
(or the `--set` option) it came from. Each training method owns a settings model, registered
beside the method; `methods.<name>` in the YAML is validated against it.

The config knows no method: it asks the method catalog (gaal_cli.foundation.catalog) for the valid names
and for one method's settings class; the package's `__init__` hands the method registry
(gaal_cli.methods.registry) over to it before any config is built.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from gaal_cli.foundation.catalog import method_catalog
from gaal_cli.foundation.errors import GaalError, did_you_mean
from gaal_cli.foundation.limits import IMAGE_SIZE_MAX  # noqa: F401  (data.image_size's bound, read here too)

# seeds every generator the project seeds accepts (numpy's legacy seed is 32-bit), so a bad
# seed is a config error before anything is written, not an overflow deep in a run
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
# bounds on a YAML document (an experiment file, a run's config.yaml, a --set value): its size,
# its size once aliases are expanded (a few hundred bytes of nested aliases can expand to
# gigabytes, the 'billion laughs'), and its nesting. An experiment is a few kilobytes deep 4.
YAML_MAX_BYTES = 1_000_000
OVERRIDE_MAX_BYTES = 100_000
EXPANSION = 2  # an alias-free document of N bytes expands to at most ~2N nodes and characters
YAML_MAX_DEPTH = 64


def method_dependency_fields(method: str) -> tuple[str, ...]:
    """The settings of `method` that name another run (a teacher, a fixed model); () when the
    method is unknown. Each settings class lists them in its `dependency_fields`."""
    if method not in method_catalog().names():
        return ()
    return tuple(method_catalog().settings(method).dependency_fields)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated, and a
    float must be finite (`.inf` or `.nan` from YAML would otherwise train on NaN silently)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SyntheticConfig(Section):
    """The embedded dataset (see `gaal_cli.data.synthetic` for what each knob does).

    `regime` picks how the class is spread over the modalities; `dominance` dials the dominant
    regimes and the three noise knobs tune the complementary one (each is refused elsewhere).
    """

    regime: Literal["complementary", "table_dominant", "image_dominant"] = "complementary"
    dominance: float | None = Field(None, ge=0, le=1)
    n_train: int = Field(3000, ge=10)
    n_val: int = Field(1000, ge=10)
    n_test: int = Field(2000, ge=10)
    num_classes: int = Field(10, ge=4, le=40)
    n_continuous: int = Field(6, ge=1)
    n_categorical: int = Field(3, ge=1)
    tabular_noise: float = Field(0.8, ge=0)
    image_noise: float = Field(0.35, ge=0)
    shape_flip: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _knobs_of_the_regime(self) -> SyntheticConfig:
        if self.regime == "complementary" and self.dominance is not None:
            raise ValueError("dominance applies to the table_dominant and image_dominant regimes only")
        # compared with the defaults, not `model_fields_set`: a saved config spells every key out
        knobs = ("tabular_noise", "image_noise", "shape_flip")
        noise_knobs = [k for k in knobs if getattr(self, k) != type(self).model_fields[k].default]
        if self.regime != "complementary" and noise_knobs:
            verb = "tunes" if len(noise_knobs) == 1 else "tune"
            raise ValueError(
                f"{', '.join(noise_knobs)} {verb} the complementary regime only; "
                f"{self.regime} sets each modality's noise from dominance"
            )
        return self


class DataConfig(Section):
    """Which dataset, how it is loaded, and how a user table maps onto it."""

    name: str = "synthetic"
    dir: str | None = None
    image_size: int = Field(64, ge=8, le=IMAGE_SIZE_MAX)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    num_workers: int = Field(0, ge=0)
    augment: bool = False
    # where augmentation, scaling and normalisation of training images run: in the loader
    # (workers), or on the training device after a uint8 copy; auto = the device on a GPU
    augment_on: Literal["auto", "loader", "device"] = "auto"
    normalize: Literal["auto", "none", "imagenet"] = "auto"
    cache: bool = True
    target: str | None = None
    image_column: str | None = None
    split_column: str = "split"
    group_column: str | None = None
    id_column: str | None = None
    # a user table's column roles (gaal_cli/data/column_roles.py): inferred, these override them
    exclude: list[str] | None = None
    categorical: list[str] | None = None
    continuous: list[str] | None = None
    datetime: list[str] | None = None
    # a class with too few rows for a row in each split: a bad row per row (refuse; --skip-bad
    # drops it), dropped, or kept in the train split only
    rare_classes: Literal["refuse", "drop", "train"] = "refuse"
    missing: Literal["impute", "drop", "error"] = "impute"
    # a numeric target: N quantile bins as its classes; 0 keeps every value a class; unset refuses a
    # target that looks continuous (gaal_cli/data/target.py)
    target_bins: int | None = Field(None, ge=0, le=1000)
    # rows of val or test that share an image with an earlier split's, or repeat its features
    # (gaal_cli/data/leakage.py): a warning; kept in one split by gaal's split; or dropped
    leakage: Literal["warn", "group", "drop"] = "warn"
    # a modality absent at test only (trained with both): `tabular` is Table I's test-time
    # tabular-missing setting, GAAL* its GAAL row; the test metrics are scored without it
    test_missing: Literal["none", "tabular", "image"] = "none"
    allow_outside_paths: bool = False
    skip_bad: bool = False
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(Section):
    """Encoders shared by every method: a timm image backbone and a tabular MLP.

    Where the image backbone's starting weights come from: `weights` (a local file: a timm or
    torchvision state dict, or a gaal checkpoint's image backbone), else `pretrained` (timm's
    hub, when the host reaches it), else random. `init_from` names another run (its folder or
    checkpoint) whose encoders (those listed in `init_encoders`) start this run, replacing those
    starting weights: a dependency, like a teacher (gaal_cli.runs.dependencies).
    """

    image_backbone: str = "test_resnet"
    pretrained: bool = False
    weights: str | None = None
    # `weights` is loaded strictly: every backbone tensor found by name and shape, every tensor of
    # the file used (gaal_cli.models.encoders.load_strictly); these two loosen that explicitly
    weights_prefix: str = Field("", description="removed from the weights file's names first (e.g. 'backbone.')")
    weights_min_match: float = Field(
        1.0, gt=0, le=1, description="fraction of the backbone's tensors the file must cover"
    )
    init_from: str | None = None
    init_encoders: list[Literal["image", "tabular"]] = Field(["image", "tabular"], min_length=1)
    feature_dim: int = Field(256, ge=1)
    tabular_hidden: list[int] = [256, 256]
    dropout: float = Field(0.0, ge=0, lt=1)


class TrainConfig(Section):
    """Optimisation, early stopping and hardware settings shared by every method."""

    epochs: int = Field(8, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["step", "cosine", "none"] = "step"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    patience: int = Field(10, ge=1)
    stage_fit: Literal["scale", "refuse"] = Field(
        "scale", description="when a method's stages do not fit train.epochs: shrink them in proportion, or refuse"
    )
    min_delta: float = Field(
        0.0, ge=0, description="early stopping counts an epoch as progress only if val improves by more than this"
    )
    monitor: Literal["multi", "image", "tabular"] = "multi"
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = True
    threads: int | None = Field(None, ge=1)
    tensorboard: bool = Field(
        False,
        description="also write TensorBoard event files beside metrics.jsonl, with the same scalars "
        "(needs the optional extra: pip install 'gaal[tensorboard]')",
    )
    class_weights: Literal["none", "balanced"] = "none"


class Config(Section):
    """A whole experiment: what to train, on what, and how."""

    name: str = "quickstart"
    seed: Seed = 2022
    method: str = "gaal"
    methods: dict[str, SerializeAsAny[BaseModel]] = {}
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("name")
    @classmethod
    def _relative_name(cls, name: str) -> str:
        # runs go to <results>/<name>/...: a name must not lead out of --results
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if not parts or name.startswith(("/", "~")) or ".." in parts or re.search(r"[\x00-\x1f]|^[A-Za-z]:", name):
            raise ValueError(
                "the experiment name is a folder path under --results: relative, without '..' or control characters"
            )
        return name

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        names = method_catalog().names()
        if name not in names:
            hint = did_you_mean(name, names)
            raise ValueError(f"unknown method '{name}'{hint}; expected one of: {', '.join(sorted(names))}")
        return name

    @field_validator("methods", mode="before")
    @classmethod
    def _typed_method_settings(cls, raw: Any) -> dict[str, BaseModel]:
        # GaalError is not a ValueError, so pydantic lets it through with its key and message
        return _validate_methods(raw, "the config", {})

    def method_settings(self, name: str | None = None) -> BaseModel:
        """The typed settings of `name` (default: the active method), defaults filled in."""
        name = name or self.method
        return self.methods.get(name) or method_catalog().settings(name)()

    def dependencies(self) -> dict[str, str]:
        """Other runs this one needs, by dotted key: `model.init_from` and the active method's
        checkpoint fields (a teacher, a fixed model). Unset ones are left out."""
        found = {"model.init_from": self.model.init_from}
        settings = self.method_settings()
        for field in type(settings).dependency_fields:
            found[f"methods.{self.method}.{field}"] = getattr(settings, field)
        return {key: value for key, value in found.items() if value}

    def resolved(self) -> dict[str, Any]:
        """The config as saved in a run folder: the active method's settings spelled out."""
        data = self.model_dump(mode="json")
        data["methods"] = {self.method: self.method_settings().model_dump(mode="json")}
        return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b=value` into (['a', 'b'], parsed value); the value is read as YAML."""
    key, sep, value = text.partition("=")
    source = f"--set {_shorten(text)}"
    if not sep or not key.strip():
        raise GaalError("expected KEY=VALUE, for example train.epochs=5", source=source)
    try:
        parsed = parse_yaml(value, source, OVERRIDE_MAX_BYTES) if value.strip() else None
    except yaml.YAMLError as err:
        raise GaalError(f"the value is not valid YAML ({_shorten(str(err))})", source=source) from None
    return key.strip().split("."), parsed


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


_BOOL, _INT, _FLOAT, _TIMESTAMP = (f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "timestamp"))
_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema for plain scalars, and duplicate keys refused.

    PyYAML reads YAML 1.1, whose surprises are silent changes of a setting: `1:00` is 60
    (sexagesimal), `010` is 8 (octal), `yes`/`no`/`on`/`off` are booleans, `2022-01-01` a date.
    Here only `true`/`false` are booleans, `[-+]digits`, `0o17` and `0xff` integers (`010` is
    10), the usual decimals, `.inf` and `.nan` floats; anything else stays a string, which the
    config's types then refuse with the key's name. A key given twice in one mapping is an error
    naming both lines (PyYAML lets the later one win); `<<` merge keys still override.
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, str] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            mark = key_node.start_mark
            where = f"line {mark.line + 1}" + (f", column {mark.column + 1}" if node.flow_style else "")
            try:
                first = seen.setdefault(key, where)
            except TypeError:  # an unhashable key: PyYAML refuses it itself
                continue
            if first is not where:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{_shorten(str(key))}' (first at {first}, again at {where})", mark
                )
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        value = self.construct_scalar(node)
        if value.startswith("0o"):
            return int(value[2:], 8)
        return int(value, 16) if value.startswith("0x") else int(value)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        value = self.construct_scalar(node).lower()
        return float(value.replace(".inf", "inf").replace(".nan", "nan"))


Yaml12Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
Yaml12Loader.add_implicit_resolver(_INT, _INT_12, list("-+0123456789"))
Yaml12Loader.add_implicit_resolver(_FLOAT, _FLOAT_12, list("-+0123456789."))
Yaml12Loader.add_constructor(_INT, Yaml12Loader.construct_yaml_int)
Yaml12Loader.add_constructor(_FLOAT, Yaml12Loader.construct_yaml_float)


def parse_yaml(text: str, source: str, max_bytes: int = YAML_MAX_BYTES) -> Any:
    """A YAML 1.2 document (`Yaml12Loader`: no 1.1 surprises, no duplicate keys) with bounded
    work: the text's size, and the document's size with every alias expanded, counted on the
    composed node graph (each node once) before anything is built.

    Raises:
        GaalError: a document too large, too deeply nested, or with a recursive alias.
        yaml.YAMLError: malformed YAML (the caller names the place).
    """
    if len(text.encode()) > max_bytes:
        raise GaalError(f"is {len(text.encode()):,} bytes; at most {max_bytes:,} are read", source=source)
    loader = Yaml12Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise GaalError(f"nested more than {YAML_MAX_DEPTH} levels deep", source=source) from None
        if node is None:
            return None
        expanded = _expanded_size(node, {}, set(), 0, source)
        if expanded > EXPANSION * max_bytes:
            raise GaalError(
                f"expands (through its aliases) to {expanded:,} nodes and characters; at most "
                f"{EXPANSION * max_bytes:,} are read. Write the values out instead of nesting aliases",
                source=source,
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int], depth: int, source: str) -> int:
    """Nodes plus scalar characters of `node` with aliases expanded; each node is counted once
    (`sizes`), so the work is linear in the file whatever the expansion."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise GaalError("holds an alias that contains itself (a recursive document)", source=source)
    if depth > YAML_MAX_DEPTH:
        raise GaalError(f"nested more than {YAML_MAX_DEPTH} levels deep", source=source)
    if isinstance(node, yaml.ScalarNode):
        size = 1 + len(node.value)
    else:
        open_nodes.add(key)
        pairs = node.value if isinstance(node, yaml.MappingNode) else [(child,) for child in node.value]
        size = 1
        for pair in pairs:
            for child in pair:
                size += _expanded_size(child, sizes, open_nodes, depth + 1, source)
        open_nodes.discard(key)
    sizes[key] = size
    return size


def _shorten(text: str, limit: int = 200) -> str:
    """A value quoted in an error message: a huge one would make a huge message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def read_yaml(path: Path) -> dict:
    """Read an experiment file as a mapping, with errors that name the file and line."""
    if not path.is_file():
        raise GaalError("no such experiment file", source=str(path))
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GaalError(f"expected a mapping of settings at the top level, got {type(data).__name__}", source=str(path))
    return data


def read_yaml_file(path: Path) -> Any:
    """A YAML file's document (bounded, see `parse_yaml`); errors name the file and line."""
    try:
        if path.stat().st_size > YAML_MAX_BYTES:
            raise GaalError(f"is {path.stat().st_size:,} bytes; at most {YAML_MAX_BYTES:,} are read", source=str(path))
        return parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as err:
        raise GaalError(f"is not UTF-8 text (byte {err.start})", source=str(path)) from None
    except OSError as err:
        raise GaalError(f"cannot be read ({err.strerror or err})", source=str(path)) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = _shorten(str(getattr(err, "problem", err)))
        raise GaalError(f"malformed YAML{where}: {problem}", source=str(path)) from None


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Config:
    """Build a validated Config from an optional YAML file, flags and `--set` overrides.

    Args:
        path: experiment YAML file, or None for the defaults.
        overrides: `key.sub=value` strings, applied last.
        flags: dotted keys from the common command-line flags (None values are ignored).

    Raises:
        GaalError: malformed YAML, unknown key, wrong type; the message names key and source.
    """
    tree = read_yaml(Path(path)) if path else {}
    if "sweep" in tree:
        raise GaalError(
            f"this is a sweep file (it has a 'sweep' block, a grid of runs); run it with `gaal sweep {path}`",
            source=str(path),
        )
    if path and "name" not in tree:
        tree["name"] = Path(path).stem
    return config_from_mapping(tree, str(path) if path else "the default config", overrides, flags)


def config_from_mapping(
    tree: dict,
    source: str,
    overrides: list[str] | tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
) -> Config:
    """Like `load_config`, for settings already read (a sweep's grid point); `source` names them."""
    tree = copy.deepcopy(tree)
    origin: dict[tuple[str, ...], str] = {}
    for key, value in (flags or {}).items():
        if value is not None:
            apply_override(tree, key.split("."), value)
            origin[tuple(key.split("."))] = f"--{key.split('.')[-1].replace('_', '-')}"
    for text in overrides:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
        origin[tuple(keys)] = f"--set {_shorten(text)}"
    # everything but the method blocks first: checking a block imports its method (and torch)
    methods = tree.pop("methods", None)
    try:
        config = Config.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, source, origin) from None
    config.methods = _validate_methods(methods, source, origin)
    return config


def _validate_methods(raw: Any, source: str, origin: dict[tuple[str, ...], str]) -> dict[str, BaseModel]:
    """Validate each `methods.<name>` block against that method's own settings model."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GaalError("expected a mapping from method name to its settings", source=source, field="methods")
    typed = {}
    for name, settings in raw.items():
        names = method_catalog().names()
        if name not in names:
            src = next((o for k, o in origin.items() if k[:2] == ("methods", name)), source)
            valid = ", ".join(sorted(names))
            hint = did_you_mean(name, names)
            raise GaalError(f"unknown method{hint}; expected one of: {valid}", source=src, field=f"methods.{name}")
        spec = method_catalog().settings(name)
        if isinstance(settings, spec):
            typed[name] = settings
            continue
        try:
            typed[name] = spec.model_validate(settings or {})
        except ValidationError as err:
            raise _explain(err, source, origin, prefix=("methods", name), model=spec) from None
    return typed


def _section_fields(loc: tuple, model: Any = Config) -> list[str]:
    """Valid keys of the section that contains `loc` (for 'did you mean' help)."""
    for part in loc[:-1]:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def _explain(
    err: ValidationError,
    source: str,
    origin: dict[tuple[str, ...], str],
    prefix: tuple[str, ...] = (),
    model: Any = Config,
) -> GaalError:
    first = err.errors()[0]
    inner = tuple(str(p) for p in first["loc"])
    loc = prefix + inner
    key = ".".join(loc)
    # a --set of an unknown section (trian.epochs=2) fails at the section, above the key it set
    src = next((o for k, o in origin.items() if loc[: len(k)] == k or k[: len(loc)] == loc), source)
    msg, got = first["msg"].removeprefix("Value error, "), first.get("input")
    if first["type"] == "extra_forbidden":
        valid = _section_fields(inner, model)
        hint = f"; expected one of: {', '.join(valid)}" if valid else ""
        message = f"unknown key{did_you_mean(inner[-1], valid)}{hint}"
    elif isinstance(got, dict):
        message = msg
    else:
        allowed = re.findall(r"'([^']*)'", first["ctx"]["expected"]) if first["type"] == "literal_error" else []
        message = f"{msg} (got {_shorten(repr(got))}){did_you_mean(got, allowed)}"
    more = len(err.errors()) - 1
    if more:
        message += f" [and {more} more problem{'s' if more > 1 else ''}]"
    return GaalError(message, source=src, field=key)

