"""Portable reproduction: does pinning the CPU kernel choices make a run bit-identical across
x86-64 hosts, and what does the pin cost per epoch?

    python benchmarks/portable_repro.py                                  # everything (~2 h on 2 busy cores)
    python benchmarks/portable_repro.py --parts dispatch identity --methods concat   # no timing, one method
    python benchmarks/portable_repro.py --parts cost                     # only the timing
    python benchmarks/portable_repro.py --pin-threads 2 --pins pin       # a fixed count other than 1
    python benchmarks/portable_repro.py --set data.image_size=16 ...     # another run (e.g. a test's)
    python benchmarks/portable_repro.py --json here.json                 # keep every digest ...
    python benchmarks/portable_repro.py --against there.json             # ... and compare with another host's

Only one machine is at hand, so other hosts are emulated on it by capping what each library may
dispatch to and how many cores it sees (an "emulated host"):
- ATen's vectorised kernels: ATEN_CPU_CAPABILITY (default / avx2 / avx512; checked with
  torch.backends.cpu.get_cpu_capability());
- oneDNN (convolutions): ONEDNN_MAX_CPU_ISA (SSE41, AVX2, AVX512_CORE, ...; checked with the
  `isa:` line and the convolution's implementation name in ONEDNN_VERBOSE=1);
- MKL (the Linear layers' SGEMM): MKL_ENABLE_INSTRUCTIONS (AVX2, AVX512, ...), which MKL's
  documentation says has no effect on non-Intel processors;
- cores: the process's CPU affinity, and the thread count a run gets there by default (one per core).
A "pin" then forces kernel choices that every x86-64 host of the AVX2 generation and later offers:
- aten: ATEN_CPU_CAPABILITY=avx2;
- onednn: ONEDNN_MAX_CPU_ISA=AVX2;
- mkl: MKL_CBWR=COMPATIBLE (MKL's conditional numerical reproducibility on its SSE2 branch without
  rcpps/rsqrtps, the one branch besides AUTO that MKL documents for non-Intel processors; AVX2
  or AVX512 branches silently fall back to AUTO there) and MKL_DYNAMIC=FALSE;
- threads: OMP_NUM_THREADS=MKL_NUM_THREADS=1 (or --pin-threads), whatever the host's cores;
- aten-conv: torch.backends.mkldnn.enabled = False and torch.backends.nnpack.set_flags(False)
  before gaal starts, so that convolutions run as ATen's im2col + MKL SGEMM (with oneDNN off
  alone, the convolutions under no_grad, i.e. evaluation, go to NNPACK); set by this script's
  child wrapper, not by gaal.
Every variable is set in the child's environment before torch is imported; any of them the
caller had set is removed first.

Three parts, each in fresh subprocesses:
1. dispatch: per emulated host and pin, what torch actually dispatches to (ATen capability,
   oneDNN ISA and convolution kernel, MKL's CNR mode, threads) and the bytes of the embedded
   dataset and of five kernels on fixed inputs (matrix product, log-softmax, convolution
   forward, its weight gradient, and forward under no_grad as evaluation runs it): which library
   each knob moves.
2. identity: `gaal train -m METHOD -e 2` on a small embedded synthetic dataset for every pin on
   every emulated host, compared byte for byte with the same pin on the first host: report.json's
   18 metrics, the predictions file's tensors, the checkpoint's state-dict tensors (each hashed),
   and the first logged training step (steps.jsonl, six decimals) that differs. A setting whose
   variables and cores equal an earlier one's (a pin dropping the ATen knob on an AVX2 host is
   the full pin there) reuses that run: its row repeats the run's s/epoch.
3. cost: on this machine as it is, unpinned (all its cores, and one), pinned, pinned without
   each kernel knob in turn, and pinned with ATen's convolutions, taken in turns `--repeats` times
   so that load changes hit all alike: the median seconds per epoch (report.json's wall clock)
   and the median CPU seconds of an epoch (the process's, all threads, between the ends of
   epochs 1 and 2; with one thread this measures the work even while other processes load the
   cores), each as a ratio to unpinned. Every
   repeat's bytes are checked against part 2's run of the same setting (or the first repeat).

What emulation cannot show: a real other CPU's cache sizes and core count (oneDNN and MKL pick
blockings and thread partitions from them), AMX or AVX-512 FP16 kernels this CPU lacks (a cap
can only lower the ISA), Intel against AMD behaviour of the same instructions (MKL takes
other code paths on non-Intel CPUs; approximate instructions such as rcpps differ by vendor), and
other library builds (torch, MKL, oneDNN, numpy versions). `--json` / `--against` compare real
hosts.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gaal_cli.runs.provenance import PORTABLE_PIN  # stdlib only: torch is imported in the children

ROOT = Path(__file__).resolve().parents[1]

# every variable a knob or an emulated host sets; the caller's values are removed so that the
# benchmark's settings are the only ones in force
CONTROLLED = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "ONEDNN_VERBOSE",
    "DNNL_VERBOSE",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DYNAMIC",
    "MKL_NUM_THREADS",
    "MKL_VERBOSE",
    "OMP_NUM_THREADS",
    "OMP_DYNAMIC",
)
CPUS_VAR = "PORTABLE_REPRO_CPUS"  # the child pins its own affinity before torch loads
ATEN_CONV_VAR = "PORTABLE_REPRO_ATEN_CONV"

# the run: the quickstart config on a small embedded dataset (8 steps an epoch at batch 128)
DATA_OVERRIDES = ("data.synthetic.n_train=1024", "data.synthetic.n_val=256", "data.synthetic.n_test=512")
EPOCHS = 2
PARTS = ("dispatch", "identity", "cost")


@dataclass(frozen=True)
class Host:
    """An emulated host: the highest ISA each library may use, and how many cores it has."""

    caps: dict
    cores: int


AVX2_CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
HOSTS = {
    "avx512 2c": Host({}, 2),  # this machine as it is (on a bigger one: its first two cores)
    "avx512 1c": Host({}, 1),
    "avx2 2c": Host(AVX2_CAPS, 2),
    "avx2 1c": Host(AVX2_CAPS, 1),
}

KNOBS = {  # gaal_cli.runs.provenance.PORTABLE_PIN, knob by knob (its thread counts: --pin-threads)
    "aten": {k: PORTABLE_PIN[k] for k in ("ATEN_CPU_CAPABILITY",)},
    "onednn": {k: PORTABLE_PIN[k] for k in ("ONEDNN_MAX_CPU_ISA",)},
    "mkl": {k: PORTABLE_PIN[k] for k in ("MKL_CBWR", "MKL_DYNAMIC")},
    "threads": {},  # the count comes from --pin-threads
    "aten-conv": {},  # oneDNN and NNPACK switched off in the child
}
FULL_PIN = ("aten", "onednn", "mkl", "threads")
PINS = {
    "none": (),
    "pin": FULL_PIN,
    **{f"pin - {knob}": tuple(k for k in FULL_PIN if k != knob) for knob in FULL_PIN},
    "pin, ATen conv": ("aten", "mkl", "threads", "aten-conv"),
}
# (pin, host) pairs timed in turns: unpinned with this machine's cores and with one, the pin, the pin
# without each of its kernel knobs (which knob costs what), and the pin with ATen's convolutions
COST_SETTINGS = (
    ("none", "avx512 2c"),
    ("none", "avx512 1c"),
    ("pin", "avx512 2c"),
    ("pin - aten", "avx512 2c"),
    ("pin - onednn", "avx512 2c"),
    ("pin - mkl", "avx512 2c"),
    ("pin, ATen conv", "avx512 2c"),
)


@dataclass(frozen=True)
class Setting:
    pin: str
    host: str
    env: dict
    cpus: tuple[int, ...]
    threads: int

    @property
    def key(self) -> str:
        """What makes two settings the same process: their variables and their cores."""
        return json.dumps([sorted(self.env.items()), self.cpus])


def setting(pin: str, host_name: str, pin_threads: int, base: dict | None = None) -> Setting:
    """The child environment of `pin` on the emulated `host_name`: the host's caps, then the pin's
    (the pin's values are the lowest common level, so overriding means taking the lower)."""
    host = HOSTS[host_name]
    available = sorted(os.sched_getaffinity(0))
    if host.cores > len(available):
        raise SystemExit(f"emulated host '{host_name}' needs {host.cores} cores; this process has {len(available)}")
    cpus = tuple(available[: host.cores])
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CONTROLLED}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(host.caps)
    knobs = PINS[pin]
    for knob in knobs:
        env.update(KNOBS[knob])
    threads = pin_threads if "threads" in knobs else host.cores
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env[CPUS_VAR] = ",".join(map(str, cpus))
    if "aten-conv" in knobs:
        env[ATEN_CONV_VAR] = "1"
    return Setting(pin, host_name, env, cpus, threads)


