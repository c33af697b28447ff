"""gaal: an experiment runner for tabular-image fusion with Gradient-Aligned Alternating Learning."""

# the config validates `method` and `methods.<name>` against the method registry, handed over
# here, before any config is built; the registry imports no method module (nor torch) until
# one is asked for
from gaal_cli.foundation.catalog import use_method_catalog
from gaal_cli.foundation.version import __version__  # noqa: F401 (gaal_cli.__version__)
from gaal_cli.methods.registry import CATALOG

use_method_catalog(CATALOG)
