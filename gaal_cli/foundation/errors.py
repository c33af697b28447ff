"""User-facing errors.

Anything the user can fix (a YAML typo, a wrong path, a label out of range) is raised as a
`GaalError`: the CLI prints its message as one paragraph and exits with code 2, without a
traceback. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterable


class GaalError(Exception):
    """An error in the user's input, reported without a traceback (exit code 2).

    Args:
        message: what is wrong and what was expected.
        source: the file (or command-line option) the bad value came from.
        field: the key, column or row that holds the bad value.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.field:
            # a command-line option is named as such (`--dataset (data.name)`), a key or column as a field
            where.append(self.field if self.field.startswith("--") else f"field '{self.field}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the valid name closest to a mistyped one, or "" when none is close.

    Every "unknown ..." message adds it, so a typo costs one glance rather than reading a list.
    """
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


@contextlib.contextmanager
def flags_named(flags: dict[str, object], names: dict[str, str] | None = None):
    """Errors about a setting the user gave as a flag name the flag (`--dataset`), not the key (`data.name`)."""
    try:
        yield
    except GaalError as err:
        flag = (names or TRAIN_FLAGS).get(err.field or "")
        if flag is None or flags.get(err.field) is None:
            raise
        source = None if (err.source or "").startswith("--") else err.source
        raise GaalError(err.message, source=source, field=f"{flag} ({err.field})") from None


TRAIN_FLAGS = {
    "data.name": "--dataset",
    "data.dir": "--data-dir",
    "method": "--method",
    "data.target": "--target",
    "data.image_column": "--image-column",
    "data.group_column": "--group-column",
}