def child_command(mode: str, *args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), f"--child-{mode}", *args]


def run_child(command: list[str], env: dict, timeout: float = 1800) -> str:
    """Run a child; its stdout."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"child failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return done.stdout


# ---------------------------------------------------------------- children (torch loads here)


def _enter_child() -> None:
    """Affinity first, then torch with or without oneDNN and NNPACK: before anything computes."""
    os.sched_setaffinity(0, {int(c) for c in os.environ[CPUS_VAR].split(",")})
    import torch

    if os.environ.get(ATEN_CONV_VAR):
        torch.backends.mkldnn.enabled = False
        torch.backends.nnpack.set_flags(False)


def _sha(tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


def child_probe() -> None:
    """Print what this environment dispatches to and the bytes of the data and five kernels."""
    _enter_child()
    import numpy as np
    import torch

    from gaal_cli.config import load_config
    from gaal_cli.data import build_data

    config = load_config(overrides=list(DATA_OVERRIDES))
    data = build_data(config.data, config.seed)
    digest = hashlib.sha256()
    for split in (data.train, data.val, data.test):
        for tensor in (split.images, split.tabular, split.labels):
            digest.update(tensor.contiguous().numpy().tobytes())
    # inputs from numpy's generator (scalar code), so that no dispatch choice touches them
    rng = np.random.default_rng(0)
    a, b = (torch.from_numpy(rng.standard_normal(s, dtype=np.float32)) for s in ((512, 300), (300, 257)))
    x = torch.from_numpy(rng.standard_normal((128, 16, 32, 32), dtype=np.float32))
    w = torch.from_numpy(rng.standard_normal((32, 16, 3, 3), dtype=np.float32)).requires_grad_()
    y = torch.nn.functional.conv2d(x, w, padding=1)
    y.square().sum().backward()
    with torch.no_grad():  # evaluation's path, which may differ (NNPACK)
        y_eval = torch.nn.functional.conv2d(x, w, padding=1)
    result = {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "onednn_enabled": torch.backends.mkldnn.enabled,
        "data": digest.hexdigest()[:16],
        "mm": _sha(a @ b),
        "log_softmax": _sha(torch.log_softmax(a, 1)),
        "conv": _sha(y),
        "conv_dw": _sha(w.grad),
        "conv_eval": _sha(y_eval),
    }
    print("RESULT " + json.dumps(result))


def child_train(args: list[str], digest_path: str) -> None:
    """`gaal train ARGS` in this process, then the digest of its run folder into `digest_path`."""
    _enter_child()
    import torch

    dispatch = {"aten": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
    out = Path(args[args.index("--out") + 1])
    marks: list[float] = []
    finished = threading.Event()
    watcher = threading.Thread(target=_mark_epochs, args=(out / "metrics.jsonl", marks, finished), daemon=True)
    watcher.start()
    sys.argv = ["gaal", *args]
    try:
        runpy.run_module("gaal_cli", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finished.set()
    watcher.join()
    cpu_per_epoch = [b - a for a, b in zip(marks, marks[1:])]
    Path(digest_path).write_text(json.dumps({**digest(out), "dispatch": dispatch, "cpu_per_epoch": cpu_per_epoch}))


def _mark_epochs(metrics: Path, marks: list[float], finished: threading.Event) -> None:
    """The process's CPU time (all threads) when each epoch ends, i.e. when metrics.jsonl gains a
    line, polled every 20 ms: with one thread, the CPU seconds between two ends measure an epoch's
    work even while other processes load the cores."""
    lines = 0
    while not finished.wait(0.02):
        try:
            now = metrics.read_bytes().count(b"\n")
        except FileNotFoundError:
            continue
        if now > lines:
            marks.append(time.process_time())
            lines = now


def digest(folder: Path) -> dict:
    """Hashes of a run folder's results: metrics, prediction tensors, state-dict tensors, steps."""
    import torch
    from safetensors.torch import load_file

    report = json.loads((folder / "report.json").read_text())
    metrics = {
        f"{split}/{head}/{name}": value
        for split, heads in report["metrics"].items()
        for head, values in heads.items()
        for name, value in values.items()
    }
    state = torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    predictions = load_file(folder / "predictions.safetensors")
    return {
        "metrics": metrics,
        "best_epoch": report["best_epoch"],
        "predictions": {name: _sha(t) for name, t in sorted(predictions.items())},
        "state": {name: _sha(t) for name, t in state.items()},
        "steps": (folder / "steps.jsonl").read_text().splitlines(),
        "seconds_per_epoch": report["timings"]["seconds_per_epoch"],
        "threads": report.get("threads"),
    }


