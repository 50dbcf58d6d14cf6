# syntax=docker/dockerfile:1
# One image for every Agora process:
#   python -m workers <service>   (identity, catalog, search, inventory, orders, payments, audit)
#   python -m gateway             (the default command)
# Runs as an unprivileged user on a read-only root filesystem: the only writable
# paths are /tmp (an emptyDir in Kubernetes, also AGORA_STATE_DIR) and the
# certificate folder AGORA_PKI_DIR. See docs/deploy.md.
#
# The base is pinned by tag; release builds pin it by digest as well:
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- build: dependencies into a virtualenv (no compilers reach the runtime image) ----
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/agora
WORKDIR /src
# Only the dependencies, at the versions the tests ran against (constraints.txt,
# `make lock`): this layer is built again only when they change, not for every
# change to the code, which the runtime stage copies to /app (migrations and other
# data files are found next to the code).
COPY pyproject.toml constraints.txt ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
 && /opt/agora/bin/pip install -c constraints.txt -r requirements.txt \
 && /opt/agora/bin/python -m compileall -q /opt/agora/lib

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
ARG AGORA_UID=10001
LABEL org.opencontainers.image.title="agora" \
      org.opencontainers.image.description="Agora order platform: services (python -m workers <service>) and gateway (python -m gateway)" \
      org.opencontainers.image.source="https://example.invalid/agora"
RUN groupadd --system --gid ${AGORA_UID} agora \
 && useradd --system --uid ${AGORA_UID} --gid agora --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin agora
COPY --from=build /opt/agora /opt/agora
WORKDIR /app
COPY --chown=root:root agora ./agora
COPY --chown=root:root contracts ./contracts
COPY --chown=root:root workers ./workers
COPY --chown=root:root workflows ./workflows
COPY --chown=root:root activities ./activities
COPY --chown=root:root gateway ./gateway
# Bytecode compiled at build time: nothing is written next to the code at run time.
RUN python -m compileall -q /app
ENV PATH=/opt/agora/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    AGORA_PROFILE=prod \
    AGORA_STATE_DIR=/tmp/agora \
    AGORA_PKI_DIR=/var/run/agora/pki \
    AGORA_HOST=0.0.0.0 \
    AGORA_BIND_HOST=0.0.0.0
# Code is root-owned and read-only for the process.
USER ${AGORA_UID}:${AGORA_UID}
# gateway HTTP, gateway side port, service gRPC (mTLS) and side ports.
EXPOSE 18080 16000 15001-15007 16001-16007
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway"]
