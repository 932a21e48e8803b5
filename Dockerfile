# The gateway's image: `docker build -t zai-gateway:0.1.0 .`
# Configured only by env vars at run time (see .env.example); nothing secret is baked in.

# --- build: the same install command as the README and CI (./run install) ---------------------
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# pyproject.toml names README.md as the readme, so the build needs it too.
COPY pyproject.toml run README.md ./
COPY server/ server/
COPY state/ state/
# Runtime dependencies only, into /opt/venv; the project itself is installed editable
# (pip install -e .), so the source stays at /app in the final image as well. The impersonate
# extra (curl_cffi, a manylinux wheel) and the otel extra (OpenTelemetry traces) are in by
# default so UPSTREAM_TRANSPORT=impersonate and OTEL_EXPORTER_OTLP_ENDPOINT work without a
# rebuild; `--build-arg RUN_EXTRAS=` leaves them out.
ARG RUN_EXTRAS=impersonate,otel
RUN RUN_VENV=/opt/venv RUN_EXTRAS="$RUN_EXTRAS" ./run install \
    && /opt/venv/bin/python -m compileall -q server state

# --- runtime: the venv and the source at the same paths, run as a non-root user ---------------
FROM python:3.11.14-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LISTEN_HOST=0.0.0.0 \
    LISTEN_PORT=8080
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin gateway
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# slim has no curl: ask /healthz with the venv's python (any failure exits non-zero).
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('LISTEN_PORT', '8080') + '/healthz', timeout=3)"]
# Exec form: python is PID 1 and gets SIGTERM itself, then drains in-flight streams
# (up to DRAIN_TIMEOUT) and exits 0.
ENTRYPOINT ["/opt/venv/bin/python", "-m", "server"]
