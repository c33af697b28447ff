"""Names that become paths, checked once where they enter.

A method's name is a folder of every run (`results/<experiment>/<dataset>/<method>/seed<seed>`)
and a key of the config (`methods.<name>`); a plugin declares it in its package's metadata, so it
is checked when the plugin is found and when a method registers, never trusted later. An
experiment's name (gaal_cli.config) and a dataset's folder (gaal_cli.runs.folder.dataset_folder)
are checked where they enter too. A name read back from a run folder someone else made (the
experiment in report.json) becomes a file name of a report only through `file_stem`.
"""

from __future__ import annotations

import re
from collections.abc import Collection

#: a method name: one path component and one config key (no dot, slash, space or control character)
METHOD_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
METHOD_NAME_RULE = "a letter, then up to 63 letters, digits, '_' or '-' (it names a folder and a config key)"


def is_method_name(name: object) -> bool:
    """Whether `name` may name a method (see METHOD_NAME_RULE)."""
    return isinstance(name, str) and METHOD_NAME.match(name) is not None


def file_stem(text: str, reserved: Collection[str] = ()) -> str:
    """`text` as one safe file-name stem: anything but letters, digits, '.', '_' and '-' becomes
    '_', no leading dot; a stem in `reserved` (a file name the caller writes itself) gets
    `_experiment` appended, so it can never replace that file."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text).lstrip(".") or "unnamed"
    return f"{stem}_experiment" if stem in reserved else stem
