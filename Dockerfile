# syntax=docker/dockerfile:1
# The audiogen appliance as a container image: CPU workers by default, GPU workers with
# TORCH=cuda (docs/operations.md, "Container").
#
# Base: Debian 12 with its Python 3.11, the platform the project is developed and tested on.
# BASE_IMAGE lets a machine without a registry build from a base made of Debian's own packages
# (scripts/container-smoke.sh: mmdebstrap, then `podman import`).
#
# Install steps are the Makefile's: scripts/install-system-deps.sh (python3.11, venv,
# mosquitto for the optional embedded broker), then `make venv` (torch==2.13.0 first, alone,
# then the package with its pinned dependencies). The torch is PyTorch's CPU build (2.13.0+cpu,
# from its CPU index, which pip prefers to PyPI's CUDA build of the same version); the build
# fails if a CUDA torch got in. The pip settings are build arguments, so that a site's own
# mirror or wheel directory can serve them (the smoke script passes the host's).
#
# Built and run by scripts/container-smoke.sh (podman; not part of `make test`);
# tests/test_container_files.py lints it with hadolint and checks that what it copies exists.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# TORCH=cpu (default): PyTorch's CPU build, workers on the CPU. TORCH=cuda: PyPI's torch 2.13.0,
# which is the CUDA build, for a GPU host (run with the NVIDIA container toolkit, e.g.
# `--gpus all`, and set APPLIANCE_WORKERS__DEVICES='["0", "1"]'); build it with
# `--build-arg TORCH=cuda --build-arg PIP_EXTRA_INDEX_URL=` so that the CPU index is not read.
ARG TORCH=cpu
# pip's own environment variables; unset ones are not passed to pip.
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT

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

# The dependencies from pyproject.toml alone, as an editable install of an empty package that
# the COPY below fills: a change to the code rebuilds only that layer, not torch and the rest.
COPY Makefile pyproject.toml README.md ./
RUN mkdir appliance && touch appliance/__init__.py \
    && make venv \
    && .venv/bin/python -c "import sys, torch; cuda = torch.version.cuda is not None; sys.exit(0 if cuda == (sys.argv[1] == 'cuda') else 'TORCH=' + sys.argv[1] + ' but torch ' + torch.__version__)" "${TORCH}"
COPY appliance/ appliance/

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
# Workers: on the CPU (a TORCH=cuda image: set APPLIANCE_WORKERS__DEVICES to the GPU indices).
# The broker is the device's (or compose's `mosquitto`): set APPLIANCE_BROKER__HOST.
ENV PATH=/opt/audiogen/.venv/bin:$PATH \
    HOME=/var/lib/audiogen \
    APPLIANCE_HTTP__HOST=0.0.0.0 \
    APPLIANCE_HTTP__PORT=8380 \
    APPLIANCE_WORKERS__DEVICES='["cpu"]' \
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
