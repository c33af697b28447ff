"""Fail the Docker build when the base image's torch/torchvision differ from requirements.lock.

The lock pins torch and torchvision to the versions the base image ships, and the image installs
the lock with --no-deps, so a mismatch would make pip fetch a second torch from PyPI without its
CUDA libraries. Local labels (the `+cu126` of a CUDA build) are ignored, as PEP 440 does for `==`.

Usage: python check_base_image.py requirements.lock
"""

import sys
from importlib.metadata import version


def main(lock_path: str) -> int:
    pins = {}
    with open(lock_path) as lock:
        for line in lock:
            requirement = line.split("#", 1)[0].strip()
            if "==" in requirement:
                name, pinned = requirement.split("==", 1)
                pins[name.strip().lower()] = pinned.strip()
    wrong = {
        name: (version(name).split("+", 1)[0], pins.get(name, "nothing"))
        for name in ("torch", "torchvision")
        if version(name).split("+", 1)[0] != pins.get(name, "nothing")
    }
    for name, (installed, pinned) in wrong.items():
        print(f"base image has {name} {installed} but {lock_path} pins {pinned}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
