"""Method plugins: the package under examples/ installed with pip, found through its entry point
and trained for one epoch; a plugin whose module fails to import is reported and skipped.

pip installs into a temporary target (offline: no index, no build isolation, no dependencies)
and the checks run in a subprocess whose PYTHONPATH starts with that target, so neither the
shared environment nor this process's registry sees the plugins.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
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
    info = target / "gaal_broken_plugin-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gaal-broken-plugin\nVersion: 0.2.0\n")
    (info / "entry_points.txt").write_text("[gaal.methods]\nbroken = gaal_broken_plugin\n")
    (target / "gaal_broken_plugin.py").write_text('raise ImportError("needs the package frobnicate")\n')


# runs in the subprocess: discover, load (the broken plugin is skipped), ask for the broken one
# by name (refused), then `gaal train --method late_sum` for one epoch through the CLI
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from gaal_cli.errors import GaalError
    from gaal_cli.plugins import discover, load_plugins

    out, overrides = sys.argv[1], sys.argv[2:]
    result = {"discovered": [vars(p) for p in discover()]}
    loaded = load_plugins()
    result["loaded"] = [p.name for p in loaded.plugins]
    result["warnings"] = [f.warning() for f in loaded.failures]
    try:
        load_plugins(only="broken")
    except GaalError as err:
        result["asked_for_broken"] = err.render()
    from gaal_cli.cli import app
    from gaal_cli.methods import METHODS

    result["registered"] = "late_sum" in METHODS
    args = ["train", "--method", "late_sum", "--out", out, "--quiet"]
    for o in overrides:
        args += ["--set", o]
    result["exit"] = app(args, standalone_mode=False)
    print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugins")
    target = tmp / "site"
    install_example(target, tmp)
    install_broken_plugin(target)
    paths = [str(target), str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    overrides = [o for o in TINY if not o.startswith("train.epochs")] + ["train.epochs=1", "train.threads=1"]
    run_dir = tmp / "run"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(run_dir), *overrides], capture_output=True, text=True, env=env, cwd=tmp
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), run_dir


def test_discover_lists_the_installed_example_with_its_package_and_version(plugin_run):
    result, _ = plugin_run
    example = [p for p in result["discovered"] if p["name"] == "late_sum"]
    assert example == [
        {
            "name": "late_sum",
            "module": "gaal_example_method.late_sum",
            "distribution": "gaal-example-method",
            "version": "0.1.0",
        }
    ]
    assert result["loaded"] == ["late_sum"] and result["registered"]


def test_a_plugin_that_fails_to_import_is_skipped_with_its_package_and_error(plugin_run):
    result, _ = plugin_run
    assert len(result["warnings"]) == 1
    warning = result["warnings"][0]
    for part in ("'broken'", "gaal-broken-plugin 0.2.0", "ImportError", "needs the package frobnicate"):
        assert part in warning


def test_asking_for_the_broken_plugin_is_an_error_naming_it(plugin_run):
    result, _ = plugin_run
    message = result.get("asked_for_broken", "")
    for part in ("method 'broken'", "gaal-broken-plugin 0.2.0", "ImportError: needs the package frobnicate"):
        assert part in message


def test_the_example_method_trains_one_epoch_through_gaal_train(plugin_run):
    result, run_dir = plugin_run
    assert result["exit"] in (None, 0)
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
    from gaal_cli.errors import GaalError
    from gaal_cli.plugins import discover, load_plugins

    declare(tmp_path, "gaal-twin-a", "1.0", "twin = gaal_twin_a_never_imported")
    declare(tmp_path, "gaal-twin-b", "2.0", "twin = gaal_twin_b_never_imported")
    monkeypatch.syspath_prepend(str(tmp_path))
    twins = [p for p in discover() if p.name == "twin"]
    assert [p.origin for p in twins] == ["gaal-twin-a 1.0", "gaal-twin-b 2.0"]
    failures = [f for f in load_plugins().failures if f.plugin.name == "twin"]
    assert len(failures) == 2
    assert all("gaal-twin-a 1.0" in f.error and "gaal-twin-b 2.0" in f.error for f in failures)
    with pytest.raises(GaalError, match="declared by more than one package"):
        load_plugins(only="twin")
    # a method no package declares is no plugin's business: the registry's lookup reports it
    assert load_plugins(only="no_such_method").plugins == []
