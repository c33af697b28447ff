# gaal on a CUDA GPU host. Build and run (see README, "Docker and GPUs"):
#   docker build -t gaal:0.1.0 .
#   docker run --gpus all -v /data:/data -v $PWD/results:/results gaal:0.1.0 train --dataset dvm --data-dir /data/dvm
#
# The base image is pinned by its exact tag; no digest is given because none could be verified
# from a source when this was written (add one with `docker buildx imagetools inspect` on a host
# that can reach Docker Hub). It ships Python 3.12, torch 2.14.1+cu126 and torchvision 0.29.1,
# which requirements.lock pins too. CUDA 12.6 runs on NVIDIA drivers >= 560 but has no kernels for
# Blackwell GPUs; for those, build with
#   --build-arg BASE_IMAGE=pytorch/pytorch:2.14.1-cuda13.0-cudnn9-runtime   (driver >= 580)
# which carries the same torch version, so the lock stays valid.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

# PIP_BREAK_SYSTEM_PACKAGES only matters if the base image's Python is the distribution's own
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# torch and torchvision come from the base image and are never reinstalled: the check stops the
# build if the lock disagrees with the image, and --no-deps keeps pip from resolving anything
# the lock does not name (the lock is complete apart from torch's CUDA libraries).
COPY requirements.lock tools/check_base_image.py /tmp/gaal-build/
RUN python /tmp/gaal-build/check_base_image.py /tmp/gaal-build/requirements.lock \
    && pip install --no-deps -r /tmp/gaal-build/requirements.lock

# experiments/ becomes package data (gaal_cli/experiments, see pyproject.toml): the dry run of a
# named sweep, from a folder without experiments/, stops the build if the image could not find it
COPY pyproject.toml README.md /tmp/gaal-build/src/
COPY gaal_cli /tmp/gaal-build/src/gaal_cli
COPY experiments /tmp/gaal-build/src/experiments
RUN pip install --no-deps /tmp/gaal-build/src \
    && rm -rf /tmp/gaal-build \
    && gaal --help > /dev/null \
    && cd /tmp && gaal sweep table1_dvm --dry-run --results /tmp/dry-run > /dev/null

# A non-root user with uid 1000 (the usual first user on the host), so files written to a
# bind-mounted results folder belong to that user; Ubuntu images already hold uid 1000 as
# 'ubuntu', which is dropped first. Another uid: --build-arg GAAL_UID=$(id -u).
ARG GAAL_UID=1000
RUN if existing="$(id -nu "${GAAL_UID}" 2>/dev/null)"; then userdel "${existing}"; fi \
    && useradd --create-home --uid "${GAAL_UID}" --shell /bin/bash gaal \
    && mkdir -p /data /results /gaal \
    && ln -s /results /gaal/results \
    && chown gaal:gaal /data /results /gaal

# Caches under /tmp stay writable when the container runs as another uid (docker run --user).
ENV TORCH_HOME=/tmp/torch \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib

# numeric, so that a runtime can tell it is not root without reading /etc/passwd (Kubernetes)
USER ${GAAL_UID}
# Runs write to results/<experiment>/<method>/seed<seed> relative to the working directory,
# and /gaal/results is a link to the /results volume.
WORKDIR /gaal
VOLUME ["/data", "/results"]
ENTRYPOINT ["gaal"]
CMD ["--help"]
