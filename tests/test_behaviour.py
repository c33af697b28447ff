"""The behaviour fingerprint (gaal_cli/training/behaviour.py): every built-in keeps its golden
trace; changing what a method computes changes its hash, an equal re-implementation does not;
the hash is the same on other CPU kernels and thread counts, and a trace leaves the caller's
torch as it found it.

After an intended change of behaviour, regenerate the golden traces (and say why in the commit):

    python -m gaal_cli.training.behaviour --write tests/data/traces.json
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import create_model

from gaal_cli.foundation.errors import GaalError
from gaal_cli.methods import METHODS, arl, surgery
from gaal_cli.methods.concat import Concat, ConcatSettings
from gaal_cli.methods.concat_head import ConcatHead
from gaal_cli.methods.registry import MethodSpec, method_spec, register_method
from gaal_cli.training import behaviour
from gaal_cli.training.behaviour import builtin_names, canonical_json, forget_traces, method_trace
from gaal_cli.training.method_checks import difference

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "traces.json"
REGENERATE = "python -m gaal_cli.training.behaviour --write tests/data/traces.json"


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@pytest.fixture
def fresh():
    """No trace cached before a test that patches code, and none it computed left behind."""
    forget_traces()
    yield
    forget_traces()


def test_the_golden_file_holds_every_builtin_and_its_records_hash(golden):
    assert sorted(golden) == builtin_names(), f"a built-in was added or removed: {REGENERATE}"
    for name, kept in golden.items():
        digest = hashlib.sha256(canonical_json(kept["record"]).encode()).hexdigest()[:16]
        assert digest == kept["hash"], f"{name}: the golden record does not give its hash (edited by hand?)"


@pytest.mark.parametrize("name", builtin_names())
def test_each_builtin_keeps_its_golden_trace(name, golden):
    trace = method_trace(name)
    kept = golden[name]
    if trace.digest != kept["hash"]:
        where = difference(kept["record"], trace.record)
        pytest.fail(
            f"{name} computes something else: behaviour hash {trace.digest}, golden {kept['hash']}, first "
            f"difference at {where}. If that change is intended, regenerate the golden traces: {REGENERATE}"
        )
    losses = [v for stage in trace.record["stages"] for epoch in stage["loss"] for v in epoch]
    assert losses and all(isinstance(v, float) for v in losses), f"{name}: a loss is not finite"


@pytest.mark.parametrize("name", ["mfh", "mmcl", "tip", "di_mml", "reconboost", "igm", "charms"])
def test_a_trace_trains_every_stage_the_method_declares(name):
    settings = json.loads(behaviour.settings_key(name, None))
    config = behaviour.trace_config(name, settings)
    declared = method_spec(name).cls.stages(config.method_settings(), config.train.epochs)
    stages = method_trace(name).record["stages"]
    assert len(stages) == len(declared) and all(len(s["loss"]) == s["epochs"] >= 1 for s in stages)
    assert all(s["outputs"]["all inputs"] for s in stages)


# ---------------------------------------------------------------- what a method computes


def with_default(monkeypatch, name: str, field: str, value) -> None:
    """Method `name`'s settings class with another default for `field`: as an edit of its code
    would leave it, the runs' configs unchanged."""
    spec = method_spec(name)
    changed = create_model(
        f"{spec.settings.__name__}Edited",
        __base__=spec.settings,
        **{field: (spec.settings.model_fields[field].annotation, value)},
    )
    monkeypatch.setitem(METHODS, name, MethodSpec(spec.cls, changed))


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("charms", "transport", "sinkhorn"),  # the pre-exact-transport runs
        ("mfh", "joint_teacher", False),  # the frozen-teacher runs
        ("gaal", "epsilon", 0.1),
    ],
)
def test_an_earlier_default_in_code_changes_the_hash(name, field, value, monkeypatch, fresh):
    before = method_trace(name).digest
    forget_traces()
    with_default(monkeypatch, name, field, value)
    assert method_trace(name).digest != before


