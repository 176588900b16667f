# The qkdnet node image: a node agent per container, `qkdnet node --config /etc/qkdnet/node.yaml`.
#
# Build it with `qkdnet image build`, which assembles the build context from the checkout:
#   Dockerfile      this file
#   wheels/         wheels of the runtime dependencies pinned by requirements.lock, and
#                   wheels/requirements.txt naming them (the closure of pyproject's dependencies)
#   project/        the wheel of qkdnet itself
# Nothing in the build needs the network: every package comes from those wheels (pip --no-index),
# and `qkdnet image build` runs the build with network mode "none" to prove it. Only the classic
# builder's features are used (Docker 17.05+), so it builds with or without BuildKit.
#
# The tools of the base image are the node's: the default base holds ip and tc (iproute2, for
# `qkdnet fault`), curl and ping for a user who execs into a node container
# (`docker exec -it qkdnet-NAME-NODE bash`); nothing is added here, which keeps the build offline.
#
# BASE_IMAGE is any Debian-like image with python3 3.11 and its venv module. The default,
# qkdnet-base:bookworm, is made locally without a registry by deploy/make-base-image.sh. With a
# registry, `qkdnet image build --base python:3.11-slim` (or, with the context above,
# `docker build --build-arg BASE_IMAGE=python:3.11-slim .`) works as well.
#
# Running a node (what the docker runtime does):
#   docker run -v CONFIG_DIR:/etc/qkdnet:ro -v STATE_VOLUME:/var/lib/qkdnet qkdnet-node:VERSION
#   - /etc/qkdnet     node.yaml and the node's PKI (CA, certificate, key, link PSKs); read-only.
#                     Relative paths in node.yaml are relative to it. The files must be readable by
#                     uid 10001, the user the node runs as.
#   - /var/lib/qkdnet the node's state_dir (key stores, ready.json); owned by uid 10001, so a new
#                     named volume mounted there starts out writable by the node.
#   The entrypoint is `qkdnet`: other verbs run with arguments, e.g. `docker run IMAGE --help`.

ARG BASE_IMAGE=qkdnet-base:bookworm

# -- the virtual environment with every runtime dependency, from the wheelhouse only ----------
FROM ${BASE_IMAGE} AS dependencies
LABEL org.qkdnet.component=build-stage
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/qkdnet
COPY wheels/ /wheels/
RUN /opt/qkdnet/bin/pip install --no-index --find-links /wheels --requirement /wheels/requirements.txt \
    && /opt/qkdnet/bin/pip check

# -- the node image: the environment above, qkdnet itself, an unprivileged user ---------------
# Steps after the large layers are few: with the classic builder every step commits a container,
# which takes seconds on some storage drivers (fuse-overlayfs), so metadata comes first.
FROM ${BASE_IMAGE}
ENV PATH=/opt/qkdnet/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
RUN groupadd --system --gid 10001 qkdnet \
    && useradd --system --uid 10001 --gid qkdnet --home-dir /var/lib/qkdnet --no-create-home \
        --shell /usr/sbin/nologin qkdnet \
    && install -d -o qkdnet -g qkdnet -m 0750 /var/lib/qkdnet \
    && install -d -m 0755 /etc/qkdnet
LABEL org.qkdnet.component=node \
      org.qkdnet.node.config=/etc/qkdnet/node.yaml \
      org.qkdnet.node.config-dir=/etc/qkdnet \
      org.qkdnet.node.state-dir=/var/lib/qkdnet \
      org.qkdnet.node.uid=10001 \
      org.opencontainers.image.title=qkdnet-node
WORKDIR /var/lib/qkdnet
ENTRYPOINT ["qkdnet"]
CMD ["node", "--config", "/etc/qkdnet/node.yaml"]
COPY --from=dependencies /opt/qkdnet /opt/qkdnet
COPY project/ /tmp/project/
RUN pip install --no-index --no-deps /tmp/project/*.whl \
    && rm -rf /tmp/project \
    && qkdnet --help >/dev/null
USER qkdnet
# Filled in by `qkdnet image build`: what the image was made of (see orchestrator/runtime/images/builder.py).
ARG BASE_IMAGE QKDNET_VERSION QKDNET_INPUT_HASH QKDNET_BASE_IMAGE_ID QKDNET_WHEELHOUSE
LABEL org.qkdnet.version=$QKDNET_VERSION \
      org.opencontainers.image.version=$QKDNET_VERSION \
      org.qkdnet.input-hash=$QKDNET_INPUT_HASH \
      org.qkdnet.base-image=$BASE_IMAGE \
      org.qkdnet.base-image-id=$QKDNET_BASE_IMAGE_ID \
      org.qkdnet.wheelhouse=$QKDNET_WHEELHOUSE
