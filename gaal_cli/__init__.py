"""gaal: an experiment runner for tabular-image fusion with Gradient-Aligned Alternating Learning."""

from gaal_cli.foundation.version import __version__  # noqa: E402, F401

# the config validates `method` and `methods.<name>` against the method registry, handed over
# here, before any config is built; the registry imports no method module (nor torch) until
# one is asked for
from gaal_cli.foundation.catalog import use_method_catalog  # noqa: E402
from gaal_cli.methods.registry import CATALOG  # noqa: E402

use_method_catalog(CATALOG)
