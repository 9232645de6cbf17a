# ds2a: one small container. Build stage compiles the proof-of-work C extension;
# the runtime stage has no compiler and runs as a non-root user.
FROM python:3.12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY ds2a ./ds2a
RUN pip install --no-cache-dir --prefix=/install . \
 && PYTHONPATH=$(echo /install/lib/python3*/site-packages) \
    python -c "import ds2a.deepseek.pow as p; assert p.NATIVE, 'proof-of-work extension missing'"

FROM python:3.12-slim
RUN useradd --create-home --uid 10001 ds2a \
 && mkdir -p /app/data \
 && chown ds2a:ds2a /app/data
COPY --from=build /install /usr/local
COPY config.json /app/config.json
WORKDIR /app
USER ds2a
ENV DS2A_CONFIG=/app/config.json \
    DS2A_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 5001
# Tokens obtained by login live here; mount a volume to keep them across upgrades.
VOLUME ["/app/data"]
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('DS2A_PORT', '5001'), timeout=2)"]
# SIGTERM lets running answers finish (server.shutdown_grace) before exit.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "ds2a"]
