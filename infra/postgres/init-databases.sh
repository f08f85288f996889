#!/usr/bin/env bash
# Creates alignflow's databases in the postgres container's cluster. The official postgres image runs the
# scripts in /docker-entrypoint-initdb.d once, on first start with an empty data volume; later starts skip
# them, so changing a password here (or in infra/.env) afterwards needs `ALTER ROLE ... PASSWORD` by hand.
#
#   role     databases              used by
#   mlflow   mlflow, mlflow_auth    the MLflow server: tracking/registry store and basic-auth user store
#   prefect  prefect                the Prefect server
#
# Passwords come from the environment (infra/.env via docker-compose.yml), never from this file. They reach
# SQL as psql variables (:'name' quotes them), so any character is safe in a password.
# No `set -u`, no `exit`: the entrypoint sources (rather than runs) this file when the mount is not executable.
set -eo pipefail

: "${MLFLOW_DB_PASSWORD:?MLFLOW_DB_PASSWORD must be set (infra/.env)}"
: "${PREFECT_DB_PASSWORD:?PREFECT_DB_PASSWORD must be set (infra/.env)}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" \
    -v mlflow_password="$MLFLOW_DB_PASSWORD" \
    -v prefect_password="$PREFECT_DB_PASSWORD" <<'EOSQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_password';

CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;

-- Only each owner (and the superuser) may connect; PUBLIC's default CONNECT right is withdrawn.
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow_auth FROM PUBLIC;
REVOKE ALL ON DATABASE prefect FROM PUBLIC;
EOSQL

# Prefect's migrations need pg_trgm. It is a trusted extension (owners may create it), but creating it here as
# the superuser keeps the migration from depending on that.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname prefect \
    -c 'CREATE EXTENSION IF NOT EXISTS pg_trgm;'
