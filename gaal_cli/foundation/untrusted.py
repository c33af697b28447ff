"""Files and records written by others, checked before they are used.

A run folder, a checkpoint or a table may come from a stranger, or be damaged: everything read
from one is checked here for what it is (a regular file, not a FIFO that would block forever or a
device that never ends), how big it is (bounded before it is read into memory), how it is built
(the type, range and size of every field a command uses) and whether its numbers are finite. A
failed check is a `GaalError` naming the file and the field, so the CLI exits with code 2 and
one paragraph rather than a traceback or a result computed from NaN.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.limits import IMAGE_SIZE_MAX

#: report.json is a few kilobytes; a larger one is not gaal's
JSON_MAX_BYTES = 10_000_000
#: a line of steps.jsonl or metrics.jsonl is under a kilobyte; a longer one is skipped, not read whole
JSONL_MAX_LINE = 1_000_000
SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: a user table is read whole by pandas: bounded before it is opened. HAM10000's table is ~1 MB
#: and DVM's ~30 MB; a table is a row per image with at most a few hundred feature columns
TABLE_MAX_BYTES = 2_000_000_000
TABLE_MAX_COLUMNS = 10_000


class NotRegularFile(OSError):
    """A path that names a FIFO, a device, a socket or a folder where a file was expected."""


def _kind(mode: int) -> str:
    kinds = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device"}
    kinds |= {stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}
    return next((name for test, name in kinds.items() if test(mode)), "not a regular file")


def open_regular(path: str | Path) -> IO[bytes]:
    """Open `path` for reading in binary mode if it is a regular file (symlinks followed).

    Opened without blocking and checked on the open descriptor, so a FIFO is refused rather than
    waited on, and a file swapped for a FIFO between a check and the open cannot slip through.

    Raises:
        FileNotFoundError, PermissionError: as `open`.
        NotRegularFile: a FIFO, device, socket or folder.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFile(f"{_kind(mode)}, not a regular file; only regular files are read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_bytes(path: str | Path, limit: int, field: str | None = None) -> bytes:
    """The whole content of a regular file of at most `limit` bytes.

    Raises:
        GaalError: missing, unreadable, not a regular file, or larger than `limit`.
    """
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limit:
                raise GaalError(f"is {size:,} bytes; at most {limit:,} are read", source=str(path), field=field)
            data = fh.read(limit + 1)
    except OSError as err:
        raise GaalError(f"cannot be read ({err.strerror or err})", source=str(path), field=field) from None
    if len(data) > limit:  # grew while being read
        raise GaalError(f"is over {limit:,} bytes; at most {limit:,} are read", source=str(path), field=field)
    return data


def read_json(path: str | Path, limit: int = JSON_MAX_BYTES) -> Any:
    """A JSON file's value, its size bounded and its nesting too deep for the parser refused.

    Raises:
        GaalError: names the file: not a regular file, too large, not UTF-8, not JSON, nested too deep.
    """
    data = read_bytes(path, limit)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise GaalError(f"is not UTF-8 text (byte {err.start})", source=str(path)) from None
    except json.JSONDecodeError as err:
        raise GaalError(f"cannot be read as JSON ({err})", source=str(path)) from None
    except RecursionError:
        raise GaalError("is nested too deeply to be a gaal file", source=str(path)) from None


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one line at a time (the file is never held whole).

    A line cut short by a killed process, one that is not an object, and one longer than
    `JSONL_MAX_LINE` are skipped. A missing file has no rows.

    Raises:
        GaalError: the path is not a regular file, or cannot be read.
    """
    try:
        fh = open_regular(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise GaalError(f"cannot be read ({err.strerror or err})", source=str(path)) from None
    with fh:
        while line := fh.readline(JSONL_MAX_LINE + 1):
            if len(line) > JSONL_MAX_LINE:
                while line and not line.endswith(b"\n"):  # the rest of the overlong line
                    line = fh.readline(JSONL_MAX_LINE)
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict):
                yield row


def check_table_file(path: Path) -> None:
    """A table's size, and a CSV's number of header columns, before pandas reads it whole
    (a 10 MB CSV of 10^6 columns takes minutes and gigabytes to parse).

    Raises:
        GaalError: not a regular file, too large, or too many columns.
    """
    try:
        with open_regular(path) as fh:
            size = os.fstat(fh.fileno()).st_size
            header = b""
            while path.suffix.lower() != ".parquet" and b"\n" not in header:
                block = fh.read(1 << 16)
                header += block
                if not block or header.count(b",") >= TABLE_MAX_COLUMNS:
                    break
    except OSError as err:
        raise GaalError(f"cannot be read ({err.strerror or err})", source=str(path), field="data.name") from None
    if size > TABLE_MAX_BYTES:
        raise GaalError(f"is {size:,} bytes; at most {TABLE_MAX_BYTES:,} are read", source=str(path), field="data.name")
    columns = header.split(b"\n", 1)[0].count(b",") + 1
    if columns > TABLE_MAX_COLUMNS:
        over = "" if b"\n" in header else "over "
        raise GaalError(
            f"has {over}{columns:,} columns in its header; at most {TABLE_MAX_COLUMNS:,} "
            "are read (a table is a row per image and its features)",
            source=str(path),
            field="data.name",
        )


# ---------------------------------------------------------------- structure of what is read


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or isinstance(value, float)


def _refuse(source: Path | str, field: str, expected: str, value: Any) -> GaalError:
    got = type(value).__name__ if not isinstance(value, int | float | str) else repr(value)[:80]
    return GaalError(f"expected {expected}, got {got}", source=str(source), field=field)


def check_report(report: Any, file: Path) -> dict[str, Any]:
    """report.json's fields that commands use, each of the type it must have (when present).

    Raises:
        GaalError: names the file and the first field of the wrong type.
    """
    if not isinstance(report, dict):
        raise _refuse(file, "(top level)", "a JSON object", report)
    kinds = {"experiment": str, "method": str, "dataset": str, "seed": int, "best_epoch": int, "epochs_run": int}
    for key, kind in kinds.items():
        value = report.get(key)
        if key in report and not (_is_int(value) if kind is int else isinstance(value, kind)):
            raise _refuse(file, key, "an integer" if kind is int else "a string", value)
    metrics = report.get("metrics", {})
    if not isinstance(metrics, dict):
        raise _refuse(file, "metrics", "an object of splits", metrics)
    for split, heads in metrics.items():
        if not isinstance(heads, dict):
            raise _refuse(file, f"metrics.{split}", "an object of heads (multi, image, tabular)", heads)
        for head, values in heads.items():
            if not isinstance(values, dict):
                raise _refuse(file, f"metrics.{split}.{head}", "an object of metrics", values)
            for name, value in values.items():
                if value is not None and not _is_number(value):
                    raise _refuse(file, f"metrics.{split}.{head}.{name}", "a number or null", value)
    for key in ("timings", "data", "dependencies"):
        if not isinstance(report.get(key, {}), dict):
            raise _refuse(file, key, "an object", report[key])
    for key, value in report.get("timings", {}).items():
        if value is not None and not _is_number(value):
            raise _refuse(file, f"timings.{key}", "a number or null", value)
    inputs = report.get("inputs_at_test", ["image", "tabular"])
    if not (isinstance(inputs, list) and inputs and set(inputs) <= {"image", "tabular"}):
        raise _refuse(file, "inputs_at_test", "a list of 'image' and 'tabular'", inputs)
    for key, record in report.get("dependencies", {}).items():
        check_dependency_record(record, file, f"dependencies.{key}", full=False)
    return report


def check_dependency_record(record: Any, file: Path | str, field: str, *, full: bool = True) -> None:
    """A dependency as a checkpoint (`full`: with its config and data) or report.json records it.

    Raises:
        GaalError: names the file and the field.
    """
    if not isinstance(record, dict):
        raise _refuse(file, field, "an object (path, sha256, ...)", record)
    if not isinstance(record.get("path"), str):
        raise _refuse(file, f"{field}.path", "a string", record.get("path"))
    if not (isinstance(record.get("sha256"), str) and SHA256.match(record["sha256"])):
        raise _refuse(file, f"{field}.sha256", "64 lowercase hex digits", record.get("sha256"))
    if full:
        if not isinstance(record.get("config"), dict):
            raise _refuse(file, f"{field}.config", "a mapping of settings", record.get("config"))
        check_data_record(record.get("data"), file, f"{field}.data")


def check_data_record(data: Any, file: Path | str, field: str) -> None:
    """A checkpoint's `data`: None (older checkpoints) or {classes: int >= 2, field_lengths: [int >= 1]}."""
    if data is None:
        return
    if not isinstance(data, dict):
        raise _refuse(file, field, "an object with classes and field_lengths", data)
    classes, lengths = data.get("classes"), data.get("field_lengths", [])
    if not (_is_int(classes) and classes >= 2):
        raise _refuse(file, f"{field}.classes", "an integer of at least 2", classes)
    if not (isinstance(lengths, list | tuple) and all(_is_int(n) and n >= 1 for n in lengths)):
        raise _refuse(file, f"{field}.field_lengths", "a list of positive integers", lengths)


def check_checkpoint(state: dict[str, Any], file: Path | str) -> None:
    """Every field of a gaal checkpoint that commands use: types, ranges, finite numbers.

    `model` maps names to tensors, every floating one finite (a NaN weight predicts nothing);
    `config` is a mapping (validated as a Config by the caller); `epoch` a non-negative integer;
    `preprocessing` None or a mapping whose numbers are finite and whose scales are positive
    (a NaN mean or a zero std would turn every encoded row into NaN); `data` and each record
    of `dependencies` as `check_data_record` and `check_dependency_record` say.

    Raises:
        GaalError: names the file and the first field that fails.
    """
    check_tensors(state.get("model"), file, "model")
    if not isinstance(state.get("config"), dict):
        raise _refuse(file, "config", "a mapping of settings", state.get("config"))
    if "epoch" in state and not (_is_int(state["epoch"]) and state["epoch"] >= 0):
        raise _refuse(file, "epoch", "a non-negative integer", state["epoch"])
    preprocessing = state.get("preprocessing")
    if preprocessing is not None:
        if not isinstance(preprocessing, dict):
            raise _refuse(file, "preprocessing", "a mapping", preprocessing)
        check_statistics(preprocessing, file, "preprocessing")
    check_data_record(state.get("data"), file, "data")
    records = state.get("dependencies") or {}
    if not isinstance(records, dict):
        raise _refuse(file, "dependencies", "a mapping from config key to record", records)
    for key, record in records.items():
        check_dependency_record(record, file, f"dependencies.{key}")


def check_tensors(model: Any, file: Path | str, field: str) -> None:
    """A state dict: names to tensors, every floating-point tensor finite.

    Raises:
        GaalError: names the file and the first bad entry.
    """
    import torch  # here, not at the top: a table's checks (check_table_file) answer before torch loads

    if not isinstance(model, dict):
        raise _refuse(file, field, "a mapping from parameter name to tensor", model)
    for name, tensor in model.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise _refuse(file, f"{field}.{name}", "a tensor under a string name", tensor)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise GaalError(
                f"holds {bad} non-finite value{'s' * (bad > 1)} (NaN or infinite) of {tensor.numel()}: a model "
                "trained to NaN, or a damaged file; nothing computed from it would mean anything",
                source=str(file),
                field=f"{field}.{name}",
            )


# keys of a preprocessing record whose numbers divide: a zero or negative one is no scale
_SCALES = ("std", "scale", "stds")


def check_statistics(node: Any, file: Path | str, field: str) -> None:
    """Every number in a preprocessing record is finite, every scale (`std`) positive, an image
    `size` within what `data.image_size` allows and `field_lengths` positive.

    Raises:
        GaalError: names the file and the field (`preprocessing.mean[3]`).
    """
    import torch

    if isinstance(node, float) and not math.isfinite(node):
        raise GaalError(f"is {node}: fitted statistics must be finite", source=str(file), field=field)
    if isinstance(node, torch.Tensor) and node.is_floating_point() and not bool(torch.isfinite(node).all()):
        raise GaalError("holds non-finite values: fitted statistics must be finite", source=str(file), field=field)
    if isinstance(node, Mapping):
        for key, value in node.items():
            check_statistics(value, file, f"{field}.{key}")
            if key == "size" and not (_is_int(value) and 8 <= value <= IMAGE_SIZE_MAX):
                raise _refuse(file, f"{field}.{key}", f"an image size from 8 to {IMAGE_SIZE_MAX}", value)
            lengths_ok = isinstance(value, list | tuple) and all(_is_int(n) and n >= 1 for n in value)
            if key == "field_lengths" and not lengths_ok:
                raise _refuse(file, f"{field}.{key}", "a list of positive integers", value)
            if str(key) in _SCALES:
                values = value if isinstance(value, list | tuple) else [value]
                for i, scale in enumerate(values):
                    if _is_number(scale) and scale <= 0:
                        raise GaalError(
                            f"is {scale}: a scale divides the column, so it must be positive",
                            source=str(file),
                            field=f"{field}.{key}[{i}]",
                        )
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            check_statistics(value, file, f"{field}[{i}]")
