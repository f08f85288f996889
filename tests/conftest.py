"""Shared fixtures: offline-safe environment, a temporary MLflow store, a reduced demo config, Prefect harness."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Before anything imports Prefect or MLflow: no analytics or telemetry calls (there is no internet here).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker gets its share of the cores (torch would take them all in every worker, and the
# workers would fight over them), and its own Prefect home: the CLI's default is the checkout's ./.prefect, whose
# SQLite database two workers' ephemeral servers would share.
if _workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix=f"prefect-{os.environ['PYTEST_XDIST_WORKER']}-"))


def pytest_collection_modifyitems(items):
    """The heavy files first, longest first (`heavy(minutes)`); the rest keep their order. This is the order of a
    serial run; under xdist (`--dist loadfile`) it only breaks ties, as xdist sends the files with the most tests
    first."""
    def minutes(item) -> float:
        heavy = item.get_closest_marker("heavy")
        return heavy.args[0] if heavy and heavy.args else 0.0

    items.sort(key=lambda item: -minutes(item))  # stable: file order kept otherwise


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory) -> Path:
    from tasks.data.demo import write_demo_data

    out = tmp_path_factory.mktemp("data")
    write_demo_data(out)
    return out


@pytest.fixture
def tracked(tmp_path, monkeypatch):
    """A fresh SQLite MLflow store whose artifacts stay under tmp_path."""
    import mlflow

    from tasks.core import paths

    monkeypatch.setattr(paths, "DEFAULT_ARTIFACT_ROOT", tmp_path / "mlartifacts")
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def restored_environment():
    """os.environ as it was before the test (the CLI callback sets defaults such as PREFECT_HOME)."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


_ECHO_MODEL = """
import mlflow
from mlflow.pyfunc import PythonModel


class Echo(PythonModel):
    def predict(self, model_input: list[str], params=None) -> list[str]:
        return model_input


mlflow.models.set_model(Echo())
"""


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> tuple[Path, str]:
    """A migrated SQLite store holding one tiny logged model, built once per module.

    Registry tests copy the database file: creating the schema and logging a model cost seconds, a copy none.
    Every version a test registers points at this one model.
    """
    import mlflow

    root = tmp_path_factory.mktemp("registry-template")
    code = root / "echo_model.py"
    code.write_text(_ECHO_MODEL)
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    experiment_id = mlflow.create_experiment("alignflow", artifact_location=(root / "mlartifacts").as_uri())
    with mlflow.start_run(run_name="train", experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=str(code), pip_requirements=["mlflow"])
    return root / "mlflow.db", info.model_uri
