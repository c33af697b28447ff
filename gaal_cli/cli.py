"""The `gaal` command line: thin commands that parse, load the config and call the engine."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import typer
from typer.core import TyperCommand

from gaal_cli.foundation.display import TerminalConsole, styled
from gaal_cli.foundation.errors import TRAIN_FLAGS, GaalError, flags_named

app = typer.Typer(
    help="Tabular-image fusion experiments: GAAL (ICME 2026) and the methods it is compared with.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# no markup: user text (paths, keys, cells) prints as written (see gaal_cli.foundation.display)
stdout = TerminalConsole(markup=False)
stderr = TerminalConsole(stderr=True, markup=False)


def _print_version(value: bool) -> None:
    if value:
        from gaal_cli import __version__

        stdout.print(f"gaal {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Options of `gaal` itself, given before the command (Typer adds the shell-completion ones)."""


INTERRUPTED = (
    "the run folder keeps its last finished epoch (an interrupted --restart leaves the finished run as it was); "
    "rerun the same command to resume"
)


def user_errors(command):
    """Report GaalError as one paragraph with exit code 2; Ctrl-C and SIGTERM as an interruption
    (SIGTERM raises while the command runs, so temporary files are removed: gaal_cli.foundation.files)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from gaal_cli.foundation.files import TERMINATED_EXIT, Terminated, sigterm_raises

        try:
            with sigterm_raises():
                return command(*args, **kwargs)
        except GaalError as err:
            stderr.print(styled("error:", "bold red", f" {err.render()}"), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            stderr.print(styled("interrupted:", "yellow", f" {INTERRUPTED}"), highlight=False)
            raise typer.Exit(130) from None
        except Terminated:
            stderr.print(styled("terminated:", "yellow", f" {INTERRUPTED}"), highlight=False)
            raise typer.Exit(TERMINATED_EXIT) from None

    return wrapper


class SetHintCommand(TyperCommand):
    """A command whose unknown option, when it names a config key, says how to set it
    (`gaal train --lr 3e-4`: "config keys are set with --set: --set train.lr=VALUE")."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except Exception as err:
            # click's NoSuchOption: Typer may carry its own copy of click, so it is known by name
            # (and --help's exit, an exception too, imports nothing)
            if type(err).__name__ != "NoSuchOption":
                raise
            from gaal_cli.training.preflight import config_key_named

            key = config_key_named(err.option_name)
            if key is None:
                raise
            hint = f"No such option: {err.option_name}; config keys are set with --set: --set {key}=VALUE"
            raise type(err)(err.option_name, hint, ctx=err.ctx) from None


