"""The method registry: names to (method class, settings class), loaded only when asked for.

The names of the built-in methods are known here without importing them (or torch): the CLI
checks `--method NAME` and the config's keys in milliseconds, and importing a method's module
is what `method_spec(name)` does the first time that method is needed, which registers it
(`@register_method`). Checking a `methods.<name>` block needs its settings class, so it imports
that one method's module (and torch with it), no other.

Methods from other packages (gaal_cli.methods.plugins: the `gaal.methods` entry-point group) are named
to `--method` from their packages' metadata, which costs no import; a plugin's module is
imported, and registers its method, when that method is needed (`method_spec`) or every method
is listed (`all_methods`). A plugin cannot take a built-in's name.

This module imports nothing of the package but the errors and the plugin finder (no pydantic, no
torch): every method module imports it (through `gaal_cli.methods.base`), so it sits below all of
them. It is the config's method catalog (`CATALOG`, gaal_cli.foundation.catalog), handed over by
`gaal_cli/__init__.py` before anything else runs: a config never validates without it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gaal_cli.foundation.errors import GaalError, did_you_mean
from gaal_cli.foundation.names import METHOD_NAME_RULE, is_method_name
from gaal_cli.methods.plugins import GROUP, Plugin, PluginFailure, discover, import_plugins

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
    """Class decorator: make a method available as `--method NAME`, with its settings class.

    Raises:
        GaalError: `name` is not a method name (it names a folder: METHOD_NAME_RULE), is a
            built-in's and `cls` is not that built-in, or another class already registered it
            (a plugin cannot silently replace a method).
    """
    if not is_method_name(name):
        raise GaalError(f"register_method({name!r}): a method name is {METHOD_NAME_RULE}")

    def wrap(cls: type) -> type:
        owner = BUILTIN_METHODS.get(name)
        if owner is not None and cls.__module__ != owner:
            raise GaalError(
                f"{cls.__module__}.{cls.__qualname__} registers the method name '{name}', which is gaal's "
                f"built-in method ({owner}); a method from another package needs a name of its own"
            )
        current = METHODS.get(name)
        if current is not None and _qualified(current.cls) != _qualified(cls):
            raise GaalError(
                f"{cls.__module__}.{cls.__qualname__} registers the method name '{name}', already registered "
                f"by {_qualified(current.cls)}"
            )
        METHODS[name] = MethodSpec(cls, settings)
        return cls

    return wrap


def _qualified(cls: type) -> str:
    # by name, so a module imported again (importlib.reload) registers its own class again
    return f"{cls.__module__}.{cls.__qualname__}"


#: method plugins found by `declared_plugins`; the warnings of those `load_plugins` skipped
_plugins: dict[str, Plugin] | None = None
_warnings: list[str] = []
_all_loaded = False


def declared_plugins() -> dict[str, Plugin]:
    """The method plugins installed packages declare (name -> Plugin), read once per process
    from package metadata (no plugin imported). One declaring a built-in's name, or a name that
    could not be a folder (`../x`), is left out (`load_plugins` says so)."""
    global _plugins
    if _plugins is None:
        _plugins = {p.name: p for p in discover() if p.name not in BUILTIN_METHODS and is_method_name(p.name)}
    return _plugins


def load_plugins() -> list[str]:
    """Import every declared plugin's module (once per process), registering their methods.

    A plugin that fails to import (an exception or a `SystemExit`), declares a built-in's name or
    one that is no method name, or registers no method of its name, is skipped and no longer
    named to `--method`.

    Returns:
        One warning line per plugin refused or skipped, naming it, its package and the error.
    """
    global _all_loaded
    declared = declared_plugins()
    if not _all_loaded:
        _all_loaded = True
        loaded = import_plugins(reserved=BUILTIN_METHODS)
        for failure in loaded.failures:
            declared.pop(failure.plugin.name, None)
            _warnings.append(failure.warning())
        for plugin in loaded.plugins:
            if plugin.name not in METHODS:
                declared.pop(plugin.name, None)
                _warnings.append(PluginFailure(plugin, _unregistered(plugin)).warning())
    return list(_warnings)


def _unregistered(plugin: Plugin) -> str:
    return (
        f"importing {plugin.module} registered no method of that name (its module should decorate the "
        f"method class with register_method('{plugin.name}', ...))"
    )


def method_origin(name: str) -> str:
    """Where method `name` comes from: "built-in", a plugin's "package version", or the module
    that registered it (a method registered from Python, not through an entry point)."""
    if name in BUILTIN_METHODS:
        return "built-in"
    if name in declared_plugins():
        return declared_plugins()[name].origin
    return METHODS[name].cls.__module__ if name in METHODS else "unknown"


def method_names() -> list[str]:
    """Every method that `--method` accepts, sorted; no method module is imported (a plugin's
    name comes from its package's metadata)."""
    return sorted(set(BUILTIN_METHODS) | set(declared_plugins()) | set(METHODS))


def method_spec(name: str) -> MethodSpec:
    """The registered method `name`, importing its module (a built-in's or a plugin's) the first time.

    Raises:
        KeyError: an unknown name (the message lists the valid ones).
        GaalError: `name` is a plugin's whose module fails to import, or which it does not register.
    """
    if name not in METHODS and name in BUILTIN_METHODS:
        importlib.import_module(BUILTIN_METHODS[name])
    elif name not in METHODS and name in declared_plugins():
        import_plugins(only=name)
        if name not in METHODS:
            plugin = declared_plugins()[name]
            raise GaalError(
                f"method '{name}' is declared by the plugin package {plugin.origin} (entry point "
                f"{GROUP}: {name} = {plugin.module}), but {_unregistered(plugin)}",
                source=f"plugin {plugin.origin}",
            )
    if name not in METHODS:
        names = method_names()
        raise KeyError(f"unknown method '{name}'{did_you_mean(name, names)}; expected one of: {', '.join(names)}")
    return METHODS[name]


def all_methods() -> dict[str, MethodSpec]:
    """Every method, each module imported (for listing them all: `gaal methods`, the tests); a
    plugin that fails to import is left out (`load_plugins` returns why)."""
    load_plugins()
    return {name: method_spec(name) for name in method_names()}


class _Catalog:
    """What the config asks of the methods (gaal_cli.foundation.catalog): their names, one's settings class."""

    names = staticmethod(method_names)

    @staticmethod
    def settings(name: str) -> type:
        return method_spec(name).settings


#: the registry as the config's method catalog (gaal_cli/__init__.py hands it over)
CATALOG = _Catalog()


def method_summary(spec) -> str:
    """The first line of a method module's docstring, as `gaal methods` shows it: without this
    project's internal references to its papers' folder (`seeds/001`), their punctuation tidied."""
    doc = (inspect.getmodule(spec.cls).__doc__ or "").strip()
    line = doc.splitlines()[0] if doc else ""
    line = re.sub(r"\bseeds/\d+", "", line)
    line = re.sub(r"\s*[,;]\s*(?=[,;)])", "", line)
    line = re.sub(r"\(\s*[,;]\s*", "(", line)
    return re.sub(r"\s*\(\s*\)|\s{2,}", lambda m: " " if not m.group().strip() else "", line).strip()
