#!/bin/sh
# Regenerate requirements.lock: the runtime dependencies of pyproject.toml, pinned to the versions
# installed in the current environment (the one the test suite passed in), resolved for the
# Docker image's Python (3.12 in pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime) on Linux x86_64.
#
# torch and torchvision stay in the lock, pinned to the base image's 2.14.1 / 0.29.1 (the
# Dockerfile checks the image agrees). The CUDA libraries torch pulls in (nvidia-*, cuda-*,
# triton) and setuptools are left out: which ones a torch wheel needs depends on its CUDA build
# (the image's cu126 wheel needs other ones than PyPI's default wheel), and the base image
# already ships the right ones.
#
# Needs uv (`pip install uv`; set UV=/path/to/uv if it is not on PATH) and PyPI.
# Run from the repository root: sh tools/lock.sh
set -eu
# a fixed name, so that the "via" notes in the lock do not change with every run
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
constraints="$tmp/tested-environment.txt"
python -m pip freeze --exclude-editable > "$constraints"
skip=""
for name in setuptools $(grep -oiE '^(nvidia-[^=]+|cuda-[^=]+|triton)' "$constraints"); do
    skip="$skip --no-emit-package $name"
done
# shellcheck disable=SC2086  # $skip is a list of flags
"${UV:-uv}" pip compile pyproject.toml \
    --python-version 3.12 \
    --python-platform x86_64-manylinux_2_28 \
    --constraint "$constraints" \
    --annotation-style line \
    --quiet \
    --custom-compile-command "sh tools/lock.sh" \
    $skip \
    -o requirements.lock
sed -i "s|$tmp/||" requirements.lock
