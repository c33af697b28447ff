"""The method registry: names to (method class, settings class), loaded only when asked for.

The names of the built-in methods are known here without importing them (or torch): the CLI
checks `--method NAME` and the config's keys in milliseconds, and importing a method's module
is what `method_spec(name)` does the first time that method is needed, which registers it
(`@register_method`). Checking a `methods.<name>` block needs its settings class, so it imports
that one method's module (and torch with it), no other.

This module imports nothing of the package but the errors (no pydantic, no torch): every method
module imports it (through `gaal_cli.methods.base`), so it sits below all of them. It is the
config's method catalog (`CATALOG`, gaal_cli.catalog), handed over by `gaal_cli/__init__.py`
before anything else runs: a config never validates without it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gaal_cli.errors import did_you_mean

#: built-in methods: name -> the module that registers it
BUILTIN_METHODS = {
    "arl": "gaal_cli.methods.arl",
    "charms": "gaal_cli.methods.charms",
    "concat": "gaal_cli.methods.concat",
    "daft": "gaal_cli.methods.daft",
    "dgl": "gaal_cli.methods.dgl",
    "di_mml": "gaal_cli.methods.di_mml",
    "dmrnet": "gaal_cli.methods.dmrnet",
    "fmr": "gaal_cli.methods.fmr",
    "gaal": "gaal_cli.methods.gaal",
    "igm": "gaal_cli.methods.igm",
    "image": "gaal_cli.methods.unimodal",
    "kd": "gaal_cli.methods.kd",
    "lfm": "gaal_cli.methods.lfm",
    "max": "gaal_cli.methods.max_fusion",
    "mfh": "gaal_cli.methods.mfh",
    "mla": "gaal_cli.methods.mla",
    "mmanet": "gaal_cli.methods.mmanet",
    "mmcl": "gaal_cli.methods.mmcl",
    "mmpareto": "gaal_cli.methods.mmpareto",
    "ogm_ge": "gaal_cli.methods.ogm_ge",
    "reconboost": "gaal_cli.methods.reconboost",
    "tabular": "gaal_cli.methods.unimodal",
    "tip": "gaal_cli.methods.tip",
}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its class (a `Method`) and its settings class (a `MethodSettings`)."""

    cls: Any
    settings: Any


#: methods registered so far (a built-in registers when its module is first imported)
METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, settings: type) -> Callable[[type], type]:
    """Class decorator: make a method available as `--method NAME`, with its settings class."""

    def wrap(cls: type) -> type:
        METHODS[name] = MethodSpec(cls, settings)
        return cls

    return wrap


def load_plugins() -> None:
    """Methods from other packages would be imported here (issue 22: entry points), so that they
    register like the built-ins. There are none yet."""


def method_names() -> list[str]:
    """Every method that `--method` accepts, sorted; no method module is imported."""
    load_plugins()
    return sorted(set(BUILTIN_METHODS) | set(METHODS))


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`, importing its module the first time.

    Raises:
        KeyError: an unknown name (the message lists the valid ones).
    """
    if name not in METHODS and name in BUILTIN_METHODS:
        importlib.import_module(BUILTIN_METHODS[name])
    if name not in METHODS:
        names = method_names()
        raise KeyError(f"unknown method '{name}'{did_you_mean(name, names)}; expected one of: {', '.join(names)}")
    return METHODS[name]


def all_methods() -> dict[str, MethodSpec]:
    """Every method, each module imported (for listing them all: `gaal methods`, the tests)."""
    return {name: method_spec(name) for name in method_names()}


class _Catalog:
    """What the config asks of the methods (gaal_cli.catalog): their names, one's settings class."""

    names = staticmethod(method_names)

    @staticmethod
    def settings(name: str) -> type:
        return method_spec(name).settings


#: the registry as the config's method catalog (gaal_cli/__init__.py hands it over)
CATALOG = _Catalog()
