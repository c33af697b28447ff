"""Training methods, registered by name (`--method NAME`).

Each module defines a `Method` subclass and its settings model and registers both with
`register_method`. Import a new module here to make it available.
"""

from gaal_cli.methods import (  # noqa: F401  (registration side effects)
    arl,
    charms,
    concat,
    daft,
    dgl,
    di_mml,
    dmrnet,
    fmr,
    gaal,
    igm,
    kd,
    lfm,
    max_fusion,
    mfh,
    mla,
    mmanet,
    mmcl,
    mmpareto,
    ogm_ge,
    reconboost,
    tip,
    unimodal,
)
from gaal_cli.methods.base import (
    METHODS,
    Method,
    MethodSettings,
    Predictions,
    build_method,
    register_method,
)

__all__ = ["METHODS", "Method", "MethodSettings", "Predictions", "build_method", "register_method"]