def test_concat_reading_its_unimodal_heads_with_the_whole_bias_changes_its_hash(monkeypatch, fresh):
    before = method_trace("concat").digest
    forget_traces()
    plain = ConcatHead.unimodal
    monkeypatch.setattr(ConcatHead, "unimodal", lambda self, u, m, **kw: plain(self, u, m, **kw) + self.bias / 2)
    assert method_trace("concat").digest != before


def test_a_change_to_code_reached_only_after_a_warm_up_changes_the_hash(monkeypatch, fresh):
    # ARL scales from epoch 7 by default; its trace_settings bring that into the trace's epochs
    before = method_trace("arl").digest
    forget_traces()
    plain = arl.arl_weights
    monkeypatch.setattr(arl, "arl_weights", lambda li, lt, floor: plain(li, lt, floor).flip(0))
    assert method_trace("arl").digest != before


def test_a_dependency_is_trained_as_the_settings_ask(fresh):
    ravdess = method_trace("mfh").record["dependencies"]
    assert {f: d["method"] for f, d in ravdess.items()} == {"teacher": "tabular"}
    vggsound = method_trace("mfh", {"teacher": "any", "reference": "any"})
    assert set(vggsound.record["dependencies"]) == {"teacher", "reference"}
    assert vggsound.digest != method_trace("mfh").digest
    # where a dependency lives is the config's business, not the behaviour's
    assert method_trace("kd", {"teacher": "/a/run"}) is method_trace("kd", {"teacher": "/b/run"})


# ---------------------------------------------------------------- refactors


def test_an_equal_reimplementation_of_concats_loss_keeps_its_hash(monkeypatch, fresh):
    import gaal_cli.methods.concat as concat

    before = method_trace("concat").digest
    forget_traces()
    calls = []

    def gathered_log_likelihood(logits, labels):
        calls.append(1)
        return -F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).mean()

    monkeypatch.setattr(concat, "cross_entropy", gathered_log_likelihood)
    assert method_trace("concat").digest == before
    assert calls


def test_an_equal_reimplementation_of_the_surgery_keeps_gaals_hash(monkeypatch, fresh):
    before = method_trace("gaal").digest
    forget_traces()
    active = []

    def dual_variable(g, g_p, eps):
        sq = (g_p * g_p).sum()
        v = torch.relu(eps - (g * g_p).sum()) / sq if bool(sq > 0) else torch.zeros((), dtype=g.dtype)
        active.append(bool(v > 0))
        return v

    monkeypatch.setattr(surgery, "projection_weight", dual_variable)
    assert method_trace("gaal").digest == before
    assert any(active), "the surgery never acted in the trace: this test would show nothing"


def test_a_method_registered_from_another_package_is_traced_by_its_behaviour(fresh):
    register_method("concat_elsewhere", ConcatSettings)(type("ConcatElsewhere", (Concat,), {"__module__": __name__}))
    try:
        assert method_trace("concat_elsewhere").digest == method_trace("concat").digest
    finally:
        METHODS.pop("concat_elsewhere")


def test_unknown_methods_and_bad_settings_are_refused():
    with pytest.raises(KeyError, match="concat"):
        method_trace("no_such_method")
    with pytest.raises(GaalError, match="epsilon"):
        method_trace("gaal", {"epsilon": "wide"})


# ---------------------------------------------------------------- hosts and callers


AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
NO_SIMD = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"}


