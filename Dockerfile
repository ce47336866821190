# The streamer engine with the demo models baked in.
#
#   docker build -t streamer:local .
#   docker run --rm streamer:local validate /app/topologies/fraud.yaml
#
# docker-compose.yml runs it next to a single-node Kafka; the broker address comes from
# STREAMER_BOOTSTRAP_SERVERS, which overrides kafka.bootstrap_servers of every topology.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The package first, so edits to topologies/ do not reinstall it and its dependencies.
# README.md* : the pyproject readme, copied when present (setuptools only warns without it).
WORKDIR /build
COPY pyproject.toml README.md* ./
COPY streamer/ ./streamer/
RUN pip install --no-cache-dir '.[demo]' && rm -rf /build

WORKDIR /app

COPY schemas/ /app/schemas/
COPY topologies/ /app/topologies/

# topologies/fraud.yaml names its models ../models/*.onnx, i.e. /app/models/ in this image.
RUN python -m streamer.demo.train /app/models

RUN useradd --system --uid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin streamer
USER streamer

# /metrics, /healthz, /readyz (topology metrics.port).
EXPOSE 9100

# `streamer run` drains on SIGTERM: finish the batch, flush, commit, exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["streamer"]
CMD ["run", "/app/topologies/fraud.yaml"]
