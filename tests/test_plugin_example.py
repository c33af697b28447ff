"""Method plugins: the package under examples/ installed with pip, listed by `gaal methods` with
its package and version and trained for one epoch by `gaal train`; a plugin whose module fails to
import is reported and skipped, and one cannot take a built-in's name.

pip installs into a temporary target (offline: no index, no build isolation, no dependencies)
and the commands run in a subprocess (`python -m gaal_cli`) whose PYTHONPATH starts with that
target, so neither the shared environment nor this process's registry sees the plugins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "gaal-example-method"


def install_example(target: Path, scratch: Path) -> None:
    """pip-install a copy of the example (the build leaves build/ and egg-info beside its source)."""
    source = scratch / "gaal-example-method"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation"]
    done = subprocess.run([*command, "--target", str(target), str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def install_broken_plugin(target: Path) -> None:
    """An installed package whose `gaal.methods` entry point names a module that raises ImportError,
    written as pip would leave it (a .dist-info folder with METADATA and entry_points.txt)."""
    declare(target, "gaal-broken-plugin", "0.2.0", "broken = gaal_broken_plugin")
    (target / "gaal_broken_plugin.py").write_text('raise ImportError("needs the package frobnicate")\n')


def install_usurper(target: Path) -> None:
    """A package declaring the built-in name `concat`; importing its module would say so."""
    declare(target, "gaal-usurper", "1.0", "concat = gaal_usurper")
    (target / "gaal_usurper.py").write_text('raise RuntimeError("the usurper was imported")\n')


def gaal(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m gaal_cli ARGS` in a fresh interpreter that sees the plugins' site folder."""
    return subprocess.run([sys.executable, "-m", "gaal_cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The example installed with pip beside a broken plugin and one taking a built-in's name;
    the environment a subprocess needs to see them, and a scratch folder."""
    tmp = tmp_path_factory.mktemp("plugins")
    target = tmp / "site"
    install_example(target, tmp)
    install_broken_plugin(target)
    install_usurper(target)
    paths = [str(target), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}, tmp


@pytest.fixture(scope="module")
def listed(plugin_site):
    env, tmp = plugin_site
    return gaal(env, tmp, "methods")


def test_gaal_methods_lists_the_installed_example_with_its_package_and_version(listed):
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("late_sum "))
    assert "[gaal-example-method 0.1.0]" in line
    concat = next(line for line in listed.stdout.splitlines() if line.startswith("concat "))
    assert "[built-in]" in concat


def test_a_plugin_that_fails_to_import_is_skipped_with_its_package_and_error(listed):
    warnings = [line for line in listed.stderr.splitlines() if "'broken'" in line]
    assert len(warnings) == 1
    for part in ("gaal-broken-plugin 0.2.0", "ImportError", "needs the package frobnicate"):
        assert part in warnings[0]
    assert not any(line.startswith("broken ") for line in listed.stdout.splitlines())


def test_a_plugin_cannot_take_a_builtin_name(listed):
    refused = [line for line in " ".join(listed.stderr.split()).split("warning:") if "gaal-usurper 1.0" in line]
    assert len(refused) == 1 and "built-in method" in refused[0]
    assert "usurper was imported" not in listed.stderr


def test_asking_for_the_broken_plugin_is_an_error_naming_it(plugin_site):
    env, tmp = plugin_site
    done = gaal(env, tmp, "train", "--method", "broken", "--out", str(tmp / "never"))
    message = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stderr
    for part in ("method 'broken'", "gaal-broken-plugin 0.2.0", "ImportError: needs the package frobnicate"):
        assert part in message
    assert "Traceback" not in done.stderr and not (tmp / "never").exists()


def test_a_builtin_name_registered_by_another_class_is_refused():
    from gaal_cli.foundation.errors import GaalError
    from gaal_cli.methods import register_method
    from gaal_cli.methods.concat import ConcatSettings

    with pytest.raises(GaalError, match="built-in method"):
        register_method("concat", ConcatSettings)(type("Impostor", (), {}))


def test_the_example_method_trains_one_epoch_through_gaal_train(plugin_site):
    env, tmp = plugin_site
    run_dir = tmp / "run"
    overrides = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1", "train.threads=1"]
    sets = [a for o in overrides for a in ("--set", o)]
    done = gaal(env, tmp, "train", "--method", "late_sum", "--out", str(run_dir), "--quiet", *sets)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1]
    assert {"loss", "loss_image", "loss_tabular", "acc"} <= set(records[0]["train"])
    report = json.loads((run_dir / "report.json").read_text())
    assert report["method"] == "late_sum" and report["epochs_run"] == 1
    # the fused head and both unimodal heads are scored on the test split
    for head in ("multi", "image", "tabular"):
        assert 0.0 <= report["metrics"]["test"][head]["acc"] <= 1.0


def declare(site: Path, distribution: str, version: str, entries: str) -> None:
    """Installed-package metadata declaring `entries` in the gaal.methods group (no code)."""
    info = site / f"{distribution.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[gaal.methods]\n{entries}\n")


def test_a_name_two_packages_declare_is_loaded_from_neither(tmp_path, monkeypatch):
    from gaal_cli.foundation.errors import GaalError
    from gaal_cli.methods.plugins import discover, import_plugins

    declare(tmp_path, "gaal-twin-a", "1.0", "twin = gaal_twin_a_never_imported")
    declare(tmp_path, "gaal-twin-b", "2.0", "twin = gaal_twin_b_never_imported")
    monkeypatch.syspath_prepend(str(tmp_path))
    twins = [p for p in discover() if p.name == "twin"]
    assert [p.origin for p in twins] == ["gaal-twin-a 1.0", "gaal-twin-b 2.0"]
    failures = [f for f in import_plugins().failures if f.plugin.name == "twin"]
    assert len(failures) == 2
    assert all("gaal-twin-a 1.0" in f.error and "gaal-twin-b 2.0" in f.error for f in failures)
    with pytest.raises(GaalError, match="declared by more than one package"):
        import_plugins(only="twin")
    # a method no package declares is no plugin's business: the registry's lookup reports it
    assert import_plugins(only="no_such_method").plugins == []


def test_the_example_method_passes_check_method_like_a_builtin(plugin_site):
    env, tmp = plugin_site
    done = gaal(env, tmp, "check-method", "late_sum", "--quick", "--set", "train.threads=1")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == 6 and all(line.startswith("PASS") for line in lines), done.stdout
    assert "late_sum: 6 of 6 checks passed" in done.stdout
