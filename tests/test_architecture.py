"""The package's shape: one-way layers without an import circle, a CLI that answers a mistake
before loading torch, and the README's "Add a method" example, which must train as written.

Imports are read from the sources with `ast`, anywhere in a file: an import inside a function
that dodges a circle at load time still ties the two modules together.
"""

import importlib.util
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gaal_cli"


def _load_module_map():
    """tools/module_map.py, the script that prints the module map: the test reads the imports the
    way the map does."""
    spec = importlib.util.spec_from_file_location("module_map", REPO / "tools" / "module_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


module_map = _load_module_map()
# `imported(name, path, known)`: the package's modules `name` imports: `import a.b`, `from a
# import b` (b a module or a name in a), relative imports, at module level or inside functions.
imported = module_map.imported_modules


def import_graph() -> dict[str, set[str]]:
    return module_map.import_graph(REPO)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_reader_sees_every_kind_of_import(tmp_path, monkeypatch):
    pkg = tmp_path / "gaal_cli"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from gaal_cli import b\n")
    (pkg / "b.py").write_text("from .sub import c\n")
    (pkg / "sub" / "__init__.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("import gaal_cli.a\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    graph = import_graph()
    assert graph["gaal_cli.a"] == {"gaal_cli", "gaal_cli.b"}
    assert graph["gaal_cli.b"] == {"gaal_cli.sub", "gaal_cli.sub.c"}
    assert graph["gaal_cli.sub"] == {"gaal_cli.sub.c"}
    assert circles(graph) == [["gaal_cli.a", "gaal_cli.b", "gaal_cli.sub", "gaal_cli.sub.c"]]


def test_no_import_circle_among_the_package_modules():
    found = circles(import_graph())
    assert not found, "import circles (counting imports inside functions): " + "; ".join(map(" <-> ".join, found))


# the packages, lowest first, as README's "Layers" shows them: a module imports only modules of its
# own package or of the packages before it (no circle within a package: the test above)
LAYERS = [
    "foundation",  # errors, limits, files, locks, untrusted input, display, the method catalog, processes
    "config",
    "data",
    "models",
    "runs",
    "methods",
    "gaal_cli",  # the package's __init__: the version; hands the method registry to the config's catalog
    "training",
    "sweeps",
    "analysis",
    "cli",  # and __main__
]


def package_of(module: str) -> str:
    """The layer a module belongs to: its package under gaal_cli, or the top-level module's name."""
    if module == "gaal_cli":
        return module
    first = module.split(".")[1]
    return "cli" if first == "__main__" else first


def level(module: str) -> int:
    package = package_of(module)
    assert package in LAYERS, f"{module} is in no layer: add {package} to LAYERS (and to README's Layers)"
    return LAYERS.index(package)


def test_every_package_and_top_level_module_has_a_layer():
    on_disk = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    on_disk |= {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert on_disk == set(LAYERS) - {"gaal_cli"}


def test_a_package_imports_only_its_own_and_the_packages_below():
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if level(target) > level(module)
    ]
    assert not upward, "imports up the layers: " + "; ".join(sorted(upward))


def test_the_layer_check_refuses_an_import_up_the_layers(tmp_path, monkeypatch):
    pkg = tmp_path / "gaal_cli"
    for folder in ("foundation", "training"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "foundation" / "files.py").write_text("def f():\n    from gaal_cli.training import engine\n")
    (pkg / "training" / "engine.py").write_text("")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    with pytest.raises(AssertionError, match="foundation.files -> gaal_cli.training.engine"):
        test_a_package_imports_only_its_own_and_the_packages_below()


# within a package: what a module must not import (a module name or a prefix), beyond the layers
FORBIDDEN = {
    "gaal_cli.config": ("gaal_cli.foundation.untrusted",),
    "gaal_cli.foundation.display": ("gaal_cli.",),
    "gaal_cli.foundation.catalog": ("gaal_cli.",),
    # the registry imports a method's module only when asked for it, by name
    "gaal_cli.methods.registry": tuple(
        f"gaal_cli.methods.{p.stem}"
        for p in (PACKAGE / "methods").glob("*.py")
        if p.stem not in ("registry", "plugins", "__init__")
    ),
    "gaal_cli.runs.folder": ("gaal_cli.foundation.display",),
    "gaal_cli.training.trained_run": (
        "gaal_cli.training.engine",
        "gaal_cli.training.predict",
        "gaal_cli.training.method_checks",
    ),
}


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_a_module_does_not_import_what_its_package_keeps_above_it(module):
    graph = import_graph()
    wrong = sorted(t for t in graph[module] if t.startswith(FORBIDDEN[module]) and t != module)
    assert not wrong, f"{module} imports {wrong}"


def test_no_file_is_over_700_lines_and_the_top_level_stays_small():
    long = {p.name: n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 700}
    assert not long, f"modules over 700 lines: {long}"
    assert len(list(PACKAGE.glob("*.py"))) <= 8, sorted(p.name for p in PACKAGE.glob("*.py"))


def test_the_registry_names_each_builtin_where_its_module_registers_it():
    from gaal_cli.methods import registry

    for name, module in registry.BUILTIN_METHODS.items():
        assert registry.method_spec(name).cls.__module__ == module, name
    registers = re.compile(r"^@register_method\(", re.M)
    registering = {p.stem for p in (PACKAGE / "methods").glob("*.py") if registers.search(p.read_text())}
    assert registering == {module.rsplit(".", 1)[1] for module in registry.BUILTIN_METHODS.values()}


def run_cli(*args: str) -> tuple[int, str, set[str]]:
    """Run `gaal ARGS` in a fresh interpreter: exit code, stderr, and which of torch, timm, pandas
    and the method modules were imported by then."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from gaal_cli.cli import app
        try:
            app({list(args)!r})
            code = 0
        except SystemExit as exit:
            code = exit.code
        heavy = [m for m in sys.modules if m in ("torch", "timm", "pandas") or m.startswith("gaal_cli.methods.")]
        print(json.dumps([code, heavy]))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    code, heavy = __import__("json").loads(done.stdout.strip().splitlines()[-1])
    return code, done.stderr, set(heavy)


@pytest.mark.parametrize(
    "args, says",
    [
        (["train", "--set", "train.nope=1"], "unknown key"),
        (["train", "--set", "train.epochs=many"], "train.epochs"),
        (["train", "--method", "gal"], "did you mean 'gaal'"),
        (["train", "no_such_experiment.yaml"], "no such experiment file"),
        (["train", "--set", "methods.nope.x=1"], "unknown method"),
        (["train", "--epochs", "two"], "Invalid value"),
        (["eval", "some_run", "--split", "tset"], "unknown split"),
        (["eval", "some_run", "--missing", "table"], "did you mean 'tabular'"),
        (["eval", "no_such_run"], "no checkpoint found"),
        (["predict", "some_run", "--data", "t.csv", "--out", "p.csv", "--head", "fused"], "unknown head"),
        (["predict", "no_such_run", "--data", "t.csv", "--out", "p.csv"], "no checkpoint found"),
        (["train", "--dataset", "missing.csv"], "no such table file"),
        (["train", "--dataset", "dvmm"], "did you mean 'dvm'"),
        (["train", "--dataset", "dvm", "--data-dir", "no_such_folder"], "no prepared data"),
    ],
)
def test_the_cli_answers_a_mistake_without_loading_torch(args, says):
    code, stderr, heavy = run_cli(*args)
    assert code == 2
    assert says in stderr
    assert not heavy & {"torch", "timm"}, f"loaded before answering: {sorted(heavy)}"
    assert heavy <= {"gaal_cli.methods.registry", "gaal_cli.methods.plugins"}


def test_mistakes_about_a_table_are_answered_without_loading_torch(tmp_path):
    table = tmp_path / "t.csv"
    rows = [f"img{i}.png,{i * 1.37:.2f},{['a', 'b'][i % 2]}" for i in range(60)]
    table.write_text("image,price,kind\n" + "\n".join(rows) + "\n")
    base = ["--image-column", "image"]
    cases = [
        (["train", "--dataset", str(table), "--target", "knid", *base], "did you mean 'kind'"),
        (["train", "--dataset", str(table), "--target", "price", *base], "looks continuous"),
        (["train", "--dataset", str(table), "--target", "knid", *base, "--dry-run"], "did you mean 'kind'"),
        (["data", "inspect", str(table), "--target", "price", *base], "data.target_bins"),
        (["data", "inspect", str(table), "--target", "kind", "--image-column", "imag"], "did you mean 'image'"),
    ]
    for args, says in cases:
        code, stderr, heavy = run_cli(*args)
        assert code == 2 and says in stderr, (args, stderr)
        assert not heavy & {"torch", "timm"}, f"{args} loaded {sorted(heavy)} before answering"


def test_a_method_block_is_checked_importing_only_that_method():
    code, stderr, heavy = run_cli("train", "--set", "methods.concat.nope=1")
    assert code == 2 and "methods.concat.nope" in stderr and "unknown key" in stderr
    from gaal_cli.methods.registry import BUILTIN_METHODS

    # concat and what it imports itself (the interface, its head); no other method
    assert heavy & set(BUILTIN_METHODS.values()) == {"gaal_cli.methods.concat"}


def readme_example() -> str:
    """The Python block of the README's "Add a method" section."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Add a method\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_method_example_registers_trains_and_predicts(tmp_path, tiny, monkeypatch):
    import json

    from gaal_cli.config import load_config
    from gaal_cli.data import build_data, make_loader
    from gaal_cli.methods import registry
    from gaal_cli.training.engine import build_optimizer, create_method, train
    from gaal_cli.training.trained_run import TrainedRun

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))  # the example's registration ends here
    namespace = {"__name__": "readme_example"}
    exec(compile(readme_example(), "README.md (Add a method)", "exec"), namespace)
    assert "mean_logits" in registry.method_names()

    config = load_config(overrides=[*tiny, "method=mean_logits", "methods.mean_logits.image_weight=0.7"])
    assert config.resolved()["methods"] == {"mean_logits": {"grad_cosine": False, "image_weight": 0.7}}
    data = build_data(config.data, config.seed)
    method = create_method(config, data).train()
    optimizer, _ = build_optimizer(method, config.train)
    method.train_step(next(iter(make_loader(data.train, 32, shuffle=True, seed=0))), optimizer)
    silent = [name for name, p in method.named_parameters() if p.requires_grad and p.grad is None]
    assert not silent, f"no gradient reached {silent}"
    report = train(config, tmp_path / "run", show_progress=False)
    assert set(report["metrics"]["test"]) == {"multi", "image", "tabular"}
    assert json.loads((tmp_path / "run" / "report.json").read_text())["method"] == "mean_logits"
    metrics = TrainedRun.load(tmp_path / "run").evaluate("test")
    assert metrics == report["metrics"]["test"]