@pytest.mark.parametrize("env, threads", [(AVX2, 2), (NO_SIMD, 1)], ids=["avx2-2-threads", "no-simd-1-thread"])
def test_other_kernels_and_thread_counts_give_the_same_hashes(env, threads):
    # MMCL and TIP: the methods whose unrounded traces differ between AVX2 and AVX-512 kernels
    names = ["gaal", "mmcl", "tip"]
    environment = {**os.environ, **env, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "gaal_cli.training.behaviour", *names]
    done = subprocess.run(command, env=environment, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    there = dict(line.split()[:2] for line in done.stdout.splitlines() if line.split()[0] in names)
    assert there == {n: method_trace(n).digest for n in names}


def test_a_trace_leaves_the_callers_torch_as_it_found_it(fresh):
    threads = torch.get_num_threads()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    method_trace("concat")
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_default_dtype() == torch.float32
    assert torch.get_num_threads() == threads
    assert torch.ones(2, dtype=torch.float64).float().dtype == torch.float32


# ---------------------------------------------------------------- staleness of finished runs


def finished_run(tmp_path, method: str, body: str = ""):
    """A sweep of one `method` run whose folder holds a finished run that recorded today's
    behaviour, as the engine records it (report.json `provenance.behaviour`)."""
    import yaml

    from gaal_cli.runs.folder import RunFolder
    from gaal_cli.sweeps.runner import load_sweep
    from gaal_cli.training.behaviour import behaviour_record

    path = tmp_path / "spec.yaml"
    path.write_text(f"name: traced\nmethod: {method}\n{body}")
    sweep = load_sweep(path, results=tmp_path / "r")
    run = sweep.runs[0]
    run.folder.mkdir(parents=True)
    (run.folder / "config.yaml").write_text(yaml.safe_dump(run.config.resolved()))
    record = behaviour_record(method, run.config.method_settings())
    RunFolder(run.folder).finish({"provenance": {"behaviour": record}})
    return sweep


def test_restoring_an_earlier_behaviour_makes_a_finished_run_stale_with_its_reason(tmp_path, monkeypatch, fresh):
    from gaal_cli.sweeps.staleness import check_not_stale, described_statuses, statuses

    sweep = finished_run(tmp_path, "concat")
    assert [state for _, state in statuses(sweep)] == ["done"]
    forget_traces()
    plain = ConcatHead.unimodal  # concat's unimodal heads as they were read before: the whole bias
    monkeypatch.setattr(ConcatHead, "unimodal", lambda self, u, m, **kw: plain(self, u, m, **kw) + self.bias / 2)
    [(_, described)] = described_statuses(sweep)
    assert described.startswith("stale: its method computes differently today")  # and only that
    with pytest.raises(GaalError, match="would not reproduce"):
        check_not_stale(sweep)


def test_an_earlier_default_makes_a_finished_run_stale_in_config_and_behaviour(tmp_path, monkeypatch, fresh):
    from gaal_cli.sweeps.staleness import described_statuses

    sweep = finished_run(tmp_path, "charms")
    forget_traces()
    with_default(monkeypatch, "charms", "transport", "sinkhorn")  # the pre-exact-transport code
    [(_, described)] = described_statuses(sweep)
    assert "its method computes differently today" in described  # seen even where a config is not


def test_a_refactor_leaves_a_finished_run_done(tmp_path, monkeypatch, fresh):
    import gaal_cli.methods.concat as concat
    from gaal_cli.sweeps.staleness import check_not_stale, statuses

    sweep = finished_run(tmp_path, "concat")
    forget_traces()
    monkeypatch.setattr(  # the loss computed another way, to the same numbers
        concat,
        "cross_entropy",
        lambda logits, labels: -F.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).mean(),
    )
    assert [state for _, state in statuses(sweep)] == ["done"]
    check_not_stale(sweep)


def test_a_run_without_a_behaviour_record_is_done_and_named_unverified(tmp_path, fresh):
    import json

    from gaal_cli.sweeps.staleness import described_statuses

    sweep = finished_run(tmp_path, "concat")
    report = sweep.runs[0].folder / "report.json"
    report.write_text(json.dumps({"versions": {"gaal": "0.1.0"}}))  # as a run of gaal 0.1.0
    [(_, described)] = described_statuses(sweep)
    assert described.startswith("done (unverified: no behaviour record")
