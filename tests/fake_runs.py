"""Stand-ins for other runs' checkpoints, for tests of methods that need one (KD, FMR)."""

import torch
from conftest import TINY

from gaal_cli.config import load_config
from gaal_cli.data import build_data
from gaal_cli.methods import METHODS
from gaal_cli.training.engine import checkpoint, create_method


def fake_checkpoint(path, method, overrides=()):
    """Write a checkpoint of a freshly built (untrained) tiny `method` run to `path`."""
    config = load_config(overrides=[*TINY, f"method={method}", *overrides])
    data = build_data(config.data, 0)
    torch.manual_seed(0)
    model = create_method(config, data)
    provenance = {"data": {"classes": data.num_classes, "field_lengths": list(data.schema.field_lengths)}}
    torch.save({**checkpoint(model, config, 1, 0.0), **provenance, "dependencies": {}}, path)
    return path


def dependency_overrides(method, checkpoint):
    """`methods.<method>.<field>=checkpoint` for each dependency a method needs (none for most)."""
    return [f"methods.{method}.{field}={checkpoint}" for field in METHODS[method].settings.dependency_fields]
