"""A method's behaviour fingerprint: a fixed, tiny training of it, its rounded numbers hashed.

`method_trace(name, settings)` trains the registered method `name` (built-in or plugin) for a few
steps on a fixed synthetic batch set with tiny encoders, through the code a run uses: the config
loader, `build_run_method` (encoders, dependencies, the method class), the method's stages placed
by `plan_stages` with each stage's optimiser from `build_stage_optimizer`, its `train_step` on
the batches `make_loader` shuffles, label-free stages without labels, and `predict_split` (the
evaluation's prediction) at the end of every stage, with each modality missing in turn. The
losses of every step and those outputs, rounded, with what each stage declares (lengths,
optimiser, whether it selects, sees labels, its patience), are the trace; the first 16 hex digits
of the sha256 of its canonical JSON are the method's behaviour hash. A method that needs another
run (a teacher, a fixed model: `dependency_fields`) gets one trained here the same canonical way
(`TEACHERS`), so the trace goes through the dependency path too and moves with the teacher.

Why a trace and not a hash of the code: a code hash changes with every refactor (a moved
function, a renamed variable, a reformatted line) and misses a change made outside the files
hashed (a library, a shared helper), so either every run goes stale or someone must choose which
files count. The trace sees what the method computes, whoever changed it, and nothing else.
What it cannot see: code the tiny training does not reach (a branch taken only at another
setting: trace the run's own settings; a CUDA-only or bf16-only path; the engine's loop outside
the pieces it shares, such as early stopping and best-epoch selection; the datasets), and a
change too small to move a number by the rounding quantum in eight steps.

Host independence (measured by `python benchmarks/behaviour_spread.py`): the trace runs in
float64 on one thread. In float32 the same trace differs between ATen's AVX2, AVX-512 and
no-SIMD kernels by up to 8e-2 after eight steps (DMRNet; 17 of 23 hashes move), so no rounding
would both keep it sensitive and make it agree. In float64 the methods' `.float()` casts (meant
as "at least float32" under bf16 autocast) would leave float32 islands that differ between
kernels by 2e-7 (and make MFH and MLA multiply float32 by float64); inside the trace `.float()`
keeps float64 (`float64_throughout`). Then the largest difference over those kernels and
oneDNN's and MKL's instruction sets is 2.9e-12 (two torch threads against one move numbers by
up to 1.3e-12: hence one thread), on numbers below 10 in magnitude. Rounding to DECIMALS = 5
places puts a number that close to a rounding boundary with probability at most 3e-7, so the
2,032 numbers of the built-ins' traces keep their hashes on another host with probability at
least 0.999, while any change of 1e-5 to a loss or a logit changes the hash.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gaal_cli.config import Config, config_from_mapping
from gaal_cli.data.base import Batch, make_loader
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import write_file
from gaal_cli.methods.base import MODALITIES, Method, MethodSettings, weighted_classes
from gaal_cli.methods.build import build_run_method
from gaal_cli.methods.registry import BUILTIN_METHODS, method_spec
from gaal_cli.methods.stages import PlannedStage, build_stage_optimizer, plan_stages
from gaal_cli.runs.dependencies import Dependency
from gaal_cli.training.evaluation import predict_split
from gaal_cli.training.outputs import NoHeadError
from gaal_cli.training.rng import rng_states, seed_everything, set_rng_states
from gaal_cli.training.trained_run import frozen_model

#: changes whenever what the trace runs or records changes (its hashes are then not comparable)
FORMAT = 1
SEED = 0
#: the table: two continuous fields and two categorical ones (3 and 4 categories)
FIELD_LENGTHS = (1, 3, 1, 4)
CLASSES = 3
IMAGE_SIZE = 16
TRAIN_ROWS, BATCH, EVAL_ROWS = 16, 8, 4
#: at least this many epochs (one more per stage beyond it): 2 steps each
EPOCHS = 4
DECIMALS = 5
MODEL = {"image_backbone": "test_resnet", "pretrained": False, "feature_dim": 8, "tabular_hidden": [8]}
#: the method a dependency is trained with, as the experiment files name it, else DEFAULT_TEACHER
TEACHERS = {("mfh", "teacher"): "tabular", ("fmr", "fixed_model"): "tabular"}
DEFAULT_TEACHER = "concat"
#: what a dependency setting holds in the trace's config (the trace builds the run itself)
IN_TRACE = "<trained by the behaviour trace>"


@dataclass(frozen=True)
class Trace:
    """A method's canonical trace.

    Attributes:
        method: the registered name.
        canonical: the rounded record as canonical JSON (what the hash is of).
        seconds: how long it took to compute (with its dependencies' runs, unless computed before).
    """

    method: str
    canonical: str
    seconds: float

    @property
    def digest(self) -> str:
        """The behaviour hash: sha256 of `canonical`, first 16 hex digits."""
        return hashlib.sha256(self.canonical.encode()).hexdigest()[:16]

    @property
    def record(self) -> dict[str, Any]:
        """The rounded losses, outputs and stage declarations, as plain data (a fresh copy)."""
        return json.loads(self.canonical)


def method_trace(name: str, settings: MethodSettings | Mapping[str, Any] | None = None) -> Trace:
    """The behaviour trace of method `name` at `settings` (its defaults when None); computed once
    per process for each method and settings (a dependency setting counts only as set or unset).

    Raises:
        KeyError: an unknown method (the message lists the valid ones).
        GaalError: settings that do not validate.
        Exception: whatever the method's own code raises while it trains (a plugin's, say).
    """
    return _trained(name, settings_key(name, settings)).trace


def behaviour_record(name: str, settings: MethodSettings | Mapping[str, Any] | None) -> dict[str, Any]:
    """What a run records of its method's behaviour (report.json `provenance.behaviour`): the trace
    format, the method and the hash of its trace at the run's settings; `hash` null, with the
    error, when the method cannot be traced (a plugin whose code needs what the trace lacks): the
    run still trains, and a dry run then calls it stale with that reason."""
    try:
        digest, error = method_trace(name, settings).digest, None
    except Exception as err:  # noqa: BLE001 - any failure of a method's own code leaves the run unfingerprinted
        digest, error = None, f"{type(err).__name__}: {err}"[:300]
    return {"format": FORMAT, "method": name, "hash": digest, **({"error": error} if error else {})}


def forget_traces() -> None:
    """Drop the traces computed so far (a test that patches a method's code computes new ones)."""
    _trained.cache_clear()


def settings_key(name: str, settings: MethodSettings | Mapping[str, Any] | None) -> str:
    """`settings` of method `name` validated, defaults filled in, its `trace_settings` applied
    over them and dependencies reduced to set or unset, as canonical JSON: the cache key, and the
    settings block of the trace's config."""
    cls = method_spec(name).settings
    if settings is None:
        settings = cls()
    elif not isinstance(settings, MethodSettings):
        settings = config_from_mapping({"method": name, "methods": {name: dict(settings)}}, "the trace's settings")
        settings = settings.method_settings()
    values = {**settings.model_dump(mode="json"), **cls.trace_settings}
    for field in cls.dependency_fields:
        values[field] = IN_TRACE if values.get(field) else None
    return json.dumps(values, sort_keys=True)


@dataclass(frozen=True)
class _Trained:
    """A trace with the config it trained and, for a method dependencies are trained with, the
    trained weights (3-5 MB in float64: the others' are not kept)."""

    trace: Trace
    config: Config
    state: dict[str, torch.Tensor]


@functools.cache
def _trained(name: str, key: str) -> _Trained:
    t0 = time.perf_counter()
    settings = json.loads(key)
    dependencies: dict[str, _Trained] = {}
    with float64_throughout():
        train_rows, eval_rows = trace_rows()
        config = trace_config(name, settings)
        method = build_traced(config, dependencies)
        record = {"format": FORMAT, "stages": [], "dependencies": {}}
        plan = plan_stages(
            method_spec(name).cls.stages(config.method_settings(), config.train.epochs), config.train.epochs
        )
        for planned in plan:
            record["stages"].append(train_stage(method, planned, config, train_rows, eval_rows))
        teaches = name in {*TEACHERS.values(), DEFAULT_TEACHER}
        state = {k: v.detach().clone() for k, v in method.state_dict().items()} if teaches else {}
    record["dependencies"] = {f: {"method": d.config.method, "hash": d.trace.digest} for f, d in dependencies.items()}
    seconds = time.perf_counter() - t0
    return _Trained(Trace(name, canonical_json(record), seconds), config, state)


def trace_config(name: str, settings: dict[str, Any]) -> Config:
    """The trace's config: tiny encoders, the method at `settings`, enough epochs for each stage."""
    tree = {"method": name, "model": dict(MODEL), "train": {"device": "cpu"}, "methods": {name: settings}}
    probe = config_from_mapping({**tree, "train": {"epochs": EPOCHS}}, f"the behaviour trace of {name}")
    stages = method_spec(name).cls.stages(probe.method_settings(), EPOCHS)
    tree["train"]["epochs"] = max(EPOCHS, len(stages))
    return config_from_mapping(tree, f"the behaviour trace of {name}")


def build_traced(config: Config, dependencies: dict[str, _Trained]) -> Method:
    """The method of `config`, seeded, with a canonical run for each dependency it asks for: each
    one its settings set, and each one it refuses to be built without (a required teacher).
    `dependencies` receives them by field."""
    name = config.method
    fields = method_spec(name).settings.dependency_fields
    for field in fields:
        if getattr(config.method_settings(), field):
            dependencies[field] = teacher(name, field)
    while True:
        seed_everything(SEED, deterministic=False)
        loaded = {f"methods.{name}.{f}": as_dependency(f"methods.{name}.{f}", d) for f, d in dependencies.items()}
        try:
            return build_run_method(config, FIELD_LENGTHS, CLASSES, dependencies=loaded)
        except GaalError as err:
            field = (err.field or "").rpartition(".")[2]
            if err.field != f"methods.{name}.{field}" or field not in fields or field in dependencies:
                raise
            dependencies[field] = teacher(name, field)


def teacher(name: str, field: str) -> _Trained:
    """The canonical run of the method that dependency `field` of `name` is trained with."""
    method = TEACHERS.get((name, field), DEFAULT_TEACHER)
    return _trained(method, settings_key(method, None))


def as_dependency(key: str, run: _Trained) -> Dependency:
    """A canonical run as a loaded dependency, frozen as a run's dependencies are."""
    data = {"classes": CLASSES, "field_lengths": list(FIELD_LENGTHS)}
    dep = Dependency(key, Path(IN_TRACE), run.trace.digest, run.config, run.state, data)
    dep.model = frozen_model(dep, FIELD_LENGTHS, CLASSES)
    return dep


class Rows:
    """A split held as tensors (the data layer's SplitDataset protocol)."""

    def __init__(self, image: torch.Tensor, tabular: torch.Tensor, labels: torch.Tensor):
        self.image, self.tabular, self.labels = image, tabular, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: Sequence[int]) -> Batch:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Batch(self.image[idx], self.tabular[idx], self.labels[idx])


