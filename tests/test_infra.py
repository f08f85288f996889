"""Static checks of the production infrastructure under infra/: nothing here starts a container.

They catch the mistakes that only show when the stack is deployed: a service missing, a secret written into
the compose file, a job-template placeholder without a variable, an accelerate config accelerate cannot load.
"""

from __future__ import annotations

import configparser
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
K8S_TEMPLATE = INFRA / "k8s" / "gpu-job-template.json"
WORKER_DOCKERFILE = INFRA / "docker" / "worker.Dockerfile"
MLFLOW_DOCKERFILE = INFRA / "docker" / "mlflow.Dockerfile"
AUTH_INI = INFRA / "mlflow" / "basic_auth.ini"
INIT_DB = INFRA / "postgres" / "init-databases.sh"

SERVICES = {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker-cpu", "worker-gpu"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|ACCESS_KEY", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(?:(?::?[-?+])[^}]*)?\}$")  # the whole value is one ${VAR...}
COMPOSE_VARIABLE = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)")  # $${...} is escaped for the container shell
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE form
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def _strings(node) -> list[str]:
    """Every string in a parsed YAML document (comments are gone), values and keys alike."""
    if isinstance(node, dict):
        return [text for key, value in node.items() for text in (*_strings(key), *_strings(value))]
    if isinstance(node, list):
        return [text for item in node for text in _strings(item)]
    return [node] if isinstance(node, str) else []


def _env_example() -> dict[str, str]:
    """Variables infra/.env.example sets, and (with value None) the optional ones it lists commented out."""
    found: dict[str, str | None] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if m := re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line):
            found[m.group(1)] = m.group(2)
        elif m := re.match(r"^#([A-Z_][A-Z0-9_]*)=", line):
            found.setdefault(m.group(1), None)
    return found


# --------------------------------------------------------------------------------------------- compose


def test_compose_has_every_service(compose):
    missing = SERVICES - set(compose.get("services", {}))
    assert not missing, f"docker-compose.yml lacks the services {sorted(missing)}"


def test_mlflow_server_uses_basic_auth_postgres_and_proxied_s3(compose):
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"]
    command = command.split() if isinstance(command, str) else [str(part) for part in command]
    assert command[:2] == ["mlflow", "server"], f"unexpected mlflow command {command}"

    def option(name: str) -> str:
        assert name in command, f"mlflow server command lacks {name}: {command}"
        return command[command.index(name) + 1]

    assert option("--app-name") == "basic-auth", "the MLflow server must run the basic-auth app"
    assert option("--backend-store-uri").startswith("postgresql"), "the tracking store must be PostgreSQL"
    assert option("--artifacts-destination").startswith("s3://"), "artifacts must go to the S3 (MinIO) bucket"
    assert "--serve-artifacts" in command, "workers get artifacts through the server (mlflow-artifacts:/)"
    env = _environment(mlflow)
    assert env.get("MLFLOW_AUTH_CONFIG_PATH") == "/etc/mlflow/basic_auth.ini", "basic_auth.ini must be the config"
    assert any(str(v).startswith("./mlflow/basic_auth.ini:/etc/mlflow/basic_auth.ini") for v in mlflow["volumes"]), \
        "infra/mlflow/basic_auth.ini must be mounted where MLFLOW_AUTH_CONFIG_PATH points"
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        assert env.get(name), f"the basic-auth MLflow server does not start (or store artifacts) without {name}"
    assert "mlflow:5000" in env.get("MLFLOW_SERVER_ALLOWED_HOSTS", ""), \
        "MLflow rejects Host headers it does not allow; workers call it as mlflow:5000"


def test_prefect_server_requires_an_auth_string(compose):
    env = _environment(compose["services"]["prefect-server"])
    assert REFERENCE.match(env.get("PREFECT_SERVER_API_AUTH_STRING", "")), \
        "prefect-server must set PREFECT_SERVER_API_AUTH_STRING from infra/.env"
    assert env.get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false", "analytics must be off"
    assert env.get("PREFECT_SERVER_DATABASE_DRIVER", env.get("PREFECT_API_DATABASE_CONNECTION_URL", "")).startswith(
        "postgresql+asyncpg"), "the Prefect server must use PostgreSQL through asyncpg"


def test_no_secret_literal_in_compose(compose):
    literals = {
        f"{name}.{key}": value
        for name, service in compose["services"].items()
        for key, value in _environment(service).items()
        if SECRET_NAME.search(key) and value and not REFERENCE.match(value)
    }
    assert not literals, f"secret-named variables with literal values (use ${{VAR}} from infra/.env): {literals}"
    # No password inside a URL either (scheme://user:password@host), e.g. in a command.
    text = "\n".join(_strings(compose))
    assert not re.search(r"://[^/\s:@]+:(?!\$\{)[^@\s/]+@", text), "a URL in docker-compose.yml embeds a password"


