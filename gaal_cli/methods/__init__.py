"""Training methods, registered by name (`--method NAME`): the interface a method module imports,
and one module per method. Imports runs, models, data, the config and the foundation.

A method module defines a `Method` subclass and its `MethodSettings` and registers both with
`@register_method` (README, "Add a method"). The names below are that public interface; they
load on first use, so `import gaal_cli.methods` costs nothing (no torch) until one is asked for,
and a built-in method's module is imported only when that method is (gaal_cli.methods.registry).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "METHODS",
    "MODALITIES",
    "Batch",
    "Dependency",
    "Encoders",
    "GaalError",
    "Method",
    "MethodSettings",
    "MethodSpec",
    "PlannedStage",
    "Predictions",
    "Stage",
    "StageOptimizer",
    "StagedSettings",
    "accuracy",
    "all_methods",
    "build_method",
    "create_method",
    "cross_entropy",
    "fuse_missing",
    "load_plugins",
    "method_names",
    "method_spec",
    "register_method",
    "required_dependency",
]

# public name -> the module that defines it (each a layer below the methods, or the registry)
_HOMES = {
    "MODALITIES": "gaal_cli.methods.base",
    "Method": "gaal_cli.methods.base",
    "MethodSettings": "gaal_cli.methods.base",
    "Predictions": "gaal_cli.methods.base",
    "accuracy": "gaal_cli.methods.base",
    "cross_entropy": "gaal_cli.methods.base",
    "fuse_missing": "gaal_cli.methods.base",
    "build_method": "gaal_cli.methods.build",
    "create_method": "gaal_cli.methods.build",
    "MethodSpec": "gaal_cli.methods.registry",
    "register_method": "gaal_cli.methods.registry",
    "method_names": "gaal_cli.methods.registry",
    "method_spec": "gaal_cli.methods.registry",
    "all_methods": "gaal_cli.methods.registry",
    "load_plugins": "gaal_cli.methods.registry",
    "Batch": "gaal_cli.data.base",
    "Encoders": "gaal_cli.models.encoders",
    "Dependency": "gaal_cli.runs.dependencies",
    "required_dependency": "gaal_cli.runs.dependencies",
    "Stage": "gaal_cli.methods.stages",
    "StagedSettings": "gaal_cli.methods.stages",
    "StageOptimizer": "gaal_cli.methods.stages",
    "PlannedStage": "gaal_cli.methods.stages",
    "GaalError": "gaal_cli.foundation.errors",
}


def __getattr__(name: str) -> Any:
    if name == "METHODS":  # every method, each module imported (for listing them all)
        from gaal_cli.methods.registry import METHODS, all_methods

        all_methods()
        return METHODS
    if name not in _HOMES:
        raise AttributeError(f"module 'gaal_cli.methods' has no attribute '{name}'")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