def trace_rows() -> tuple[Rows, Rows]:
    """The training and evaluation rows in the default dtype: images in [0, 1] (as the data layer
    hands them over), standard normal continuous fields, integer category codes, every class."""
    generator, dtype = torch.Generator().manual_seed(SEED), torch.get_default_dtype()

    def rows(n: int) -> Rows:
        image = torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator, dtype=dtype)
        columns = [
            torch.randn(n, generator=generator, dtype=dtype)
            if k == 1
            else torch.randint(0, k, (n,), generator=generator).to(dtype)
            for k in FIELD_LENGTHS
        ]
        return Rows(image, torch.stack(columns, 1), torch.arange(n) % CLASSES)

    return rows(TRAIN_ROWS), rows(EVAL_ROWS)


def train_stage(method: Method, planned: PlannedStage, config: Config, train_rows: Rows, eval_rows: Rows) -> dict:
    """Train one stage as the engine does (fresh optimiser, stage hook, label-free batches without
    labels, the schedule stepped each epoch); its declaration, losses and final outputs."""
    method.zero_grad(set_to_none=True)
    optimizer, scheduler = build_stage_optimizer(method, planned, config.train)
    method.stage = planned
    method.on_stage_start(planned)
    declared = stage_declaration(planned, optimizer)
    losses = []
    for epoch in range(planned.start, planned.end + 1):
        method.train()
        method.on_epoch_start(epoch)
        epoch_losses = []
        for batch in make_loader(train_rows, BATCH, shuffle=True, seed=epoch):
            if not planned.stage.labels:
                batch = batch._replace(label=None)
            with weighted_classes(None):
                epoch_losses.append(method.train_step(batch, optimizer)["loss"].detach())
        with warnings.catch_warnings():  # a stage that only measures steps no optimiser
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"), UserWarning)
            scheduler.step()
        losses.append(rounded(torch.stack(epoch_losses)))
    return {**declared, "loss": losses, "outputs": outputs(method, eval_rows)}


