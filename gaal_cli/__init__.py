"""gaal: an experiment runner for tabular-image fusion with Gradient-Aligned Alternating Learning."""

__version__ = "0.1.0"