def test_every_compose_variable_is_documented_in_env_example(compose):
    documented = _env_example()
    text = "\n".join(_strings(compose))
    used = set(COMPOSE_VARIABLE.findall(text))
    undocumented = used - set(documented)
    assert not undocumented, f"infra/.env.example does not mention {sorted(undocumented)}"
    required = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*):\?", text))
    unset = {name for name in required if not documented.get(name)}
    assert not unset, f"infra/.env.example must give a placeholder for the required {sorted(unset)}"


def test_workers_talk_to_the_servers_without_storage_credentials(compose):
    for name in ("worker-cpu", "worker-gpu"):
        env = _environment(compose["services"][name])
        assert env.get("PREFECT_API_URL") == "http://prefect-server:4200/api", f"{name}: PREFECT_API_URL"
        assert REFERENCE.match(env.get("PREFECT_API_AUTH_STRING", "")), f"{name}: PREFECT_API_AUTH_STRING"
        assert env.get("MLFLOW_TRACKING_URI") == "http://mlflow:5000", f"{name}: MLFLOW_TRACKING_URI"
        assert REFERENCE.match(env.get("MLFLOW_TRACKING_PASSWORD", "")), f"{name}: MLFLOW_TRACKING_PASSWORD"
        leaked = {key for key in env if key.startswith("AWS_") or key == "PGPASSWORD"}
        assert not leaked, f"{name} gets storage credentials {leaked}; artifacts go through the MLflow server"
        command = " ".join(map(str, compose["services"][name]["command"]))
        pool = name.removeprefix("worker-")
        assert f"--pool {pool}" in command and "--type process" in command, f"{name} command: {command}"


