# syntax=docker/dockerfile:1
#
# Nudge Gateway: an OpenAI-compatible gateway in front of vLLM.
#
#   docker build -t nudge-gateway .
#   docker run -p 8000:8000 -v "$PWD/deploy/compose/config:/etc/nudge:ro" nudge-gateway
#
# The config (and the policy it names) are mounted from outside at /etc/nudge/; the
# image holds no configuration. See docs/production.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- build: turn the source tree into one wheel (no compiler needed: pure Python)
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway/ gateway/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- runtime: the wheel and its dependencies, nothing else from the source tree, with the
# extras the shipped deployments use: postgres (the ledger shared by replicas) and otel (tracing)
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NUDGE_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir "$(echo /wheels/*.whl)[postgres,otel]" \
    && rm -rf /wheels \
    && groupadd --system --gid 10001 nudge \
    && useradd --system --uid 10001 --gid nudge --no-create-home --home-dir /var/lib/nudge \
        --shell /usr/sbin/nologin nudge \
    && mkdir -p /etc/nudge /var/lib/nudge \
    && chown nudge:nudge /var/lib/nudge
# A SQLite usage ledger goes here (ledger.path in the config): mount a volume to keep it.
WORKDIR /var/lib/nudge
USER 10001:10001
EXPOSE 8000
# No curl in a slim image: ask /healthz with Python's standard library.
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(os.environ['NUDGE_HEALTHCHECK_URL'], timeout=2).status == 200 else 1)"]
ENTRYPOINT ["nudge-gateway"]
# --host 0.0.0.0: inside a container, loopback (the config's default) is unreachable.
CMD ["serve", "--config", "/etc/nudge/gateway.yaml", "--host", "0.0.0.0"]