# ---------------------------------------------------------------- parent


def probe(s: Setting) -> dict:
    env = {**s.env, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    stdout = run_child(child_command("probe"), env)
    result = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])
    isa = [line.split("isa:", 1)[1] for line in stdout.splitlines() if ",info,cpu,isa:" in line]
    convs = [line.split(",")[6] for line in stdout.splitlines() if ",exec,cpu,convolution," in line]
    cnr = [line.split("CNR:", 1)[1].split()[0] for line in stdout.splitlines() if line.startswith("MKL_VERBOSE SGEMM")]
    isa = [text.replace("Intel ", "").replace(" with DL Boost and bfloat16 support", "+VNNI+BF16") for text in isa]
    result["onednn"] = (isa[0] if isa else "-") if result["onednn_enabled"] else "off"
    result["conv_impl"] = ",".join(sorted(set(convs))) or "ATen"
    result["mkl_cnr"] = ",".join(sorted(set(cnr))) or "-"
    return result


def train(s: Setting, method: str, workdir: Path, tag: str, extra: list[str]) -> dict:
    out = workdir / f"{method}-{tag}"
    shutil.rmtree(out, ignore_errors=True)
    digest_path = workdir / f"{method}-{tag}.digest.json"
    args = ["train", "-m", method, "-e", str(EPOCHS), "-q", "--out", str(out), "--restart"]
    for override in [*DATA_OVERRIDES, *extra]:
        args += ["--set", override]
    run_child(child_command("train", str(digest_path), "--", *args), s.env)
    result = json.loads(digest_path.read_text())
    shutil.rmtree(out, ignore_errors=True)
    digest_path.unlink()
    return result


