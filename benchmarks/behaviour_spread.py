"""How far the behaviour trace (gaal_cli/training/behaviour.py) moves between CPU kernels and
thread counts, and whether its hashes move.

    python benchmarks/behaviour_spread.py [NAME ...]                  # the trace as built
    python benchmarks/behaviour_spread.py --numerics unpinned         # the rejected alternatives
    python benchmarks/behaviour_spread.py --numerics float32
    python benchmarks/behaviour_spread.py --numerics float32-islands

Each setting runs in its own interpreter (the instruction sets are chosen when torch loads):
ATen's kernels (ATEN_CPU_CAPABILITY), oneDNN's (ONEDNN_MAX_CPU_ISA) and MKL's
(MKL_ENABLE_INSTRUCTIONS) at the host's best, at AVX2 and without SIMD, each with torch on one
thread and on two (OMP_NUM_THREADS; `--numerics` other than `as-built` also stop the trace from
pinning one thread, to show what the pin is for). A setting the host cannot run falls back to
what it can; the table names the capability torch reports.

Printed per method: how many numbers its trace holds, the largest absolute difference of its
unrounded numbers from the first setting's, and whether its hash (the numbers rounded as the
trace rounds them) is the first setting's. `--numerics`: `as-built` (float64, `.float()` kept
float64, one thread), `unpinned` (the same on torch's threads), `float32-islands` (float64, but
the methods' `.float()` casts compute in float32 as they would; MFH and MLA then fail, mixing
float32 and float64 in one product), `float32` (the dtype of a run).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {
    "host": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "no-simd": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
THREADS = (1, 2)
#: the keys under which a trace's numbers are computed by kernels (the rest are settings)
COMPUTED = ("loss", "outputs")


def child(out: Path, names: list[str], numerics: str) -> None:
    """In this interpreter: each method's trace unrounded, and its hash as the trace computes it."""
    import torch

    from gaal_cli.training import behaviour

    if numerics != "as-built":
        behaviour.float64_throughout = lambda: alternative(numerics)
    names = names or behaviour.builtin_names()
    traces, failures = {}, {}
    for n in names:
        try:
            traces[n] = behaviour.method_trace(n)
        except RuntimeError as err:  # float32-islands: a float32 island meeting float64 weights
            failures[n] = str(err).splitlines()[0][:60]
    behaviour.forget_traces()
    plain_rounded = behaviour.rounded
    behaviour.rounded = unrounded
    raw = {n: behaviour.method_trace(n).record for n in traces}
    behaviour.rounded = plain_rounded
    for n in traces:  # the same hash from the raw numbers rounded afterwards: the raw run is the run
        raw[n]["dependencies"] = traces[n].record["dependencies"]  # their hashes, not raw digests
        again = hashlib.sha256(behaviour.canonical_json(round_all(raw[n], plain_rounded)).encode()).hexdigest()[:16]
        assert again == traces[n].digest, f"{n}: rounding afterwards gives another hash"
    found = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "hashes": {n: t.digest for n, t in traces.items()},
        "numbers": {n: flat(raw[n]) for n in traces},
        "failures": failures,
    }
    out.write_text(json.dumps(found))


@contextlib.contextmanager
def alternative(numerics: str):
    """The trace's numerics without the choices under test: the thread count left to torch, and
    float64 with `.float()` kept float64 (`unpinned`), float64 with `.float()` computing in
    float32 (`float32-islands`) or float32 (`float32`)."""
    import torch

    from gaal_cli.training import behaviour
    from gaal_cli.training.rng import rng_states, set_rng_states

    dtype, streams, plain_float = torch.get_default_dtype(), rng_states(), torch.Tensor.float
    torch.set_default_dtype(torch.float32 if numerics == "float32" else torch.float64)
    if numerics == "unpinned":
        torch.Tensor.float = behaviour._float64
    try:
        yield
    finally:
        torch.Tensor.float = plain_float
        torch.set_default_dtype(dtype)
        set_rng_states(streams)


def unrounded(values):
    import torch

    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if isinstance(values, list):
        return [unrounded(v) for v in values]
    return float(values)


def round_all(record, rounded, computed=False):
    """The record with its computed numbers (under `loss` and `outputs`) rounded as the trace does."""
    if isinstance(record, dict):
        return {k: round_all(v, rounded, computed or k in COMPUTED) for k, v in record.items()}
    if isinstance(record, list):
        return [round_all(v, rounded, computed) for v in record]
    return rounded(record) if computed and isinstance(record, float) else record


def flat(record, computed=False) -> list[float]:
    """The computed numbers of a record, in a fixed order."""
    if isinstance(record, dict):
        return [x for k in sorted(record) for x in flat(record[k], computed or k in COMPUTED)]
    if isinstance(record, list):
        return [x for v in record for x in flat(v, computed)]
    return [record] if computed and isinstance(record, float) else []


def run_setting(name: str, env: dict[str, str], threads: int, names: list[str], numerics: str, folder: Path) -> dict:
    out = folder / f"{name}-{threads}.json"
    environment = {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--child", str(out), "--numerics", numerics, *names]
    subprocess.run(command, env=environment, check=True)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument(
        "--numerics", choices=("as-built", "unpinned", "float32-islands", "float32"), default="as-built"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.names, args.numerics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            f"{name}/{threads}t": run_setting(name, env, threads, args.names, args.numerics, Path(tmp))
            for name, env in SETTINGS.items()
            for threads in THREADS
        }
    first = next(iter(results.values()))
    print(f"numerics: {args.numerics}")
    print("settings: " + ", ".join(f"{k} ({r['capability']}, {r['threads']} threads)" for k, r in results.items()))
    print(f"{'method':12s} {'numbers':>7s}  " + "  ".join(f"{k:>16s}" for k in results))
    worst = 0.0
    for method, reference in first["numbers"].items():
        cells = []
        for result in results.values():
            diff = max((abs(a - b) for a, b in zip(reference, result["numbers"][method])), default=0.0)
            worst = max(worst, diff)
            same = "same" if result["hashes"][method] == first["hashes"][method] else "DIFF"
            cells.append(f"{diff:9.1e} {same:>6s}")
        print(f"{method:12s} {len(reference):7d}  " + "  ".join(cells))
    for method, why in first["failures"].items():
        print(f"{method:12s} fails: {why}")
    total = sum(len(v) for v in first["numbers"].values())
    print(f"largest difference {worst:.1e} over {total} numbers")


if __name__ == "__main__":
    main()
