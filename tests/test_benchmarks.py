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
    assert cut.waited >= 0


def test_bf16_peaks_match_the_most_specific_gpu_name(throughput):
    assert throughput.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert throughput.bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert throughput.bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert throughput.bf16_peak_tflops("NVIDIA A10") == 125.0
    assert throughput.bf16_peak_tflops("NVIDIA L40S") == 362.1
    assert throughput.bf16_peak_tflops("Tesla T4") is None


def test_measure_times_the_requested_steps_on_the_tiny_config(throughput, tiny):
    row = throughput.measure("concat", None, tiny, steps=2, warmup=1)
    assert row["samples"] == 2 * 32  # the tiny config's batch size
    assert row["samples_per_second"] == pytest.approx(row["samples"] / row["seconds"], rel=1e-2)
    assert row["device"] == "cpu" and row["memory_mib"] >= 0
    assert row["loader_samples_per_second"] > 0 and row["step_samples_per_second"] > 0
    assert 0 <= row["data_wait_share"] <= 1
    # the FLOPs are counted on any device; the share of a bf16 peak only on a GPU the table knows
    assert row["gflop_per_step"] > 0 and row["step_tflops"] > 0 and row["peak_share"] is None
