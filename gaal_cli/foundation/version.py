"""gaal's version, the one place it is written: the package metadata reads it (pyproject.toml's
dynamic version) and every run records it (gaal_cli.runs.provenance). It moves with each release
(CHANGELOG.md)."""

__version__ = "0.2.0"
