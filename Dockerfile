# The indexsync image: `docker build -t indexsync .`, then `docker run ... indexsync run`.
# Settings come from INDEXSYNC_* environment variables (see the README); the bindings file
# and mappings are expected under /etc/indexsync (mount them, or build an image FROM this).

# Build every wheel (indexsync and its dependencies) in a throw-away stage, so the final
# image has no build tools and no pip cache.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY indexsync ./indexsync
# The opensearch extra too: one image for Elasticsearch and OpenSearch.
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[opensearch]'

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels 'indexsync[opensearch]' \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin indexsync

ENV INDEXSYNC_CONFIG=/etc/indexsync/indexsync.toml \
    INDEXSYNC_MAPPINGS_DIR=/etc/indexsync/mappings \
    INDEXSYNC_LOG_FORMAT=json \
    INDEXSYNC_METRICS_HOST=0.0.0.0 \
    INDEXSYNC_METRICS_PORT=9740
# Inside a container, 0.0.0.0 is the container's own network namespace: nothing is reachable
# from outside unless the port is published (docker run -p, a Kubernetes Service).
EXPOSE 9740

WORKDIR /etc/indexsync
# A numeric user, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# The worker's own readiness: both servers reachable and the backlog moving (docs/operations.md).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9740/readyz', timeout=4)"]
ENTRYPOINT ["indexsync"]
CMD ["run"]
