# The Shipyard prediction service: a slim image with the 'serve' extra only (BentoML, ONNX Runtime,
# LiteRT, Pillow, Prometheus client). No TensorFlow, no training code.
#
#   docker build -t shipyard-serve .
#   docker run -p 3000:3000 -e SHIPYARD_MODEL=digits:latest \
#       -v "$HOME/bentoml/models:/home/shipyard/bentoml/models:ro" shipyard-serve
#
# The model store is mounted (read-only is fine: only BENTOML_HOME/models is read), or baked in by
# copying an exported store into /home/shipyard/bentoml/models in a derived image. Every ServeConfig
# setting is an environment variable (SHIPYARD_VARIANT, SHIPYARD_MAX_BATCH_SIZE, ...; see README).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY edge ./edge
COPY serving ./serving
# The same install step as tests/serving/test_serve_install.py: only the serve extra, pinned.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt ".[serve]" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is not None)"

FROM python:3.11-slim
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
