"""The packaging: the wheel, requirements.lock against pyproject.toml, and the Dockerfile's promises.

Nothing here builds an image (no Docker engine in the test environment); these checks catch the
drift a build would not: a dependency added to pyproject but not to the lock, a pin outside its
range, a base image whose torch is not the one the lock pins, a root user or a lost entrypoint,
a file the image needs left out of the build context. The wheel is built and installed for real,
from the files the Dockerfile copies, to show the named experiments travel with it.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
DOCKERFILE = ROOT / "Dockerfile"
# the environment the image resolves markers in (see tools/lock.sh)
IMAGE_MARKERS = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def read_lock(path: Path = LOCK) -> dict[str, Requirement]:
    """The lock's requirements by canonical name (comments and blank lines skipped)."""
    pins: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name not in pins, f"{name} is pinned twice in {path.name}"
        pins[name] = req
    return pins


def pinned_version(req: Requirement) -> str:
    """The version of an exact `name==X` pin; fails on anything else (ranges, wildcards, extras)."""
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, f"{req} is not an exact pin"
    assert not req.extras and req.url is None, f"{req} must be a plain name==version pin"
    return specs[0].version


def runtime_dependencies() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(text) for text in project["dependencies"]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(IMAGE_MARKERS)]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def resolve_args(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The instructions with `${NAME}` / `$NAME` replaced by the default of the ARG declaring it."""
    defaults: dict[str, str] = {}
    resolved = []
    for keyword, args in instructions:
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            defaults[name] = value.strip('"')
        elif keyword in ("FROM", "USER"):
            args = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], args)
        resolved.append((keyword, args))
    return resolved


def base_image(instructions: list[tuple[str, str]]) -> str:
    """The image of the (last) FROM."""
    images = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    assert images, "the Dockerfile has no FROM"
    return images[-1]


@pytest.fixture(scope="module")
def docker():
    return resolve_args(dockerfile_instructions(DOCKERFILE.read_text()))


def test_every_runtime_dependency_is_pinned_within_its_range():
    pins = read_lock()
    deps = runtime_dependencies()
    assert deps, "pyproject.toml lists no runtime dependency"
    for dep in deps:
        name = canonicalize_name(dep.name)
        assert name in pins, f"{dep.name} (pyproject.toml) is missing from requirements.lock; run sh tools/lock.sh"
        pinned = pinned_version(pins[name])
        assert dep.specifier.contains(pinned, prereleases=True), (
            f"requirements.lock pins {dep.name}=={pinned}, outside pyproject's '{dep.specifier}'"
        )


def test_every_lock_line_is_an_exact_pin_without_cuda_libraries():
    pins = read_lock()
    for req in pins.values():
        pinned_version(req)
    # the base image's torch build brings its own CUDA libraries; pinning PyPI's would clash
    cuda = [n for n in pins if n.startswith(("nvidia-", "cuda-")) or n == "triton"]
    assert not cuda, f"requirements.lock pins CUDA libraries the base image provides: {cuda}"


def test_base_image_is_a_pinned_pytorch_runtime_tag_with_the_locked_torch(docker):
    image = base_image(docker)
    name, _, digest = image.partition("@")
    repository, _, tag = name.rpartition(":")
    assert repository == "pytorch/pytorch" and tag, f"base image {image} is not a tagged pytorch/pytorch image"
    assert tag != "latest"
    if digest:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"malformed digest {digest}"
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", tag)
    assert match, f"tag {tag} is not <torch>-cuda<x.y>-cudnn<n>-runtime"
    pins = read_lock()
    assert match.group(1) == pinned_version(pins["torch"]), (
        f"the base image ships torch {match.group(1)} but requirements.lock pins {pins['torch']}"
    )


def test_dockerfile_installs_the_lock_runs_as_non_root_with_gaal_entrypoint(docker):
    copies = [args for keyword, args in docker if keyword == "COPY"]
    assert any("requirements.lock" in args.split() for args in copies), "the lock is not copied into the image"
    installs = [args for keyword, args in docker if keyword == "RUN" and "pip install" in args]
    lock_install = [a for a in installs if re.search(r"-r \S*requirements\.lock", a)]
    assert lock_install, "no `pip install -r .../requirements.lock`"
    # --no-deps: nothing outside the lock, and never a second torch over the base image's
    assert all("--no-deps" in a for a in installs), "every pip install must use --no-deps"

    users = [args for keyword, args in docker if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root USER"

    entrypoint = [args for keyword, args in docker if keyword == "ENTRYPOINT"]
    assert entrypoint and shlex.split(entrypoint[-1].strip("[]").replace(",", " ")) == ["gaal"]
    volumes = " ".join(args for keyword, args in docker if keyword == "VOLUME")
    assert '"/data"' in volumes and '"/results"' in volumes
    workdir = [args for keyword, args in docker if keyword == "WORKDIR"]
    assert workdir, "no WORKDIR: results would land wherever the image left the working directory"


def test_dockerignore_keeps_results_and_git_out_of_the_build_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", "results", "**/*.pt"):
        assert entry in ignored


def load_check_script():
    path = ROOT / "tools" / "check_base_image.py"
    spec = importlib.util.spec_from_file_location("check_base_image", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_check_rejects_a_lock_that_disagrees_with_the_installed_torch(tmp_path, capsys):
    check = load_check_script()
    torch_version = version("torch").split("+")[0]
    vision_version = version("torchvision").split("+")[0]
    agreeing = tmp_path / "agree.lock"
    agreeing.write_text(f"torch=={torch_version}  # via x\ntorchvision=={vision_version}\n")
    assert check.main(str(agreeing)) == 0

    stale = tmp_path / "stale.lock"
    stale.write_text(f"torch==1.0.0\ntorchvision=={vision_version}\n")
    assert check.main(str(stale)) == 1
    assert "pins 1.0.0" in capsys.readouterr().err


# ---------------------------------------------------------------- the wheel and the build context

IMAGE_SOURCE = "/tmp/gaal-build/src"  # the folder the Dockerfile copies the package into and pip-installs


def image_package_sources(instructions: list[tuple[str, str]]) -> list[str]:
    """The checkout paths the Dockerfile copies into IMAGE_SOURCE, the folder it installs gaal from."""
    sources = []
    for keyword, args in instructions:
        parts = args.split()
        if keyword == "COPY" and parts[-1].rstrip("/").startswith(IMAGE_SOURCE):
            sources += parts[:-1]
    return sources


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore `patterns` leave `path` (or a folder above it) out of the build context.

    Broader than Docker's own matching (fnmatch's * also crosses /), so a doubt counts as excluded.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions in .dockerignore: teach this check about them"
        pattern = pattern.strip("/")
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern) or (
                pattern.startswith("**/") and fnmatch.fnmatchcase(candidate.rsplit("/", 1)[-1], pattern[3:])
            ):
                return True
    return False


def test_the_build_context_keeps_everything_the_dockerfile_copies(docker):
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    copied = [src for keyword, args in docker if keyword == "COPY" for src in args.split()[:-1]]
    assert "experiments" in image_package_sources(docker), "the image must install the named experiments"
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which the checkout lacks"
        assert not dockerignored(source, patterns), f".dockerignore leaves {source} out, but the Dockerfile copies it"


def test_the_wheel_lists_every_package_of_the_checkout():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    inits = (ROOT / "gaal_cli").rglob("__init__.py")
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in inits} | {"gaal_cli.experiments"}
    assert listed == found, f"pyproject.toml's packages differ from the checkout's: {sorted(listed ^ found)}"


def run_checked(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def fresh_venv_seeing_this_interpreters_packages(venv: Path, env: dict) -> Path:
    """A new venv (no pip of its own) whose Python also imports the packages this interpreter has
    installed (torch, pip, ...), wherever they are: in the system's site-packages or in a venv's.

    `python -m venv --system-site-packages` from a venv's Python would make a venv over the base
    interpreter, which sees the base's packages and not the venv's (no torch in a fresh venv that
    installed it): so the venv is made from the base interpreter, and this interpreter's
    site-packages folders are named in a .pth file of the new one. Lines of a .pth file are added
    after the venv's own site-packages, and the .pth files inside them are not run: the editable
    gaal of this environment stays out, and the wheel installed in the venv is the gaal imported.
    """
    base = getattr(sys, "_base_executable", None) or sys.executable
    run_checked([base, "-m", "venv", "--without-pip", str(venv)], env=env)
    python = venv / "bin" / "python"
    site_packages = Path(
        run_checked(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env
        ).stdout.strip()
    )
    here = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (site_packages / "gaal_test_dependencies.pth").write_text("".join(f"{p}\n" for p in here))
    return python


@pytest.mark.slow
def test_an_installed_wheel_finds_the_named_experiments_from_any_folder(tmp_path, docker):
    """Build the wheel from exactly what the image installs, put it in a fresh venv (torch and the
    other dependencies come from this interpreter's site-packages, inside a venv or not), and run a
    named sweep's dry run from a folder that has no experiments/ and is outside the checkout."""
    source = tmp_path / "src"
    source.mkdir()
    for path in image_package_sources(docker):
        if (ROOT / path).is_dir():
            shutil.copytree(ROOT / path, source / path, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / path, source / path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the checkout must not leak in
    pip = ["-m", "pip", "--disable-pip-version-check", "--no-input"]
    # --no-index: a path is never read as a name on a package index
    run_checked([sys.executable, *pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(tmp_path / "dist"), str(source)], env=env)  # fmt: skip
    wheel = next((tmp_path / "dist").glob("gaal-*.whl"))
    venv = tmp_path / "venv"
    python = fresh_venv_seeing_this_interpreters_packages(venv, env)
    # --ignore-installed: the editable gaal of this machine's site-packages is not the one tested
    run_checked([str(python), *pip, "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)], env=env)

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data" / "dvm").mkdir(parents=True)
    (elsewhere / "data" / "dvm" / "manifest.json").write_text("{}")  # the file's data.dir, as a user has it
    probe = (
        "import gaal_cli, gaal_cli.sweeps.runner as s; "
        "print(gaal_cli.__file__); print(s.resolve_experiment('table1_dvm'))"
    )
    module, experiment = run_checked([str(python), "-c", probe], cwd=elsewhere, env=env).stdout.split()
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert Path(module) == site / "gaal_cli" / "__init__.py", f"gaal_cli came from {module}, not the wheel"
    assert Path(experiment) == site / "gaal_cli" / "experiments" / "table1_dvm.yaml"

    dry_run = [str(venv / "bin" / "gaal"), "sweep", "table1_dvm", "--dry-run", "--results", str(tmp_path / "runs")]
    listing = run_checked(dry_run, cwd=elsewhere, env={**env, "COLUMNS": "200"}).stdout
    assert "table1_dvm/gaal/seed" in listing
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"
