# The Shipyard prediction service: a slim image with the 'serve' extra only (BentoML, ONNX Runtime,
# LiteRT, Pillow, Prometheus client). No TensorFlow, no training code.
#
#   docker build -t shipyard-serve .            (or: podman build -t shipyard-serve .)
#   docker run -p 3000:3000 -e SHIPYARD_MODEL=digits:latest \
#       -v "$HOME/bentoml/models:/home/shipyard/bentoml/models:ro" shipyard-serve
#
# The model store is mounted (read-only is fine: only BENTOML_HOME/models is read), or baked in by
# copying an exported store into /home/shipyard/bentoml/models in a derived image. Every ServeConfig
# setting is an environment variable (SHIPYARD_VARIANT, SHIPYARD_MAX_BATCH_SIZE, ...; see README).
#
# BASE_IMAGE is any image with Python 3.11 on PATH as python3 and the venv module (useradd too): the
# official slim image by default; scripts/container-check.sh builds on a Debian base made locally with
# mmdebstrap where no registry is reachable. PIP_CERT (a CA bundle's path inside the build, e.g. mounted
# with -v) is for networks whose TLS goes through a proxy with its own certificate authority.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PIP_CERT=""
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Two steps so that the slow one is cached until the pins change: first the serve extra's packages, read
# from pyproject.toml and pinned by constraints.txt; then the project itself, with the same install step as
# a user's `pip install -c constraints.txt '.[serve]'` (everything already satisfied, nothing fetched).
COPY pyproject.toml constraints.txt ./
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
    && python3 -m venv /opt/venv \
    && python3 -c "import tomllib; x = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; \
f = lambda e: [d for r in x[e] for d in (f(r.split('[')[1].rstrip(']')) if r.startswith('shipyard[') else [r])]; \
print(chr(10).join(f('serve')))" > /tmp/serve.txt \
    && /opt/venv/bin/pip install -c constraints.txt -r /tmp/serve.txt
COPY README.md ./
COPY edge ./edge
COPY serving ./serving
RUN if [ -n "$PIP_CERT" ]; then export PIP_CERT; else unset PIP_CERT; fi \
    && /opt/venv/bin/pip install -c constraints.txt ".[serve]" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)"

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin shipyard \
    && mkdir -p /home/shipyard/bentoml/models \
    && chown -R shipyard:shipyard /home/shipyard/bentoml
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOME=/home/shipyard/bentoml \
    BENTOML_DO_NOT_TRACK=True \
    SHIPYARD_HOST=0.0.0.0 \
    SHIPYARD_PORT=3000
WORKDIR /home/shipyard
USER shipyard
VOLUME ["/home/shipyard/bentoml/models"]
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request as r; sys.exit(r.urlopen('http://127.0.0.1:3000/readyz', timeout=2).status != 200)"]
CMD ["bentoml", "serve", "serving.service:Shipyard", "--host", "0.0.0.0", "--port", "3000"]
