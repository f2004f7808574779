# streamworker image: one image, the role is the first argument.
#   docker build -t streamworker .
#   docker run --read-only --tmpfs /tmp -e REDIS_URL=redis://redis:6379/0 streamworker worker
#   docker run ... -p 8086:8086 streamworker api
#   docker run ... streamworker scheduler
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- builder: a virtualenv with the dependencies, then the project ----------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/streamworker
ENV PATH=/opt/streamworker/bin:$PATH
WORKDIR /src
# Dependencies first, read from pyproject.toml alone: a code change reuses this layer.
# Wheels only: the slim base has no compiler and the final image must not need one.
COPY pyproject.toml ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; open('requirements.txt', 'w').write('\n'.join(deps) + '\n')" \
    && pip install --no-cache-dir --only-binary=:all: -r requirements.txt
COPY README.md ./
COPY streamworker ./streamworker
COPY handlers ./handlers
COPY contracts ./contracts
# Non-editable install; pip compiles the .pyc files here because the runtime root file
# system is read-only. pip itself is removed: nothing installs at run time.
RUN pip install --no-cache-dir --no-deps . \
    && pip uninstall --yes pip

# --- runtime: the venv, a non-root user, nothing to build with ---------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/streamworker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# A numeric uid, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 streamworker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin streamworker
COPY --from=builder /opt/streamworker /opt/streamworker
COPY docker/healthcheck.py /opt/streamworker/healthcheck.py
USER 10001:10001
# The only writable place the process needs (mount a tmpfs there with --read-only).
WORKDIR /tmp
EXPOSE 8086
# The worker stops reading on SIGTERM and lets in-flight handlers finish within
# SHUTDOWN_GRACE_SECONDS: give `docker stop -t` more than that (default 25 s, stop -t 35).
STOPSIGNAL SIGTERM
# Role-aware: api -> GET /healthz on PORT (or --port); worker and scheduler -> GET /healthz
# on METRICS_PORT when it is set. See docker/healthcheck.py.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "/opt/streamworker/healthcheck.py"]
ENTRYPOINT ["streamworker"]
CMD ["worker"]