def compare(run: dict, reference: dict) -> dict:
    """How far `run`'s bytes are from `reference`'s."""
    metrics = sum(run["metrics"][k] == v for k, v in reference["metrics"].items())
    state = sum(run["state"].get(k) == v for k, v in reference["state"].items())
    first = first_differing_step(run["steps"], reference["steps"])
    same = (
        metrics == len(reference["metrics"])
        and run["predictions"] == reference["predictions"]
        and run["state"] == reference["state"]
        and run["best_epoch"] == reference["best_epoch"]
    )
    return {
        "identical": same,
        "metrics": f"{metrics}/{len(reference['metrics'])}",
        "predictions": run["predictions"] == reference["predictions"],
        "state": f"{state}/{len(reference['state'])}",
        "first_step": first,
    }


def first_differing_step(steps: list[str], reference: list[str]) -> str:
    """'e<epoch>s<step>' of the first logged step that differs (values rounded to 6 decimals, so a
    difference below that shows later or not at all), or '-'."""
    for line, ref in zip(steps, reference):
        if line != ref:
            record = json.loads(line)
            return f"e{record['epoch']}s{record['step']}"
    return "-" if len(steps) == len(reference) else "length"


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    sys.stdout.flush()


def dispatch_part(settings: list[Setting]) -> dict[str, dict]:
    probes: dict[str, dict] = {}
    rows = []
    for s in settings:
        if s.key not in probes:
            probes[s.key] = probe(s)
        p = probes[s.key]
        short = {k: p[k][:6] for k in ("data", "mm", "log_softmax", "conv", "conv_dw", "conv_eval")}
        rows.append(
            [s.pin, s.host, p["aten"], p["onednn"], p["conv_impl"], p["mkl_cnr"], p["threads"], *short.values()]
        )
    header = ["pin", "emulated host", "ATen", "oneDNN isa", "conv kernel", "MKL CNR", "thr", "data", "mm"]
    print_table(
        "1. What each setting dispatches to (ONEDNN_VERBOSE, MKL_VERBOSE) and the bytes it gives (sha256 prefixes)",
        [*header, "logsoftmax", "conv", "conv dW", "conv eval"],
        rows,
    )
    return probes


