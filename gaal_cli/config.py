"""Typed, strictly validated experiment configuration.

Precedence: code defaults < experiment YAML < command-line flags < `--set key.sub=value`.
Every section refuses unknown keys and wrong types, and an error names the key and the file
(or the `--set` option) it came from. Each training method owns a settings model, registered
beside the method; `methods.<name>` in the YAML is validated against it.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator

from gaal_cli.errors import GaalError, did_you_mean


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(Section):
    """The embedded dataset (see `gaal_cli.data.synthetic` for what each knob does)."""

    n_train: int = Field(3000, ge=10)
    n_val: int = Field(1000, ge=10)
    n_test: int = Field(2000, ge=10)
    num_classes: int = Field(10, ge=4, le=40)
    n_continuous: int = Field(6, ge=1)
    n_categorical: int = Field(3, ge=1)
    tabular_noise: float = Field(0.8, ge=0)
    image_noise: float = Field(0.35, ge=0)
    shape_flip: float = Field(0.1, ge=0, le=1)


class DataConfig(Section):
    """Which dataset, how it is loaded, and how a user table maps onto it."""

    name: str = "synthetic"
    dir: str | None = None
    image_size: int = Field(64, ge=8)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    num_workers: int = Field(0, ge=0)
    augment: bool = False
    normalize: Literal["auto", "none", "imagenet"] = "auto"
    cache: bool = True
    target: str | None = None
    image_column: str | None = None
    split_column: str = "split"
    categorical: list[str] | None = None
    continuous: list[str] | None = None
    skip_bad: bool = False
    synthetic: SyntheticConfig = SyntheticConfig()


class ModelConfig(Section):
    """Encoders shared by every method: a timm image backbone and a tabular MLP.

    Where the image backbone's starting weights come from: `weights` (a local file: a timm or
    torchvision state dict, or a gaal checkpoint's image backbone), else `pretrained` (timm's
    hub, when the host reaches it), else random. `init_from` names another run (its folder or
    checkpoint) whose encoders (those listed in `init_encoders`) start this run, replacing those
    starting weights: a dependency, like a teacher (gaal_cli.dependencies).
    """

    image_backbone: str = "test_resnet"
    pretrained: bool = False
    weights: str | None = None
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
    monitor: Literal["multi", "image", "tabular"] = "multi"
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = True
    threads: int | None = Field(None, ge=1)


class Config(Section):
    """A whole experiment: what to train, on what, and how."""

    name: str = "quickstart"
    seed: int = 2022
    method: str = "gaal"
    methods: dict[str, SerializeAsAny[BaseModel]] = {}
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("method")
    @classmethod
    def _known_method(cls, name: str) -> str:
        from gaal_cli.methods import METHODS

        if name not in METHODS:
            hint = did_you_mean(name, METHODS)
            raise ValueError(f"unknown method '{name}'{hint}; expected one of: {', '.join(sorted(METHODS))}")
        return name

    @field_validator("methods", mode="before")
    @classmethod
    def _typed_method_settings(cls, raw: Any) -> dict[str, BaseModel]:
        # GaalError is not a ValueError, so pydantic lets it through with its key and message
        return _validate_methods(raw, "the config", {})

    def method_settings(self, name: str | None = None) -> BaseModel:
        """The typed settings of `name` (default: the active method), defaults filled in."""
        from gaal_cli.methods import METHODS

        name = name or self.method
        return self.methods.get(name) or METHODS[name].settings()

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
    if not sep or not key.strip():
        raise GaalError("expected KEY=VALUE, for example train.epochs=5", source=f"--set {text}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise GaalError(f"the value is not valid YAML ({err})", source=f"--set {text}") from None
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


def read_yaml(path: Path) -> dict:
    """Read an experiment file as a mapping, with errors that name the file and line."""
    if not path.is_file():
        raise GaalError("no such experiment file", source=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GaalError(f"malformed YAML{where}: {getattr(err, 'problem', err)}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GaalError(f"expected a mapping of settings at the top level, got {type(data).__name__}", source=str(path))
    return data


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
        origin[tuple(keys)] = f"--set {text}"
    tree["methods"] = _validate_methods(tree.get("methods"), source, origin)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, source, origin) from None


def _validate_methods(raw: Any, source: str, origin: dict[tuple[str, ...], str]) -> dict[str, BaseModel]:
    """Validate each `methods.<name>` block against that method's own settings model."""
    from gaal_cli.methods import METHODS

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise GaalError("expected a mapping from method name to its settings", source=source, field="methods")
    typed = {}
    for name, settings in raw.items():
        if name not in METHODS:
            src = next((o for k, o in origin.items() if k[:2] == ("methods", name)), source)
            valid = ", ".join(sorted(METHODS))
            hint = did_you_mean(name, METHODS)
            raise GaalError(f"unknown method{hint}; expected one of: {valid}", source=src, field=f"methods.{name}")
        spec = METHODS[name].settings
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
        message = f"{msg} (got {got!r}){did_you_mean(got, allowed)}"
    more = len(err.errors()) - 1
    if more:
        message += f" [and {more} more problem{'s' if more > 1 else ''}]"
    return GaalError(message, source=src, field=key)


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.resolved(), sort_keys=False))
