# The MQTT broker of a qkdnet deployment in containers: Mosquitto. The configuration baked in
# (deploy/mosquitto.conf) admits nobody; a deployment runs the image with its own (TLS, client
# certificates of its CA, an access list: orchestrator/mosquitto.py), mounted read-only.
#
# Build it with `qkdnet image build` (the context holds this file and mosquitto.conf). The default
# BASE_IMAGE, qkdnet-base:bookworm (deploy/make-base-image.sh), already holds mosquitto, so the
# build needs no network. A base without mosquitto, such as python:3.11-slim
# (`qkdnet image build --base python:3.11-slim`), gets it from apt, which needs the network.
#
#   docker run -v DIR:/etc/qkdnet:ro --user 10001 qkdnet-broker:VERSION -c /etc/qkdnet/mosquitto.conf

ARG BASE_IMAGE=qkdnet-base:bookworm
FROM ${BASE_IMAGE}
RUN if ! command -v mosquitto >/dev/null; then \
        apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mosquitto -h | head -n 1
COPY mosquitto.conf /etc/mosquitto/mosquitto.conf
LABEL org.qkdnet.component=broker \
      org.qkdnet.broker.port=1883 \
      org.opencontainers.image.title=qkdnet-broker
USER mosquitto
EXPOSE 1883
ENTRYPOINT ["mosquitto"]
CMD ["-c", "/etc/mosquitto/mosquitto.conf"]
# Filled in by `qkdnet image build`: what the image was made of (see orchestrator/runtime/images/builder.py).
ARG BASE_IMAGE QKDNET_VERSION QKDNET_INPUT_HASH QKDNET_BASE_IMAGE_ID
LABEL org.qkdnet.version=$QKDNET_VERSION \
      org.opencontainers.image.version=$QKDNET_VERSION \
      org.qkdnet.input-hash=$QKDNET_INPUT_HASH \
      org.qkdnet.base-image=$BASE_IMAGE \
      org.qkdnet.base-image-id=$QKDNET_BASE_IMAGE_ID
