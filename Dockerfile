# syntax=docker/dockerfile:1

# The builder and the final stage share one base image, so the venv's
# interpreter symlinks stay valid when the venv is copied across.
FROM python:3.12-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, in their own layer, from the lock (`make lock` regenerates
# it from pyproject.toml): a code change rebuilds only the layers below. Every
# pin carries its hashes, and every dependency ships wheels, so no compiler is needed.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock

COPY pyproject.toml ./
COPY gateway/ ./gateway/
# A regular (not editable) install, so the final stage needs the venv only,
# not the source tree; --no-deps, as the lock installed them all.
RUN pip install --no-cache-dir --no-deps .


FROM python:3.12-slim-bookworm

# GATEWAY_HOST: the default config listens on every interface of the container, so a
# published port reaches it; without gateway keys it then refuses to start unless
# GATEWAY_ALLOW_UNAUTHENTICATED_PUBLIC=true (see config/gateway.yaml).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GATEWAY_CONFIG=/app/config/gateway.yaml \
    GATEWAY_HOST=0.0.0.0

RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin gateway

WORKDIR /app
COPY --from=builder /opt/venv /opt/venv
# Owned by root and only readable by the service user: the gateway never
# writes its own config or tools.
COPY config/ ./config/
COPY tools/ ./tools/

USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# The config path lives in GATEWAY_CONFIG rather than in a --config flag so that
# `docker run -e GATEWAY_CONFIG=...` and compose can select another file;
# a flag would silently win over the variable.
ENTRYPOINT ["gateway"]
CMD ["serve"]