def identity_part(methods: list[str], settings: list[Setting], workdir: Path, extra: list[str]) -> dict:
    """Train every setting (a setting whose environment and cores equal an earlier one's reuses
    its run) and compare each with the same pin on the first host."""
    runs: dict[str, dict] = {}  # method + setting key -> digest
    rows = []
    for method in methods:
        for pin in dict.fromkeys(s.pin for s in settings):
            group = [s for s in settings if s.pin == pin]
            for i, s in enumerate(group):
                key = f"{method} {s.key}"
                if key not in runs:
                    runs[key] = train(s, method, workdir, f"id{len(runs)}", extra)
                run, c = runs[key], compare(runs[key], runs[f"{method} {group[0].key}"])
                verdict = "reference" if i == 0 else ("yes" if c["identical"] else "no")
                dispatch = f"{run['dispatch']['aten']}/{run['dispatch']['threads']}t"
                predictions = "yes" if c["predictions"] else "no"
                rows.append([method, pin, s.host, dispatch, verdict, c["metrics"], predictions, c["state"]])
                rows[-1] += [c["first_step"], f"{run['seconds_per_epoch']:.2f}"]
            print(f"  {method}, {pin}: done", file=sys.stderr)
    overrides = ", ".join([*DATA_OVERRIDES, *extra])
    print_table(
        f"2. Bytes against the same pin on '{settings[0].host}' ({EPOCHS} epochs, {overrides})",
        ["method", "pin", "emulated host", "ATen/thr", "identical", "metrics", "preds", "weights", "1st diff"]
        + ["s/epoch"],
        rows,
    )
    return runs


