"""benchmarks/throughput.py: one method measured in-process on the tiny config (the per-method
subprocesses and the table are what a person runs by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cut_loader_wraps_around_and_counts_samples(throughput):
    batches = [SimpleNamespace(label=[1, 2]), SimpleNamespace(label=[3])]
    cut = throughput.CutLoader(batches, steps=5)
    assert len(cut) == 5
    assert [b.label for b in cut] == [[1, 2], [3], [1, 2], [3], [1, 2]]
    assert cut.samples == 8


def test_measure_times_the_requested_steps_on_the_tiny_config(throughput, tiny):
    row = throughput.measure("concat", None, tiny, steps=2, warmup=1)
    assert row["samples"] == 2 * 32  # the tiny config's batch size
    assert row["samples_per_second"] == pytest.approx(row["samples"] / row["seconds"], rel=1e-2)
    assert row["device"] == "cpu" and row["memory_mib"] >= 0