def test_gpu_worker_reserves_nvidia_gpus(compose):
    devices = compose["services"]["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), \
        f"worker-gpu must reserve NVIDIA GPUs: {devices}"
    assert "deploy" not in compose["services"]["worker-cpu"], "worker-cpu should not hold GPUs"


def test_init_script_creates_the_databases_the_services_use(compose):
    script = INIT_DB.read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+)", script))
    mlflow_command = " ".join(map(str, compose["services"]["mlflow"]["command"]))
    backend_db = re.search(r"--backend-store-uri \S+/(\w+)", mlflow_command).group(1)
    auth_db = configparser.ConfigParser()
    auth_db.read(AUTH_INI)
    auth_db_name = auth_db["mlflow"]["database_uri"].rsplit("/", 1)[-1]
    prefect_db = _environment(compose["services"]["prefect-server"]).get("PREFECT_SERVER_DATABASE_NAME", "prefect")
    needed = {backend_db, auth_db_name, prefect_db}
    assert needed <= created, f"init-databases.sh creates {sorted(created)}, the services use {sorted(needed)}"
    assert "$MLFLOW_DB_PASSWORD" in script and "$PREFECT_DB_PASSWORD" in script, "passwords come from the env"
    mounts = compose["services"]["postgres"]["volumes"]
    assert any("/docker-entrypoint-initdb.d/" in str(m) and "init-databases.sh" in str(m) for m in mounts), \
        "the postgres service must mount init-databases.sh into /docker-entrypoint-initdb.d"
    result = subprocess.run(["bash", "-n", str(INIT_DB)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"init-databases.sh has a shell syntax error: {result.stderr}"


# ------------------------------------------------------------------------------------------ MLflow auth


def test_basic_auth_ini():
    config = configparser.ConfigParser()
    assert config.read(AUTH_INI), f"{AUTH_INI} could not be read"
    section = config["mlflow"]
    assert section.get("default_permission") == "NO_PERMISSIONS", "users must see nothing they were not granted"
    assert section.get("authorization_function") == "mlflow.server.auth:authenticate_request_basic_auth"
    assert section.get("database_uri", "").startswith("postgresql"), "the user store belongs in PostgreSQL"
    assert not re.search(r"://[^/:@]+:[^@]+@", section["database_uri"]), "database_uri must not carry a password"
    assert not section.get("admin_password"), "the admin password comes from MLFLOW_AUTH_ADMIN_PASSWORD, not the file"
    known = {"default_permission", "database_uri", "read_database_uri", "admin_username", "admin_password",
             "authorization_function", "grant_default_workspace_access", "workspace_cache_max_size",
             "workspace_cache_ttl_seconds", "auth_cache_max_size", "auth_cache_ttl_seconds"}
    unknown = set(section) - known
    assert not unknown, f"basic_auth.ini has keys MLflow does not read: {sorted(unknown)}"


# ------------------------------------------------------------------------------------------- Dockerfiles


def test_worker_image_installs_cuda_torch_and_the_constrained_project():
    text = WORKER_DOCKERFILE.read_text()
    assert re.search(r"download\.pytorch\.org/whl/cu12\d", text), "torch must come from a CUDA 12.x wheel index"
    assert re.search(r"pip install -c constraints\.txt -e \"?\.\[server\]", text), \
        "the project must be installed with constraints.txt and the server extra"
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE), "the worker must not run as root"
    assert re.search(r"HF_HOME=/cache/hf", text), "the Hugging Face cache must live in /cache/hf"
    assert "PREFECT_SERVER_ANALYTICS_ENABLED=false" in text
    home = re.search(r"ALIGNFLOW_HOME=(\S+)", text)
    assert home and re.search(rf"^WORKDIR {re.escape(home.group(1))}$", text, re.MULTILINE), \
        "ALIGNFLOW_HOME (where infra/prefect.yaml's pull step runs flows) must be the image's code folder"


def test_mlflow_image_matches_the_pinned_client():
    text = MLFLOW_DOCKERFILE.read_text()
    pinned = re.search(r"^mlflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.MULTILINE)
    assert pinned, "constraints.txt pins no mlflow version"
    assert f"MLFLOW_VERSION={pinned.group(1)}" in text, \
        f"the MLflow server image must run the client's version {pinned.group(1)}"
    assert "mlflow[auth]" in text and "psycopg" in text and "boto3" in text, "server extras missing"


# -------------------------------------------------------------------------------------------- Kubernetes


def test_k8s_job_template_requests_gpus_and_declares_its_variables():
    template = json.loads(K8S_TEMPLATE.read_text())
    assert set(template) == {"job_configuration", "variables"}, f"unexpected top-level keys {sorted(template)}"
    properties = template["variables"]["properties"]
    used = set(PLACEHOLDER.findall(json.dumps(template["job_configuration"])))
    undeclared = used - set(properties)
    assert not undeclared, f"placeholders without a variable: {sorted(undeclared)}"

    manifest = template["job_configuration"]["job_manifest"]
    assert manifest["kind"] == "Job" and manifest["spec"]["backoffLimit"] == 0, "Prefect retries, not Kubernetes"
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "nvidia.com/gpu" in container["resources"]["limits"], "the job must limit nvidia.com/gpu"
    gpu = PLACEHOLDER.search(container["resources"]["limits"]["nvidia.com/gpu"]).group(1)
    assert properties[gpu]["default"] >= 1, "the GPU pool must ask for at least one GPU by default"
    assert properties["image"]["default"] == "alignflow-worker:latest"
    assert any("secretRef" in source for source in container.get("envFrom", [])), \
        "credentials must come from a Kubernetes Secret (envFrom)"
    shm = {v["name"] for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
    assert any(m["mountPath"] == "/dev/shm" and m["name"] in shm for m in container["volumeMounts"]), \
        "/dev/shm must be a memory-backed emptyDir (NCCL, dataloaders)"
    assert {"nodeSelector", "tolerations"} <= set(pod), "GPU node scheduling must be configurable"


def test_k8s_job_template_variables_are_a_valid_schema():
    jsonschema = pytest.importorskip("jsonschema")
    variables = json.loads(K8S_TEMPLATE.read_text())["variables"]
    jsonschema.Draft7Validator.check_schema(variables)
    for name, schema in variables["properties"].items():
        default = schema.get("default")
        if default is not None and "$ref" not in json.dumps(schema):
            jsonschema.validate(default, schema)  # a default the server would reject fails every run
        if isinstance(default, dict):
            secrets = [key for key in default if SECRET_NAME.search(key)]
            assert not secrets, f"variable {name!r} defaults credentials {secrets}; they belong in the Secret"


# ------------------------------------------------------------------------------------------- accelerate


@pytest.fixture(scope="module")
def load_accelerate_config():
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    return lambda name: config_args.load_config_from_file(str(INFRA / "accelerate" / name))


@pytest.mark.parametrize(("name", "distributed_type"), [
    ("ddp.yaml", "MULTI_GPU"), ("fsdp.yaml", "FSDP"), ("deepspeed-zero3.yaml", "DEEPSPEED"),
])
def test_accelerate_configs_load(load_accelerate_config, name, distributed_type):
    config = load_accelerate_config(name)
    assert str(getattr(config.distributed_type, "value", config.distributed_type)) == distributed_type, \
        f"{name}: distributed_type {config.distributed_type}"
    assert config.num_machines == 1 and config.num_processes >= 1, f"{name}: one machine, its GPUs"


def test_deepspeed_config_is_zero3(load_accelerate_config):
    ds = load_accelerate_config("deepspeed-zero3.yaml").deepspeed_config
    assert ds.get("zero_stage") == 3, f"zero_stage {ds.get('zero_stage')}"
    assert ds.get("zero3_init_flag") is True and ds.get("zero3_save_16bit_model") is True, ds
    assert ds.get("offload_optimizer_device") == "none" and ds.get("offload_param_device") == "none", ds
    # Set in the file, accelerate exports these as env vars that override the stage's own training settings.
    assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds, ds