def stage_declaration(planned: PlannedStage, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a stage declares that changes a run's numbers without moving the trace's (which epochs
    may be the best one, the patience), and its length and optimiser: settings and arithmetic in
    Python floats, exact on every host, so not rounded. Its name and the parameter prefixes it
    trains are left out: renaming them is a refactor, and what it trains shows in the losses."""
    stage = planned.stage
    spec = stage.optimizer.model_dump(mode="json") if stage.optimizer is not None else "train"
    return {
        "epochs": planned.epochs,
        "declared_epochs": planned.declared,
        "lr": optimizer.param_groups[0]["lr"],
        "optimizer": spec,
        "selects": stage.selects,
        "labels": stage.labels,
        "patience": stage.patience,
    }


def outputs(method: Method, rows: Rows) -> dict[str, dict[str, Any]]:
    """Each head's logits on `rows` through the evaluation's `predict_split`: with every input the
    method reads, and (two modalities) with either one missing."""
    conditions = [None, *MODALITIES] if len(method.modalities) == 2 else [None]
    found = {}
    for missing in conditions:
        try:
            logits, _ = predict_split(method, rows, torch.device("cpu"), len(rows), missing=missing)
        except NoHeadError:  # no claim without that modality: part of what the method does
            logits = {}
        found[f"without {missing}" if missing else "all inputs"] = {h: rounded(v) for h, v in logits.items()}
    return found


def canonical_json(record: dict[str, Any]) -> str:
    """One text for one record: keys sorted, no spaces (floats as Python writes them, shortest)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def rounded(values: Any) -> Any:
    """Numbers (a tensor, a list, a float) at DECIMALS places; -0.0 as 0.0; non-finite as text."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, list):
        return [rounded(v) for v in values]
    value = float(values)
    return round(value, DECIMALS) + 0.0 if math.isfinite(value) else str(value)


@contextlib.contextmanager
def float64_throughout() -> Iterator[None]:
    """float64 tensors by default, torch on one thread, `Tensor.float()` keeping float64, and the
    caller's random streams, threads and dtype untouched afterwards.

    `.float()` is the methods' way of saying "at least float32" (a bf16 autocast's outputs);
    here it would drop parts of the step to float32, whose kernels differ between instruction
    sets. Not thread-safe: nothing else may run torch in this process meanwhile.
    """
    dtype, threads, streams, plain_float = (
        torch.get_default_dtype(),
        torch.get_num_threads(),
        rng_states(),
        torch.Tensor.float,
    )
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    torch.Tensor.float = _float64  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.float = plain_float  # type: ignore[method-assign]
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        set_rng_states(streams)


def _float64(self: torch.Tensor, memory_format: torch.memory_format = torch.preserve_format) -> torch.Tensor:
    return self.to(torch.float64, memory_format=memory_format)


def builtin_names() -> list[str]:
    return sorted(BUILTIN_METHODS)


def main(argv: Sequence[str]) -> int:
    """`python -m gaal_cli.training.behaviour [NAME ...] [--write FILE]`: each method's hash and
    seconds (every built-in when no name is given); --write keeps their records in FILE (the
    golden traces of tests/data/traces.json)."""
    args = list(argv)
    target = None
    if "--write" in args:
        i = args.index("--write")
        target, args = Path(args[i + 1]), args[:i] + args[i + 2 :]
    t0 = time.perf_counter()
    traces = {name: method_trace(name) for name in args or builtin_names()}
    for name, trace in traces.items():
        print(f"{name:12s} {trace.digest}  {trace.seconds:6.2f} s")
    print(f"{len(traces)} methods in {time.perf_counter() - t0:.1f} s")
    if target is not None:
        golden = {name: {"hash": t.digest, "record": t.record} for name, t in traces.items()}
        write_file(target, json.dumps(golden, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