def cost_part(methods: list[str], repeats: int, pin_threads: int, runs: dict, workdir: Path, extra: list[str]):
    """Seconds per epoch and CPU seconds of COST_SETTINGS, taken in turns, with their ratios."""
    settings = [setting(pin, host, pin_threads) for pin, host in COST_SETTINGS]
    taken: dict[tuple[str, int], list[dict]] = {(m, i): [] for m in methods for i in range(len(settings))}
    for r in range(repeats):
        for method in methods:
            for i, s in enumerate(settings):
                taken[method, i].append(train(s, method, workdir, f"cost{r}-{i}", extra))
        print(f"  cost round {r + 1}/{repeats}: done", file=sys.stderr)
    rows = []
    for method in methods:
        wall = {i: [run["seconds_per_epoch"] for run in taken[method, i]] for i in range(len(settings))}
        cpu = {i: statistics.median(c for run in taken[method, i] for c in run["cpu_per_epoch"]) for i in wall}
        for i, (s, (pin, host)) in enumerate(zip(settings, COST_SETTINGS)):
            earlier = [runs.get(f"{method} {s.key}") or taken[method, i][0]]
            same = all(compare(run, earlier[0])["identical"] for run in taken[method, i])
            median = statistics.median(wall[i])
            rows.append([method, pin, host, s.threads, " ".join(f"{t:.2f}" for t in wall[i]), f"{median:.2f}"])
            rows[-1] += [f"{median / statistics.median(wall[0]):.2f}", f"{median / statistics.median(wall[1]):.2f}"]
            rows[-1] += [f"{cpu[i]:.1f}", f"{cpu[i] / cpu[1]:.2f}", "yes" if same else "NO"]
    print_table(
        f"3. Cost on this machine ({repeats} runs each, in turns; load average now {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} CPUs). Wall: report.json's seconds per epoch; CPU: the process's CPU seconds "
        "(all threads) between the ends of epochs 1 and 2; ratios against the first two rows",
        ["method", "pin", "host", "thr", "wall s/epoch", "median", "x none", "x none 1t", "CPU s/ep", "x none 1t"]
        + ["same bytes"],
        rows,
    )


def against_part(runs: dict, settings: list[Setting], methods: list[str], other: dict) -> None:
    """This machine's runs against another machine's `--json` file, setting by setting."""
    rows = []
    for method in methods:
        for s in settings:
            label = f"{method}|{s.pin}|{s.host}"
            if other["runs"].get(label) and f"{method} {s.key}" in runs:
                c = compare(runs[f"{method} {s.key}"], other["runs"][label])
                rows.append(
                    [
                        method,
                        s.pin,
                        s.host,
                        "yes" if c["identical"] else "no",
                        c["metrics"],
                        c["state"],
                        c["first_step"],
                    ]
                )
    print_table(
        f"4. Against {other['machine']}",
        ["method", "pin", "emulated host", "identical", "metrics", "weights", "1st diff"],
        rows,
    )


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{model}, {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["concat", "gaal"])
    parser.add_argument("--pins", nargs="+", default=list(PINS), choices=list(PINS))
    parser.add_argument("--hosts", nargs="+", default=list(HOSTS), choices=list(HOSTS))
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--pin-threads", type=int, default=1, help="the thread count the threads knob fixes")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cost setting")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="a further config override")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/portable_repro"))
    parser.add_argument("--json", type=Path, help="write every probe and run digest here")
    parser.add_argument("--against", type=Path, help="compare with another machine's --json file")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    settings = [setting(pin, host, args.pin_threads) for pin in args.pins for host in args.hosts]
    print(f"{machine()}; pin threads {args.pin_threads}; started {time.strftime('%Y-%m-%d %H:%M')}")
    probes = dispatch_part(settings) if "dispatch" in args.parts else {}
    runs = identity_part(args.methods, settings, args.workdir, args.extra) if "identity" in args.parts else {}
    if "cost" in args.parts:
        cost_part(args.methods, args.repeats, args.pin_threads, runs, args.workdir, args.extra)
    if args.against:
        against_part(runs, settings, args.methods, json.loads(args.against.read_text()))
    if args.json:
        labelled = {f"{m}|{s.pin}|{s.host}": runs.get(f"{m} {s.key}") for m in args.methods for s in settings}
        probe_rows = {f"{s.pin}|{s.host}": probes.get(s.key) for s in settings}
        args.json.write_text(json.dumps({"machine": machine(), "runs": labelled, "probes": probe_rows}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-probe":
        child_probe()
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-train":
        child_train(sys.argv[4:], sys.argv[2])
    else:
        main()
