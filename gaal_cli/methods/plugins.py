"""Training methods from other packages, found through the `gaal.methods` entry-point group.

A package makes its method available by declaring, in its pyproject.toml,

    [project.entry-points."gaal.methods"]
    late_sum = "gaal_example_method.late_sum"

The entry point's name is the method's name (`--method late_sum`) and its value a module that
registers the method when imported (`@register_method("late_sum", ...)`, as every built-in
module does). This module only finds and imports those modules; it knows nothing of the
registry, so the registry can call it without importing itself back.

A plugin that fails to import (a missing dependency, a syntax error, an incompatible gaal, a
module that calls `sys.exit` or `argparse` at import) must not break the commands that do not
need it: `import_plugins` records the failure for the caller to warn about and goes on, unless
the failing plugin is the method asked for. A plugin whose name could not be a folder and a
config key (gaal_cli.foundation.names: `../x`, `a.b`) is never imported.
See examples/gaal-example-method for a complete, installable plugin.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.names import METHOD_NAME_RULE, is_method_name

#: the entry-point group a plugin package declares its methods in
GROUP = "gaal.methods"


@dataclass(frozen=True)
class Plugin:
    """One declared method: its name, the module that registers it, and the package declaring it."""

    name: str
    module: str
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        """'gaal-example-method 0.1.0', as `gaal methods` shows where a method comes from."""
        return f"{self.distribution} {self.version}"


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be imported, and why (its exception as `Type: message`)."""

    plugin: Plugin
    error: str

    def warning(self) -> str:
        """One line for the caller to print when it skips the plugin."""
        return (
            f"method plugin '{self.plugin.name}' from {self.plugin.origin} ({self.plugin.module}) "
            f"was skipped: {self.error}"
        )


@dataclass
class Loaded:
    """What `import_plugins` imported, and what it skipped."""

    plugins: list[Plugin] = field(default_factory=list)
    failures: list[PluginFailure] = field(default_factory=list)


def _plugin(entry: EntryPoint) -> Plugin:
    dist = entry.dist
    distribution = dist.metadata["Name"] if dist is not None else "an unknown package"
    version = dist.version if dist is not None else "?"
    return Plugin(entry.name, entry.value, distribution, version)


def discover() -> list[Plugin]:
    """Every method declared in the `gaal.methods` group by an installed package, sorted by name.

    Reads package metadata only; imports nothing.
    """
    return sorted((_plugin(e) for e in entry_points(group=GROUP)), key=lambda p: (p.name, p.distribution))


def _duplicates(plugins: list[Plugin]) -> dict[str, list[Plugin]]:
    """Names declared by more than one package: none of them is loaded, since which one would
    win would depend on import order."""
    by_name: dict[str, list[Plugin]] = {}
    for p in plugins:
        by_name.setdefault(p.name, []).append(p)
    return {name: ps for name, ps in by_name.items() if len(ps) > 1}


def _import(plugin: Plugin) -> str | None:
    """Import the plugin's module (registering its method); the error as text, or None.

    What the module prints while it is imported is held back: a module that fails (an argparse
    usage line before its SystemExit) has its last line quoted in the error; one that imports
    has it printed after, on stderr.
    """
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            importlib.import_module(plugin.module)
    except (Exception, SystemExit) as err:  # any failure inside third-party code is the plugin's, not gaal's
        said = printed.getvalue().strip().splitlines()
        return f"{type(err).__name__}: {err}" + (f" (it printed: {said[-1][:300]})" if said else "")
    if printed.getvalue():
        sys.stderr.write(printed.getvalue())
    return None


def import_plugins(only: str | None = None, reserved: Collection[str] = ()) -> Loaded:
    """Import the modules of the installed method plugins; each registers its method on import.

    Args:
        only: a method name: import only the plugin of that name (none if no package declares
            it), and raise rather than skip when it fails. None imports every plugin.
        reserved: names no plugin may take (the built-in methods'): a plugin declaring one is
            not imported, and is skipped as a failure naming why.

    Returns:
        The plugins imported and those skipped with their error, for the caller to warn about.

    Raises:
        GaalError: the plugin named by `only` failed to import or is declared by two packages;
            the message names the method, its package and version, and the error.
    """
    found = discover()
    clashes = _duplicates(found)
    loaded = Loaded()
    for plugin in found:
        if only is not None and plugin.name != only:
            continue
        if not is_method_name(plugin.name):
            error = f"the method name {plugin.name!r} is not {METHOD_NAME_RULE}"
        elif plugin.name in reserved:
            error = f"'{plugin.name}' is the name of a built-in method; a plugin needs a name of its own"
        elif plugin.name in clashes:
            others = " and ".join(p.origin for p in clashes[plugin.name])
            error = f"the method name '{plugin.name}' is declared by more than one package ({others})"
        else:
            error = _import(plugin)
        if error is None:
            loaded.plugins.append(plugin)
            continue
        if only is not None:
            raise GaalError(
                f"method '{plugin.name}' comes from the plugin package {plugin.origin} (entry point "
                f"{GROUP}: {plugin.name} = {plugin.module}), which could not be loaded: {error}. Fix or "
                f"reinstall that package (pip install {plugin.distribution}), or uninstall it",
                source=f"plugin {plugin.origin}",
            )
        loaded.failures.append(PluginFailure(plugin, error))
    return loaded
