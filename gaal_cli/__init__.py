"""gaal: an experiment runner for tabular-image fusion with Gradient-Aligned Alternating Learning."""

__version__ = "0.1.0"

# the config validates `method` and `methods.<name>` against the method registry, which hands
# itself over when imported; it imports no method module (nor torch) until one is asked for
from gaal_cli.methods import registry as _registry  # noqa: E402, F401
