# syntax=docker/dockerfile:1
# alignflow worker: Prefect process worker (pools `cpu` and `gpu`) and, on Kubernetes, the flow-run image of
# the `gpu` pool (infra/k8s/gpu-job-template.json). Build from the repository root of a clean checkout:
#
#   docker build -f infra/docker/worker.Dockerfile -t alignflow-worker:latest .
#
# CUDA torch wheels bundle the CUDA runtime, so the base is plain Python; the host needs only the NVIDIA driver
# (new enough for the wheel's CUDA version) and the NVIDIA container toolkit.
FROM python:3.11-slim

ARG TORCH_VERSION=2.9.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# 1 adds DeepSpeed for infra/accelerate/deepspeed-zero3.yaml.
ARG INSTALL_DEEPSPEED=0
ARG DEEPSPEED_VERSION=0.19.8

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    TOKENIZERS_PARALLELISM=false \
    HF_HOME=/cache/hf \
    ALIGNFLOW_HOME=/opt/alignflow

# git: lineage records the commit and DVC works inside the checkout; tini: PID 1 that forwards signals to the
# worker and reaps the flow-run subprocesses it starts.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid 10001 alignflow \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin alignflow

# torch first, from the CUDA index; the project's `torch>=2.4` is then already met.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Optional DeepSpeed (ZeRO-3). Ops it would JIT-compile (fused/CPU Adam, offload) need nvcc, which this image
# lacks; the ZeRO-3 config here uses no offload, and the stages use torch's own optimizer.
RUN if [ "${INSTALL_DEEPSPEED}" = "1" ]; then pip install "deepspeed==${DEEPSPEED_VERSION}"; fi

# infra/prefect.yaml's pull step runs every flow from $ALIGNFLOW_HOME: the code baked into this image.
WORKDIR /opt/alignflow

# Dependencies in their own layer: stub packages let pip resolve the project before the code is copied.
COPY pyproject.toml constraints.txt README.md ./
RUN mkdir -p flows tasks models \
    && touch flows/__init__.py tasks/__init__.py models/__init__.py \
    && pip install -c constraints.txt -e ".[server]"

COPY --chown=alignflow:alignflow . .
# Re-register the editable install against the real packages (no dependency changes).
RUN pip install --no-deps -e . \
    && mkdir -p data .dvc/cache .alignflow reports /cache/hf \
    && chown -R alignflow:alignflow data .dvc .alignflow reports /cache/hf

# The Hugging Face cache survives container restarts as a volume (compose: hf-cache).
VOLUME ["/cache/hf"]

USER 10001:10001

ENTRYPOINT ["/usr/bin/tini", "--"]
# docker-compose.yml and the Kubernetes job template replace this command.
CMD ["prefect", "worker", "start", "--pool", "cpu", "--type", "process"]
