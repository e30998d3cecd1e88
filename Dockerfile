# syntax=docker/dockerfile:1
# The audiogen appliance as a CUDA container image (docs/operations.md, "Container").
#
# Base: Debian 12 with its Python 3.11, the platform the project is developed and tested on,
# NOT an nvidia/cuda image. PyTorch's Linux x86_64 wheels on PyPI are CUDA builds that bring
# the CUDA runtime, cuBLAS and cuDNN as nvidia-* wheels; the only thing they need from the host
# is the driver (libcuda), which the NVIDIA Container Toolkit mounts in when the container is
# started with GPUs (`docker run --gpus all`, or the compose `deploy.resources` block). An
# nvidia/cuda base would ship a second copy of those libraries.
#
# Install steps are the Makefile's: scripts/install-system-deps.sh (python3.11, venv,
# mosquitto for the optional embedded broker), then `make venv` (torch==2.13.0 first, alone,
# then the package with its pinned dependencies). From PyPI that torch is the CUDA build.
#
# Not built in the project's CI (no Docker engine there); tests/test_container_files.py lints
# it with hadolint and checks that what it copies exists.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/audiogen

# make runs `make venv`; ca-certificates for pip over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY scripts/install-system-deps.sh scripts/install-system-deps.sh
RUN sh scripts/install-system-deps.sh && rm -rf /var/lib/apt/lists/*

COPY Makefile pyproject.toml README.md ./
COPY appliance/ appliance/
RUN make venv

COPY config/appliance.toml /etc/audiogen/appliance.toml

# Non-root user; its home is the state directory (library caches, CUDA's ComputeCache).
RUN groupadd --system --gid 10001 audiogen \
    && useradd --system --uid 10001 --gid audiogen --home-dir /var/lib/audiogen \
       --no-create-home --shell /usr/sbin/nologin audiogen \
    && mkdir -p /var/lib/audiogen/cache /var/lib/audiogen/models \
    && chown -R audiogen:audiogen /var/lib/audiogen \
    && chmod 0750 /var/lib/audiogen

# Environment overrides (APPLIANCE_<SECTION>__<KEY>) win over /etc/audiogen/appliance.toml.
# HTTP on 0.0.0.0 INSIDE the container only: that is the container's own network namespace;
# publish the port on the host's loopback (`-p 127.0.0.1:8380:8380`, as docker-compose.yml does).
# Workers: GPU indices as the container sees them (NVIDIA_VISIBLE_DEVICES picks which host GPUs
# those are); set APPLIANCE_WORKERS__DEVICES='["cpu"]' to run without a GPU.
# The broker is the device's (or compose's `mosquitto`): set APPLIANCE_BROKER__HOST.
ENV PATH=/opt/audiogen/.venv/bin:$PATH \
    HOME=/var/lib/audiogen \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_DEVICE_ORDER=PCI_BUS_ID \
    APPLIANCE_HTTP__HOST=0.0.0.0 \
    APPLIANCE_HTTP__PORT=8380 \
    APPLIANCE_WORKERS__DEVICES='["0"]' \
    APPLIANCE_BROKER__EMBEDDED=false \
    APPLIANCE_CACHE__DIR=/var/lib/audiogen/cache \
    APPLIANCE_MODELS__DIR=/var/lib/audiogen/models

# Numeric, so that a runtime can tell it is not root without the image's /etc/passwd.
USER 10001:10001
WORKDIR /var/lib/audiogen
VOLUME ["/var/lib/audiogen/cache", "/var/lib/audiogen/models"]
EXPOSE 8380

# Liveness only (/healthz); readiness (/readyz) also needs the broker and a ready worker.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/audiogen/.venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('APPLIANCE_HTTP__PORT', '8380'), timeout=4)"]

# SIGTERM drains (up to ~30 s): stop the container with a longer grace period than Docker's
# default 10 s (`docker stop -t 60`; compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/audiogen/.venv/bin/appliance"]
CMD ["serve", "--config", "/etc/audiogen/appliance.toml"]
