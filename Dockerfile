# syntax=docker/dockerfile:1
# The rayrec image: Ray, rayrec and every plugin under plugins/, for Ray head and worker
# nodes alike (KubeRay pods, cluster-launcher VMs, or a single `docker run`).
#
#   docker build -t rayrec:0.1.0 .                                   # CPU
#   docker build -t rayrec:0.1.0-gpu \
#     --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 .   # NVIDIA GPUs
#
# The base is Ray's own image, so every node runs the same Ray and Python (KubeRay's probes
# and the cluster launcher expect its layout). deploy/kubernetes/*.yaml and deploy/cluster.yaml
# refer to the tag rayrec:0.1.0: push it to a registry your cluster can pull from and change
# the image there. tests/unit/test_deploy_manifests.py checks this file against the repository.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-cpu
FROM ${RAY_IMAGE}

# torch comes from the PyTorch index first: from PyPI, pip would pull a CUDA build of several
# GB even for CPU nodes. The range is pyproject.toml's.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_REQUIREMENT="torch>=2.4,<2.14"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    RAY_SERVE_ENABLE_HA_PROXY=1 \
    RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S=2
# The last two: Ray Serve's HAProxy mode, the HTTP front `rayrec serve` uses on one machine
# (rayrec.serving.graph.proxy): HAProxy on port 8000 of every node forwards each request straight to
# an ingress replica. Every Ray process of a node started from this image reads them.

# Made by the image's unprivileged user (ray): pip builds the packages in place and writes
# their metadata here, which a directory that WORKDIR created for root would refuse.
RUN mkdir -p /home/ray/rayrec
WORKDIR /home/ray/rayrec
RUN pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_REQUIREMENT}"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users rayrec ./rayrec
COPY --chown=ray:users plugins ./plugins
COPY --chown=ray:users deploy ./deploy

# One pip call, so each plugin's "rayrec" requirement resolves to this checkout; plugins/*/
# takes every plugin package, present and future. redis is the client of the Redis state
# store that deploy/serve-cluster.yaml uses. The last two commands fail the build if the
# package or a plugin cannot be imported.
RUN pip install . "redis>=5" plugins/*/ \
 && rayrec plugins \
 && python -c "import rayrec.serving.app, rayrec.training.trainer"

# HAProxy in front of the ingress replicas (the API and the demo page at /).
EXPOSE 8000
CMD ["rayrec", "--help"]
