"""Where a run's numbers came from, written when they are produced: the code, the libraries, the
host and the determinism settings (report.json `provenance`, the checkpoint, the predictions
file's header).

- code: gaal's version; from a checkout, the commit and whether gaal_cli/ or pyproject.toml had
  uncommitted changes, with a hash of them; always a fingerprint of the package's own sources
  (so an installed wheel, which has no commit, is named too);
- libraries: python, torch, timm, numpy, scipy, pandas, POT;
- host: the processor, its x86 instruction sets that change kernels (AVX2, AVX-512, AMX), torch's
  CPU capability, oneDNN's and MKL's settings, the thread count and the device;
- determinism: torch's deterministic algorithms, cuDNN's flags and the kernel pins in force.

`code_key` and `host_key` reduce a record to what tables group runs by: two runs of different
code states or host kinds are never paired, ranked or bolded without saying so (gaal report).
Which runs are stale is not decided here: that is the behaviour trace's job
(gaal_cli/training/behaviour.py), so a refactor or a new host never makes a run stale.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from gaal_cli.foundation.version import __version__

#: what a run's code state covers in a checkout: changes elsewhere (results/, README) change no number
CODE_PATHS = ("gaal_cli", "pyproject.toml")
#: instruction sets that select other CPU kernels in torch, oneDNN and MKL (from /proc/cpuinfo's flags)
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
#: environment variables that pin kernel choices or threads (recorded when set)
PIN_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DYNAMIC",
    "MKL_NUM_THREADS",
    "OMP_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
)
#: the kernel pin README "What a run does" measured (benchmarks/portable_repro.py): kernel choices
#: every x86-64 host of the AVX2 generation and later offers, and one thread; set before Python starts
PORTABLE_PIN = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "MKL_DYNAMIC": "FALSE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
FORMAT = 1


def record(device: Any = "cpu") -> dict[str, Any]:
    """The provenance of a run made now, in this process, on `device`."""
    return {
        "format": FORMAT,
        "code": code_state(),
        "libraries": libraries(),
        "host": host(device),
        "determinism": determinism(),
    }


def code_state() -> dict[str, Any]:
    """gaal's version, the fingerprint of its sources and, from a git checkout, the commit and
    whether the code had uncommitted changes (`dirty`, and `dirty_sha256` of the diff)."""
    package = Path(__file__).resolve().parents[1]
    state: dict[str, Any] = {
        "version": __version__,
        "sources_sha256": sources_fingerprint(package),
        "commit": None,
        "dirty": None,
        "dirty_sha256": None,
    }
    checkout = package.parent
    if not (checkout / ".git").exists():
        return state  # an installed package: its version and fingerprint name it
    commit = _git(checkout, "rev-parse", "HEAD")
    if commit is None:
        return state
    diff = _git(checkout, "diff", "HEAD", "--binary", "--", *CODE_PATHS)
    untracked = _git(checkout, "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS)
    if diff is None or untracked is None:
        return {**state, "commit": commit.strip()}
    digest = hashlib.sha256(diff.encode())
    for name in sorted(untracked.split()):
        digest.update(name.encode() + b"\0" + _read(checkout / name))
    dirty = bool(diff.strip() or untracked.strip())
    dirty_sha256 = digest.hexdigest()[:16] if dirty else None
    return {**state, "commit": commit.strip(), "dirty": dirty, "dirty_sha256": dirty_sha256}


def sources_fingerprint(package: Path) -> str:
    """sha256 (first 16 hex digits) over the package's .py files: relative path and bytes, sorted."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + _read(path) + b"\0")
    return digest.hexdigest()[:16]


def libraries() -> dict[str, str | None]:
    import numpy
    import pandas
    import scipy
    import timm
    import torch

    try:
        import ot

        pot = ot.__version__
    except ImportError:
        pot = None
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pandas": pandas.__version__,
        "pot": pot,
    }
    # plain strings: torch's is a str subclass, which a checkpoint read with weights_only refuses
    return {name: None if value is None else str(value) for name, value in found.items()}


def host(device: Any = "cpu") -> dict[str, Any]:
    """The machine as its kernels see it. `onednn_isa` is derived (the best ISA the processor
    offers, capped by ONEDNN_MAX_CPU_ISA when set): torch does not report oneDNN's choice."""
    import torch

    flags = cpu_flags()
    cuda = str(device).startswith("cuda") and torch.cuda.is_available()
    return {
        "processor": processor_name(),
        "machine": platform.machine(),
        "system": platform.system(),
        "kernel_flags": [f for f in KERNEL_FLAGS if f in flags],
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "onednn_isa": onednn_isa(flags),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": str(torch.cuda.get_device_name(torch.device(device))) if cuda else None,
    }


def determinism() -> dict[str, Any]:
    import torch

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "pins": {name: os.environ[name] for name in PIN_VARIABLES if name in os.environ},
    }


def processor_name() -> str:
    """The processor's model name (Linux's /proc/cpuinfo), else what the platform says."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


_ONEDNN_LEVELS = (  # (oneDNN's name, the cpuinfo flags it needs), best first
    ("AVX512_CORE_AMX", {"amx_tile", "amx_bf16"}),
    ("AVX512_CORE_BF16", {"avx512f", "avx512_bf16"}),
    ("AVX512_CORE", {"avx512f"}),
    ("AVX2", {"avx2"}),
    ("SSE41", set()),
)


def onednn_isa(flags: set[str]) -> str | None:
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    offered = [name for name, needs in _ONEDNN_LEVELS if needs <= flags]
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    names = [name for name, _ in _ONEDNN_LEVELS]
    if cap in names:
        offered = [name for name in offered if names.index(name) >= names.index(cap)]
    return offered[0] if offered else None


def code_key(provenance: dict[str, Any] | None) -> str:
    """What a table groups runs by for their code: version, commit (+ the dirty hash), or the
    sources' fingerprint outside a checkout; 'unrecorded' for a run from before provenance."""
    code = (provenance or {}).get("code") if isinstance(provenance, dict) else None
    if not isinstance(code, dict):
        return "unrecorded"
    if code.get("commit"):
        dirty = f"+{code['dirty_sha256']}" if code.get("dirty") else ""
        return f"{code.get('version')} {str(code['commit'])[:10]}{dirty}"
    return f"{code.get('version')} sources {code.get('sources_sha256')}"


def host_key(provenance: dict[str, Any] | None) -> str:
    """What a table groups runs by for their host: processor, torch's CPU capability, oneDNN's ISA
    and the thread count (the settings that pick CPU kernels and reduction orders), or the device
    name on a GPU; 'unrecorded' for a run from before provenance."""
    found = (provenance or {}).get("host") if isinstance(provenance, dict) else None
    if not isinstance(found, dict):
        return "unrecorded"
    if found.get("device_name"):
        return str(found["device_name"])
    pins = ((provenance or {}).get("determinism") or {}).get("pins") or {}
    pinned = " pinned" if pins.get("ATEN_CPU_CAPABILITY") or pins.get("ONEDNN_MAX_CPU_ISA") else ""
    return (
        f"{found.get('processor')}, {found.get('torch_cpu_capability')}/{found.get('onednn_isa')}, "
        f"{found.get('threads')} threads{pinned}"
    )


def _git(checkout: Path, *args: str) -> str | None:
    """A git command's output in the checkout, or None (no git, not a repository, too slow).
    `--no-optional-locks`: reading the state never writes the index."""
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(checkout), *args],
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    except OSError:
        return b""


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""
