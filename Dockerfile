# The classifier's image: `classifier serve`, the gRPC app beside an injected daprd.
#
#   docker build -t image-classifier:0.1.0 .
#
# Runs as a non-root user on a read-only root filesystem; the one writable place it needs is
# /var/cache/classifier (CLASSIFIER_CACHE_DIR: compiled guests and the models and guests fetched
# from the Dapr state store), a volume. The default guest is compiled into it at build time.
# The install steps are deploy/image/install.sh, which tests/test_deploy_image.py also runs.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
# What `pip install .` needs: the package, its built guests, the project metadata and constraints.
COPY pyproject.toml constraints.txt README.md LICENSE ./
COPY service ./service
COPY wasm/bin ./wasm/bin
COPY deploy/image ./deploy/image
RUN sh deploy/image/install.sh /opt/classifier /var/cache/classifier

FROM ${PYTHON_IMAGE}
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin classifier
COPY --from=build /opt/classifier /opt/classifier
COPY --from=build --chown=10001:10001 /var/cache/classifier /var/cache/classifier
ENV PATH=/opt/classifier/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    APP_PORT=50051 \
    CLASSIFIER_CACHE_DIR=/var/cache/classifier \
    CLASSIFIER_STORE=/var/cache/classifier/store \
    CLASSIFIER_METRICS_PORT=9464
USER 10001:10001
WORKDIR /var/cache/classifier
# 50051: the app's gRPC port (daprd calls it on localhost); 9464: metrics (CLASSIFIER_METRICS_PORT).
EXPOSE 50051 9464
VOLUME ["/var/cache/classifier"]
ENTRYPOINT ["classifier", "serve"]
