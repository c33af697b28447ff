"""Building a run's method: its encoders (gaal_cli.models), its dependencies' weights, and the
registered method class around them. One place for training, evaluation and the frozen
teachers that another run uses (gaal_cli.training.trained_run), so they are built alike.
"""

from __future__ import annotations

from gaal_cli.config import Config
from gaal_cli.methods.base import Method, MethodSettings
from gaal_cli.methods.registry import method_spec
from gaal_cli.models import build_encoders
from gaal_cli.models.encoders import Encoders
from gaal_cli.runs.dependencies import Dependency, init_encoders


def build_method(
    name: str, settings: MethodSettings, encoders: Encoders, num_classes: int, dependencies: dict | None = None
) -> Method:
    """Build a registered method; one with dependency fields also gets the loaded dependencies."""
    cls = method_spec(name).cls
    if type(settings).dependency_fields:
        return cls(encoders, num_classes, settings, dependencies=dependencies or {})
    return cls(encoders, num_classes, settings)


def build_run_method(
    config: Config,
    field_lengths: tuple[int, ...],
    num_classes: int,
    *,
    initial_weights: bool = True,
    dependencies: dict[str, Dependency] | None = None,
) -> Method:
    """The method `config` trains, for a table of `field_lengths` and `num_classes` classes.

    Args:
        initial_weights: load the pretrained or `model.weights` image weights; a method about to
            receive a checkpoint's weights skips them (no download, no file from the training host).
        dependencies: its loaded dependencies (gaal_cli.runs.dependencies), keyed by config key:
            `model.init_from` starts the encoders, the method's own (`methods.<name>.<field>`) go
            to the method by field name.
    """
    m = config.model
    dependencies = dependencies or {}
    encoders = build_encoders(
        tuple(field_lengths),
        image_backbone=m.image_backbone,
        feature_dim=m.feature_dim,
        tabular_hidden=m.tabular_hidden,
        pretrained=m.pretrained and initial_weights,
        weights=m.weights if initial_weights else None,
        weights_prefix=m.weights_prefix,
        weights_min_match=m.weights_min_match,
        dropout=m.dropout,
    )
    start = dependencies.get("model.init_from")
    if start is not None and start.state is not None:
        init_encoders(encoders, start, m.init_encoders)
    own = {key.rsplit(".", 1)[-1]: dep for key, dep in dependencies.items() if key.startswith("methods.")}
    return build_method(config.method, config.method_settings(), encoders, num_classes, own)


def create_method(config: Config, data, dependencies: dict[str, Dependency] | None = None) -> Method:
    """The method of `config` for `data` (a DataBundle: its table's field lengths and classes)."""
    return build_run_method(config, data.schema.field_lengths, data.num_classes, dependencies=dependencies)
