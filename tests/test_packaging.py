"""The Docker packaging: requirements.lock against pyproject.toml, and the Dockerfile's promises.

Nothing here builds an image (no Docker engine in the test environment); these checks catch the
drift a build would not: a dependency added to pyproject but not to the lock, a pin outside its
range, a base image whose torch is not the one the lock pins, a root user or a lost entrypoint.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
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
