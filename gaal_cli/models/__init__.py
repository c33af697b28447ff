"""Encoders: the timm image backbone and the tabular MLP, built as one `Encoders` pair.
Imports the foundation only."""

from gaal_cli.models.encoders import Encoders, ImageEncoder, TabularEncoder, build_encoders

__all__ = ["Encoders", "ImageEncoder", "TabularEncoder", "build_encoders"]
