"""What the config asks of the methods, without importing them: their names, and one method's
settings class. `gaal_cli/__init__.py` hands the method registry (gaal_cli.methods.registry)
over here before anything else runs; the config (gaal_cli.config) asks here.

A leaf between the two, so the config knows no method and the registry needs no config (nor
pydantic: `gaal --help` loads neither).
"""

from __future__ import annotations

from typing import Any, Protocol


class MethodCatalog(Protocol):
    def names(self) -> list[str]:
        """Every method name `--method` accepts (no method module imported)."""

    def settings(self, name: str) -> Any:
        """The settings class (a pydantic model) of method `name`; may import its module."""


_catalog: list[MethodCatalog] = []


def use_method_catalog(catalog: MethodCatalog) -> None:
    """Validate `method` and `methods.<name>` against `catalog` from now on."""
    _catalog[:] = [catalog]


def method_catalog() -> MethodCatalog:
    if not _catalog:
        raise RuntimeError("no method catalog: import gaal_cli.methods.registry first (gaal_cli/__init__.py does)")
    return _catalog[0]