@app.command(cls=SetHintCommand)
@user_errors
def train(
    experiment: Path | None = typer.Argument(None, help="Experiment YAML file (default: built-in quickstart)."),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Dataset name (synthetic, ...)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder of prepared data."),
    method: str | None = typer.Option(None, "--method", "-m", help="Training method, e.g. gaal or concat."),
    epochs: int | None = typer.Option(None, "--epochs", "-e", help="Maximum number of epochs."),
    seed: int | None = typer.Option(None, "--seed", "-s", help="Random seed."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder (default: results/<experiment>/<dataset>/<method>/seed<seed>)."
    ),
    target: str | None = typer.Option(None, "--target", help="Class column of a .csv/.parquet dataset."),
    image_column: str | None = typer.Option(None, "--image-column", help="Image-path column of a table."),
    group_column: str | None = typer.Option(
        None, "--group-column", help="Table column (patient, lesion) whose rows stay in one split."
    ),
    skip_bad: bool | None = typer.Option(None, "--skip-bad", help="Drop and count bad rows instead of failing."),
    overrides: list[str] = typer.Option([], "--set", help="Override any config key: --set methods.gaal.epsilon=0.1"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    restart: bool = typer.Option(
        False,
        "--restart",
        help="Train from epoch 1 whatever the run folder holds (a finished run is kept until the new one finishes).",
    ),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Print the resolved config and check what the run reads (table columns, target, images, "
        "dependencies); train nothing, write nothing.",
    ),
) -> None:
    """Train one run and write config, per-epoch metrics, best checkpoint and report.json.

    A finished run of the same config is shown, not trained again (--restart retrains it)."""
    from gaal_cli.config import load_config

    flags = {
        "data.name": dataset,
        "data.dir": data_dir,
        "method": method,
        "train.epochs": epochs,
        "seed": seed,
        "train.device": device,
        "data.target": target,
        "data.image_column": image_column,
        "data.group_column": group_column,
        "data.skip_bad": skip_bad,
    }
    with flags_named(flags):
        config = load_config(experiment, overrides, flags)
        from gaal_cli.training.preflight import check_run_inputs, unused_settings

        for warning in unused_settings(config, overrides):
            stderr.print(styled("warning:", "yellow", f" {warning}"), highlight=False, soft_wrap=True)
        check_run_inputs(config)  # a wrong path, column or target: answered before torch loads
        # the config and the inputs are checked: only now torch, timm and the method's module are loaded
        from gaal_cli.runs.folder import default_run_folder

        run_dir = out or default_run_folder(config)
        if dry_run:
            _dry_run(config, run_dir)
            return
        _train(config, run_dir, quiet, restart)


def _train(config, run_dir: Path, quiet: bool, restart: bool) -> None:
    from gaal_cli.foundation.display import metrics_table
    from gaal_cli.foundation.distributed import is_main_process
    from gaal_cli.training.engine import train as run_training

    report = run_training(config, run_dir, show_progress=not quiet, restart=restart)
    if not is_main_process():
        return
    best = report.get("best_epoch", "?")
    stdout.print(metrics_table(f"{config.method} on {config.data.name} (best epoch {best})", report["metrics"]))
    stdout.print(f"run folder: {run_dir}")


def _dry_run(config, run_dir: Path) -> None:
    from gaal_cli.training.dry_run import dry_run

    for part in dry_run(config, run_dir):
        stdout.print(part, highlight=False, soft_wrap=True)


@app.command("eval")
@user_errors
def evaluate(
    run: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    split: str = typer.Option("test", "--split", help="train, val or test (of the run's own data)."),
    missing: str | None = typer.Option(None, "--missing", help="Evaluate with 'tabular' (or 'image') absent."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Prepared data folder, if it moved."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="A separate labelled .csv/.parquet file, scored whole (not re-split); or the run's own table "
        "where it now is (then split as training split it).",
    ),
    head: str | None = typer.Option(
        None, "--head", help="The head of the per-class table: multi, image or tabular (default: best on val)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Write the confusion matrix as a figure (.png, .pdf or .svg)."
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="--data: drop and count bad rows instead of failing."),
    device: str | None = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    last: bool = typer.Option(
        False, "--last", help="Evaluate an unfinished run's last saved epoch (last.pt) instead of refusing."
    ),
    write_predictions: bool = typer.Option(
        False,
        "--write-predictions",
        help="Write the finished run's predictions.safetensors (an older run lacks it) and nothing else; "
        "refused when the recomputed test accuracy is not report.json's.",
    ),
) -> None:
    """Evaluate a finished run's best checkpoint: every metric per head, and for one head a table per
    class and the confusion matrix (on one split, or on a separate labelled file with --data).

    An unfinished run is refused, naming its state; --last evaluates its last saved epoch."""
    from gaal_cli.training.preflight import HEADS, MODALITIES, SPLITS, check_choice, check_data_file, check_run_path

    check_choice(split, SPLITS, "--split", "unknown split")
    check_choice(missing, MODALITIES, "--missing", "no modality called")
    check_choice(head, HEADS, "--head", "unknown head")
    check_run_path(run)
    if write_predictions:
        if split != "test" or missing or last or as_json or head or out:
            raise GaalError(
                "--write-predictions writes the test predictions as the run computed them; "
                "it takes no --split, --missing, --last, --head, --out or --json",
                source="--write-predictions",
            )
        from gaal_cli.training.trained_run import write_run_predictions

        overrides = {"data.dir": data_dir, "data.name": str(data) if data else None, "train.device": device}
        file, outcome = write_run_predictions(run, overrides)
        said = {"wrote": "wrote", "untouched": "already there, untouched (it passes its checks against the run):"}
        stdout.print(f"{said.get(outcome, outcome + ':')} {file}", highlight=False, soft_wrap=True)
        return
    if data is not None:
        check_data_file(data)
    if out is not None and out.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise GaalError("is not a .png, .pdf or .svg file name", source=str(out), field="--out")
    # the flags are checked: only now torch and the run's method load
    from gaal_cli.foundation.display import class_tables
    from gaal_cli.runs.folder import checkpoint_to_evaluate, to_json
    from gaal_cli.training.trained_run import evaluate_run

    file, note = checkpoint_to_evaluate(run, last)
    if note:  # on stderr, so that --json output stays JSON
        stderr.print(styled("note:", "yellow", f" {note}"), highlight=False, soft_wrap=True)
    overrides = {"data.dir": data_dir, "train.device": device}
    scores, config = evaluate_run(file, split, missing, overrides, table=data, head=head, skip_bad=skip_bad)
    if out is not None:
        from gaal_cli.analysis.figures import confusion_figure

        title = f"{config.method}, {scores.head} head: {scores.where}"
        confusion_figure(scores.confusion, scores.class_names, title, out, protected=[file, *([data] if data else [])])
    if as_json:
        stdout.print_json(to_json(scores.to_json()))
        return
    title = f"{config.method} on {config.data.name}" + (f", {missing} missing" if missing else "")
    for part in class_tables(scores.to_json(), title + (", last.pt" if last else "")):
        stdout.print(part, highlight=False, soft_wrap=True)
    if out is not None:
        stdout.print(f"confusion matrix figure: {out}", highlight=False, soft_wrap=True)


@app.command()
@user_errors
def predict(
    run: Path = typer.Argument(..., help="Run folder or checkpoint file."),
    data: Path = typer.Option(
        ...,
        "--data",
        help="Table to predict (.csv/.parquet; image paths relative to it); for a run on the embedded "
        "synthetic dataset, train, val or test: that split, regenerated from the run's config.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="CSV to write: the row id (id column or image), prediction, prob_<class>."
    ),
    missing: str | None = typer.Option(None, "--missing", help="Predict with 'tabular' (or 'image') absent."),
    head: str | None = typer.Option(
        None, "--head", help="multi (fused), image or tabular prediction (default: the best on validation)."
    ),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop and count bad rows instead of failing."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Class probabilities for every row of a table, from a finished run; works from any directory.

    The head with the best validation accuracy predicts unless --head says otherwise (it is named).
    With labels, every metric is printed on the rows the run did not train on (its table's split, or
    the table's own split column), with a table per class and the confusion matrix.
    """
    from gaal_cli.training.preflight import HEADS, MODALITIES, check_choice, check_data_file, check_run_path

    check_choice(missing, MODALITIES, "--missing", "no modality called")
    check_choice(head, HEADS, "--head", "unknown head")
    check_run_path(run)
    check_data_file(data)
    from gaal_cli.foundation.display import class_tables
    from gaal_cli.training.predict import predict_table

    summary = predict_table(run, data, out, missing=missing, head=head, skip_bad=skip_bad, device=device)
    if summary.skipped:
        total = sum(summary.skipped.values())
        counts = ", ".join(f"{k}: {v}" for k, v in summary.skipped.items())
        stdout.print(f"skipped {total} bad row{'s' * (total > 1)} (no output row for them): {counts}", highlight=False)
    notes = {"imputed": summary.imputed, "categories unseen in training, coded unknown": summary.unknown_categories}
    for what, counts in notes.items():
        if counts:
            stdout.print(f"{what}: " + ", ".join(f"{k} {v}" for k, v in counts.items()), highlight=False)
    stdout.print(f"predicted by the {summary.head} head ({summary.head_reason})", highlight=False, soft_wrap=True)
    for name, (n, acc) in summary.by_split.items():
        seen = " (the run trained on these rows)" if name == "train" else ""
        stdout.print(f"accuracy {acc:.4f} on the {n} labelled {name} rows{seen}", highlight=False)
    if summary.scores is not None:
        scores = summary.scores.to_json()
        scores["head_reason"] = summary.head_reason
        for part in class_tables(scores, "labelled rows"):
            stdout.print(part, highlight=False, soft_wrap=True)
    stdout.print(f"wrote {summary.rows_written} of {summary.rows_read} rows: {summary.out}", highlight=False)


SEEDS_HELP = "Replace the file's seeds: 2022,2023 or 2022-2026."
RESULTS_HELP = "Root of the run folders: <results>/<experiment>/<variant>/seed<seed>."


@app.command(cls=SetHintCommand)
@user_errors
def sweep(
    experiment: str = typer.Argument(..., help="Name in experiments/ (table1_dvm, synthetic/lambda) or a YAML file."),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Runs trained at the same time."),
    seeds: str | None = typer.Option(None, "--seeds", help=SEEDS_HELP),
    results: Path = typer.Option(Path("results"), "--results", help=RESULTS_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override a key in every run: --set data.dir=/data/dvm"),
    dataset: str | None = typer.Option(
        None, "--dataset", "-d", help="Run every run on this dataset (a table: under its own folder)."
    ),
    target: str | None = typer.Option(None, "--target", help="Class column of a --dataset table."),
    image_column: str | None = typer.Option(None, "--image-column", help="Image-path column of a --dataset table."),
    group_column: str | None = typer.Option(None, "--group-column", help="Column whose rows stay in one split."),
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Validate, check the data as the runs would, list the runs with their status; train none.",
    ),
    launcher: str = typer.Option("local", "--launcher", help="local (this machine) or slurm (needs gaal[slurm])."),
    slurm_partition: str | None = typer.Option(None, "--slurm-partition", help="Slurm partition."),
    slurm_time: int = typer.Option(240, "--slurm-time", help="Minutes per run."),
    slurm_gpus: int = typer.Option(1, "--slurm-gpus", help="GPUs per run."),
    slurm_cpus: int = typer.Option(8, "--slurm-cpus", help="CPUs per run."),
    slurm_mem: int = typer.Option(32, "--slurm-mem", help="GB of memory per run."),
    slurm_folder: Path = typer.Option(Path("results/slurm"), "--slurm-folder", help="Job scripts and logs."),
) -> None:
    """Train every run of an experiment's grid x seeds; finished runs are skipped, killed ones resumed."""
    from gaal_cli.sweeps.runner import load_sweep, parse_seeds, resolve_experiment

    if launcher not in ("local", "slurm"):
        raise GaalError(f"unknown launcher '{launcher}'; expected local or slurm", source="--launcher")
    flags = {
        "data.name": dataset,
        "data.target": target,
        "data.image_column": image_column,
        "data.group_column": group_column,
    }
    with flags_named(flags):
        plan = load_sweep(
            resolve_experiment(experiment), overrides, seeds=parse_seeds(seeds), results=results, dataset=flags
        )
    if launcher == "slurm" and not dry_run:
        from gaal_cli.sweeps.launchers import SlurmOptions
        from gaal_cli.sweeps.runner import submit_sweep

        options = SlurmOptions(slurm_partition, slurm_time, slurm_gpus, slurm_cpus, slurm_mem)
        runs, jobs = submit_sweep(plan, slurm_folder, options)
        ids = ", ".join(sorted({str(job.job_id).split("_")[0] for job in jobs})) or "none"
        left = len(plan.runs) - len(runs)
        stdout.print(
            f"{plan.name}: {len(runs)} runs submitted (job {ids}); {left} done or waiting for a dependency "
            "(submit again once it has finished)"
        )
        return
    with flags_named(flags):
        _run_sweep(plan, workers, dry_run)


@app.command(cls=SetHintCommand)
@user_errors
def ablate(
    components: list[str] = typer.Argument(..., help="GAAL switches in the order they are added: cgs ugg."),
    dataset: list[str] = typer.Option(
        ["synthetic"], "--dataset", "-d", help="synthetic, dvm, sun, ham10000 or a .csv/.parquet table (repeatable)."
    ),
    target: str | None = typer.Option(None, "--target", help="Class column of a --dataset table."),
    image_column: str | None = typer.Option(None, "--image-column", help="Image-path column of a --dataset table."),
    group_column: str | None = typer.Option(None, "--group-column", help="Column whose rows stay in one split."),
    experiment: str | None = typer.Option(
        None, "--from", help="Ablation file (default: table2_ablation; synthetic and ham10000 have their own)."
    ),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Runs trained at the same time."),
    seeds: str | None = typer.Option(None, "--seeds", help=SEEDS_HELP),
    results: Path = typer.Option(Path("results"), "--results", help=RESULTS_HELP),
    overrides: list[str] = typer.Option([], "--set", help="Override a key in every run."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and list the runs with their status; train none."),
) -> None:
    """Table II: GAAL with every listed switch off, then each switched on in turn (a sweep)."""
    from gaal_cli.sweeps.runner import load_ablation, parse_seeds

    table = {"data.target": target, "data.image_column": image_column, "data.group_column": group_column}
    with flags_named({**table, "data.name": dataset}):
        plan = load_ablation(
            components, dataset, experiment, overrides, seeds=parse_seeds(seeds), results=results, table=table
        )
    with flags_named({**table, "data.name": dataset}):
        _run_sweep(plan, workers, dry_run)


def _run_sweep(plan, workers: int, dry_run: bool) -> None:
    from gaal_cli.foundation.display import plan_table
    from gaal_cli.runs.folder import RunFolder
    from gaal_cli.sweeps.runner import check_data, check_inputs, run_sweep
    from gaal_cli.sweeps.staleness import described_statuses

    if dry_run:
        title = f"{plan.name}: {len(plan.runs)} runs from {plan.source}"
        stdout.print(plan_table(title, described_statuses(plan), lambda need: RunFolder(need).done))
        check_inputs(plan)
        for line in check_data(plan, deep=True):
            stdout.print(f"data: {line}", highlight=False, soft_wrap=True)
        stdout.print("dry run: the runs' config and data are as a real sweep checks them; nothing trained or written")
        return
    outcome = run_sweep(plan, workers)
    stdout.print(
        f"{plan.name}: {len(outcome.trained)} trained, {len(outcome.skipped)} already done, "
        f"{len(outcome.failed)} failed, {len(outcome.busy)} left to another process"
        + (f", {len(outcome.not_started)} not started" if outcome.not_started else "")
    )
    for run, reason in outcome.failed:
        stderr.print(styled("failed", "red", f" {run.label}: {reason}"), highlight=False, soft_wrap=True)
    if outcome.stopped_because:
        why = styled("stopped launching runs", "red", f": {outcome.stopped_because}")
        stderr.print(why, highlight=False, soft_wrap=True)
    if outcome.failed or outcome.not_started:
        raise typer.Exit(1)


@app.command()
@user_errors
def reproduce(
    file: Path = typer.Argument(Path("results/campaign.yaml"), help="A campaign file: sweeps in order, then reports."),
    results: Path = typer.Option(Path("results"), "--results", help=RESULTS_HELP),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="Runs trained at the same time."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List each sweep's runs by status; train none."),
) -> None:
    """Rebuild a set of results in one campaign: every sweep the file lists, in its order, then its reports.

    Stopped at any point, the same command resumes it (finished runs are skipped, killed ones resumed);
    a stale finished run stops it, naming the folder."""
    import time

    from gaal_cli.sweeps.campaign import dry_run_lines, load_campaign

    campaign = load_campaign(file)
    plans = campaign.plans(results)
    if dry_run:
        for line in dry_run_lines(campaign, plans, results):
            stdout.print(line, highlight=False, markup=False)
        return
    start = time.monotonic()
    for plan in plans:
        _run_sweep(plan, workers, dry_run=False)
    from gaal_cli.analysis.report import write_report

    for spec in campaign.reports:
        write_report([results / f for f in spec.folders], results / spec.out)
        stdout.print(f"report: {results / spec.out}", highlight=False)
    stdout.print(f"campaign {file}: {sum(len(p.runs) for p in plans)} runs, {time.monotonic() - start:.0f} s")


@app.command()
@user_errors
def report(
    folders: list[Path] = typer.Argument(
        ..., help="Folder(s) holding finished runs, e.g. results/synthetic (several: one report across them)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where tables and figures go (default: FOLDER/report; needed for several folders)."
    ),
    reference: str = typer.Option("concat", "--reference", help="The method each row is compared with (paired)."),
) -> None:
    """Tables (Markdown, CSV: mean ± std and 95 % interval over seeds; paired differences against a reference
    row) and figures (PNG) from the finished runs under FOLDER; with several folders, ranks and a CD diagram
    across their datasets."""
    if len(folders) > 1 and out is None:
        raise GaalError("several folders make one report: name where it goes with --out DIR", source="--out")
    from gaal_cli.analysis.report import write_report

    for path in write_report(folders, out or folders[0] / "report", reference=reference):
        stdout.print(str(path), highlight=False)


@app.command()
@user_errors
def compare(
    a: Path = typer.Argument(
        ..., metavar="A", help="A run folder, or a folder of seed folders (e.g. results/.../table1/gaal)."
    ),
    b: Path = typer.Argument(
        ..., metavar="B", help="The run or run group to compare with (same seeds, same test samples)."
    ),
    metric: list[str] = typer.Option(["acc"], "--metric", help="acc or bal_acc; repeat for both."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Is A better than B? The paired difference per head and metric, its 95 % interval and p-value.

    Runs are paired by seed and test sample (their predictions.safetensors); a run without one is refused,
    naming `gaal eval RUN --write-predictions`."""
    from gaal_cli.analysis.compare import compare_runs, comparison_lines, run_group, shared_runs_note, sides_provenance
    from gaal_cli.analysis.provenance_groups import describe, sides_note
    from gaal_cli.runs.folder import to_json

    rows = compare_runs(a, b, metrics=metric)
    groups = {"A": run_group(a), "B": run_group(b)}
    sides = sides_provenance(groups)
    notes = [n for n in (shared_runs_note(groups), sides_note(sides)) if n]
    if as_json:
        made_by = {side.lower(): [{"code": c, "host": h} for c, h in sorted(keys)] for side, keys in sides.items()}
        found = {
            "a": str(a),
            "b": str(b),
            "comparisons": [r.to_json() for r in rows],
            "provenance": made_by,
            "note": "; ".join(notes) or None,
        }
        stdout.print_json(to_json(found))
        return
    for line in comparison_lines(rows, str(a), str(b)):
        stdout.print(line, highlight=False, markup=False, soft_wrap=True)
    made_by = "; ".join(f"{side}: {describe(keys)}" for side, keys in sides.items())
    stdout.print(f"Made by: {made_by}.", highlight=False, markup=False, soft_wrap=True)
    for note in notes:
        stderr.print(styled("note:", "yellow", f" {note}"), highlight=False, soft_wrap=True)


data_app = typer.Typer(
    help="Datasets: prepare a real one from its raw download, or inspect a table before training on it.",
    no_args_is_help=True,
)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
@user_errors
def prepare_data(
    recipe: str = typer.Argument(..., help="dvm, celeba, sun, ham10000, or mmcl (import MMCL/GAAL prepared files)."),
    raw: Path = typer.Option(..., "--raw", help="Folder of the raw download."),
    out: Path = typer.Option(..., "--out", help="Folder to write manifest.json and table.csv into."),
    physical: bool | None = typer.Option(None, "--physical", help="dvm: add the 4 jittered physical columns."),
    min_ads: int | None = typer.Option(None, "--min-ads", help="dvm: keep car models with this many ads (100)."),
    target: str | None = typer.Option(None, "--target", help="celeba/sun: attribute to predict."),
    threshold: float | None = typer.Option(None, "--threshold", help="sun: vote fraction for 'present' (0.5)."),
    include_dx_type: bool | None = typer.Option(
        None, "--include-dx-type", help="ham10000: add dx_type as a feature (it leaks the label)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="dvm/sun/ham10000: split seed (2022)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop and count bad rows instead of failing."),
) -> None:
    """Prepare a dataset by its recipe; then train with --dataset RECIPE --data-dir OUT."""
    from gaal_cli.data.recipes import prepare

    options = {
        "physical": physical,
        "min_ads": min_ads,
        "target": target,
        "threshold": threshold,
        "include_dx_type": include_dx_type,
        "seed": seed,
    }
    manifest = prepare(recipe, raw, out, skip_bad, options)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    dropped = ", ".join(f"{k}: {v}" for k, v in manifest["dropped"].items() if v) or "none"
    stdout.print(f"{recipe}: {len(manifest['class_names'])} classes, {len(manifest['columns'])} columns; {counts}")
    stdout.print(f"dropped rows: {dropped}", highlight=False)
    stdout.print(f"prepared data: {out}")


@data_app.command("inspect")
@user_errors
def inspect_data(
    table: Path = typer.Argument(..., help="A .csv or .parquet table with an image-path column."),
    target: str = typer.Option(..., "--target", help="Class column."),
    image_column: str = typer.Option(..., "--image-column", help="Image-path column (relative to the table)."),
    group_column: str | None = typer.Option(None, "--group-column", help="Column whose rows stay in one split."),
    skip_bad: bool | None = typer.Option(None, "--skip-bad", help="As training would: drop and count bad rows."),
    overrides: list[str] = typer.Option([], "--set", help="Other data settings: --set data.exclude=[notes]"),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
) -> None:
    """What training on TABLE would see and do: each column's role and why, classes per split, what
    would be dropped and why, and the error training would raise, with its exit code (2).

    Runs training's own reading, checks and split; writes nothing (no cache, no run folder) and
    opens each image's header only (training also decodes every image).
    """
    from gaal_cli.config import load_config

    flags = {
        "data.name": str(table),
        "data.target": target,
        "data.image_column": image_column,
        "data.group_column": group_column,
        "data.skip_bad": skip_bad,
    }
    with flags_named(flags, {k: v for k, v in TRAIN_FLAGS.items() if k != "data.name"}):
        config = load_config(None, overrides, flags)
        from gaal_cli.data.table_file import check_table_columns

        check_table_columns(config.data)  # a wrong path, column or target: answered before torch loads
    from gaal_cli.data.user_table import inspect_table
    from gaal_cli.foundation.display import inspection_tables
    from gaal_cli.runs.folder import to_json

    found, error = inspect_table(config.data)
    if as_json:
        stdout.print_json(to_json(found))
    else:
        for part in inspection_tables(found):
            stdout.print(part)
    if error is not None:
        raise error


@app.command("check-method")
@user_errors
def check_method(
    name: str = typer.Argument(..., help="A method name (built-in or from a plugin package)."),
    quick: bool = typer.Option(
        False, "--quick", help="Smaller data; determinism compared over epoch 1; learning not judged."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Keep the check's runs in this folder (default: a temporary one, removed)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a config key: --set methods.NAME.x=1"),
) -> None:
    """Run on one method the checks every built-in passes: it trains, resumes identically, repeats
    bit for bit, reaches every stage, predicts with a modality missing, and its run is healthy.

    Exit 1 if any check fails."""
    import tempfile

    from gaal_cli.config import load_config

    # an unknown method or a bad override: the config's own error (exit 2), before any training
    try:
        load_config(overrides=overrides, flags={"method": name})
    except GaalError as err:
        if err.field != "method":
            raise
        raise GaalError(err.message, source=f"gaal check-method {name}") from None
    from gaal_cli.training.method_checks import check_method as run_checks

    with tempfile.TemporaryDirectory(prefix="gaal-check-") if out is None else contextlib.nullcontext(out) as folder:
        if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise GaalError("is not an empty folder; the check trains its runs into a new one", source=str(out))
        checks = run_checks(name, folder, quick=quick, overrides=overrides)
    for check in checks:
        label, style = ("PASS", "bold green") if check.passed else ("FAIL", "bold red")
        stdout.print(styled(label, style, f"  {check.name}: {check.reason}"), highlight=False, soft_wrap=True)
    failed = [c.name for c in checks if not c.passed]
    stdout.print(f"{name}: {len(checks) - len(failed)} of {len(checks)} checks passed", highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command("methods")
@user_errors
def list_methods() -> None:
    """List the training methods (built-in or from a plugin package), their origin and settings."""
    from gaal_cli.methods.registry import all_methods, load_plugins, method_origin, method_summary

    for warning in load_plugins():  # a plugin that fails to import is named and skipped
        stderr.print(styled("warning:", "yellow", f" {warning}"), highlight=False, soft_wrap=True)
    for name, spec in all_methods().items():
        fields = ", ".join(f"{k}={v.default!r}" for k, v in spec.settings.model_fields.items())
        stdout.print(styled(name, "bold", f"  [{method_origin(name)}]  {method_summary(spec)}"))
        if fields:
            stdout.print(f"    {fields}", highlight=False)


if __name__ == "__main__":
    app()
