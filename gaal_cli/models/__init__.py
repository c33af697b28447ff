from gaal_cli.models.encoders import Encoders, ImageEncoder, TabularEncoder, build_encoders

__all__ = ["Encoders", "ImageEncoder", "TabularEncoder", "build_encoders"]
