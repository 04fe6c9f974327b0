# syntax=docker/dockerfile:1.7
# stigg-sidecar image: the locked dependencies and a non-editable install of the sidecar in a
# virtual environment built with uv, copied into a slim runtime without uv or build tools.
# tests/integration/test_image_entrypoint.py runs this file's final `uv sync` command and its
# ENTRYPOINT outside Docker, and tests/deploy/test_dockerfile.py checks its shape.

# Both stages use the same image, so the interpreter the venv points at exists at the same path.
FROM python:3.11-slim AS build

COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv

ENV UV_PROJECT_ENVIRONMENT=/opt/stigg-sidecar \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

WORKDIR /src

# Dependencies first: this layer is rebuilt only when the lock file changes.
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    uv sync --locked --no-dev --no-install-project --no-editable

# Then the sidecar itself, installed as a wheel (not editable) so /src is not needed at runtime.
COPY . /src
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable


FROM python:3.11-slim AS runtime

LABEL org.opencontainers.image.title="stigg-sidecar" \
      org.opencontainers.image.description="Entitlement-enforcement sidecar for Stigg" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric UID/GID, so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 sidecar \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin sidecar \
    && mkdir -p /var/lib/stigg-sidecar /var/run/stigg-sidecar \
    && chown 10001:10001 /var/lib/stigg-sidecar /var/run/stigg-sidecar

# Owned by root: the running user cannot modify its own code.
COPY --from=build /opt/stigg-sidecar /opt/stigg-sidecar

# Nothing is written outside the volumes below (bytecode was compiled at build time), so the
# container runs with a read-only root filesystem. The API stays on loopback by default (the
# app in the same pod calls it); set SIDECAR_SERVER_HOST=0.0.0.0 to publish it.
ENV PATH=/opt/stigg-sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SIDECAR_DATA_DIR=/var/lib/stigg-sidecar

# Durable usage spool, and scratch space.
VOLUME ["/var/lib/stigg-sidecar", "/tmp"]

# 8080 app-facing REST API, 8081 management (/livez, /readyz, /metrics), 9090 MCP,
# 50051 gRPC (Stigg Sidecar's API for its official SDKs).
EXPOSE 8080 8081 9090 50051

USER 10001:10001

# The image has no curl: a standard-library request against the management port's /livez.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SIDECAR_MANAGEMENT_PORT', '8081') + '/livez', timeout=3)"]

ENTRYPOINT ["stigg-sidecar"]
