"""Real production services on loopback, for the integration tests: what infra/docker-compose.yml runs.

Docker cannot run here, so the tests start the same programs themselves: PostgreSQL (Debian's package),
`mlflow server --app-name basic-auth` on it, `prefect server start` with an auth string on it, and a Prefect
process worker. Everything lives in one scratch folder and every process is stopped on exit.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PIPELINE_USER = "alignflow-pipeline"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, or where Debian's `postgresql` package puts it."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed; install Debian's `postgresql` package "
                           "(`make test` does: infra/install_postgres.sh)")
    return found


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path
    started_s: float

    def terminate(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class LoopbackServices:
    root: Path
    db_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    prefect_auth: str = field(default_factory=lambda: f"admin:{secrets.token_urlsafe(16)}")
    mlflow_admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    pipeline_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    pg_port: int = field(default_factory=free_port)
    mlflow_port: int = field(default_factory=free_port)
    prefect_port: int = field(default_factory=free_port)
    services: list[Service] = field(default_factory=list)
    scratch_dirs: list[Path] = field(default_factory=list)

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.prefect_port}/api"

    def db_uri(self, database: str, driver: str = "postgresql", password: bool = True) -> str:
        secret = f":{self.db_password}" if password else ""
        return f"{driver}://alignflow{secret}@127.0.0.1:{self.pg_port}/{database}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a pipeline or worker process talking to these services."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        env.update(
            PREFECT_API_URL=self.prefect_api,
            PREFECT_API_AUTH_STRING=self.prefect_auth,
            PREFECT_HOME=str(self.root / "client-prefect-home"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            MLFLOW_TRACKING_URI=self.mlflow_url,
            MLFLOW_TRACKING_USERNAME=PIPELINE_USER,
            MLFLOW_TRACKING_PASSWORD=self.pipeline_password,
            MLFLOW_DISABLE_TELEMETRY="true",
            TOKENIZERS_PARALLELISM="false",
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
        )
        env.update(extra)
        return env

    # ------------------------------------------------------------------------------------------- lifecycle

    def spawn(self, name: str, command: list[str], env: dict[str, str], cwd: Path | None = None,
              user: str | None = None) -> Service:
        log = self.root / f"{name}.log"
        handle = log.open("w")
        process = subprocess.Popen(command, env=env, cwd=cwd or self.root, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True, user=user)
        service = Service(name, process, log, time.perf_counter())
        self.services.append(service)
        return service

    def wait_until(self, service: Service, ready, timeout: float = 180) -> float:
        """Poll `ready()` until it holds; returns the seconds since the service was started."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if service.process.poll() is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}:\n"
                                   f"{service.output()[-4000:]}")
            with contextlib.suppress(Exception):
                if ready():
                    return time.perf_counter() - service.started_s
            time.sleep(0.5)
        raise TimeoutError(f"{service.name} not ready after {timeout} s:\n{service.output()[-4000:]}")

    def stop(self) -> None:
        """Every service at once: each shuts down on its own, so waiting in turn only adds up their delays."""
        for service in reversed(self.services):
            service.terminate()
        for service in self.services:
            service.wait()
        self.services.clear()

    # -------------------------------------------------------------------------------------------- services

    def start_postgres(self) -> float:
        """A fresh cluster with password authentication; databases for MLflow, its users, and Prefect."""
        started = time.perf_counter()
        data = Path(tempfile.mkdtemp(prefix="alignflow-pg-"))  # outside pytest's 0700 tmp: the postgres user reads it
        user = "postgres" if os.geteuid() == 0 else None  # PostgreSQL refuses to run as root
        password_file = data / "pw"
        password_file.write_text(self.db_password + "\n")
        if user:
            shutil.chown(data, user)
            shutil.chown(password_file, user)
        cluster = data / "cluster"
        subprocess.run([postgres_bin("initdb"), "-D", str(cluster), "-U", "alignflow", f"--pwfile={password_file}",
                        "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8"],
                       check=True, capture_output=True, user=user)
        self.scratch_dirs.append(data)
        service = self.spawn("postgres", [postgres_bin("postgres"), "-D", str(cluster), "-p", str(self.pg_port),
                                          "-k", str(data), "-c", "listen_addresses=127.0.0.1"],
                             env=dict(os.environ), cwd=data, user=user)
        self.wait_until(service, lambda: subprocess.run(
            [postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.pg_port)], check=False,
            capture_output=True).returncode == 0)
        seconds = time.perf_counter() - started  # initdb included
        for database in ("mlflow", "mlflow_auth", "prefect"):
            subprocess.run([postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(self.pg_port), "-U", "alignflow",
                            database],
                           check=True, capture_output=True, env={**os.environ, "PGPASSWORD": self.db_password})
        return seconds

    def stop_mlflow(self) -> None:
        """Stop the MLflow server (its data stays in PostgreSQL and its artifact folder)."""
        (server,) = [service for service in self.services if service.name == "mlflow-server"]
        server.terminate()
        server.wait()
        self.services.remove(server)

    def start_mlflow(self, create_user: bool = True) -> float:
        """`mlflow server` with basic auth, its runs and users in PostgreSQL, artifacts proxied by the server."""
        # infra/mlflow/basic_auth.ini as the compose stack mounts it, pointed at this cluster.
        settings = configparser.ConfigParser()
        settings.read(REPO / "infra" / "mlflow" / "basic_auth.ini")
        settings["mlflow"]["database_uri"] = self.db_uri("mlflow_auth", "postgresql+psycopg", password=False)
        ini = self.root / "basic_auth.ini"
        with ini.open("w") as handle:
            settings.write(handle)
        env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_DISABLE_TELEMETRY": "true",
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.mlflow_admin_password,
               "PGPASSWORD": self.db_password,  # as in compose: the URIs carry no password
               "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}  # signs the auth app's CSRF tokens
        service = self.spawn("mlflow-server", [
            str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
            "--port", str(self.mlflow_port), "--workers", "2",
            "--backend-store-uri", self.db_uri("mlflow", "postgresql+psycopg", password=False),
            "--artifacts-destination", str(self.root / "mlflow-artifacts"),
        ], env=env)
        seconds = self.wait_until(service, lambda: requests.get(f"{self.mlflow_url}/health", timeout=5).ok)
        if not create_user:  # restarted: the pipeline user is already in the auth database
            return seconds
        created = requests.post(f"{self.mlflow_url}/api/2.0/mlflow/users/create", timeout=30,
                                json={"username": PIPELINE_USER, "password": self.pipeline_password},
                                auth=("admin", self.mlflow_admin_password))
        created.raise_for_status()
        return seconds

    def start_prefect(self) -> float:
        """`prefect server start` on PostgreSQL, refusing requests without the auth string."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(PREFECT_HOME=str(self.root / "prefect-server-home"),
                   PREFECT_API_DATABASE_CONNECTION_URL=self.db_uri("prefect", "postgresql+asyncpg"),
                   PREFECT_SERVER_API_AUTH_STRING=self.prefect_auth,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false",
                   PREFECT_SERVER_UI_ENABLED="false")
        service = self.spawn("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                "--port", str(self.prefect_port), "--no-ui"], env=env)
        return self.wait_until(service, lambda: self.prefect("GET", "/health").ok)

    def start_worker(self, pool: str, home: Path) -> float:
        """A process worker for `pool`, running flows from its own copy of the code in `home`."""
        env = self.client_env(ALIGNFLOW_HOME=str(home), PREFECT_HOME=str(self.root / f"worker-{pool}-home"),
                              PREFECT_WORKER_QUERY_SECONDS="2")  # default 10 s: slow for a test
        service = self.spawn(f"worker-{pool}", [str(BIN / "prefect"), "worker", "start", "--pool", pool,
                                                "--type", "process"], env=env, cwd=home)

        def polling() -> bool:
            workers = self.prefect("POST", f"/work_pools/{pool}/workers/filter", json={}).json()
            return any(worker["status"] == "ONLINE" for worker in workers)

        return self.wait_until(service, polling)

    # ------------------------------------------------------------------------------------------------ APIs

    def prefect(self, method: str, path: str, **kwargs) -> requests.Response:
        """A request to the Prefect REST API with the auth string."""
        token = base64.b64encode(self.prefect_auth.encode()).decode()
        return requests.request(method, f"{self.prefect_api}{path}", headers={"Authorization": f"Basic {token}"},
                                timeout=30, **kwargs)

    def create_work_pool(self, name: str, kind: str = "process") -> None:
        created = self.prefect("POST", "/work_pools/", json={"name": name, "type": kind})
        created.raise_for_status()

    def prefect_cli(self, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=self.client_env(), cwd=cwd,
                              capture_output=True, text=True, check=False, timeout=300)

    def flow_run_logs(self, flow_run_id: str, timeout: float = 60) -> list[str]:
        """A finished flow run's log messages. Logs reach the server in batches, possibly after the final state,
        so this waits for the engine's last line ("Finished in state …")."""
        deadline = time.monotonic() + timeout
        while True:
            messages = self._all_logs(flow_run_id)
            if any(message.startswith("Finished in state") for message in messages) or time.monotonic() > deadline:
                return messages
            time.sleep(1)

    def _all_logs(self, flow_run_id: str, page: int = 200) -> list[str]:
        messages: list[str] = []
        while True:
            logs = self.prefect("POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}},
                                                             "sort": "TIMESTAMP_ASC", "limit": page,
                                                             "offset": len(messages)})
            logs.raise_for_status()
            batch = [entry["message"] for entry in logs.json()]
            messages += batch
            if len(batch) < page:
                return messages

    def wait_for_flow_run(self, flow_run_id: str, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.prefect("GET", f"/flow_runs/{flow_run_id}").json()
            if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return run
            time.sleep(1)
        raise TimeoutError(f"flow run {flow_run_id} unfinished after {timeout} s")


def copy_of_working_tree(dest: Path) -> Path:
    """The repository's code as a worker image holds it: tracked and unignored files only, so no data/, no
    MLflow store and no virtualenv come along."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                            capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        source = REPO / relative
        if source.is_file():
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


@contextlib.contextmanager
def loopback_services(root: Path) -> Iterator[tuple[LoopbackServices, dict[str, float]]]:
    """PostgreSQL, then the MLflow and Prefect servers side by side (each needs only the database); yields them
    with their start times (s)."""
    services = LoopbackServices(root)
    try:
        startup = {"postgres": services.start_postgres()}
        with ThreadPoolExecutor(2) as pool:
            servers = {"mlflow": pool.submit(services.start_mlflow), "prefect": pool.submit(services.start_prefect)}
            startup |= {name: started.result() for name, started in servers.items()}
        yield services, startup
    finally:
        services.stop()
        for path in services.scratch_dirs:
            shutil.rmtree(path, ignore_errors=True)
