# ds2a: one small container. Build stage compiles the proof-of-work C extension;
# the runtime stage has no compiler and runs as a non-root user.
#
# The image never holds your config.json (it has your passwords and keys): mount it at
# run time (README.md, Docker). .dockerignore keeps it out of the build context too.
# The base image is pinned by version, so a rebuild gets the same Python.
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ds2a ./ds2a
RUN pip install --no-cache-dir --prefix=/install . \
 && PYTHONPATH=$(echo /install/lib/python3*/site-packages) \
    python -c "import ds2a.deepseek.pow as p; assert p.NATIVE, 'proof-of-work extension missing'"

FROM ${PYTHON_IMAGE}
RUN useradd --create-home --uid 10001 ds2a \
 && mkdir -p /app/data \
 && chown ds2a:ds2a /app/data
COPY --from=build /install /usr/local
WORKDIR /app
USER ds2a
# ./config.json (the mounted /app/config.json) is read when present; DS2A_* variables
# work with or without it.
ENV DS2A_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 5001
# Tokens obtained by login live here; mount a volume to keep them across upgrades.
VOLUME ["/app/data"]
# Asks /healthz at the address the effective configuration (file, DS2A_*) gives, not a fixed port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["python", "-m", "ds2a", "--healthcheck"]
# SIGTERM lets running answers finish (server.shutdown_grace) before exit.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "ds2a"]
