"""A run's test predictions, kept so that two runs on the same split can be compared sample by sample.

One safetensors file per run (`predictions.safetensors`): loading it never runs code (no pickle
anywhere in the format) and its JSON header is read without touching the logits. It holds

- in the header's metadata: the format tag and version, the split name, the number of classes,
  the heads in order, the sample ids (strings, unique) and the caller's extra `meta` (JSON);
- `labels` (int16, n): the true class of each sample;
- `predicted.<head>` (int16, n): the arg-max class of the full-precision logits, so accuracy
  read back is exactly the run's own, whatever float16 rounding does to near-ties;
- `logits.<head>` (float16, n x n_classes): the logits (or probabilities), half precision; float32
  for a head whose logits lie beyond float16's range (|x| > 65504), so they are kept as they are
  rather than turned into infinities.

Size: 2,002 HAM10000 test samples (ids like `images/ISIC_0027419.jpg`) x 7 classes x 3 heads take
159 kB, of which the ids are about 60 kB; 200 embedded samples x 10 classes x 3 heads take 16 kB
(tests/test_stats.py::test_predictions_file_size measures both).

A predictions file may come from someone else: `read_predictions` bounds its size, checks every
tensor's name, dtype and shape against the header before loading any, and the values (labels
and predictions in range, logits finite) when they are loaded; a failure is a `GaalError`
naming the file and the field (a header nested too deep, or a class count of 5,000 digits,
included). Whether a file belongs to the run folder it sits in is gaal_cli.runs.run_predictions.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import write_file

FORMAT = "gaal-predictions"
VERSION = "1"
FILE_NAME = "predictions.safetensors"
#: bounds on what a reader accepts: far above any test split gaal runs (DVM: ~18k x 286 x 3 heads
#: in float16 is ~30 MB), far below what would exhaust memory
MAX_BYTES = 512_000_000
MAX_SAMPLES = 1_000_000
MAX_CLASSES = 32_767  # int16 labels
MAX_HEADS = 16
MAX_ID_CHARS = 1_000
#: safetensors refuses headers over 100 MB; the ids live there
MAX_HEADER_CHARS = 50_000_000
HEAD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: n_classes as the header writes it: ASCII digits only (str.isdigit accepts "¹⁰")
CLASS_COUNT = re.compile(r"^[0-9]{1,5}$")
#: the dtypes a head's logits are kept in (safetensors' names)
LOGIT_DTYPES = ("F16", "F32")
#: the largest finite float16; logits beyond it would be stored as infinity
FLOAT16_MAX = float(np.finfo(np.float16).max)


def write_predictions(
    path: str | Path,
    ids: Sequence[object],
    labels: np.ndarray,
    logits_by_head: Mapping[str, np.ndarray],
    meta: Mapping[str, object] | None = None,
) -> Path:
    """Write a run's test predictions to `path` (atomically, through `gaal_cli.foundation.files.write_file`).

    Args:
        ids: one id per sample (an image path, a row number); kept as strings, must be unique.
        labels: the true classes, integers in [0, n_classes).
        logits_by_head: per head ("multi", "image", "tabular", ...) an (n, n_classes) array of
            logits or probabilities, in the order of `ids`.
        meta: JSON-serialisable facts about the run; `split` (default "test") and `n_classes`
            (default: the logits' width) are read back as attributes.

    Raises:
        GaalError: shapes that disagree, duplicate ids, or non-finite logits (a diverged run;
            its predictions are not worth comparing).
    """
    meta = dict(meta or {})
    ids = [str(i) for i in ids]
    labels = np.asarray(labels)
    if not logits_by_head:
        raise GaalError("no heads to write; expected at least one head's logits", source=str(path), field="logits")
    n_classes = int(meta.pop("n_classes", next(iter(logits_by_head.values())).shape[-1]))
    split = str(meta.pop("split", "test"))
    if labels.shape != (len(ids),):
        raise GaalError(f"labels of shape {labels.shape}; expected ({len(ids)},)", source=str(path), field="labels")
    tensors = {"labels": labels.astype(np.int16)}
    for head, logits in logits_by_head.items():
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape != (len(ids), n_classes):
            expected = f"({len(ids)}, {n_classes})"
            raise GaalError(
                f"logits of shape {logits.shape}; expected {expected}", source=str(path), field=f"logits.{head}"
            )
        if not np.isfinite(logits).all():
            raise GaalError("logits not finite (NaN or infinite)", source=str(path), field=f"logits.{head}")
        tensors[f"predicted.{head}"] = logits.argmax(1).astype(np.int16)
        wide = np.abs(logits).max(initial=0.0) > FLOAT16_MAX  # float16 would hold infinities
        tensors[f"logits.{head}"] = logits if wide else logits.astype(np.float16)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "split": split,
        "n_classes": str(n_classes),
        "heads": json.dumps(list(logits_by_head)),
        "ids": json.dumps(ids),
        "meta": json.dumps(meta, sort_keys=True),
    }
    # the writer's input goes through the reader's checks, so a file written is a file readable
    _check_header(header, str(path))
    if sum(map(len, header.values())) > MAX_HEADER_CHARS:
        raise GaalError(f"the ids and meta take over {MAX_HEADER_CHARS} characters", source=str(path), field="ids")
    _check_labels(labels, n_classes, str(path))
    import safetensors.numpy

    return write_file(path, _sorted_header(safetensors.numpy.save(tensors, metadata=header)))


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes the
    metadata in hash order, which changes from process to process, so without this the same
    predictions would not be the same bytes. Tensor offsets are relative to the header's end,
    so the header may change length (padded with spaces to 8 bytes, as safetensors pads it)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


class Predictions:
    """A predictions file opened for reading: ids, labels and heads now, logits when asked.

    Attributes:
        path: the file.
        ids: the sample ids (tuple of str, unique).
        labels: the true classes (int64 array).
        heads: the heads in the order written.
        n_classes, split: from the header.
        meta: the writer's extra facts (dict).
        identity: the dataset identity of the run it belongs to, once checked against that run
            (gaal_cli.runs.run_predictions); None until then.
    """

    def __init__(self, path: Path, header: Mapping[str, str], labels: np.ndarray):
        self.path = path
        self.split = header["split"]
        self.n_classes = int(header["n_classes"])
        self.heads = tuple(json.loads(header["heads"]))
        self.ids = tuple(json.loads(header["ids"]))
        self.meta = json.loads(header["meta"])
        self.labels = labels
        self.identity: dict | None = None

    def _tensor(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        import safetensors

        try:
            with safetensors.safe_open(str(self.path), framework="np") as fh:
                values = fh.get_tensor(name)
        except (OSError, safetensors.SafetensorError) as err:
            raise GaalError(f"cannot be read ({err})", source=str(self.path), field=name) from None
        if values.shape != shape:  # the file was replaced since it was opened
            raise GaalError(f"is {values.shape}; expected {shape}", source=str(self.path), field=name)
        return values

    def _head(self, head: str) -> str:
        if head not in self.heads:
            problem = f"no head '{head}'; this file has {', '.join(self.heads)}"
            raise GaalError(problem, source=str(self.path), field="heads")
        return head

    def logits(self, head: str) -> np.ndarray:
        """The (n, n_classes) float32 logits of `head`, checked finite."""
        values = self._tensor(f"logits.{self._head(head)}", (len(self.ids), self.n_classes)).astype(np.float32)
        if not np.isfinite(values).all():
            problem = "holds NaN or infinite values; expected finite logits"
            raise GaalError(problem, source=str(self.path), field=f"logits.{head}")
        return values

    def predicted(self, head: str) -> np.ndarray:
        """The predicted class of each sample (arg-max of the full-precision logits)."""
        values = self._tensor(f"predicted.{self._head(head)}", (len(self.ids),)).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= self.n_classes):
            problem = f"holds a class outside [0, {self.n_classes})"
            raise GaalError(problem, source=str(self.path), field=f"predicted.{head}")
        return values

    def correct(self, head: str) -> np.ndarray:
        """Whether `head` got each sample right (bool array)."""
        return self.predicted(head) == self.labels


def read_predictions(path: str | Path) -> Predictions:
    """Open a predictions file: the header and labels are read and checked, the logits are not loaded.

    Raises:
        GaalError: the file is missing, not a regular file, too large, not a gaal predictions
            file, or any field of it is out of shape, type or range.
    """
    path = Path(path)
    source = str(path)
    try:
        info = os.stat(path)
    except OSError as err:
        raise GaalError(f"cannot be read ({err.strerror or type(err).__name__})", source=source) from None
    if not stat.S_ISREG(info.st_mode):
        raise GaalError("is not a regular file; expected a predictions file", source=source)
    if info.st_size > MAX_BYTES:
        raise GaalError(f"is {info.st_size} bytes; a predictions file is at most {MAX_BYTES}", source=source)
    import safetensors

    try:
        with safetensors.safe_open(source, framework="np") as fh:
            header = fh.metadata() or {}
            _check_header(header, source)
            n, n_classes = len(json.loads(header["ids"])), int(header["n_classes"])
            expected = {"labels": (("I16",), [n])}
            for head in json.loads(header["heads"]):
                expected[f"predicted.{head}"] = (("I16",), [n])
                expected[f"logits.{head}"] = (LOGIT_DTYPES, [n, n_classes])
            _check_tensors(fh, expected, source)
            labels = fh.get_tensor("labels").astype(np.int64)
    except safetensors.SafetensorError as err:
        problem = f"is not a readable safetensors file ({err}); expected a gaal predictions file"
        raise GaalError(problem, source=source) from None
    except OSError as err:
        raise GaalError(f"cannot be read ({err.strerror or type(err).__name__})", source=source) from None
    _check_labels(labels, n_classes, source)
    return Predictions(path, header, labels)


def _check_header(header: Mapping[str, str], source: str) -> None:
    """The header's fields: tag, version, sizes within bounds, ids unique strings, heads named."""

    def bad(field: str, expected: str):
        return GaalError(f"expected {expected}", source=source, field=field)

    if header.get("format") != FORMAT:
        raise bad("format", f"'{FORMAT}' (this is not a gaal predictions file)")
    if header.get("version") != VERSION:
        raise bad("version", f"version {VERSION}, got {header.get('version')!r}")
    for field in ("split", "n_classes", "heads", "ids", "meta"):
        if not isinstance(header.get(field), str):
            raise bad(field, "a string in the header")
    if not CLASS_COUNT.match(header["n_classes"]) or not 2 <= int(header["n_classes"]) <= MAX_CLASSES:
        raise bad("n_classes", f"an integer in [2, {MAX_CLASSES}] in ASCII digits")
    heads, ids, meta = (_json_field(header, f, source) for f in ("heads", "ids", "meta"))
    if not isinstance(meta, dict):
        raise bad("meta", "a JSON object")
    if not isinstance(heads, list) or not 1 <= len(heads) <= MAX_HEADS or len(set(map(str, heads))) != len(heads):
        raise bad("heads", f"a list of 1 to {MAX_HEADS} distinct names")
    if not all(isinstance(h, str) and HEAD_NAME.match(h) for h in heads):
        raise bad("heads", "names of lower-case letters, digits and '_' (e.g. multi, image, tabular)")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_SAMPLES:
        raise bad("ids", f"a list of 1 to {MAX_SAMPLES} sample ids")
    if not all(isinstance(i, str) and len(i) <= MAX_ID_CHARS for i in ids):
        raise bad("ids", f"strings of at most {MAX_ID_CHARS} characters")
    if len(set(ids)) != len(ids):
        duplicate = next(i for i, count in _counts(ids).items() if count > 1)
        raise bad("ids", f"unique sample ids; '{duplicate}' appears more than once")


def _json_field(header: Mapping[str, str], field: str, source: str) -> object:
    """A header field's JSON value; text that is no JSON, or nested too deep to parse, is refused."""
    try:
        return json.loads(header[field])
    except ValueError:
        raise GaalError("expected JSON text", source=source, field=field) from None
    except RecursionError:
        raise GaalError("is nested too deeply to be a gaal header field", source=source, field=field) from None


def _check_tensors(fh, expected: Mapping[str, tuple[tuple[str, ...], list[int]]], source: str) -> None:
    """Every tensor the header implies, with a dtype it may have and its shape, and nothing else
    (before loading any)."""
    names = set(fh.keys())
    if names != set(expected):
        missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
        raise GaalError(f"tensors missing {missing} or unexpected {extra}", source=source, field="tensors")
    for name, (dtype, shape) in expected.items():
        piece = fh.get_slice(name)
        if piece.get_dtype() not in dtype or list(piece.get_shape()) != shape:
            got = f"{piece.get_dtype()} {list(piece.get_shape())}"
            raise GaalError(f"is {got}; expected {' or '.join(dtype)} {shape}", source=source, field=name)


def _check_labels(labels: np.ndarray, n_classes: int, source: str) -> None:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        got = f"{labels.dtype} {labels.shape}"
        raise GaalError(f"expected a vector of integer classes, got {got}", source=source, field="labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise GaalError(f"holds a class outside [0, {n_classes})", source=source, field="labels")


def _counts(values: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def align(a: Predictions, b: Predictions) -> tuple[np.ndarray, np.ndarray]:
    """Pair two runs' samples by id: indices `ia`, `ib` with a.ids[ia[i]] == b.ids[ib[i]], in a's order.
    Linear in the samples (one dictionary of b's ids, one set of a's when they differ).

    Raises:
        GaalError: the runs were tested on different samples, on samples whose labels differ,
            on different splits or with a different number of classes; a paired comparison
            of them would not be paired.
    """
    where = f"{a.path} and {b.path}"
    if a.split != b.split or a.n_classes != b.n_classes:
        raise GaalError(
            f"runs on split '{a.split}' with {a.n_classes} classes and split '{b.split}' with {b.n_classes} "
            "classes cannot be paired; expected runs on the same split of the same dataset",
            source=where,
            field="split",
        )
    position = {sample: i for i, sample in enumerate(b.ids)}
    only_a = next((sample for sample in a.ids if sample not in position), None)
    if only_a is not None or len(a.ids) != len(b.ids):
        in_a = set(a.ids)  # built once: the search below stays linear in the samples
        example, holder = (only_a, a.path) if only_a is not None else (next(s for s in b.ids if s not in in_a), b.path)
        raise GaalError(
            f"the runs were tested on different samples ({len(a.ids)} and {len(b.ids)} samples; e.g. '{example}' "
            f"is only in {holder}); expected the same test samples (same split, same seed's split)",
            source=where,
            field="ids",
        )
    ia = np.arange(len(a.ids))
    ib = np.array([position[sample] for sample in a.ids], dtype=np.int64)
    differ = np.flatnonzero(a.labels[ia] != b.labels[ib])
    if differ.size:
        raise GaalError(
            f"{differ.size} samples have different labels in the two runs (e.g. '{a.ids[differ[0]]}'); "
            "expected the same test samples with the same labels",
            source=where,
            field="labels",
        )
    return ia, ib
