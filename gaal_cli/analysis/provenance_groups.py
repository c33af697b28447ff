"""Which code state and host made the runs a table or a comparison holds (report.json
`provenance`, gaal_cli.runs.provenance): the groups a table names under it and marks on its cells,
so that no number is compared with one of another code state or host kind without saying so."""

from __future__ import annotations

from collections.abc import Iterable
from string import ascii_uppercase
from typing import Any

import pandas as pd

from gaal_cli.foundation.display import markdown_text
from gaal_cli.runs.provenance import code_key, host_key

#: the key of a run that recorded no provenance (trained before gaal 0.2.0)
UNRECORDED = "unrecorded"


def provenance_columns(report: dict[str, Any]) -> dict[str, str]:
    """A run's `code` and `host` keys for runs.csv and the tables' groups."""
    found = report.get("provenance")
    return {"code": code_key(found), "host": host_key(found)}


def with_groups(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with a `provenance` letter per (code, host) pair, A for the first in sorted order."""
    pairs = sorted(set(zip(runs["code"], runs["host"])))
    letters = {pair: _letter(i) for i, pair in enumerate(pairs)}
    return runs.assign(provenance=[letters[pair] for pair in zip(runs["code"], runs["host"])])


def _letter(i: int) -> str:
    return ascii_uppercase[i] if i < len(ascii_uppercase) else f"G{i + 1}"


def letters_of(values: Iterable[str]) -> str:
    """The groups of a cell's runs, `A` or `A+B`."""
    return "+".join(sorted(set(values)))


def several(rows: pd.DataFrame) -> bool:
    """Whether runs (or a summary's cells, `A+B`) come from more than one provenance group."""
    return "provenance" in rows.columns and len(set("+".join(rows["provenance"]).split("+"))) > 1


def cell_mark(letters: str, marked: bool) -> str:
    """` ⟨A+B⟩` after a cell of a table that holds several groups; nothing in a table of one."""
    return f" ⟨{letters}⟩" if marked and letters else ""


def pair_mark(row: str, reference: str) -> str:
    """` ⟨B≠A⟩` after a paired difference whose row and reference row are not of one group."""
    return "" if row == reference and "+" not in row else f" ⟨{row}≠{reference}⟩"


def legend(runs: pd.DataFrame) -> str:
    """The line under a table naming the provenance groups its runs come from."""
    groups = runs.groupby(["provenance", "code", "host"]).size()
    if len(groups) == 1:
        (_, code, host), count = next(iter(groups.items()))
        if code == UNRECORDED and host == UNRECORDED:
            return (
                f"Provenance: not recorded for these {count} runs (trained before gaal 0.2.0): which code state and "
                "host made them is unknown, so this table cannot show that they share one."
            )
        return f"Provenance: all {count} runs of one code state and host kind: code {_named(code)}; " + (
            f"host {_named(host)}."
        )
    named = "; ".join(
        f"⟨{letter}⟩ code {_named(code)}, host {_named(host)}: {count} run{'s' * (count > 1)}"
        for (letter, code, host), count in groups.items()
    )
    return (
        f"Provenance groups: {named}. The table holds runs of {len(groups)} code states or host kinds: each cell's "
        "n names its groups, a paired difference between groups is marked ⟨row≠reference⟩, and a bold mark or "
        "rank across groups compares code or host as well as method."
    )


def _named(key: str) -> str:
    return "not recorded" if key == UNRECORDED else f"`{markdown_text(key)}`"


def sides_note(sides: dict[str, set[tuple[str, str]]]) -> str | None:
    """What `gaal compare` warns when its two sides are not all of one code state and host kind."""
    every = set().union(*sides.values())
    if len(every) == 1 and (UNRECORDED, UNRECORDED) not in every:
        return None
    if every == {(UNRECORDED, UNRECORDED)}:
        return "neither side recorded its code state or host (runs from before gaal 0.2.0): they may differ"
    return (
        "the runs are not all of one code state and host kind ("
        + "; ".join(f"{side}: {describe(pairs)}" for side, pairs in sides.items())
        + "): the difference may be the code or the host as well as the method"
    )


def describe(pairs: set[tuple[str, str]]) -> str:
    """`code X on host Y` for each of a side's (code, host) pairs."""
    return " and ".join(
        f"code {'not recorded' if c == UNRECORDED else c} on host {'not recorded' if h == UNRECORDED else h}"
        for c, h in sorted(pairs)
    )
