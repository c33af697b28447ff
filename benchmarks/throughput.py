"""Training throughput (samples per second), data wait and peak memory of every registered method.

    python benchmarks/throughput.py                          # every method, default config, 20 steps
    python benchmarks/throughput.py --steps 50 --methods gaal,concat
    python benchmarks/throughput.py experiments/x.yaml --set model.image_backbone=resnet50 --json out.json

Each method runs in its own Python process, so one method's memory high-water mark cannot leak
into the next one's figure. A process builds the config (YAML < `--set`, with `method=<name>`),
the dataset and the method exactly as `gaal train` does, counts the FLOPs of one training step,
runs `--warmup` steps, then takes three timings of `--steps` steps each:
- loader: batches from the training loader brought to the device as the engine brings them
  (copy, and the images' augmentation/scaling there when data.augment_on defers them), no model;
- step: the method's training step alone, over and over on one batch already on the device;
- loop: `gaal_cli.training.engine.train_epoch`, the engine's own epoch loop, over a loader cut to that
  many batches (it wraps around the training split when it is shorter). Its data wait is the
  share of the loop's wall time spent blocked on the loader for the next batch.
On CUDA the step's achieved TFLOP/s (FLOPs counted by torch.utils.flop_counter, the matrix
products and convolutions of the forward and backward passes) is set against the GPU's dense
bf16 peak (a table of NVIDIA datasheet figures, or --peak-tflops); on the CPU it is given alone.

Memory, measured from just before the engine's set-up (so it covers the dataset, parameters,
optimiser state and activations, not the imports):
- CUDA: `torch.cuda.max_memory_allocated` (tensors only, not the caching allocator's reserve).
- CPU: the process's peak resident set (`ru_maxrss`, its high-water mark reset first through
  /proc/self/clear_refs) minus the resident set just before; it includes allocator slack and
  freed-but-kept pages, so it is an upper bound on what training needs. Where the mark cannot be
  reset it is only the growth of the process's overall peak, a lower bound.
CPU s/step is the process's CPU time (all threads) per loop step. Neither it nor the wall time is
reliable while the load average exceeds the core count (threads wait for cores, and spin while
they wait), so the table's title gives the load average around the timed steps; on a shared
CPU, repeat, compare medians, and consider `--set train.threads=1`. Throughput includes
host-to-device copies and the per-epoch host transfer of the logged statistics, as in a real run.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing it


class CutLoader:
    """Exactly `steps` batches of `loader`, starting again from its beginning when it runs out;
    counts the samples it hands out and the seconds its consumer waited for them."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps, self.samples, self.waited = loader, steps, 0, 0.0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        batches = itertools.islice(itertools.chain.from_iterable(itertools.repeat(self.loader)), self.steps)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.waited += time.perf_counter() - start
            if batch is None:
                return
            self.samples += len(batch.label)
            yield batch


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes; this benchmark targets Linux hosts)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def reset_peak_rss() -> bool:
    """Settle the resident set, then reset its high-water mark (Linux >= 4.0).

    Freed heap that glibc still holds is handed back first (malloc_trim), or the training could
    reuse it without the RSS moving and the figure would depend on what the dataset build left.
    Without the reset, a higher peak reached while building the dataset would hide the training's.

    Returns:
        False where the mark cannot be reset.
    """
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: the baseline may include freed memory
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s from NVIDIA's datasheets, matched in this
# order against torch.cuda.get_device_name: the first name it contains wins ('A100' before 'A10').
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.5),
    ("H200 NVL", 835.5),
    ("H100", 989.4),
    ("H200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10", 125.0),
    ("L4", 121.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The GPU's dense bf16 peak, or None for a device the table does not know."""
    return next((peak for name, peak in BF16_PEAK_TFLOPS if name in device_name), None)


def measure(
    method_name: str,
    experiment: str | None,
    overrides: list[str],
    steps: int,
    warmup: int,
    peak_tflops: float | None = None,
) -> dict:
    """Time one method in this process (loader, step, loop); one row of the table."""
    import torch

    from gaal_cli.config import load_config
    from gaal_cli.data import make_loader
    from gaal_cli.training.engine import resolve_device, setup

    config = load_config(experiment, overrides, {"method": method_name})
    device = resolve_device(config.train.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_start = torch.cuda.memory_allocated(device)
    peak_was_reset = reset_peak_rss()
    rss_start = current_rss_mib() if peak_was_reset else peak_rss_mib()
    # the engine's own set-up (data, model, optimiser, GPU options); memory includes the data
    session = setup(config)
    loader = make_loader(
        session.data.train,
        config.data.batch_size,
        shuffle=True,
        seed=config.seed,
        num_workers=config.data.num_workers,
        pin_memory=device.type == "cuda",
    )
    flops = step_flops(session, next(iter(loader)))
    timing = time_steps(session, loader, steps, warmup)

    if device.type == "cuda":
        memory, memory_kind = (torch.cuda.max_memory_allocated(device) - cuda_start) / 2**20, "CUDA max allocated"
        device_name = torch.cuda.get_device_name(device)
        peak_tflops = peak_tflops or bf16_peak_tflops(device_name)
    else:
        memory = peak_rss_mib() - rss_start
        memory_kind = "RSS peak - start" if peak_was_reset else "RSS peak growth (low)"
        device_name = str(device)
    tflops = flops * steps / timing["step_seconds"] / 1e12 if flops else None
    return {
        "method": method_name,
        "device": device_name,
        "batch_size": config.data.batch_size,
        "image_size": config.data.image_size,
        "backbone": config.model.image_backbone,
        "bf16": config.train.bf16,
        "channels_last": config.train.channels_last and session.device.type == "cuda",
        "compile": config.train.compile,
        "augment_on_device": session.finish_images is not None,
        "steps": steps,
        **timing,
        "seconds_per_step": round(timing["seconds"] / steps, 4),
        "gflop_per_step": round(flops / 1e9, 3) if flops else None,
        "step_tflops": float(f"{tflops:.4g}") if tflops else None,  # 4 significant digits: a slow CPU step stays > 0
        "bf16_peak_tflops": peak_tflops,
        "peak_share": float(f"{tflops / peak_tflops:.4g}") if tflops and peak_tflops else None,
        "memory_mib": round(memory, 1),
        "memory_kind": memory_kind,
        "rss_start_mib": round(rss_start, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),  # whole process, since the reset
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def step_flops(session, batch) -> float | None:
    """FLOPs of one training step on `batch`, as torch.utils.flop_counter counts them (the matrix
    products and convolutions of every forward and backward pass of the step). The step is real:
    it updates the model, like a warm-up step. None where the counter cannot follow the step."""
    from torch.utils.flop_counter import FlopCounterMode

    from gaal_cli.training.engine import autocast, device_batch

    session.method.train()
    session.method.on_epoch_start(1)
    batch = device_batch(session, batch)
    counter = FlopCounterMode(display=False)
    try:
        with counter, autocast(session.device, session.config.train.bf16):
            session.method.train_step(batch, session.optimizer)
    except Exception as err:  # a compiled graph or a custom kernel the counter cannot trace
        print(f"FLOPs not counted: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    return float(counter.get_total_flops())


def time_steps(session, loader, steps: int, warmup: int) -> dict:
    """`warmup` untimed steps, then `steps` timed ones of the loader alone, of the method's step
    alone (on one batch) and of the engine's epoch loop.

    The warm-up and the loop run the method's `on_epoch_start(1)`, so a method's per-epoch work
    is timed once per measurement rather than once per epoch's worth of steps.
    """
    import torch

    from gaal_cli.foundation.display import EpochProgress
    from gaal_cli.training.engine import autocast, device_batch, train_epoch

    device = session.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    with EpochProgress(enabled=False) as bar:
        if warmup:
            train_epoch(session, CutLoader(loader, warmup), bar, 1)
        sync()

        fed = CutLoader(loader, steps)
        start = time.perf_counter()
        for batch in fed:
            device_batch(session, batch)
        sync()
        loader_seconds = time.perf_counter() - start

        batch = device_batch(session, next(iter(loader)))
        session.method.train()
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(device, session.config.train.bf16):
                session.method.train_step(batch, session.optimizer)
        sync()
        step_seconds = time.perf_counter() - start

        timed = CutLoader(loader, steps)
        load_before = os.getloadavg()[0]
        start, cpu_start = time.perf_counter(), time.process_time()
        train_epoch(session, timed, bar, 1)
        sync()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "loader_samples_per_second": round(fed.samples / loader_seconds, 2),
        "step_seconds": round(step_seconds, 4),
        "step_samples_per_second": round(steps * len(batch.label) / step_seconds, 2),
        "samples": timed.samples,
        "seconds": round(seconds, 4),
        "samples_per_second": round(timed.samples / seconds, 2),
        # the loop's wall time spent blocked on the loader for the next batch
        "data_wait_share": round(timed.waited / seconds, 4),
        # CPU time of all this process's threads (inflated too on an oversubscribed machine)
        "cpu_seconds": round(cpu_seconds, 4),
        # the machine's 1-minute load average around the timed steps: others' work slows these figures
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def run_isolated(method_name: str, args: argparse.Namespace) -> dict:
    """`measure` in a fresh interpreter; a failure is reported in the table, not raised."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", method_name]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    if args.peak_tflops:
        command += ["--peak-tflops", str(args.peak_tflops)]
    command += [f"--set={text}" for text in args.set]
    if args.experiment:
        command.append(args.experiment)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"method": method_name, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    first = next((r for r in rows if "error" not in r), None)
    title = "training throughput"
    if first:
        title += (
            f" on {first['device']} ({first['threads']} threads), {first['backbone']}, "
            f"{first['image_size']}px, batch {first['batch_size']}, {first['steps']} timed steps"
            + (", bf16" if first["bf16"] else "")
            + (", channels_last" if first.get("channels_last") else "")
            + (", torch.compile" if first.get("compile") else "")
            + (", augmentation on the device" if first["augment_on_device"] else "")
        )
        if first["bf16_peak_tflops"]:
            title += f"; bf16 peak {first['bf16_peak_tflops']:g} TFLOP/s"
        loads = [value for row in rows if "error" not in row for value in row["load_average"]]
        title += f"; load average {min(loads):.1f}-{max(loads):.1f}"
    table = Table(title=title)
    columns = ("method", "loader/s", "step/s", "loop/s", "data wait", "CPU s/step", "TFLOP/s", "of peak")
    for column in (*columns, "memory MiB", "memory measure", "peak RSS MiB"):
        table.add_column(column, justify="left" if column in ("method", "memory measure") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["method"], *["-"] * (len(columns) - 1), "-", f"failed: {row['error']}", "-")
            continue
        table.add_row(
            row["method"],
            f"{row['loader_samples_per_second']:.1f}",
            f"{row['step_samples_per_second']:.1f}",
            f"{row['samples_per_second']:.1f}",
            f"{row['data_wait_share']:.0%}",
            f"{row['cpu_seconds'] / row['steps']:.3f}",
            f"{row['step_tflops']:.3g}" if row["step_tflops"] else "-",
            f"{row['peak_share']:.1%}" if row["peak_share"] else "-",
            f"{row['memory_mib']:.1f}",
            row["memory_kind"],
            f"{row['peak_rss_mib']:.0f}",
        )
    # a log or pipe gets a fixed width rather than rich's 80 columns, which wrap this table
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="experiment YAML (default: the built-in config)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, cuDNN autotune)")
    parser.add_argument("--methods", help="comma-separated method names (default: every registered method)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for one the table lacks")
    parser.add_argument("--child", metavar="METHOD", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    from gaal_cli.runs.folder import to_json  # strict JSON: a NaN measurement is written as null

    if args.child:
        print(to_json(measure(args.child, args.experiment, args.set, args.steps, args.warmup, args.peak_tflops)))
        return 0

    from gaal_cli.methods import METHODS

    names = args.methods.split(",") if args.methods else sorted(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; registered: {', '.join(sorted(METHODS))}")
    rows = []
    for name in names:
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        rows.append(run_isolated(name, args))
    print_table(rows)
    if args.json:
        args.json.write_text(to_json(rows, indent=2) + "\n")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
