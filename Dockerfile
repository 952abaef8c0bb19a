# syntax=docker/dockerfile:1
# The raygenre image: Ray's official image + ffmpeg + raygenre installed with the repo's exact pins.
# One image for the head, the CPU workers and the GPU workers (k8s/) and for `ray job submit` clusters (jobs/).
#
#   docker build -t ghcr.io/YOUR-ORG/raygenre:0.1.0 .      # then set it in k8s/overlays/*/kustomization.yaml images:
#   docker build --build-arg RAY_FLAVOR=py311 -t ...       # smaller CPU-only base (PyPI torch still runs on CPU)
# Python must be 3.11 or 3.12 (py311/py312 flavors): some pins in constraints.txt (numpy 2.4, pandas 3) need 3.11+.
#
# The versions below must equal constraints.txt (tests/test_k8s.py checks): the base image brings Ray, and
# `pip install -c constraints.txt` keeps every other package at the tested pin. torch and torchaudio are a
# matched pair; PyPI's torch is a CUDA 13 build (its NVIDIA libraries come as wheels), so GPU nodes need an
# NVIDIA driver that supports CUDA 13 (R580 or newer).
ARG RAY_VERSION=2.60.0
# rayproject/ray tags: <ray version>-py<python>[-cpu|-gpu|-cuXXX]; -gpu aliases Ray's default CUDA image.
ARG RAY_FLAVOR=py311-gpu
FROM rayproject/ray:${RAY_VERSION}-${RAY_FLAVOR}

ARG RAY_VERSION
ARG TORCH_VERSION=2.11.0
ARG TORCHAUDIO_VERSION=2.11.0

# ffmpeg decodes what libsndfile cannot (M4A/AAC). Ray's images run as `ray` (uid 1000, gid 100) with sudo;
# switch to root only for apt.
USER root
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ffmpeg \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /opt/raygenre && chown 1000:100 /opt/raygenre
USER 1000:100

WORKDIR /opt/raygenre

# Dependencies first (a big, rarely changing layer: torch is ~4 GB): the project metadata and the pins, with a
# stub package, so that editing raygenre/*.py does not reinstall torch.
COPY --chown=1000:100 pyproject.toml constraints.txt README.md ./
COPY --chown=1000:100 raygenre/__init__.py raygenre/__init__.py
RUN pip install --no-cache-dir -c constraints.txt . \
    && python -c "import ray, torch, torchaudio; \
assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__; \
assert torchaudio.__version__.split('+')[0] == '${TORCHAUDIO_VERSION}', torchaudio.__version__"

# The package itself; its YAML defaults (raygenre/configs/) are package data, installed with it.
COPY --chown=1000:100 raygenre/ raygenre/
RUN pip install --no-cache-dir --no-deps --force-reinstall . \
    && raygenre --version

ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
WORKDIR /home/ray
