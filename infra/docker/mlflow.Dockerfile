# syntax=docker/dockerfile:1
# MLflow tracking server with basic auth, a PostgreSQL store and S3 (MinIO) artifacts. docker-compose.yml
# supplies the command and configuration. Build from the repository root, like the worker image:
#
#   docker build -f infra/docker/mlflow.Dockerfile -t alignflow-mlflow:latest .
#
# constraints.txt pins MLflow and its dependencies to the versions the pipeline's client runs.
FROM python:3.11-slim

ARG MLFLOW_VERSION=3.17.2

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true

# psycopg (3): SQLAlchemy's PostgreSQL driver for the postgresql+psycopg:// URIs; boto3: S3 artifacts.
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt "mlflow[auth]==${MLFLOW_VERSION}" "psycopg[binary]" boto3 \
    && rm /tmp/constraints.txt

RUN groupadd --gid 10001 mlflow \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin mlflow
USER 10001:10001
WORKDIR /home/mlflow

EXPOSE 5000
CMD ["mlflow", "server", "--help"]
